"""`instructrl eval` as N data-parallel processes: 2 CPU processes under torchrun write the
results.json one process writes (figures to float rounding, sampled texts identical), and one
report. On a run of a user's own model (TruthfulQA, RealToxicityPrompts, bias, lm-eval on the
main process alone, held-out LM loss, a held-out RM) and on a sandbox run (its labelers, checks,
tax and the run's RM). eval.batch_size=2, so that the benchmarks' batches are shared out (the
preference samples, 64 prompts a batch, are one batch here; test_distributed's collect test
splits those)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from test_distributed import close, launch
from test_eval_run import eval_recipe, real_run, sandbox_run  # noqa: F401  (fixtures)

# Written by each process for itself, or naming the run's own directory.
OWN = {"created", "seconds", "policies"}


def same(one, two, where: str = "results") -> None:
    """Equal JSON, floats to 2e-4 relative."""
    if isinstance(one, dict):
        assert isinstance(two, dict) and one.keys() == two.keys(), where
        for k in one:
            if not (where == "results" and k in OWN):
                same(one[k], two[k], f"{where}.{k}")
    elif isinstance(one, list):
        assert isinstance(two, list) and len(one) == len(two), where
        for i, (a, b) in enumerate(zip(one, two)):
            same(a, b, f"{where}[{i}]")
    elif isinstance(one, float) and not isinstance(two, bool):
        assert isinstance(two, (int, float)) and (one != one and two != two or close(one, two)), \
            (where, one, two)
    else:
        assert one == two, (where, one, two)


def eval_once_and_twice(run: Path, args: list[str]) -> tuple[dict, dict]:
    """results.json of `eval` on a copy of `run` under 1 process and under 2."""
    out = {}
    for n in (1, 2):
        copy = run.parent / f"n{n}" / run.name  # same run name in results.json
        shutil.copytree(run, copy)
        log = launch(n, ["eval", "--out", str(copy), *args])
        assert log.count("report: ") == 1, log[-3000:]  # one process printed, one wrote
        assert sorted(p.name for p in (copy / "eval").iterdir()) == [
            "plots", "report.html", "results.json"]
        out[n] = json.loads((copy / "eval" / "results.json").read_text())
    return out[1], out[2]


def test_eval_under_two_processes_writes_what_one_writes(real_run, tiny_rm_dir,  # noqa: F811
                                                         tmp_path):
    recipe = eval_recipe(tmp_path, heldout_rm=json.dumps(str(tiny_rm_dir)), batch_size="2",
                         policies="[sft, ppo-ptx]")
    one, two = eval_once_and_twice(real_run, ["--recipe", str(recipe)])
    assert {j["id"] for j in two["judges"]["ran"]} == {
        "heldout-rm", "truthfulqa-mc", "truthfulqa-auto", "toxicity-alt-profanity-check",
        "bias-likelihood", "lm-eval", "heldout-lm-loss"}
    same(one, two)
    # Sampled texts, word for word (compared above too): preference samples, TruthfulQA's
    # greedy answers, the most toxic RTP continuation of each prompt.
    assert two["examples"] and all(e["sft"] is not None for e in two["examples"])
    assert two["truthfulqa"]["policies"]["ppo-ptx"]["examples"][0]["qa"] == \
        one["truthfulqa"]["policies"]["ppo-ptx"]["examples"][0]["qa"]
    assert two["tax"]["lm_eval"]["policies"]["sft"]["tiny_qa"]["acc"]["n"] == 8


def test_sandbox_eval_under_two_processes_writes_what_one_writes(sandbox_run,  # noqa: F811
                                                                 tiny_rm_dir):
    run, recipe = sandbox_run
    summary = json.loads((run / "pipeline.json").read_text())
    (run / "pipeline.json").write_text(json.dumps({**summary, "rm": str(tiny_rm_dir)}))
    # 40 tax items: the sandbox's public tasks in two batches (of 32).
    one, two = eval_once_and_twice(run, ["--recipe", str(recipe), "--set", "eval.n_tax=40",
                                         "--set", "eval.policies=[sft]"])
    assert {j["id"] for j in two["judges"]["ran"]} >= {"sandbox-labelers", "sandbox-checks"}
    assert "run_rm" in two["sandbox"] and "sandbox_public_tasks" in two["tax"]
    same(one, two)
