"""Labeling app through the ASGI test client: auth, authorization, CSRF, submissions
(idempotent, malformed -> 4xx and nothing changes), import, assignment, progress, agreement,
export in the project's record format, and the CLI."""

from __future__ import annotations

import io
import json
import logging
import random
import shutil

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select

from instructrl.cli import main as cli_main
from instructrl.data.jsonl import read_records, write_records
from instructrl.data.records import Demonstration, Labeler, Ranking, Response
from instructrl.errors import InputError
from instructrl.label import security, store
from instructrl.label.app import create_app
from instructrl.label.db import read, write
from instructrl.label.models import AuthSession, Label, ResponseSet, Task, User
from instructrl.label.testing import (LabelerClient, csrf_of, make_prompts, make_samples,
                                      random_ranking)

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
    for path in ("/admin", "/admin/export/train/rankings.jsonl"):
        assert c.get(path).status_code == 403
    for path in ("/admin/users", "/admin/assign"):
        r = c.post(path, data={"csrf_token": lc.csrf, "name": "mallory", "password": "12345678",
                               "kind": "rank"})
        assert r.status_code == 403
    assert snapshot(world) == before
    assert "mallory" not in {u["name"] for u in store.users(world.state.engine)}
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
    assert "<td>4</td></tr>" in page.replace("\n", "") and "built-in" not in page

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
