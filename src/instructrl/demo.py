"""`instructrl demo` (what `make demo` runs): the whole pipeline on the sandbox recipe —
SFT, RM, PPO-ptx and PPO, an iterated round — then evaluation by held-out labelers on held-out
users' prompts, a summary table on the terminal and an HTML report.

The summary ends with what the run shows and why: after the win rates, the last RM's accuracy
on held-out labelers next to the inter-labeler agreement (`evaluate.agreement`, also written
into results.json and the report); then the command that reproduces the paper's findings at
the budget they need."""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from instructrl.cli import add_common
from instructrl.config import load_config

DEFAULT_RECIPE = Path(__file__).resolve().parents[2] / "recipes" / "sandbox.yaml"
REPRODUCE = ("The paper's findings at the budget they need: instructrl reproduce "
             "(about an hour on 2 cores)")


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_common(p, out_required=False)
    p.set_defaults(out="runs/demo")


def rm_figures(cfg, run, summary: dict) -> dict | str:
    """`rm_generalisation` of the run's last RM (pipeline.json's "rm"), or why there is none."""
    from instructrl.errors import InputError
    from instructrl.evaluate.agreement import rm_generalisation

    path = run.root / "pipeline.json"
    rm = json.loads(path.read_text()).get("rm") if path.exists() else summary.get("rm")
    if not rm:
        return "the pipeline has no reward model yet"
    try:
        return rm_generalisation(cfg, run, rm)
    except InputError as e:
        return str(e)


def demo_summary(eval_text: str, rm: dict | str, timing: str) -> str:
    """The demo's terminal summary: the evaluation's tables (win rates first), the RM's
    held-out accuracy against the inter-labeler agreement (or why it was not measured),
    the wall times, and last the pointer to the full reproduction."""
    from instructrl.evaluate.agreement import generalisation_line

    line = generalisation_line(rm, "the demo's") if isinstance(rm, dict) else \
        f"reward model: held-out accuracy not measured ({rm})"
    return "\n".join([eval_text, "", line, timing, REPRODUCE])


def run(args: argparse.Namespace) -> int:
    from instructrl.distributed import runtime
    from instructrl.evaluate.cli import evaluate_run
    from instructrl.evaluate.report import write_report
    from instructrl.pipeline import run_pipeline
    from instructrl.rundir import RunDir

    recipe = args.recipe or DEFAULT_RECIPE
    cfg = load_config(recipe, args.overrides)
    t0 = time.time()
    summary = run_pipeline(cfg, args.out)
    t_pipe = time.time() - t0
    run_dir = RunDir(args.out)
    results, text = evaluate_run(cfg, run_dir, summary.get("timings", ""))
    if not runtime().is_main:  # one process writes and speaks
        return 0
    rm = rm_figures(cfg, run_dir, summary)
    if isinstance(rm, dict):  # into results.json and the report's summary as well
        results["rm_generalisation"] = rm
        write_report(run_dir, results, summary.get("timings", ""))
    timing = (f"demo: pipeline {t_pipe:.0f}s, evaluation {time.time() - t0 - t_pipe:.0f}s, "
              f"total {time.time() - t0:.0f}s")
    print()
    print(demo_summary(text, rm, timing))
    return 0
