"""The RM's accuracy on held-out labelers vs inter-labeler agreement (evaluate/agreement.py)
and the demo's summary that reports it: hand counts on rankings written by hand, in the
sandbox labelers' names, of sandbox prompts and responses (no model, no pipeline)."""

from __future__ import annotations

import json
import math
from dataclasses import replace
from pathlib import Path

import pytest

from instructrl.config import load_config
from instructrl.data.jsonl import write_records
from instructrl.data.records import Ranking, Response
from instructrl.errors import InputError
from instructrl.evaluate.agreement import generalisation_line, labeler_agreement, \
    rm_generalisation
from instructrl.rundir import RunDir
from instructrl.sandbox.generate import Sandbox
from instructrl.sandbox.tasks import write_prompts
from instructrl.sandbox.variants import mixed_responses
from instructrl.sandbox.world import rng_for

# (training labeler's ranking, held-out labeler's ranking) of the same 4 responses, and the
# pairs both order strictly / on which they agree, counted by hand.
REVERSED = ([[0], [1], [2], [3]], [[3], [2], [1], [0]])  # 6 pairs, 0 agree
SAME = ([[0], [1], [2], [3]], [[0], [1], [2], [3]])  # 6 pairs, 6 agree
# The tie (0, 1) drops a pair; of the other 5 they disagree on (2, 3) only.
TIED = ([[0, 1], [2], [3]], [[1], [0], [3], [2]])  # 5 pairs, 4 agree


def make_run(root: Path, items: list[tuple], *, heldout: bool = True,
             rm_eval: dict | None = None, rm_stage: str = "rm"):
    """A sandbox run directory: prompts, and for each item a training labeler's ranking and
    (with `heldout`) a held-out labeler's ranking of the same 4 responses; RM eval.json."""
    cfg = load_config(None, ["sandbox.n_labelers=3", "sandbox.n_heldout_labelers=2"])
    sb = Sandbox(cfg.sandbox)
    prompts = [replace(p, split="valid") for p in write_prompts(sb.world, 40, 8, seed=0)
               if not p.meta.get("unclear")][:len(items)]
    train, held = sb.train_labelers[0].id, sb.heldout_labelers[0].id
    rankings = []
    for i, (p, (r_train, r_held)) in enumerate(zip(prompts, items)):
        rs = [Response(t, "sft") for t in mixed_responses(sb.world, p, 4, rng_for("t", i))]
        rankings.append(Ranking(p.id, train, rs, r_train))
        if heldout:
            rankings.append(Ranking(p.id, held, rs, r_held))
    run = RunDir(root)
    write_records(run.data / "prompts.jsonl", prompts)
    write_records(run.data / "rankings.jsonl", rankings)
    ev = rm_eval if rm_eval is not None else \
        {"train_rankings": 10, "valid": {}, "heldout_labelers": {
            "all": {"accuracy": 0.75, "pairs": 400}}}
    (run.stage(rm_stage)).mkdir(parents=True)
    (run.stage(rm_stage) / "eval.json").write_text(json.dumps(ev))
    return cfg, run


def test_reversed_rankings_agree_on_no_pair(tmp_path):
    cfg, run = make_run(tmp_path, [REVERSED])
    a = labeler_agreement(cfg, run)
    assert a["heldout_vs_train"] == (0.0, 6)
    assert a["heldout_items"] == 1


def test_agreement_counts_pairs_both_rank_strictly(tmp_path):
    cfg, run = make_run(tmp_path, [REVERSED, SAME, TIED])
    a = labeler_agreement(cfg, run)
    assert a["heldout_vs_train"] == (pytest.approx(10 / 17), 17)
    assert a["heldout_items"] == 3
    # The second training labeler's rankings and the held-out labeler's noise-free utility
    # are the sandbox's; each item has at most 6 strict pairs.
    for key in ("train_vs_train", "heldout_vs_own_utility"):
        r, n = a[key]
        assert 0 < n <= 18 and 0.0 <= r <= 1.0, key


def test_rm_generalisation_reads_the_named_rm_and_counts_the_gap(tmp_path):
    cfg, run = make_run(tmp_path, [REVERSED, SAME, TIED], rm_stage="rm-r1")
    g = rm_generalisation(cfg, run, "rm-r1")
    assert g["rm"] == "rm-r1"
    assert g["rm_heldout_accuracy"] == 0.75 and g["rm_heldout_pairs"] == 400
    assert g["agreement"] == pytest.approx(10 / 17) and g["agreement_pairs"] == 17
    assert g["gap_points"] == pytest.approx(100 * (10 / 17 - 0.75))
    assert g["train_vs_train"] == labeler_agreement(cfg, run)["train_vs_train"][0]
    # An eval.json without per-ranking counts: 300 of 400 pairs right, pairs as draws:
    # p +- 1.96 * sample sd / sqrt(n), sample sd over n - 1.
    half = 1.96 * math.sqrt(0.75 * 0.25 * 400 / 399) / math.sqrt(400)
    assert g["ci"] == [pytest.approx(0.75 - half), pytest.approx(0.75 + half)]
    assert g["ci_draws"] == "pairs"
    with pytest.raises(InputError, match="eval.json"):
        rm_generalisation(cfg, run)  # RUN/rm does not exist


def test_rm_interval_takes_rankings_as_draws(tmp_path):
    # 3 rankings of 6 pairs: all right, all right, none right (12 of 18). By hand: p = 2/3,
    # cluster residuals h - p n = 2, 2, -4; variance 3/2 * 24 / 18^2 = 1/9, sd 1/3.
    per_ranking = [[6, 6], [6, 6], [0, 6]]
    cfg, run = make_run(tmp_path, [SAME], rm_eval={"heldout_labelers": {"all": {
        "accuracy": 12 / 18, "pairs": 18, "rankings": per_ranking}}})
    g = rm_generalisation(cfg, run)
    assert g["ci_draws"] == "rankings"
    assert g["ci"] == [pytest.approx(2 / 3 - 1.96 / 3), pytest.approx(2 / 3 + 1.96 / 3)]
    # far wider than the same 18 pairs taken as independent draws
    assert g["ci"][1] - g["ci"][0] > 2 * 2 * 1.96 * math.sqrt(2 / 9 * 18 / 17 / 18)


def test_a_run_without_heldout_rankings_is_refused(tmp_path):
    # As reward.py writes it when no held-out ranking exists: an empty table.
    cfg, run = make_run(tmp_path / "a", [SAME], heldout=False,
                        rm_eval={"train_rankings": 1, "valid": {}, "heldout_labelers": {}})
    with pytest.raises(InputError, match=r"rm/eval\.json.*held-out labelers' rankings"):
        rm_generalisation(cfg, run)
    # The RM was evaluated on held-out rankings, but none is of responses a training labeler
    # ranked: no agreement to compare with.
    cfg, run = make_run(tmp_path / "b", [SAME], heldout=False)
    with pytest.raises(InputError, match=r"rankings\.jsonl.*held-out and a training"):
        rm_generalisation(cfg, run)


def figures(acc: float, agreement: float) -> dict:
    return {"rm": "rm-r1", "rm_heldout_accuracy": acc, "rm_heldout_pairs": 674,
            "agreement": agreement, "agreement_pairs": 629, "train_vs_train": 0.7,
            "gap_points": 100 * (agreement - acc), "ci": [acc - 0.03, acc + 0.03]}


def test_generalisation_line_says_what_the_gap_means():
    wide = generalisation_line(figures(0.551, 0.702), "the demo's")
    assert "55.1 % on held-out labelers" in wide and "70.2 % inter-labeler agreement" in wide
    assert "gap 15.1 points" in wide and "the demo's scale the RM, not PPO, limits" in wide
    near = generalisation_line(figures(0.68, 0.70))
    assert "gap 2.0 points, within 5" in near and "not PPO" not in near
    above = generalisation_line(figures(0.80, 0.70))
    assert "10.0 points above" in above and "not PPO" not in above


def test_demo_summary_has_the_rm_line_after_the_tables_and_ends_with_reproduce(tmp_path):
    from instructrl.demo import REPRODUCE, demo_summary, rm_figures
    from instructrl.evaluate.report import rm_generalisation_html

    text = demo_summary("win rates table\nreport: x.html", figures(0.551, 0.702),
                        "demo: pipeline 1s, evaluation 1s, total 2s")
    lines = text.splitlines()
    assert lines[0] == "win rates table"
    rm_line = next(i for i, s in enumerate(lines) if s.startswith("reward model rm-r1: 55.1 %"))
    assert rm_line > 1 and "gap 15.1 points" in lines[rm_line]
    assert lines[-1] == REPRODUCE == ("The paper's findings at the budget they need: "
                                      "instructrl reproduce (about an hour on 2 cores)")
    why = demo_summary("t", "no reward model", "demo: ...").splitlines()
    assert "not measured (no reward model)" in why[-3] and why[-1] == REPRODUCE
    # The demo measures the RM pipeline.json names (the last round's), and the report's
    # summary section shows the same sentence.
    cfg, run = make_run(tmp_path, [REVERSED, SAME, TIED], rm_stage="rm-r1")
    (run.root / "pipeline.json").write_text(json.dumps({"rm": "rm-r1", "policies": {}}))
    g = rm_figures(cfg, run, {})
    assert g["rm"] == "rm-r1" and g["agreement_pairs"] == 17
    assert "reward model rm-r1: 75.0 %" in rm_generalisation_html({"rm_generalisation": g})
    assert rm_generalisation_html({}) == ""
    (run.root / "pipeline.json").write_text(json.dumps({"rm": "rm", "policies": {}}))
    assert "eval.json" in rm_figures(cfg, run, {})
