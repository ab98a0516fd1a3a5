"""`instructrl demo` (what `make demo` runs): the whole pipeline on the sandbox recipe —
SFT, RM, PPO-ptx and PPO, an iterated round — then evaluation by held-out labelers on held-out
users' prompts, a summary table on the terminal and an HTML report."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from instructrl.cli import add_common
from instructrl.config import load_config

DEFAULT_RECIPE = Path(__file__).resolve().parents[2] / "recipes" / "sandbox.yaml"


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_common(p, out_required=False)
    p.set_defaults(out="runs/demo")


def run(args: argparse.Namespace) -> int:
    from instructrl.evaluate.cli import evaluate_run
    from instructrl.pipeline import run_pipeline
    from instructrl.rundir import RunDir

    recipe = args.recipe or DEFAULT_RECIPE
    cfg = load_config(recipe, args.overrides)
    t0 = time.time()
    summary = run_pipeline(cfg, args.out)
    t_pipe = time.time() - t0
    _, text = evaluate_run(cfg, RunDir(args.out), summary.get("timings", ""))
    print()
    print(text)
    print(f"demo: pipeline {t_pipe:.0f}s, evaluation {time.time() - t0 - t_pipe:.0f}s, "
          f"total {time.time() - t0:.0f}s")
    return 0
