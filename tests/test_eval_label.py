"""The comparison round trip with the labeling app, end to end: `instructrl eval --to-label DB`
puts blind pairwise comparisons (each policy vs SFT, order randomised, policy hidden) as
ranking tasks for the HELD-OUT pool only; held-out labelers judge them through the app's store
(as its web form does); `instructrl eval --from-label DB` turns their verdicts, Likert scores and
flags into the `people` judge's win rates. A training labeler's judgments never count."""

from __future__ import annotations

import json
from collections import Counter

from test_eval_run import eval_recipe, real_run  # noqa: F401  (fixtures shared with that file)

from instructrl.cli import main as cli_main
from instructrl.label import store
from instructrl.label.db import make_engine


def judge_all(engine, name: str, password: str, prefer: str, seen: Counter) -> int:
    """`name` ranks every pending task of theirs the way the web form submits it: the response
    of policy `prefer` first, else SFT's (a person tells them apart by text; the test looks
    the policy up in the database, which the page never shows), a tie in SFT's comparison
    with its own second sample."""
    token, _ = store.login(engine, name, password)
    user = store.session_user(engine, token)
    n = 0
    for item in store.queue(engine, user)["pending"]:
        view = store.task_view(engine, user, item["id"])
        assert all(set(r) == {"idx", "letter", "text"} for r in view["responses"])  # blind
        seen[tuple(r["idx"] for r in view["responses"])] += 1
        pols = policies_of(engine, item["id"])
        if pols[0].startswith("eval:sft") and pols[1].startswith("eval:sft"):
            groups, likert = [[0, 1]], [4, 4]
        else:
            want = f"eval:{prefer}" if f"eval:{prefer}" in pols else "eval:sft"
            win = pols.index(want)
            groups, likert = [[win], [1 - win]], [6 if win == 0 else 2, 2 if win == 0 else 6]
        form = {"ranking": [json.dumps(groups)], "likert_0": [str(likert[0])],
                "likert_1": [str(likert[1])],
                "flags_0": ["hallucination"] if pols[0] == "eval:sft" else [], "flags_1": []}
        assert store.submit(engine, user, item["id"], "rank", form) == "created"
        n += 1
    return n


def policies_of(engine, task_id: int) -> list[str]:
    from sqlalchemy import select

    from instructrl.label.db import read
    from instructrl.label.models import Task

    with read(engine) as s:
        task = s.scalar(select(Task).where(Task.id == task_id))
        return [r.policy for r in task.response_set.responses]


def test_to_label_and_from_label_round_trip(real_run, tmp_path, capsys):  # noqa: F811
    db = f"sqlite:///{tmp_path}/labels.db"
    engine = make_engine(db)
    store.create_user(engine, "hana", "hana-pass-1", heldout=True)
    store.create_user(engine, "ivo", "ivo-pass-12", heldout=True)
    store.create_user(engine, "tom", "tom-pass-123")  # a training labeler
    recipe = eval_recipe(tmp_path, n_prompts="5")
    args = ["eval", "--out", str(real_run), "--recipe", str(recipe)]

    # Before anyone judged: --from-label says so.
    assert cli_main(args + ["--from-label", db]) == 2
    assert "comparisons were put to people" in capsys.readouterr().err
    assert cli_main(args + ["--to-label", db, "--overlap", "2"]) == 0
    out = capsys.readouterr().out
    assert "ranking tasks for the held-out labelers hana, ivo" in out
    sets = [json.loads(x) for x in
            (real_run / "eval" / "label" / "samples.jsonl").read_text().splitlines()]
    # 3 policies (base, sft, ppo-ptx) x 5 prompts, each vs SFT (SFT vs its second sample).
    assert len(sets) == 15
    assert Counter(frozenset(r["policy"] for r in s["responses"]) for s in sets) == {
        frozenset({"eval:base", "eval:sft"}): 5, frozenset({"eval:ppo-ptx", "eval:sft"}): 5,
        frozenset({"eval:sft", "eval:sft#2"}): 5}
    # Order randomised: the baseline is sometimes first, sometimes second.
    firsts = Counter(s["responses"][0]["policy"] == "eval:sft" for s in sets
                     if "eval:ppo-ptx" in {r["policy"] for r in s["responses"]})
    assert set(firsts) == {True, False}
    # Held-out pool only, every comparison to both held-out labelers, none to tom.
    prog = {(r["labeler"], r["kind"]): r for r in store.progress(engine)}
    assert prog[("hana", "rank")]["assigned"] == prog[("ivo", "rank")]["assigned"] == 15
    assert ("tom", "rank") not in prog
    # Running it again adds nothing (the app's import and assignment are idempotent).
    assert cli_main(args + ["--to-label", db, "--overlap", "2"]) == 0
    assert "0 new ranking tasks" in capsys.readouterr().out

    # A training labeler who somehow got the same comparisons: never counted.
    store.assign(engine, "rank", ["tom"], split="test")
    seen: Counter = Counter()
    judge_all(engine, "tom", "tom-pass-123", "sft", seen)
    assert judge_all(engine, "hana", "hana-pass-1", "ppo-ptx", seen) == 15
    # ivo judges only part of the work: pending tasks are reported, not counted.
    token, _ = store.login(engine, "ivo", "ivo-pass-12")
    ivo = store.session_user(engine, token)
    first = store.queue(engine, ivo)["pending"][0]["id"]
    assert store.submit(engine, ivo, first, "skip", {"reason": ["unclear prompt"]}) == "created"
    assert len(seen) == 2  # the app showed both orders

    assert cli_main(args + ["--from-label", db]) == 0
    out = capsys.readouterr().out
    assert "15 verdicts by 1 held-out labelers (1 skipped, 14 tasks still pending)" in out
    res = json.loads((real_run / "eval" / "results.json").read_text())
    people = res["preference"]["people"]
    assert people["judge"]["kind"] == "people" and people["judge"]["labelers"] == ["hana"]
    pol = people["policies"]
    assert pol["ppo-ptx"]["win_rate"]["mean"] == 1.0 and pol["ppo-ptx"]["win_rate"]["n"] == 5
    assert pol["base"]["win_rate"]["mean"] == 0.0
    assert pol["sft"]["win_rate"] == {**pol["sft"]["win_rate"], "mean": 0.5, "ties": 5}
    assert pol["ppo-ptx"]["likert"]["mean"] == 6.0 and pol["base"]["likert"]["mean"] == 2.0
    # Flags of sft's responses: hallucination whenever it was shown first.
    assert 0 < pol["sft"]["flags"]["hallucination"] < 1
    assert set(pol["ppo-ptx"]["by_category"]) <= {"open_qa", "generation"}
    assert any(j["id"] == "people" for j in res["judges"]["ran"])
    page = (real_run / "eval" / "report.html").read_text()
    assert "win_rate_people" in page and "held-out labelers of the labeling app" in page
    # A later `instructrl eval` (other judges) keeps the people's figures beside its own.
    assert cli_main(args + ["--set", "eval.judges=[bias]"]) == 0
    res = json.loads((real_run / "eval" / "results.json").read_text())
    assert res["preference"]["people"]["policies"]["ppo-ptx"]["win_rate"]["mean"] == 1.0
    assert {j["id"] for j in res["judges"]["ran"]} == {"people", "bias-likelihood"}
    assert not any(s["id"] == "preference" for s in res["judges"]["skipped"])
