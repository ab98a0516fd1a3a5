"""`instructrl reproduce` on a tiny configuration: every finding's code path runs (the
pipeline with a held-out category and style, PPO's settings chosen on validation prompts by
the training labelers, PPO without KL and its snapshots, SFT on
public tasks and on a "larger" base, evaluation, the over-optimisation trajectories, the RM
against inter-labeler agreement) and the table is built from the results files; a reproduce
killed in the middle continues where it stopped and ends with the same table.

The tiny models learn nothing: whether a finding is reproduced here means nothing. What is
tested is that every row is measured from the files the steps wrote.
"""

from __future__ import annotations

import html
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from instructrl.config import load_config
from instructrl.errors import InputError
from instructrl.stages.choose import combinations, stage_name, with_settings
from test_pipeline import ENV, RECIPE

RECIPE_EXTRA = """\
data: {heldout_categories: [rewrite], heldout_styles: [few-shot]}
eval: {n_prompts: 24, max_new_tokens: 8, max_prompt_tokens: 200, n_samples: 2, n_tax: 20}
reproduce: {big_base: "{base}", choose: ["ppo.lr=0.001,0.002"], choose_episodes: 0,
            choose_big: ["sft.lr=0.0003,0.001"]}
"""


def reproduce_cmd(out: Path, recipe: Path) -> list[str]:
    return [sys.executable, "-m", "instructrl.cli", "reproduce", "--out", str(out),
            "--recipe", str(recipe)]


@pytest.fixture(scope="module")
def recipe(tiny_model_dir, tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("reproduce") / "recipe.yaml"
    text = RECIPE.replace("rounds: 1", "rounds: 0") + RECIPE_EXTRA
    path.write_text(text.replace("{base}", str(tiny_model_dir)))
    return path


def test_reproduce_measures_every_row_and_resumes_after_a_kill(recipe):
    out = recipe.parent / "run"
    log = recipe.parent / "run.log"
    with log.open("w") as f:
        proc = subprocess.Popen(reproduce_cmd(out, recipe), stdout=f, stderr=subprocess.STDOUT,
                                env=ENV, start_new_session=True)
        # Killed once the over-optimisation PPO has written a checkpoint: the pipeline is
        # done, the rest is not.
        ckpt = out / "ppo-nokl" / "checkpoint" / "state.pt"
        deadline = time.time() + 400
        while not ckpt.exists() and proc.poll() is None and time.time() < deadline:
            time.sleep(0.1)
        assert proc.poll() is None, log.read_text()[-3000:]
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    assert not (out / "reproduce.json").exists()
    p = subprocess.run(reproduce_cmd(out, recipe), stdout=subprocess.PIPE,
                       stderr=subprocess.STDOUT, text=True, env=ENV, timeout=600)
    assert p.returncode == 0, p.stdout[-3000:]
    assert "[reproduce] pipeline: done already" in p.stdout
    assert "ppo-nokl: resuming after iteration" in p.stdout
    report = json.loads((out / "reproduce.json").read_text())
    rows = {r["id"]: r for r in report["rows"]}
    assert len(rows) == 10
    for rid, row in rows.items():  # every row measured from the run's files
        assert not row["measured"].startswith("not measured"), (rid, row["measured"])
        assert "nan" not in row["measured"].lower(), (rid, row["measured"])
        assert row["reproduced"] in (True, False, None), rid
    # the table on the terminal and in reproduce.md is the one in reproduce.json
    md = (out / "reproduce.md").read_text()
    for row in rows.values():
        assert row["measured"] in md and row["paper"] in md
    assert "wall time" in p.stdout and "peak memory" in p.stdout
    page = (out / "reproduce.html").read_text()
    assert "data-plot='overoptimisation'" in page and "data-plot='findings_win_rates'" in page
    assert all(html.escape(r["measured"]) in page for r in rows.values())
    steps = report["wall_seconds"]["steps"]
    assert report["wall_seconds"]["total"] >= steps["pipeline to the RM"] > 0
    assert {"choose PPO settings", "pipeline", "ppo-nokl", "eval", "rm agreement"} <= set(steps)
    # the steps' files the rows were read from
    results = json.loads((out / "eval" / "results.json").read_text())
    assert {"base", "sft", "ppo-ptx", "ppo", "sft-public", "sft-big"} <= set(results["policies"])
    for stage in ("ppo-nokl", "ppo"):
        traj = json.loads((out / "eval" / f"overoptimisation-{stage}.json").read_text())
        snaps = list((out / stage / "snapshots").glob("iter-*"))
        assert len(traj["points"]) == len(snaps) + 1 >= 3
    assert json.loads((out / "ppo-nokl" / "done.json").read_text())["ptx_coef"] == 0.0
    # PPO's settings: chosen among the grid by the training labelers on validation prompts,
    # recorded in the run's config, which the pipeline's PPO stages then ran with
    choice = json.loads((out / "choose" / "choice.json").read_text())
    assert [r["settings"] for r in choice["rows"]] == [["ppo.lr=0.001"], ["ppo.lr=0.002"]]
    assert choice["best"] == max(choice["rows"], key=lambda r: r["win_rate"]["mean"])[
        "settings"]
    assert choice["judged_by"].startswith("the sandbox's training labelers")
    chosen = float(choice["best"][0].split("=")[1])
    assert load_config(out / "config.yaml").ppo.lr == chosen
    for stage in ("choose-lr0.001", "choose-lr0.002"):
        assert (out / stage / "done.json").exists()
    # chosen at the recipe's budget: the chosen candidate is the PPO-ptx stage, not retrained
    best = next(r["stage"] for r in choice["rows"] if r["settings"] == choice["best"])
    assert {r["episodes"] for r in choice["rows"]} == {load_config(recipe).ppo.episodes}
    assert json.loads((out / "ppo-ptx" / "done.json").read_text())["adopted_from"] == best
    assert (out / "ppo-ptx" / "metrics.jsonl").read_text() == \
        (out / best / "metrics.jsonl").read_text()
    assert sorted(p.name for p in (out / "ppo-ptx" / "snapshots").iterdir()) == \
        sorted(p.name for p in (out / best / "snapshots").iterdir()) != []
    # the larger base's SFT: its lr chosen the same way, the chosen candidate (its epoch
    # selected by the RM) is RUN/sft-big, and the recipe's own sft.lr is untouched
    big = json.loads((out / "choose" / "choice-sft-big.json").read_text())
    assert [r["settings"] for r in big["rows"]] == [["sft.lr=0.0003"], ["sft.lr=0.001"]]
    assert big["best"] == max(big["rows"], key=lambda r: r["win_rate"]["mean"])["settings"]
    best = next(r["stage"] for r in big["rows"] if r["settings"] == big["best"])
    assert json.loads((out / "sft-big" / "done.json").read_text())["adopted_from"] == best
    assert (out / "sft-big" / "model.safetensors").read_bytes() == \
        (out / best / "model.safetensors").read_bytes()
    assert "rm" in json.loads((out / "sft-big" / "selection.json").read_text())
    assert load_config(out / "config.yaml").sft.lr == load_config(recipe).sft.lr
    assert "choose sft-big settings" in steps and "sft-big" not in steps
    # held-out category and style never reached a training set
    prompts = [json.loads(line) for line in (out / "data" / "prompts.jsonl").open()]
    ood = {x["id"] for x in prompts if x["split"] == "ood"}
    assert ood and all(x["category"] == "rewrite" or x["style"] == "few-shot"
                       for x in prompts if x["id"] in ood)
    demos = {json.loads(line)["prompt_id"] for line in (out / "data" /
                                                        "demonstrations.jsonl").open()}
    ranked = {json.loads(line)["prompt_id"] for line in (out / "data" /
                                                          "rankings.jsonl").open()}
    assert not ood & (demos | ranked)
    # a rerun of a finished reproduce does nothing but rebuild the table
    again = subprocess.run(reproduce_cmd(out, recipe), stdout=subprocess.PIPE,
                           stderr=subprocess.STDOUT, text=True, env=ENV, timeout=300)
    assert again.returncode == 0 and again.stdout.count("done already") >= 8, again.stdout
    assert [r["measured"] for r in json.loads((out / "reproduce.json").read_text())["rows"]] \
        == [r["measured"] for r in report["rows"]]


def test_adopt_takes_only_a_candidate_trained_at_the_recipes_budget(tmp_path):
    from instructrl.rundir import RunDir
    from instructrl.stages.choose import adopt, at_budget

    cfg = load_config(None, ["ppo.episodes=640"])
    run = RunDir(tmp_path)
    rows = [{"settings": ["ppo.lr=1"], "stage": "choose-lr1", "episodes": 320},
            {"settings": ["ppo.lr=2"], "stage": "choose-lr2", "episodes": 320}]
    for r in rows:
        (run.stage(r["stage"]) / "snapshots" / "iter-00001").mkdir(parents=True)
        (run.stage(r["stage"]) / "checkpoint").mkdir()
        run.mark_done(r["stage"], ptx_coef=1.0)
        (run.stage(r["stage"]) / "metrics.jsonl").write_text(r["stage"])
    choice = {"rows": rows, "best": ["ppo.lr=2"]}
    assert not at_budget(cfg, choice)  # short runs: not the stage
    rows[1]["episodes"] = 640
    assert at_budget(cfg, choice)
    (run.stage("ppo-ptx") / "checkpoint").mkdir(parents=True)  # a killed run of the stage
    (run.root / "ppo-ptx.adopting").mkdir()  # a killed copy
    assert adopt(run, choice, "ppo-ptx")
    assert (run.stage("ppo-ptx") / "metrics.jsonl").read_text() == "choose-lr2"
    assert run.done_info("ppo-ptx")["adopted_from"] == "choose-lr2"
    assert (run.stage("ppo-ptx") / "snapshots" / "iter-00001").is_dir()
    assert not (run.stage("ppo-ptx") / "checkpoint").exists()
    assert not (run.root / "ppo-ptx.adopting").exists()
    assert not adopt(run, choice, "ppo-ptx")  # done already: kept as it is


def test_choose_grid_combinations_names_and_errors():
    grid = combinations(["ppo.lr=1.0e-4,2.0e-4", "ppo.kl_coef=0.02, 0.1"])
    assert grid == [["ppo.lr=1.0e-4", "ppo.kl_coef=0.02"], ["ppo.lr=1.0e-4", "ppo.kl_coef=0.1"],
                    ["ppo.lr=2.0e-4", "ppo.kl_coef=0.02"], ["ppo.lr=2.0e-4", "ppo.kl_coef=0.1"]]
    assert stage_name(grid[1]) == "choose-lr1.0e-4-kl_coef0.1"
    cfg = with_settings(load_config(None), grid[3])
    assert (cfg.ppo.lr, cfg.ppo.kl_coef) == (2.0e-4, 0.1)
    for bad in (["sft.lr=1,2"], ["ppo.lr"]):
        with pytest.raises(InputError, match="expected ppo.KEY=V1,V2"):
            combinations(bad)
    with pytest.raises(InputError, match=r"reproduce.choose_big.*expected sft.KEY"):
        combinations(["ppo.lr=1"], "sft", "reproduce.choose_big")
    assert stage_name(["sft.lr=2.0e-3"], "choose-sft-big-") == "choose-sft-big-lr2.0e-3"
    with pytest.raises(InputError, match="kl_coef"):
        with_settings(load_config(None), ["ppo.kl_coef=-1"])


def test_seeds_run_the_plan_per_seed_and_pool_one_table(recipe):
    lean = recipe.parent / "lean.yaml"  # the plan's other steps are covered above
    lean.write_text(recipe.read_text().split("reproduce:")[0]
                    + "reproduce: {public_sft: false}\n")
    out = recipe.parent / "seeds"
    p = subprocess.run(reproduce_cmd(out, lean) + ["--seeds", "2"], stdout=subprocess.PIPE,
                       stderr=subprocess.STDOUT, text=True, env=ENV, timeout=600)
    assert p.returncode == 0, p.stdout[-3000:]
    for k in (0, 1):
        cfg = load_config(out / f"seed-{k}" / "config.yaml")
        assert (cfg.data.seed, cfg.ppo.seed, cfg.eval.seed) == (k, k, k)
        assert (out / f"seed-{k}" / "eval" / "results.json").exists()
    report = json.loads((out / "reproduce.json").read_text())
    assert report["seeds"] == 2 and len(report["wall_seconds"]["steps"]) == 2
    rows = {r["id"]: r for r in report["rows"]}
    # PPO-ptx's win rate pools both seeds' outcomes
    n = [json.loads((out / f"seed-{k}" / "eval" / "results.json").read_text())["preference"]
         ["sandbox-labelers"]["policies"]["ppo-ptx"]["win_rate"]["n"] for k in (0, 1)]
    assert f"(n = {sum(n)})" in rows["labelers_prefer_ppo_ptx"]["measured"]
    assert rows["public_sft_loses"]["measured"] == \
        "not measured: reproduce.public_sft is false"
    assert "2 seeds pooled" in (out / "reproduce.md").read_text()
