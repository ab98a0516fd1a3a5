"""Labeling app through the ASGI test client: auth, authorization, CSRF, submissions
(idempotent, malformed -> 4xx and nothing changes), import, assignment, progress, agreement,
export in the project's record format, and the CLI; then the hardening of issue 20: request
bodies capped before they are read, security headers on every response, Secure cookies behind
https, the account life cycle, bad input as 4xx on SQLite and PostgreSQL, explicit rankings
that agree with the Likert scores, overlap over the whole pool, notes after a submission,
redirects after admin forms, HEAD, HTML 404s and the admin's label browser."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import os
import random
import re
import shutil

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select

from instructrl.cli import main as cli_main
from instructrl.data.jsonl import read_records, write_records
from instructrl.data.records import Demonstration, Labeler, Ranking, Response
from instructrl.errors import InputError
from argon2 import PasswordHasher

from instructrl.label import app as app_module
from instructrl.label import security, store
from instructrl.label.app import create_app
from instructrl.label.db import read, write
from instructrl.label.models import AuthSession, Label, ResponseSet, Task, User
from instructrl.label.testing import (LabelerClient, csrf_of, make_prompts, make_samples,
                                      pg_schema, random_ranking)

PW = {"admin": "admin-pass-1", "alice": "alice-pass-1", "bob": "bob-pass-12",
      "hank": "hank-pass-12"}


@pytest.fixture(scope="module")
def world_db(tmp_path_factory):
    """A database file with: admin; labelers alice, bob (training) and hank (held-out); 4
    prompts with K=4 samples; rank tasks on every set for alice and bob (overlap 2) and for
    hank; one demo and one edit task for alice. Built once (argon2 hashing is slow on
    purpose) and copied for each test."""
    path = tmp_path_factory.mktemp("label_world") / "labels.db"
    app = create_app(f"sqlite:///{path}")
    eng = app.state.engine
    store.create_user(eng, "admin", PW["admin"], "admin")
    for name in ("alice", "bob"):
        store.create_user(eng, name, PW[name])
    store.create_user(eng, "hank", PW["hank"], heldout=True)
    prompts = make_prompts(4)
    store.import_records(eng, [("p", i, p) for i, p in enumerate(prompts)],
                         [("s", i, s) for i, s in enumerate(make_samples(prompts))])
    assert store.assign(eng, "rank", ["alice", "bob"], overlap=2) == 8
    assert store.assign(eng, "rank", pool="heldout") == 4
    assert store.assign(eng, "demo", ["alice"], limit=1) == 1
    assert store.assign(eng, "edit", ["alice"], limit=1) == 1
    eng.dispose()  # the last connection closes: SQLite folds the WAL into the file
    assert not path.with_name("labels.db-wal").exists()
    return path


@pytest.fixture
def world(tmp_path, world_db):
    shutil.copy(world_db, tmp_path / "labels.db")
    return create_app(f"sqlite:///{tmp_path}/labels.db")


def client(app, name: str | None = None) -> tuple[TestClient, LabelerClient | None]:
    c = TestClient(app, base_url="http://testserver")
    if name is None:
        return c, None
    lc = LabelerClient(c, name)
    lc.login(PW[name])
    return c, lc


def task_of(app, name: str, kind: str) -> Task:
    with read(app.state.engine) as s:
        return s.scalars(select(Task).join(User).where(User.name == name, Task.kind == kind)
                         .order_by(Task.id)).first()


def snapshot(app) -> tuple:
    with read(app.state.engine) as s:
        return (s.scalar(select(func.count()).select_from(Label)),
                tuple(s.execute(select(Task.id, Task.state, Task.skip_reason).order_by(Task.id))))


GOOD_LIKERT = [6, 3, 7, 5]  # agrees with the ranking below: 2 first, 0 = 3, 1 last


def good_rank_form(k=4):
    return {"ranking": ["[[2],[0,3],[1]]"],
            **{f"likert_{i}": [str(GOOD_LIKERT[i])] for i in range(k)},
            "flags_1": ["hallucination", "fails_instruction"], "critique": ["B is made up"]}


# ------------------------------------------------------------------ authentication

def test_login_sets_safe_cookie_and_wrong_password_fails(world):
    c, _ = client(world)
    assert c.get("/", follow_redirects=False).headers["location"] == "/login"
    page = c.get("/login")
    assert "HttpOnly" in page.headers["set-cookie"]
    token = csrf_of(page.text)
    r = c.post("/login", data={"csrf_token": token, "name": "alice", "password": "nope-nope"},
               follow_redirects=False)
    assert r.status_code == 401 and "Wrong name or password" in r.text
    r = c.post("/login", data={"csrf_token": token, "name": "nobody", "password": "whatever1"},
               follow_redirects=False)
    assert r.status_code == 401
    r = c.post("/login", data={"csrf_token": token, "name": "alice", "password": PW["alice"]},
               follow_redirects=False)
    assert r.status_code == 303
    cookie = r.headers["set-cookie"].lower()
    assert "instructrl_session=" in cookie and "httponly" in cookie and "samesite=lax" in cookie
    assert "My queue" in c.get("/").text
    # security headers on every page
    h = c.get("/").headers
    assert "default-src 'self'" in h["content-security-policy"] and h["x-frame-options"] == "DENY"


def test_login_without_csrf_token_is_refused(world):
    c, _ = client(world)
    c.get("/login")
    r = c.post("/login", data={"name": "alice", "password": PW["alice"]}, follow_redirects=False)
    assert r.status_code == 403
    fresh, _ = client(world)  # no pre-login cookie at all
    r = fresh.post("/login", data={"csrf_token": "x", "name": "alice", "password": PW["alice"]},
                   follow_redirects=False)
    assert r.status_code == 403


def test_login_rate_limited(world):
    c, _ = client(world)
    token = csrf_of(c.get("/login").text)
    for _ in range(5):
        r = c.post("/login", data={"csrf_token": token, "name": "bob", "password": "wrong-pass"})
        assert r.status_code == 401
    r = c.post("/login", data={"csrf_token": token, "name": "bob", "password": PW["bob"]},
               follow_redirects=False)
    assert r.status_code == 429 and int(r.headers["retry-after"]) > 0
    # the limit is per name (and address): alice can still log in
    r = c.post("/login", data={"csrf_token": token, "name": "alice", "password": PW["alice"]},
               follow_redirects=False)
    assert r.status_code == 303


def test_secrets_hashed_and_never_logged(world, caplog):
    caplog.set_level(logging.DEBUG)
    c, lc = client(world, "alice")
    t = task_of(world, "alice", "rank")
    assert lc.post(t.id, "rank", good_rank_form()).status_code == 303
    session_token = c.cookies.get(security.SESSION_COOKIE)
    with read(world.state.engine) as s:
        assert s.scalar(select(User.password_hash).where(User.name == "alice")).startswith(
            "$argon2id$")
        hashes = set(s.scalars(select(AuthSession.token_hash)))
    assert session_token not in hashes and security.token_hash(session_token) in hashes
    logged = "\n".join(r.getMessage() for r in caplog.records)
    assert "login: name='alice'" in logged  # the log does say who logged in
    for secret in (PW["alice"], session_token, lc.csrf):
        assert secret not in logged


def test_logout_ends_the_session(world):
    c, lc = client(world, "alice")
    old = c.cookies.get(security.SESSION_COOKIE)
    assert c.post("/logout", data={"csrf_token": lc.csrf}, follow_redirects=False).status_code == 303
    c.cookies.set(security.SESSION_COOKIE, old)  # replaying the old cookie does not work
    assert c.get("/", follow_redirects=False).headers["location"] == "/login"


# ------------------------------------------------------------------ authorization and CSRF

def test_labeler_gets_403_on_others_tasks_and_admin_pages(world):
    c, lc = client(world, "alice")
    bobs = task_of(world, "bob", "rank")
    before = snapshot(world)
    assert c.get(f"/tasks/{bobs.id}").status_code == 403
    assert lc.post(bobs.id, "rank", good_rank_form()).status_code == 403
    assert lc.post(bobs.id, "skip", {"reason": ["x"]}).status_code == 403
    assert c.get("/tasks/99999").status_code == 404
    for path in ("/admin", "/admin/export/train/rankings.jsonl", "/admin/labels"):
        assert c.get(path).status_code == 403
    for path in ("/admin/users", "/admin/assign", "/admin/users/bob/deactivate",
                 "/admin/users/bob/password", "/admin/users/bob/end-sessions"):
        r = c.post(path, data={"csrf_token": lc.csrf, "name": "mallory", "password": "12345678",
                               "kind": "rank"})
        assert r.status_code == 403
    assert snapshot(world) == before
    assert "mallory" not in {u["name"] for u in store.users(world.state.engine)}
    assert all(u["active"] for u in store.users(world.state.engine))
    # and admins are not labelers: they get 403 on a labeler's task too
    a, _ = client(world, "admin")
    assert a.get(f"/tasks/{bobs.id}").status_code == 403
    assert a.get("/admin").status_code == 200


def test_forged_form_without_csrf_fails(world):
    c, lc = client(world, "alice")
    _, bob = client(world, "bob")
    t = task_of(world, "alice", "rank")
    before = snapshot(world)
    form = good_rank_form()
    assert c.post(f"/tasks/{t.id}/rank", data=form).status_code == 403  # no token
    assert c.post(f"/tasks/{t.id}/rank", data={**form, "csrf_token": "forged"}).status_code == 403
    # a valid token of ANOTHER session does not work either
    assert c.post(f"/tasks/{t.id}/rank", data={**form, "csrf_token": bob.csrf}).status_code == 403
    # a cross-site Origin is refused even with the right token
    r = c.post(f"/tasks/{t.id}/rank", data={**form, "csrf_token": lc.csrf},
               headers={"origin": "http://evil.example"})
    assert r.status_code == 403
    assert snapshot(world) == before
    # the header form of the token works (for scripts)
    r = c.post(f"/tasks/{t.id}/rank", data=form, headers={"x-csrf-token": lc.csrf},
               follow_redirects=False)
    assert r.status_code == 303


# ------------------------------------------------------------------ submissions

def test_ranking_roundtrip_and_double_submit_is_idempotent(world):
    c, lc = client(world, "alice")
    t = task_of(world, "alice", "rank")
    page = c.get(f"/tasks/{t.id}").text
    assert "Response A" in page and "sft" not in page  # labelers judge blind
    r = lc.post(t.id, "rank", good_rank_form())
    assert r.status_code == 303 and r.headers["location"] == f"/next?saved={t.id}"
    after_first = snapshot(world)
    r = lc.post(t.id, "rank", good_rank_form())  # the same submission again
    assert r.status_code == 303 and snapshot(world) == after_first
    other = {**good_rank_form(), "ranking": ["[[0],[1],[2],[3]]"], "contradiction_ok": ["1"]}
    r = lc.post(t.id, "rank", other)  # a different one: refused, nothing changes
    assert r.status_code == 409 and snapshot(world) == after_first
    assert "Submitted" in c.get(f"/tasks/{t.id}").text
    [rec] = store.export_records(world.state.engine)["train"]["rankings"]
    rk = Ranking.from_dict(rec)
    assert (rk.labeler_id, rk.ranking, rk.likert, rk.critique) == (
        "alice", [[2], [0, 3], [1]], GOOD_LIKERT, "B is made up")
    assert rk.flags == [[], ["fails_instruction", "hallucination"], [], []]
    with read(world.state.engine) as s:
        rs = s.get(ResponseSet, t.set_id)
        assert [r.text for r in rk.responses] == [x.text for x in rs.responses]
        assert [r.policy for r in rk.responses] == [x.policy for x in rs.responses]


BAD_FORMS = [
    ("not a permutation", {"ranking": ["[[0],[1],[2]]"]}, "missing [3]"),
    ("repeated index", {"ranking": ["[[0,1],[1],[2],[3]]"]}, "repeated [1]"),
    ("unknown response in ranking", {"ranking": ["[[0],[1],[2],[3],[4]]"]},
     "unknown response 4"),
    ("likert out of range", {"likert_2": ["8"]}, "from 1 to 7"),
    ("likert zero", {"likert_0": ["0"]}, "from 1 to 7"),
    ("likert for unknown response", {"likert_5": ["3"]}, "unknown response"),
    ("flag for unknown response", {"flags_4": ["sexual"]}, "unknown response"),
    ("unknown flag", {"flags_0": ["boring"]}, "unknown flag"),
    ("ranking not JSON", {"ranking": ["A>B>C>D"]}, "not JSON"),
]


@pytest.mark.parametrize("name,change,msg", BAD_FORMS, ids=[b[0] for b in BAD_FORMS])
def test_malformed_ranking_gets_422_and_changes_nothing(world, name, change, msg):
    c, lc = client(world, "alice")
    t = task_of(world, "alice", "rank")
    before = snapshot(world)
    r = lc.post(t.id, "rank", {**good_rank_form(), **change})
    assert r.status_code == 422, name
    assert msg in r.text.replace("&#39;", "'")
    assert snapshot(world) == before
    assert lc.post(t.id, "rank", good_rank_form()).status_code == 303  # still open


def test_missing_likert_and_wrong_action(world):
    _, lc = client(world, "alice")
    t = task_of(world, "alice", "rank")
    before = snapshot(world)
    form = good_rank_form()
    del form["likert_3"]
    assert lc.post(t.id, "rank", form).status_code == 422
    assert lc.post(t.id, "demo", {"response": ["hi"]}).status_code == 422  # a rank task
    assert lc.post(t.id, "frobnicate", {}).status_code == 404
    assert snapshot(world) == before


def test_demonstration_edit_and_skips(world):
    _, lc = client(world, "alice")
    eng = world.state.engine
    demo, edit = task_of(world, "alice", "demo"), task_of(world, "alice", "edit")
    assert lc.post(demo.id, "demo", {"response": ["The answer is 0."]}).status_code == 303
    assert lc.post(demo.id, "demo", {"response": ["The answer is 0."]}).status_code == 303
    with read(eng) as s:
        originals = [r.text for r in s.get(ResponseSet, edit.set_id).responses]
    before = snapshot(world)
    assert lc.post(edit.id, "edit", {"base": ["2"], "text": [originals[2]]}).status_code == 422
    assert lc.post(edit.id, "edit", {"base": ["9"], "text": ["x"]}).status_code == 422
    assert snapshot(world) == before
    assert lc.post(edit.id, "edit", {"base": ["2"], "text": ["A better answer."]}
                   ).status_code == 303
    ranks = [t for t in _tasks(world, "alice", "rank")]
    assert lc.post(ranks[0].id, "skip", {"reason": ["intent unclear"]}).status_code == 303
    assert lc.post(ranks[0].id, "skip", {"reason": ["intent unclear"]}).status_code == 303
    assert lc.post(ranks[0].id, "skip", {"reason": ["something else"]}).status_code == 409
    assert lc.post(ranks[1].id, "skip", {"reason": ["  "]}).status_code == 422

    out = store.export_records(eng)["train"]
    demos = [Demonstration.from_dict(d) for d in out["demonstrations"]]
    assert [d.response for d in demos] == ["The answer is 0.", "A better answer."]
    ranks_out = [Ranking.from_dict(r) for r in out["rankings"]]
    edit_rk = next(r for r in ranks_out if r.responses[0].policy == "human")
    assert edit_rk.ranking == [[0], [1]] and edit_rk.responses[1].text == originals[2]
    assert edit_rk.pairs() == [(0, 1)]  # the edit beats the original
    skipped = next(r for r in ranks_out if r.skipped)
    assert skipped.skipped == "intent unclear" and skipped.ranking == [] and skipped.pairs() == []


def _tasks(app, name, kind):
    with read(app.state.engine) as s:
        return list(s.scalars(select(Task).join(User).where(User.name == name, Task.kind == kind)
                              .order_by(Task.id)))


# ------------------------------------------------------------------ import, assignment

def test_import_twice_adds_nothing_and_errors_name_the_line(tmp_path, world):
    eng = world.state.engine
    prompts, samples = make_prompts(6, prefix="q"), None
    samples = make_samples(prompts, k=5, seed=3)
    write_records(tmp_path / "prompts.jsonl", prompts)
    write_records(tmp_path / "samples.jsonl", samples)
    before = store.counts(eng)
    r1 = store.import_files(eng, tmp_path / "prompts.jsonl", [tmp_path / "samples.jsonl"])
    assert (r1.prompts_new, r1.sets_new) == (6, 6)
    mid = store.counts(eng)
    r2 = store.import_files(eng, tmp_path / "prompts.jsonl", [tmp_path / "samples.jsonl"])
    assert (r2.prompts_new, r2.prompts_existing, r2.sets_new, r2.sets_existing) == (0, 6, 0, 6)
    assert store.counts(eng) == mid == {**before, "prompts": before["prompts"] + 6,
                                        "response_sets": before["response_sets"] + 6}
    # a changed prompt under an old id, or samples for an unknown prompt: error, nothing added
    changed = [p.to_dict() for p in prompts]
    changed[3]["text"] = "something else"
    bad_samples = [s.to_dict() for s in make_samples(make_prompts(2, prefix="new"), seed=9)]
    (tmp_path / "p2.jsonl").write_text("".join(json.dumps(d) + "\n" for d in changed))
    (tmp_path / "s2.jsonl").write_text("".join(json.dumps(d) + "\n" for d in bad_samples))
    with pytest.raises(InputError, match=r"p2\.jsonl:4: field 'id': prompt id 'q3'"):
        store.import_files(eng, tmp_path / "p2.jsonl")
    with pytest.raises(InputError, match=r"s2\.jsonl:1: field 'prompt_id': unknown prompt"):
        store.import_files(eng, tmp_path / "prompts.jsonl", [tmp_path / "s2.jsonl"])
    assert store.counts(eng) == mid


def test_web_import_and_user_creation(world, tmp_path):
    a, _ = client(world, "admin")
    csrf = csrf_of(a.get("/admin").text)
    prompts = make_prompts(3, prefix="w")
    p_text = "".join(json.dumps(p.to_dict()) + "\n" for p in prompts)
    s_text = "".join(json.dumps(s.to_dict()) + "\n" for s in make_samples(prompts))
    files = {"prompts": ("prompts.jsonl", p_text), "samples": ("samples.jsonl", s_text)}
    r = a.post("/admin/import", data={"csrf_token": csrf}, files=files)
    assert r.status_code == 200 and "prompts: 3 new" in r.text  # after the redirect
    r = a.post("/admin/import", data={"csrf_token": csrf}, files=files)
    assert "prompts: 0 new, 3 already there; response sets: 0 new, 3 already there" in r.text
    bad = {"samples": ("samples.jsonl", '{"prompt_id": "w0", "responses": []}\n')}
    r = a.post("/admin/import", data={"csrf_token": csrf}, files=bad)
    assert r.status_code == 422 and "samples.jsonl:1" in r.text
    assert a.post("/admin/import", files=files).status_code == 403  # no CSRF token
    r = a.post("/admin/users", data={"csrf_token": csrf, "name": "carol",
                                     "password": "carol-pass-1", "heldout": "on"})
    assert r.status_code == 200
    assert {"name": "carol", "heldout": True} == {k: v for k, v in next(
        u for u in store.users(world.state.engine) if u["name"] == "carol").items()
        if k in ("name", "heldout")}
    r = a.post("/admin/users", data={"csrf_token": csrf, "name": "carol",
                                     "password": "carol-pass-1"})
    assert r.status_code == 422 and "already exists" in r.text
    # carol is held out: the 4 sets hank (held out too) already has count towards overlap 1
    r = a.post("/admin/assign", data={"csrf_token": csrf, "kind": "rank", "labelers": "carol"})
    assert r.status_code == 200 and "Assigned 3 new tasks" in r.text


def test_assign_overlap_balanced_and_idempotent(world):
    eng = world.state.engine
    store.create_user(eng, "cy", "cy-pass-123")
    prompts = make_prompts(3, prefix="o")
    store.import_records(eng, [("p", 0, p) for p in prompts],
                         [("s", 0, s) for s in make_samples(prompts, seed=5)])
    n = store.assign(eng, "rank", ["alice", "bob", "cy"], overlap=2)
    # 7 sets; alice and bob already have the first 4 (overlap 2 there), so 3 new sets x 2
    assert n == 6
    loads = {row["labeler"]: row["assigned"] for row in store.progress(eng)
             if row["kind"] == "rank"}
    assert loads == {"alice": 6, "bob": 5, "cy": 3, "hank": 4}
    assert store.assign(eng, "rank", ["alice", "bob", "cy"], overlap=2) == 0
    with pytest.raises(InputError, match="needs at least 4"):
        store.assign(eng, "rank", ["alice", "bob", "cy"], overlap=4)
    with pytest.raises(InputError, match="no active labeler named 'admin'"):
        store.assign(eng, "rank", ["admin"])


# ------------------------------------------------------------------ progress, agreement, export

def test_progress_agreement_and_export_split(world, tmp_path):
    eng = world.state.engine
    rng = random.Random(0)
    sessions = {n: client(world, n)[1] for n in ("alice", "bob", "hank")}
    for name, lc in sessions.items():
        for t in _tasks(world, name, "rank"):
            form = good_rank_form() if name != "bob" else random_ranking(4, rng)
            assert lc.post(t.id, "rank", form).status_code == 303
    prog = {(r["labeler"], r["kind"]): r for r in store.progress(eng)}
    assert prog[("alice", "rank")] == {"labeler": "alice", "heldout": False, "kind": "rank",
                                       "assigned": 4, "pending": 0, "done": 4, "skipped": 0}
    assert prog[("alice", "demo")]["pending"] == 1 and prog[("hank", "rank")]["heldout"]
    ag = store.agreement_report(eng)
    assert ag["train"]["items"] == 4 and ag["all"]["items"] == 4
    assert set(ag["train"]["per_labeler"]) == {"alice", "bob"}
    assert set(ag["all"]["per_labeler"]) == {"alice", "bob", "hank"}
    assert ag["all"]["rate"] is not None and 0 <= ag["all"]["rate"] <= 1
    a, _ = client(world, "admin")
    page = a.get("/admin").text
    assert "Inter-labeler agreement" in page and f"{100 * ag['train']['rate']:.1f} %" in page
    assert ">4</td></tr>" in page.replace("\n", "") and "built-in" not in page

    # a run's existing labelers and rankings are kept; the app's are added once
    data = tmp_path / "data"
    write_records(data / "labelers.jsonl", [Labeler("sim1"), Labeler("bob")])
    foreign = Ranking("p0", "sim1", [Response("x", "sft"), Response("y", "sft")], [[1], [0]])
    write_records(data / "rankings.jsonl", [foreign])
    counts = store.export_dir(eng, data)
    train = read_records(data / "rankings.jsonl", Ranking.from_dict)
    held = read_records(data / "heldout" / "rankings.jsonl", Ranking.from_dict)
    assert train[0] == foreign and len(train) == 9
    assert {r.labeler_id for r in train[1:]} == {"alice", "bob"}
    assert {r.labeler_id for r in held} == {"hank"} and len(held) == 4
    labs = {x.id: x.heldout for x in read_records(data / "labelers.jsonl", Labeler.from_dict)}
    assert labs == {"sim1": False, "bob": False, "alice": False, "hank": True}
    assert counts[str(data / "rankings.jsonl")] == 9
    first = {p.name: p.read_text() for p in data.rglob("*.jsonl")}
    store.export_dir(eng, data)  # again: nothing changes
    assert {p.name: p.read_text() for p in data.rglob("*.jsonl")} == first
    assert store.export_dir(eng, data, replace=True)[str(data / "rankings.jsonl")] == 8
    # the web download is the same file
    web = a.get("/admin/export/train/rankings.jsonl")
    assert web.status_code == 200 and "attachment" in web.headers["content-disposition"]
    assert web.text == (data / "rankings.jsonl").read_text()

    # a labeler marked held-out later never has labels in training data again
    with write(eng) as s:
        s.scalar(select(User).where(User.name == "bob")).heldout = True
    later = store.export_records(eng)
    assert {r["labeler_id"] for r in later["train"]["rankings"]} == {"alice"}
    before = {p: p.read_text() for p in data.rglob("*.jsonl")}
    with pytest.raises(InputError, match="heldout=False"):
        store.export_dir(eng, data, replace=True)  # the run still lists bob as training
    assert {p: p.read_text() for p in data.rglob("*.jsonl")} == before  # nothing written


def test_cli_create_import_assign_export(tmp_path, monkeypatch, capsys):
    db = f"sqlite:///{tmp_path}/cli.db"
    monkeypatch.setattr("sys.stdin", io.StringIO("zed-pass-123\n"))
    assert cli_main(["label", "create-labeler", "zed", "--db", db, "--password-stdin"]) == 0
    monkeypatch.setattr("sys.stdin", io.StringIO("short\n"))
    assert cli_main(["label", "create-admin", "boss", "--db", db, "--password-stdin"]) == 2
    assert "at least 8 characters" in capsys.readouterr().err
    run = tmp_path / "run"
    prompts = make_prompts(3)
    write_records(run / "data" / "prompts.jsonl", prompts)
    write_records(run / "collect-0" / "samples.jsonl", make_samples(prompts[:2]))
    write_records(run / "collect-1" / "samples.jsonl", make_samples(prompts[1:], seed=1))
    args = ["label", "import", "--db", db, "--run", str(run)]  # finds collect-*/samples.jsonl
    assert cli_main(args) == 0
    assert "prompts: 3 new, 0 already there; response sets: 4 new" in capsys.readouterr().out
    assert cli_main(args) == 0 and "response sets: 0 new, 4 already there" in \
        capsys.readouterr().out
    (tmp_path / "bad.jsonl").write_text('{"prompt_id": "p0", "responses": "x"}\n')
    assert cli_main(["label", "import", "--db", db, "--samples", str(tmp_path / "bad.jsonl")]) == 2
    assert "bad.jsonl:1: field 'responses'" in capsys.readouterr().err
    assert cli_main(["label", "assign", "--db", db, "--kind", "rank"]) == 0
    assert "assigned 4 new rank tasks" in capsys.readouterr().out
    assert cli_main(["label", "progress", "--db", db]) == 0
    assert "zed" in capsys.readouterr().out
    assert cli_main(["label", "export", "--db", db, "--out", str(run / "data")]) == 0
    assert (run / "data" / "rankings.jsonl").read_text() == ""  # nothing labeled yet
    assert read_records(run / "data" / "labelers.jsonl", Labeler.from_dict) == [Labeler("zed")]


# ================================================================== issue 20: hardening

SECURITY_HEADERS = ("content-security-policy", "x-content-type-options", "referrer-policy",
                    "x-frame-options")
PG_URL = os.environ.get("INSTRUCTRL_TEST_PG_URL")


def has_security_headers(r) -> bool:
    return (all(h in r.headers for h in SECURITY_HEADERS)
            and "default-src 'self'" in r.headers["content-security-policy"]
            and r.headers["x-content-type-options"] == "nosniff"
            and r.headers["referrer-policy"] == "same-origin")


def raw_post(app, path: str, content_type: str, chunks, *, cookie: str = "",
             declared: int | None = None) -> tuple[int, int, dict, bytes]:
    """POST straight into the ASGI app with a streamed body (no Content-Length unless
    `declared`): (status, body bytes the app pulled, response headers, response body)."""
    pulled = 0
    chunks = iter(chunks)
    headers = [(b"host", b"testserver"), (b"content-type", content_type.encode())]
    if cookie:
        headers.append((b"cookie", cookie.encode()))
    if declared is not None:
        headers.append((b"content-length", str(declared).encode()))
    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST",
             "scheme": "http", "path": path, "raw_path": path.encode(), "query_string": b"",
             "root_path": "", "headers": headers, "client": ("127.0.0.1", 5000),
             "server": ("testserver", 80)}
    out: dict = {"body": b""}

    async def receive():
        nonlocal pulled
        chunk = next(chunks, None)
        if chunk is None:
            return {"type": "http.request", "body": b"", "more_body": False}
        pulled += len(chunk)
        return {"type": "http.request", "body": chunk, "more_body": True}

    async def send(message):
        if message["type"] == "http.response.start":
            out["status"] = message["status"]
            out["headers"] = {k.decode().lower(): v.decode() for k, v in message["headers"]}
        else:
            out["body"] += message.get("body", b"")

    asyncio.run(app(scope, receive, send))
    return out["status"], pulled, out["headers"], out["body"]


def fields(total: int, size: int = 60_000):
    """An urlencoded body of many fields, each well under Starlette's 1 MB field limit."""
    sent = 0
    while sent < total:
        chunk = b"f=" + b"a" * size + b"&"
        sent += len(chunk)
        yield chunk


def multipart_file(total: int, field: str = "prompts", boundary: str = "XyZ"):
    yield (f"--{boundary}\r\nContent-Disposition: form-data; name=\"{field}\"; "
           f"filename=\"big.jsonl\"\r\nContent-Type: application/octet-stream\r\n\r\n").encode()
    for _ in range(total // 65_536):
        yield b"x" * 65_536
    yield f"\r\n--{boundary}--\r\n".encode()


def session_cookie(c: TestClient) -> str:
    return f"{security.SESSION_COOKIE}={c.cookies.get(security.SESSION_COOKIE)}"


def test_request_bodies_are_capped_before_they_are_read(world, monkeypatch):
    # Before: a form of 1000 fields of <1 MB each was read into memory whole, and a multipart
    # file was spooled to /tmp whole, before any check (here 8 MiB stand for a gigabyte).
    form_limit = app_module.FORM_BODY_LIMIT
    slack = 65_536  # one chunk may cross the limit before it is counted
    for path, ctype, body, cookie in [
        ("/login", "application/x-www-form-urlencoded", fields(8 << 20), ""),
        ("/login", "multipart/form-data; boundary=XyZ", multipart_file(8 << 20), ""),
    ]:
        status, pulled, headers, page = raw_post(world, path, ctype, body, cookie=cookie)
        assert pulled <= form_limit + slack, (path, ctype, pulled)
        if ctype.startswith("multipart"):  # refused at the file's first line, before the cap
            assert status == 400 and b"This form takes no file uploads." in page
        else:
            assert status == 413 and b"Request too large" in page, (path, ctype, status)
        assert all(h in headers for h in SECURITY_HEADERS)
    # a route that needs a login refuses without reading at all
    status, pulled, _, _ = raw_post(world, "/logout", "application/x-www-form-urlencoded",
                                    fields(8 << 20))
    assert (status, pulled) == (401, 0)
    c, lc = client(world, "alice")
    t = task_of(world, "alice", "rank")
    before = snapshot(world)
    status, pulled, _, _ = raw_post(world, f"/tasks/{t.id}/rank",
                                    "application/x-www-form-urlencoded", fields(8 << 20),
                                    cookie=session_cookie(c))
    assert status == 413 and pulled <= form_limit + slack
    # a declared Content-Length over the limit: refused before a byte is read
    status, pulled, _, _ = raw_post(world, f"/tasks/{t.id}/rank",
                                    "application/x-www-form-urlencoded", fields(8 << 20),
                                    cookie=session_cookie(c), declared=form_limit + 1)
    assert (status, pulled) == (413, 0)
    assert snapshot(world) == before
    # the largest form a labeler can send still fits: 20,000 characters of 4-byte UTF-8
    big = {**good_rank_form(), "critique": ["\U0001F600" * 20_000]}
    assert lc.post(t.id, "rank", big).status_code == 303

    # admin uploads: the documented limit (two files of MAX_UPLOAD) ...
    a, _ = client(world, "admin")
    status, pulled, _, _ = raw_post(world, "/admin/import", "multipart/form-data; boundary=XyZ",
                                    multipart_file(1 << 20), cookie=session_cookie(a),
                                    declared=app_module.IMPORT_BODY_LIMIT + 1)
    assert (status, pulled) == (413, 0)
    assert app_module.IMPORT_BODY_LIMIT == 2 * app_module.MAX_UPLOAD + (1 << 20)
    # ... counted as it streams (a smaller limit here, to keep the test fast)
    monkeypatch.setattr(app_module, "IMPORT_BODY_LIMIT", 1 << 20)
    status, pulled, _, _ = raw_post(world, "/admin/import", "multipart/form-data; boundary=XyZ",
                                    multipart_file(8 << 20), cookie=session_cookie(a))
    assert status == 413 and pulled <= (1 << 20) + slack
    assert snapshot(world)[0] == before[0] + 1  # only alice's ranking above was stored


def test_security_headers_on_every_response(world, monkeypatch):
    c = TestClient(world, base_url="http://testserver", raise_server_exceptions=False)
    responses = [c.get("/login"), c.get("/", follow_redirects=False), c.get("/static/label.css"),
                 c.get("/no/such/page"), c.put("/login"),
                 c.post("/login", content=b"x", headers={"content-length": "999999999"})]
    assert [r.status_code for r in responses] == [200, 303, 200, 404, 405, 413]
    lc = LabelerClient(c, "alice")
    lc.login(PW["alice"])

    def boom(*_):
        raise RuntimeError("database went away")
    monkeypatch.setattr(store, "queue", boom)
    r = c.get("/")
    responses.append(r)
    assert r.status_code == 500 and "Something went wrong" in r.text
    assert 'action="/logout"' in r.text  # the navigation stays on the error page
    for r in responses:
        assert has_security_headers(r), (r.request.url, r.status_code, dict(r.headers))
    assert "no-store" in responses[0].headers["cache-control"]


def test_secure_cookie_when_served_over_https(tmp_path, world_db):
    shutil.copy(world_db, tmp_path / "labels.db")
    url = f"sqlite:///{tmp_path}/labels.db"

    def cookies(app, base):
        c = TestClient(app, base_url=base)
        pre = c.get("/login")
        value = re.search(rf"{security.PRELOGIN_COOKIE}=([^;]+)", pre.headers["set-cookie"])
        # sent by hand: a client keeps a Secure cookie to itself over http
        r = c.post("/login", data={"csrf_token": csrf_of(pre.text), "name": "alice",
                                   "password": PW["alice"]}, follow_redirects=False,
                   headers={"cookie": f"{security.PRELOGIN_COOKIE}={value.group(1)}"})
        assert r.status_code == 303
        return pre.headers["set-cookie"].lower(), r.headers["set-cookie"].lower()

    for app, base, secure in [(create_app(url), "http://testserver", False),
                              (create_app(url), "https://testserver", True),
                              (create_app(url, secure_cookies=True), "http://testserver", True)]:
        for cookie in cookies(app, base):
            assert ("; secure" in cookie) == secure, (base, cookie)
            assert "httponly" in cookie and "samesite=lax" in cookie


# ------------------------------------------------------------------ accounts

def test_admin_deactivates_resets_password_and_ends_sessions(world):
    eng = world.state.engine
    a, _ = client(world, "admin")
    admin_csrf = csrf_of(a.get("/admin").text)
    c, lc = client(world, "alice")
    c2, _ = client(world, "alice")  # a second session (another device)
    t = task_of(world, "alice", "rank")
    before = snapshot(world)

    # deactivate: both sessions end at once, the password no longer logs in, nothing is stored
    r = a.post("/admin/users/alice/deactivate", data={"csrf_token": admin_csrf},
               follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"].startswith("/admin?note=")
    assert "Deactivated &#39;alice&#39;; 2 session(s) ended." in a.get(r.headers["location"]).text
    for session in (c, c2):
        assert session.get("/", follow_redirects=False).headers["location"] == "/login"
    assert lc.post(t.id, "rank", good_rank_form()).status_code == 401
    with pytest.raises(AssertionError, match="HTTP 401"):
        LabelerClient(TestClient(world), "alice").login(PW["alice"])
    assert snapshot(world) == before
    assert next(u for u in store.users(eng) if u["name"] == "alice")["active"] is False
    assert 'id="user-alice"' in a.get("/admin").text and "deactivated" in a.get("/admin").text
    # ... and activate again
    assert a.post("/admin/users/alice/activate", data={"csrf_token": admin_csrf}).status_code \
        == 200
    c3, _ = client(world, "alice")
    assert "My queue" in c3.get("/").text

    # a new password ends bob's sessions; the old one stops working, the new one works
    b, _ = client(world, "bob")
    r = a.post("/admin/users/bob/password", data={"csrf_token": admin_csrf,
                                                  "password": "short"})
    assert r.status_code == 422 and "at least 8 characters" in r.text
    r = a.post("/admin/users/bob/password", data={"csrf_token": admin_csrf,
                                                  "password": "bob-new-pass-2"})
    assert r.status_code == 200 and "New password for &#39;bob&#39;; 1 session(s) ended." in r.text
    assert b.get("/", follow_redirects=False).headers["location"] == "/login"
    with pytest.raises(AssertionError, match="HTTP 401"):
        LabelerClient(TestClient(world), "bob").login(PW["bob"])
    LabelerClient(TestClient(world), "bob").login("bob-new-pass-2")

    # end sessions: logged out everywhere, the password still works
    r = a.post("/admin/users/alice/end-sessions", data={"csrf_token": admin_csrf})
    assert "Ended 1 session(s) of &#39;alice&#39;." in r.text
    assert c3.get("/", follow_redirects=False).headers["location"] == "/login"
    client(world, "alice")

    # admins cannot lock themselves out; unknown users and actions are errors
    r = a.post("/admin/users/admin/deactivate", data={"csrf_token": admin_csrf})
    assert r.status_code == 422 and "your own account" in r.text
    with pytest.raises(InputError, match="last active admin"):
        store.set_active(eng, "admin", False)
    assert a.post("/admin/users/nobody/deactivate",
                  data={"csrf_token": admin_csrf}).status_code == 422
    assert a.post("/admin/users/alice/frobnicate",
                  data={"csrf_token": admin_csrf}).status_code == 404
    assert a.post("/admin/users/alice/deactivate", data={}).status_code == 403  # CSRF
    assert "My queue" in client(world, "alice")[0].get("/").text


def test_deactivated_labelers_pending_items_go_to_others(world):
    eng = world.state.engine
    store.create_user(eng, "cy", "cy-pass-123")
    store.set_active(eng, "bob", False)
    # bob's 4 pending rank items no longer count towards overlap 2; cy takes them
    assert store.assign(eng, "rank", overlap=2) == 4
    assert {t.item for t in _tasks(world, "cy", "rank")} == {t.item for t in
                                                             _tasks(world, "bob", "rank")}


def test_cli_account_life_cycle(tmp_path, monkeypatch, capsys):
    db = f"sqlite:///{tmp_path}/acct.db"
    monkeypatch.setattr("sys.stdin", io.StringIO("zed-pass-123\n"))
    assert cli_main(["label", "create-labeler", "zed", "--db", db, "--password-stdin"]) == 0
    app = create_app(db)
    c = TestClient(app)
    LabelerClient(c, "zed").login("zed-pass-123")
    alive = lambda: c.get("/", follow_redirects=False).status_code == 200  # noqa: E731
    assert alive()
    assert cli_main(["label", "end-sessions", "zed", "--db", db]) == 0
    assert "ended 1 session(s) of 'zed'" in capsys.readouterr().out and not alive()
    LabelerClient(c, "zed").login("zed-pass-123")
    assert cli_main(["label", "deactivate", "zed", "--db", db]) == 0
    assert "deactivated 'zed'; 1 session(s) ended" in capsys.readouterr().out and not alive()
    with pytest.raises(AssertionError, match="HTTP 401"):
        LabelerClient(c, "zed").login("zed-pass-123")
    assert cli_main(["label", "activate", "zed", "--db", db]) == 0
    LabelerClient(c, "zed").login("zed-pass-123")
    monkeypatch.setattr("sys.stdin", io.StringIO("zed-new-pass-4\n"))
    assert cli_main(["label", "set-password", "zed", "--db", db, "--password-stdin"]) == 0
    assert "new password for 'zed'; 1 session(s) ended" in capsys.readouterr().out
    assert not alive()
    LabelerClient(c, "zed").login("zed-new-pass-4")
    assert cli_main(["label", "deactivate", "nobody", "--db", db]) == 2
    assert "no user named 'nobody'" in capsys.readouterr().err


def test_password_hashes_use_the_chosen_argon2_parameters_and_old_ones_are_upgraded(world):
    eng = world.state.engine
    params = "$argon2id$v=19$m=19456,t=2,p=1$"
    assert security.hash_password("x" * 12).startswith(params)
    with write(eng) as s:  # a hash from before: argon2-cffi's default 64 MiB, t=3, p=4
        s.scalar(select(User).where(User.name == "bob")).password_hash = \
            PasswordHasher().hash(PW["bob"])
    assert store.login(eng, "bob", PW["bob"]) is not None
    with read(eng) as s:
        assert s.scalar(select(User.password_hash).where(User.name == "bob")).startswith(params)


# ------------------------------------------------------------------ bad input on both databases

@pytest.fixture(params=["sqlite", "postgresql"])
def any_db_app(request, tmp_path):
    """A small world (admin, alice; 2 prompts with K=3; rank and demo tasks for alice) on
    SQLite or on a fresh PostgreSQL schema."""
    if request.param == "sqlite":
        ctx = None
        url = f"sqlite:///{tmp_path}/small.db"
    else:
        if not PG_URL:
            pytest.skip("PostgreSQL: INSTRUCTRL_TEST_PG_URL is not set (`make test` runs "
                        "scripts/test-services.sh, which installs and starts a local PostgreSQL)")
        ctx = pg_schema(PG_URL, "api")
        url = ctx.__enter__()
    try:
        app = create_app(url)
        eng = app.state.engine
        store.create_user(eng, "admin", PW["admin"], "admin")
        store.create_user(eng, "alice", PW["alice"])
        prompts = make_prompts(2)
        store.import_records(eng, [("p", i, p) for i, p in enumerate(prompts)],
                             [("s", i, x) for i, x in enumerate(make_samples(prompts, k=3))])
        store.assign(eng, "rank")
        store.assign(eng, "demo", limit=1)
        yield app
        eng.dispose()
    finally:
        if ctx is not None:
            ctx.__exit__(None, None, None)


def test_bad_input_is_a_clear_4xx_and_changes_nothing(any_db_app):
    app, eng = any_db_app, any_db_app.state.engine
    c = TestClient(app, base_url="http://testserver", raise_server_exceptions=False)
    before, counts = snapshot(app), store.counts(eng)
    token = csrf_of(c.get("/login").text)
    # a NUL byte in a login name (PostgreSQL cannot even compare it): 422, said so
    r = c.post("/login", data={"csrf_token": token, "name": "ali\x00ce", "password": "x" * 9})
    assert r.status_code == 422 and "NUL" in r.text
    r = c.post("/login", data={"csrf_token": token, "name": "a" * 5000, "password": "x" * 9})
    assert r.status_code == 401
    lc = LabelerClient(c, "alice")
    lc.login(PW["alice"])
    rank = task_of(app, "alice", "rank")
    demo = task_of(app, "alice", "demo")
    checks = [
        (lc.post(rank.id, "skip", {"reason": ["intent\x00unclear"]}), 422, "NUL"),
        (lc.post(demo.id, "demo", {"response": ["Paris\x00"]}), 422, "NUL"),
        (lc.post(rank.id, "rank", {**good_rank_form(3), "ranking": ["[" * 50_000]}), 422,
         "ranking"),
        (lc.post(2**70, "rank", good_rank_form(3)), 404, "no task"),
        (c.get(f"/tasks/{2**70}"), 404, "no task"),
        (c.get(f"/tasks/{2**31}"), 404, "no task"),
        (c.get("/tasks/-1"), 404, "no task"),
        (c.get("/tasks/abc"), 404, "no task"),
        (c.post("/tasks/abc/rank", data={"csrf_token": lc.csrf}), 404, "no task"),
        (c.get(f"/next?saved={2**70}", follow_redirects=True), 200, "Task #"),
    ]
    for r, status, text in checks:
        assert (r.status_code, text in r.text) == (status, True), (r.request.url, r.text[:300])
        assert r.headers["content-type"].startswith("text/html")
    assert snapshot(app) == before

    a, _ = client(app, "admin")
    csrf = csrf_of(a.get("/admin").text)
    ok_prompt = json.dumps(make_prompts(1, prefix="ok")[0].to_dict())
    bad_files = [
        ('{"id": ' + "[" * 100_000 + "]" * 100_000 + "}", "line 2: ", "nested too deeply"),
        ('{"id": "x\\u0000y", "user_id": "u", "text": "t"}', "field 'id'", "NUL"),
        ('{"id": "x", "user_id": "u", "text": "a\\ud800b"}', "field 'text'", "surrogate"),
        (json.dumps({"id": "p" * 201, "user_id": "u", "text": "t"}), "field 'id'",
         "longer than 200"),
        ('{"id": "m", "user_id": "u", "text": "t", "meta": ' + "[" * 200 + "]" * 200 + "}",
         "field 'meta", "nested deeper than 100"),
    ]
    for line, where, what in bad_files:
        files = {"prompts": ("prompts.jsonl", ok_prompt + "\n" + line + "\n")}
        r = a.post("/admin/import", data={"csrf_token": csrf}, files=files)
        text = r.text.replace("&#39;", "'")
        assert r.status_code == 422 and what in text, (line[:60], r.status_code, text[-500:])
        assert "prompts.jsonl:2" in text and where.strip(": ") in text.replace(":2:", "line 2:")
    for path, what in [("/admin/labels?labeler=%00", "not a user name"),
                       (f"/admin/labels?task={2**70}", "not a task number"),
                       ("/admin/labels?task=abc", "not a task number")]:
        r = a.get(path)
        assert r.status_code == 422 and what in r.text, path
    assert a.get("/admin/users/al%00ice/deactivate").status_code == 405
    r = a.post("/admin/users/al%00ice/deactivate", data={"csrf_token": csrf})
    assert r.status_code == 422
    assert snapshot(app) == before and store.counts(eng) == counts
    # the label browser and the account actions run on this database too
    rank_task = task_of(app, "alice", "rank")
    assert lc.post(rank_task.id, "rank", {**good_rank_form(3), "ranking": ["[[2],[0],[1]]"],
                                          "likert_1": ["3"]}).status_code == 303
    r = a.get("/admin/labels", params={"labeler": "alice", "task": str(rank_task.id)})
    assert r.status_code == 200 and "1 label<" in r.text
    assert store.set_active(eng, "alice", False) == 1 and store.set_active(eng, "alice", True) == 0
    # a prompt whose text holds U+2028 is one line, not two
    line = json.dumps({"id": "ls", "user_id": "u", "text": "a\u2028b"}, ensure_ascii=False)
    r = a.post("/admin/import", data={"csrf_token": csrf},
               files={"prompts": ("p.jsonl", line + "\n")})
    assert r.status_code == 200 and "prompts: 1 new" in r.text


# ------------------------------------------------------------------ rankings

def test_ranking_must_be_explicit_and_agree_with_the_likert_scores(world):
    _, lc = client(world, "alice")
    t = task_of(world, "alice", "rank")
    letter = store.letters(t.id, 4)
    before = snapshot(world)
    r = lc.post(t.id, "rank", {**good_rank_form(), "ranking": [""]})  # never ranked
    assert r.status_code == 422 and "rank the responses" in r.text
    # Likert says 2 is best and 1 worst; this ranking puts 1 first
    contradicting = {**good_rank_form(), "ranking": ["[[1],[2],[0,3]]"]}
    r = lc.post(t.id, "rank", contradicting)
    assert r.status_code == 422 and "contradicts your Likert scores" in r.text
    # named by the letters the labeler sees
    assert f"response {letter[1]} is ranked above response {letter[0]} but scored 3 &lt; 6 " \
        "(3 such pairs)" in r.text
    assert snapshot(world) == before
    r = lc.post(t.id, "rank", {**contradicting, "contradiction_ok": ["1"]})  # "I meant it"
    assert r.status_code == 303
    [rec] = store.export_records(world.state.engine)["train"]["rankings"]
    assert rec["ranking"] == [[1], [2], [0, 3]] and "contradiction_ok" not in rec


def test_assign_overlap_counts_every_labeler_of_the_pool(world):
    eng = world.state.engine
    for name in ("cy", "dan"):
        store.create_user(eng, name, f"{name}-pass-123")
    store.create_user(eng, "hal", "hal-pass-123", heldout=True)
    prompts = make_prompts(3, prefix="n")
    store.import_records(eng, [("p", 0, p) for p in prompts],
                         [("s", 0, s) for s in make_samples(prompts, seed=8)])
    # alice and bob already cover the first 4 sets twice: naming cy and dan adds only the 3
    # new sets (was 7 x 2 = 14, handing out items others had done)
    assert store.assign(eng, "rank", ["cy", "dan"], overlap=2) == 6
    old = {t.item for t in _tasks(world, "alice", "rank")}
    assert not old & {t.item for t in _tasks(world, "cy", "rank") + _tasks(world, "dan", "rank")}
    assert store.assign(eng, "rank", ["cy", "dan"], overlap=2) == 0
    assert store.assign(eng, "rank", overlap=2) == 0  # the pool as a whole is covered
    # a newcomer alone can top up items to overlap 3
    store.create_user(eng, "eve", "eve-pass-123")
    assert store.assign(eng, "rank", ["eve"], overlap=3) == 7
    # held-out labelers are their own pool: hank covers 4 sets once, hal gets the other 3
    assert store.assign(eng, "rank", ["hal"]) == 3
    with pytest.raises(InputError, match="'hal' is not in the train pool"):
        store.assign(eng, "rank", ["hal"], pool="train")
    with pytest.raises(InputError, match="unknown split 'bogus'"):
        store.assign(eng, "rank", split="bogus")
    for bad in (0, -1):
        with pytest.raises(InputError, match="field 'limit': must be >= 1"):
            store.assign(eng, "rank", limit=bad)


def test_web_assign_rejects_bad_split_limit_and_overlap(world):
    a, _ = client(world, "admin")
    csrf = csrf_of(a.get("/admin").text)
    before = snapshot(world)
    for change, msg in [({"split": "bogus"}, "unknown split &#39;bogus&#39;"),
                        ({"limit": "-1"}, "field &#39;limit&#39;: must be &gt;= 1"),
                        ({"limit": "0"}, "field &#39;limit&#39;: must be &gt;= 1"),
                        ({"limit": "1e3"}, "field &#39;limit&#39;: not an integer"),
                        ({"overlap": "abc"}, "field &#39;overlap&#39;: not an integer"),
                        ({"overlap": "0"}, "field &#39;overlap&#39;: must be &gt;= 1"),
                        ({"kind": "dance"}, "unknown task kind")]:
        r = a.post("/admin/assign", data={"csrf_token": csrf, "kind": "demo", **change})
        assert r.status_code == 422 and msg in r.text, (change, r.text[-800:])
        assert 'id="alert"' in r.text
    assert snapshot(world) == before


# ------------------------------------------------------------------ pages

def test_submission_is_confirmed_on_the_next_page(world):
    c, lc = client(world, "alice")
    first, second = _tasks(world, "alice", "rank")[:2]
    r = c.post(f"/tasks/{first.id}/rank", data={**good_rank_form(), "csrf_token": lc.csrf})
    assert r.status_code == 200 and f"/tasks/{second.id}?saved={first.id}" in str(r.url)
    assert f'id="note">Saved task #{first.id}.</p>' in r.text
    r = c.post(f"/tasks/{second.id}/skip", data={"reason": "unclear", "csrf_token": lc.csrf})
    assert f"Skipped task #{second.id}; saved." in r.text
    # a note is only shown for the labeler's own finished task
    bobs = task_of(world, "bob", "rank")
    assert "Saved task" not in c.get(f"/tasks/{second.id}?saved={bobs.id}").text
    third = _tasks(world, "alice", "rank")[2]
    assert "Saved task" not in c.get(f"/?saved={third.id}").text  # still pending


def test_error_pages_keep_the_navigation(world):
    c, _ = client(world, "alice")
    bobs = task_of(world, "bob", "rank")
    for path, status in [("/tasks/99999", 404), (f"/tasks/{bobs.id}", 403), ("/nope", 404),
                         ("/admin", 403), ("/tasks/abc", 404)]:
        r = c.get(path)
        assert r.status_code == status and r.headers["content-type"].startswith("text/html")
        assert 'action="/logout"' in r.text and "My queue" in r.text, path
    a, _ = client(world, "admin")
    r = a.get("/admin/nope")
    assert r.status_code == 404 and 'href="/admin/labels"' in r.text


def test_admin_forms_redirect_after_post(world):
    a, _ = client(world, "admin")
    csrf = csrf_of(a.get("/admin").text)
    r = a.post("/admin/users", data={"csrf_token": csrf, "name": "cy", "password": "cy-pass-123"},
               follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"].startswith("/admin?note=")
    page = a.get(r.headers["location"]).text
    assert "Created &#39;cy&#39;." in page
    r = a.post("/admin/assign", data={"csrf_token": csrf, "kind": "demo", "labelers": "cy"},
               follow_redirects=False)
    # cy is the only training labeler without the demo item alice has: 3 prompts left
    assert r.status_code == 303 and "Assigned 3 new tasks." in a.get(r.headers["location"]).text
    files = {"prompts": ("p.jsonl", json.dumps(make_prompts(1, prefix="r")[0].to_dict()))}
    r = a.post("/admin/import", data={"csrf_token": csrf}, files=files, follow_redirects=False)
    assert r.status_code == 303 and "prompts: 1 new" in a.get(r.headers["location"]).text
    # the note is signed for this session: a forged or borrowed one is not shown
    forged = re.sub(r"note=[^&]+", "note=Send+your+password+to+mallory", r.headers["location"])
    assert "mallory" not in a.get(forged).text
    other, _ = client(world, "admin")
    assert "prompts: 1 new" not in other.get(r.headers["location"]).text


def test_head_and_html_404s(world):
    c, _ = client(world)
    r = c.head("/login")
    assert r.status_code == 200 and r.content == b"" and has_security_headers(r)
    assert c.head("/", follow_redirects=False).status_code == 303
    assert c.get("/tasks/abc", follow_redirects=False).status_code == 303  # log in first
    c, _ = client(world, "alice")
    r = c.get("/tasks/abc")
    assert r.status_code == 404 and r.headers["content-type"].startswith("text/html")
    assert "<h1>404</h1>" in r.text


def test_admin_reads_individual_labels(world):
    eng = world.state.engine
    _, alice = client(world, "alice")
    _, bob = client(world, "bob")
    ta, tb = task_of(world, "alice", "rank"), task_of(world, "bob", "rank")
    assert alice.post(ta.id, "rank", good_rank_form()).status_code == 303
    assert bob.post(tb.id, "skip", {"reason": ["prompt is unclear"]}).status_code == 303
    demo = task_of(world, "alice", "demo")
    assert alice.post(demo.id, "demo", {"response": ["It is 0."]}).status_code == 303
    a, _ = client(world, "admin")
    page = a.get("/admin/labels").text
    assert "3 labels" in page
    assert all(f'id="label-' in page and f'data-task="{t}"' in page
               for t in (ta.id, tb.id, demo.id))
    # alice's ranking in the letters she saw: 2 first, 0 = 3, then 1
    L = store.letters(ta.id, 4)
    page = a.get("/admin/labels", params={"labeler": "alice"}).text
    assert "2 labels" in page and 'data-labeler="bob"' not in page
    expected = f"{L[2]} &gt; {' = '.join(sorted([L[0], L[3]]))} &gt; {L[1]}"
    assert f'<span class="ranking-text">{expected}</span>' in page
    assert '<span class="likert-val">Likert 7</span>' in page
    assert "Makes up facts (hallucination)" in page and "B is made up" in page
    assert re.search(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC", page)  # when
    assert "It is 0." in page
    page = a.get("/admin/labels", params={"task": str(tb.id)}).text
    assert "1 label<" in page and "prompt is unclear" in page and 'data-labeler="bob"' in page
    assert "No labels match" in a.get("/admin/labels", params={"labeler": "hank"}).text
    rows, total = store.labels(eng, labeler="alice", limit=1)
    assert total == 2 and len(rows) == 1 and rows[0]["task_id"] == demo.id  # newest first
