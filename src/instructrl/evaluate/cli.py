"""`instructrl eval`: the paper's evaluation (section 4) of a run, by every judge that applies.

    instructrl eval --out RUN                       judges and benchmarks -> RUN/eval/results.json
                                                    and RUN/eval/report.html
    instructrl eval --out RUN --to-label DB         blind pairwise comparisons (each policy vs the
                                                    baseline, order randomised) as ranking tasks
                                                    for the labeling app's HELD-OUT pool
    instructrl eval --out RUN --from-label DB       their verdicts, Likert scores and flags ->
                                                    the `people` judge in results.json and report
    instructrl eval --compare RUN_A RUN_B           two runs side by side (HTML + terminal)

Settings: `eval.*` of the run's config.yaml (or --recipe) and --set, e.g.
`--set eval.truthfulqa=../shared/data/truthfulqa.csv --set eval.n_truthfulqa=100`.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from instructrl.cli import add_common, run_config
from instructrl.errors import InputError
from instructrl.rundir import RunDir


def evaluate_run(cfg, run: RunDir, timings: str = "") -> tuple[dict, str]:
    """Evaluate the run's policies (pipeline.json) and write results.json and the report."""
    from instructrl.evaluate.suite import evaluate_run as _evaluate_run
    return _evaluate_run(cfg, run, timings)


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_common(p, out_required=False)
    g = p.add_mutually_exclusive_group()
    g.add_argument("--to-label", metavar="DB",
                   help="put blind comparisons against the baseline into the labeling app's "
                        "database (sqlite:///labels.db or a postgresql:// URL) for its "
                        "held-out labelers")
    g.add_argument("--from-label", metavar="DB",
                   help="read the held-out labelers' verdicts from the labeling app's database "
                        "into results.json and the report (judge: people)")
    g.add_argument("--compare", nargs=2, metavar=("RUN_A", "RUN_B"),
                   help="put two evaluated runs side by side")
    p.add_argument("--overlap", type=int, default=1,
                   help="with --to-label: held-out labelers per comparison (> 1 measures their "
                        "agreement)")


def run(args: argparse.Namespace) -> int:
    from instructrl.distributed import runtime

    rt = runtime()
    if not (args.out or args.compare):
        raise InputError("give --out RUN (or --compare RUN_A RUN_B)", field="--out")
    if args.compare or args.to_label or args.from_label:
        # Under N processes: the main process alone (files, a few samples, the labeling
        # app's database); the others wait for it.
        if rt.is_main:
            one_process(args)
        rt.barrier()
        return 0
    rd = RunDir(args.out)
    cfg = run_config(args, require_run_config=True)
    t0 = time.time()
    _, text = evaluate_run(cfg, rd)  # every process shares the work; the main one writes
    if rt.is_main:
        print(f"{text}\neval: {time.time() - t0:.1f}s")
    return 0


def one_process(args: argparse.Namespace) -> None:
    """--compare, --to-label, --from-label."""
    if args.compare:
        from instructrl.evaluate.report import compare_page, compare_text
        a, b = (Path(x) for x in args.compare)
        for r in (a, b):
            if not (r / "eval" / "results.json").exists():
                raise InputError("not evaluated yet: run `instructrl eval --out RUN` first",
                                 path=str(r / "eval" / "results.json"))
        out = Path(args.out) / "eval" / f"compare-{b.name}.html" if args.out else \
            a / "eval" / f"compare-{b.name}.html"
        print(compare_text(a, b))
        print(f"comparison: {compare_page(a, b, out)}")
        return
    rd = RunDir(args.out)
    cfg = run_config(args, require_run_config=True)
    t0 = time.time()
    if args.to_label:
        from instructrl.evaluate.people import to_label
        print(to_label(cfg, rd, args.to_label, overlap=args.overlap))
    else:
        from instructrl.evaluate.people import from_label
        print(from_label(cfg, rd, args.from_label))
    print(f"eval: {time.time() - t0:.1f}s")
