"""`instructrl eval --out RUN`: evaluate the run's final policies (pipeline.json) and write
RUN/eval/results.json and RUN/eval/report.html."""

from __future__ import annotations

import argparse
import json
import time

from instructrl.cli import add_common, run_config
from instructrl.errors import InputError
from instructrl.rundir import RunDir


def evaluate_run(cfg, run: RunDir, timings: str = "") -> tuple[dict, str]:
    from instructrl.evaluate.report import write_report
    from instructrl.evaluate.sandbox_eval import evaluate, summary_table

    path = run.root / "pipeline.json"
    if not path.exists():
        raise InputError("no pipeline.json: run `instructrl pipeline` first", path=str(path))
    summary = json.loads(path.read_text())
    policies = {k: run.root / v for k, v in summary["policies"].items()}
    results = evaluate(cfg, run, policies, run.root / summary["rm"])
    report = write_report(run, results, timings)
    return results, f"{summary_table(results)}\nreport: {report}"


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_common(p)


def run(args: argparse.Namespace) -> int:
    rd = RunDir(args.out)
    cfg = run_config(args, require_run_config=True)
    t0 = time.time()
    _, text = evaluate_run(cfg, rd)
    print(text)
    print(f"eval: {time.time() - t0:.1f}s")
    return 0
