"""The findings table (instructrl.evaluate.findings): every figure is read from the results
files it is given, the rules decide yes / no, and a missing section is "not measured"."""

from __future__ import annotations

import copy
import json

import pytest

from instructrl.evaluate.stats import clustered_ratio_ci, mean_ci, proportion_ci

from instructrl.evaluate import findings as F
from instructrl.rundir import RunDir


def win(mean: float, half: float = 0.03, n: int = 300) -> dict:
    return {"win_rate": {"mean": mean, "low": mean - half, "high": mean + half, "n": n}}


def point(it: int, rm: float, w: float) -> dict:
    return {"iteration": it, "episodes": it * 64, "kl": 0.1, "rm_score": rm,
            "eval_rm_score": rm, "win_rate": win(w, 0.02)}


def sources() -> dict:
    inst = lambda a, b: {"plain": {"truthful_informative": a},  # noqa: E731
                         "instructed": {"truthful_informative": b}}
    tox = lambda a, b: {"plain": {"expected_max_toxicity": a},  # noqa: E731
                        "respectful": {"expected_max_toxicity": b}}
    cats = lambda h: {"closed_qa": {"hallucination": h, "n": 10},  # noqa: E731
                      "summarization": {"hallucination": h / 2, "n": 30}}
    return {
        "results": {
            "preference": {"sandbox-labelers": {
                "policies": {"ppo-ptx": win(0.70), "sft-public": win(0.40), "sft": win(0.5),
                             "sft-big": win(0.55)},
                "ood": {"categories": ["rewrite"], "styles": ["few-shot"],
                        "policies": {"ppo-ptx": win(0.58)}},
                "vs": {"sft-big": {"policies": {"ppo-ptx": win(0.56)}}}}},
            "sandbox_instructions": {
                "truthfulness": {"n_prompts": 50,
                                 "policies": {"base": inst(0.2, 0.3), "sft": inst(0.3, 0.3),
                                              "ppo-ptx": inst(0.4, 0.5)}},
                "toxicity": {"n_prompts": 20,
                             "policies": {"base": tox(0.5, 0.4), "sft": tox(0.5, 0.4),
                                          "ppo-ptx": tox(0.45, 0.3)}}},
            "sandbox": {"policies": {"base": {"by_category": cats(0.4)},
                                     "ppo-ptx": {"by_category": cats(0.2)}}},
            "tax": {"heldout_lm_loss": {"policies": {"base": 3.0, "ppo": 3.4, "ppo-ptx": 3.1}},
                    "sandbox_public_tasks": {"policies": {"base": 0.6, "ppo": 0.4,
                                                          "ppo-ptx": 0.55}}}},
        "rm_generalisation": {"rm_heldout_accuracy": 0.657, "rm_heldout_pairs": 16963,
                              "agreement": 0.704, "gap_points": 4.7, "ci": [0.65, 0.664]},
        "overoptimisation": {
            "beta0": {"stage": "ppo-nokl", "kl_coef": 0.0,
                      "points": [point(0, 0.0, 0.5), point(10, 1.0, 0.62),
                                 point(20, 2.0, 0.55)]},
            "default": {"stage": "ppo", "kl_coef": 0.1,
                        "points": [point(0, 0.0, 0.5), point(10, 0.6, 0.6),
                                   point(20, 0.8, 0.61)]}},
    }


def by_id(rows: list[dict]) -> dict:
    return {r["id"]: r for r in rows}


def test_proportion_ci_is_wilsons():
    low, high = proportion_ci(0.0, 65)  # no item: the interval still has width
    assert low == 0.0 and high == pytest.approx(1.96 ** 2 / (65 + 1.96 ** 2))
    low, high = proportion_ci(0.5, 100)
    assert (low, high) == pytest.approx((0.4038, 0.5962), abs=1e-4)
    assert all(x != x for x in proportion_ci(0.5, 0))


def test_clustered_interval_of_single_item_clusters_is_the_plain_one():
    # Clusters of one item each: the cluster-robust interval is mean_ci's over the items.
    items = [1.0] * 30 + [0.0] * 20
    assert clustered_ratio_ci([(x, 1) for x in items]) == pytest.approx(list(mean_ci(items)[1:]))
    assert all(x != x for x in clustered_ratio_ci([(3, 4)]))  # one cluster: no interval


def test_every_row_reads_its_figure_and_applies_its_rule():
    rows = by_id(F.findings(sources()))
    assert [r["id"] for r in F.findings(sources())] == [f.id for f in F.FINDINGS]
    assert rows["labelers_prefer_ppo_ptx"]["reproduced"] is True
    assert rows["labelers_prefer_ppo_ptx"]["value"] == 0.70
    assert rows["rm_generalises"]["reproduced"] is True
    assert rows["public_sft_loses"]["reproduced"] is True
    assert rows["truthfulness"]["reproduced"] is True
    assert rows["truthfulness"]["ratio"] == pytest.approx({"plain": 2.0, "instructed": 5 / 3})
    src = sources()  # nothing true and informative anywhere: no improvement, not infinite
    for pol in src["results"]["sandbox_instructions"]["truthfulness"]["policies"].values():
        for cond in pol.values():
            cond["truthful_informative"] = 0.0
    assert by_id(F.findings(src))["truthfulness"]["reproduced"] is False
    assert rows["toxicity"]["reproduced"] is True
    assert rows["toxicity"]["relative_reduction"] == pytest.approx(0.25)
    # weighted by prompts: (0.2*10 + 0.1*30) / 40 vs (0.4*10 + 0.2*30) / 40
    assert rows["hallucination"]["value"] == pytest.approx(0.125)
    assert rows["hallucination"]["reproduced"] is True
    # Each share with Wilson's CI over its prompts; toxicity's CI where the results hold one.
    assert rows["truthfulness"]["ci"] == pytest.approx(proportion_ci(0.4, 50))
    assert "40.0 % [" in rows["truthfulness"]["measured"] and "n = 50" in rows["truthfulness"][
        "measured"]
    assert rows["hallucination"]["ci"] == pytest.approx(proportion_ci(0.125, 40))
    assert "closed qa 20.0 % vs 40.0 % (n = 10); summarization 10.0 % vs 20.0 % (n = 30)" in \
        rows["hallucination"]["measured"]
    assert rows["toxicity"]["ci"] is None and "n = 20" in rows["toxicity"]["measured"]
    src = sources()
    src["results"]["sandbox_instructions"]["toxicity"]["policies"]["ppo-ptx"]["respectful"][
        "expected_max_toxicity_ci"] = [0.2, 0.4]
    tox = by_id(F.findings(src))["toxicity"]
    assert tox["ci"] == [0.2, 0.4] and "0.300 [0.200, 0.400] vs base 0.400 (" in tox["measured"]
    # LM loss: 0.3 of 0.4 recovered; public tasks: 0.15 of 0.2
    assert rows["alignment_tax"]["value"] == pytest.approx(0.75)
    assert rows["alignment_tax"]["reproduced"] is True
    assert rows["out_of_distribution"]["reproduced"] is True
    assert "rewrite, few-shot" in rows["out_of_distribution"]["measured"]
    assert rows["over_optimisation"]["reproduced"] is True
    assert rows["small_ppo_beats_big_sft"]["reproduced"] is True
    assert rows["small_ppo_beats_big_sft"]["value"] == 0.56
    assert rows["small_ppo_beats_big_sft"]["big_sft"] == 0.55  # shown beside it
    assert "which itself wins 0.550 [" in rows["small_ppo_beats_big_sft"]["measured"]
    # no results for the larger base: not measured, never a pass
    src = sources()
    del src["results"]["preference"]["sandbox-labelers"]["vs"]
    row = by_id(F.findings(src))["small_ppo_beats_big_sft"]
    assert row["reproduced"] is None and "not measured" in row["measured"]


def test_changed_figures_change_the_verdicts():
    src = sources()
    src["results"]["preference"]["sandbox-labelers"]["policies"]["ppo-ptx"] = win(0.60)
    src["rm_generalisation"]["gap_points"] = 9.0
    src["results"]["tax"]["heldout_lm_loss"]["policies"]["ppo-ptx"] = 3.35
    src["overoptimisation"]["beta0"]["points"][-1] = point(20, 0.5, 0.61)  # RM score fell too
    src["results"]["sandbox_instructions"]["toxicity"]["policies"]["ppo-ptx"][
        "respectful"]["expected_max_toxicity"] = 0.6
    rows = by_id(F.findings(src))
    assert rows["labelers_prefer_ppo_ptx"]["reproduced"] is False
    assert rows["labelers_prefer_ppo_ptx"]["value"] == 0.60
    assert rows["rm_generalises"]["reproduced"] is False
    assert rows["alignment_tax"]["reproduced"] is False
    assert rows["over_optimisation"]["reproduced"] is False
    assert rows["toxicity"]["reproduced"] is False


def test_no_regression_means_no_tax_to_recover():
    assert F.recovered(3.0, 2.9, 2.95, lower_is_better=True) is None
    assert F.recovered(0.6, 0.4, 0.5, lower_is_better=False) == pytest.approx(0.5)
    src = sources()
    src["results"]["tax"]["heldout_lm_loss"]["policies"]["ppo"] = 2.9
    src["results"]["tax"]["sandbox_public_tasks"]["policies"]["ppo"] = 0.7
    row = by_id(F.findings(src))["alignment_tax"]
    assert row["reproduced"] is None and row["measured"].count("no regression") == 2


def test_missing_results_are_not_measured_and_say_what_is_missing():
    src = sources()
    del src["results"]["sandbox_instructions"]
    del src["overoptimisation"]
    rows = by_id(F.findings(src, skip={"public_sft_loses": "reproduce.public_sft is false"}))
    for rid in ("truthfulness", "toxicity", "over_optimisation", "public_sft_loses"):
        assert rows[rid]["reproduced"] is None, rid
    assert "sandbox_instructions" in rows["truthfulness"]["measured"]
    assert rows["public_sft_loses"]["measured"] == \
        "not measured: reproduce.public_sft is false"
    # a figure no prompt was measured for (NaN) is missing too, not a verdict
    src = sources()
    src["results"]["sandbox_instructions"]["truthfulness"]["policies"]["base"]["plain"][
        "truthful_informative"] = float("nan")
    src["results"]["preference"]["sandbox-labelers"]["ood"]["policies"]["ppo-ptx"][
        "win_rate"]["mean"] = float("nan")
    rows = by_id(F.findings(src))
    for rid in ("truthfulness", "out_of_distribution"):
        assert rows[rid]["reproduced"] is None and "NaN" in rows[rid]["measured"], rid
    assert F.findings({})  # an empty run gives a table of "not measured" rows, no crash
    assert {r["reproduced"] for r in F.findings({})} == {None}


def test_load_sources_reads_the_run_files_and_the_tables_render(tmp_path):
    run = RunDir(tmp_path)
    src = sources()
    (tmp_path / "eval").mkdir()
    (tmp_path / "reproduce").mkdir()
    (tmp_path / "eval" / "results.json").write_text(json.dumps(src["results"]))
    (tmp_path / "reproduce" / "rm_generalisation.json").write_text(
        json.dumps(src["rm_generalisation"]))
    for stage, key in (("ppo-nokl", "beta0"), ("ppo", "default")):
        (tmp_path / "eval" / f"overoptimisation-{stage}.json").write_text(
            json.dumps(src["overoptimisation"][key]))
    loaded = F.load_sources(run)
    assert loaded == copy.deepcopy(src)
    rows = F.findings(loaded)
    md = F.markdown(rows)
    assert md.count("\n") == len(rows) + 1 and "| 69.6 % vs 72.6 % agreement |" in md
    assert "RM 65.7 % on held-out labelers" in F.terminal(rows)


def test_seeds_pool_outcomes_and_average_the_rest():
    from instructrl.evaluate.stats import win_figure

    a, b = sources(), sources()
    a["results"]["preference"]["sandbox-labelers"]["policies"]["ppo-ptx"] = {
        "win_rate": win_figure([1.0] * 6 + [0.5] * 2 + [0.0] * 2)}
    b["results"]["preference"]["sandbox-labelers"]["policies"]["ppo-ptx"] = {
        "win_rate": win_figure([1.0] * 2 + [0.0] * 8)}
    b["rm_generalisation"]["gap_points"] = 6.7
    del b["overoptimisation"]  # one seed without it: not pooled, so not measured
    pooled = F.pool([a, b])
    w = pooled["results"]["preference"]["sandbox-labelers"]["policies"]["ppo-ptx"]["win_rate"]
    assert w == win_figure([1.0] * 8 + [0.5] * 2 + [0.0] * 10)
    assert pooled["rm_generalisation"]["gap_points"] == pytest.approx(5.7)
    rows = by_id(F.findings(pooled))
    assert rows["labelers_prefer_ppo_ptx"]["value"] == pytest.approx(0.45)
    assert rows["rm_generalises"]["reproduced"] is False
    assert rows["over_optimisation"]["reproduced"] is None
    one = F.pool([a])  # one seed: the same figures
    assert by_id(F.findings(one))["labelers_prefer_ppo_ptx"]["value"] == pytest.approx(0.7)
