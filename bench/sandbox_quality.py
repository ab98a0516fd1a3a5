"""Does the demo work? The whole sandbox demo (pipeline + evaluation) over several seeds.

    python bench/sandbox_quality.py --seeds 3 [--recipe recipes/sandbox.yaml]
                                    [--out runs/bench-quality] [--set KEY=VALUE ...] [--force]

Each seed runs `instructrl demo` in a fresh child process (pipeline.run_pipeline, then
evaluate.cli.evaluate_run) in OUT/seed-N, so that its wall time and peak memory are the
demo's own. The seed overrides sft.seed, rm.seed, ppo.seed, collect.seed, eval.seed and
data.seed; sandbox.seed stays as the recipe has it, because the shipped base model was
pretrained on that world (a new world would need a new base model). So seeds vary the user
split, the samples, the training order and the evaluation samples, not the world.

Printed per seed and pooled, each next to its target (issue 4):
- win rate against SFT by held-out labelers on held-out users' prompts for PPO-ptx and PPO,
  ties half, 95 % normal CI (pooled: one CI from every outcome of every seed);
  target: PPO-ptx >= 0.65 with a CI that excludes 0.5;
- mean RM score and KL at the end of PPO (mean of the final stage's last 5 metrics rows);
- the alignment tax: held-out pretraining-text LM loss and public-task accuracy of SFT,
  PPO, PPO-ptx, and the share of PPO's LM-loss regression that ptx recovers; target >= 0.5;
- wall time and peak memory (ru_maxrss of the child, self + its children) of each demo;
  target <= 10 min and <= 4 GB.
It prints figures and never asserts; the exit status is 1 only when a demo failed to run.
OUT/summary.json holds every figure.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SEEDED = ("sft", "rm", "ppo", "collect", "eval", "data")
TARGET_WIN, TARGET_RECOVER, TARGET_WALL_S, TARGET_MEM_GB = 0.65, 0.5, 600.0, 4.0
LAST_ROWS = 5


def seed_overrides(seed: int) -> list[str]:
    return [f"{section}.seed={seed}" for section in SEEDED]


# --------------------------------------------------------------------------- one demo (child)
def child(args) -> int:
    """One demo in this process; write OUT/bench.json with its wall time and peak memory."""
    from instructrl.config import load_config
    from instructrl.evaluate.cli import evaluate_run
    from instructrl.pipeline import run_pipeline
    from instructrl.rundir import RunDir

    out = Path(args.out)
    resumed = (out / "config.yaml").exists()  # a run that had started before: not fresh
    cfg = load_config(args.recipe, args.overrides)
    t0 = time.time()
    summary = run_pipeline(cfg, out)
    t_pipe = time.time() - t0
    _, text = evaluate_run(cfg, RunDir(out), summary.get("timings", ""))
    wall = time.time() - t0
    print(text)
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    kids = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    info = {"wall_s": wall, "pipeline_s": t_pipe, "eval_s": wall - t_pipe,
            "maxrss_self_kib": own, "maxrss_children_kib": kids,
            "peak_gb": (own + kids) / 2**20, "resumed": resumed,
            "overrides": list(args.overrides), "recipe": str(args.recipe)}
    tmp = out / "bench.json.tmp"
    tmp.write_text(json.dumps(info, indent=1) + "\n")
    os.replace(tmp, out / "bench.json")
    return 0


def run_seed(recipe: Path, out: Path, overrides: list[str], force: bool) -> dict | None:
    """Run (or reuse) one seed's demo in a child process; None when it failed."""
    done = (out / "bench.json").exists() and (out / "eval" / "results.json").exists()
    if force and out.exists():
        shutil.rmtree(out)
        done = False
    if done and json.loads((out / "bench.json").read_text())["overrides"] == overrides:
        print(f"  {out}: finished earlier, reusing its results (--force to rerun)", flush=True)
        return json.loads((out / "bench.json").read_text()) | {"reused": True}
    out.mkdir(parents=True, exist_ok=True)
    log = out / "bench.log"
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", "--recipe", str(recipe),
           "--out", str(out)] + [a for o in overrides for a in ("--set", o)]
    t0 = time.time()
    print(f"  {out}: running the demo (log: {log}) ...", flush=True)
    with log.open("w") as f:
        rc = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT).returncode
    if rc != 0 or not (out / "bench.json").exists():
        tail = "\n".join(log.read_text().splitlines()[-15:])
        print(f"  {out}: FAILED (exit {rc}) after {time.time() - t0:.0f}s; last lines:\n{tail}")
        return None
    info = json.loads((out / "bench.json").read_text())
    print(f"  {out}: {info['wall_s']:.0f}s, peak {info['peak_gb']:.2f} GB", flush=True)
    return info | {"reused": False}


# --------------------------------------------------------------------------- figures
def outcome_counts(win: dict) -> tuple[int, int, int] | None:
    """(wins, ties, losses) behind a win rate {mean, low, high, n} with outcomes 1 / 0.5 / 0.

    results.json stores the mean and the normal CI, not the outcomes; with three possible
    values the mean and the sample variance determine the counts. Returns None unless the
    recovered counts reproduce the stored mean and CI (then the stored figures were not of
    this form and pooling must not pretend)."""
    from instructrl.evaluate.stats import mean_ci

    if {"wins", "ties", "losses"} <= win.keys():  # stored by the evaluation itself
        return win["wins"], win["ties"], win["losses"]
    n, m, lo, hi = win["n"], win["mean"], win["low"], win["high"]
    if n < 2 or any(map(math.isnan, (m, lo, hi))):
        return None
    sd = (hi - lo) / 2 / 1.96 * math.sqrt(n)
    sum_x, sum_x2 = n * m, (n - 1) * sd ** 2 + n * m ** 2
    ties = round(4 * (sum_x - sum_x2))  # sum x - sum x^2 = t/4 (a tie adds 1/2 - 1/4)
    wins = round(sum_x - ties / 2)
    losses = n - wins - ties
    if min(wins, ties, losses) < 0:
        return None
    back = mean_ci([1.0] * wins + [0.5] * ties + [0.0] * losses)
    if not all(math.isclose(a, b, abs_tol=1e-9) for a, b in zip(back, (m, lo, hi))):
        return None
    return wins, ties, losses


def pooled_win(wins: list[dict]) -> dict:
    from instructrl.evaluate.stats import mean_ci

    xs: list[float] = []
    for w in wins:
        c = outcome_counts(w)
        if c is None:
            return {"mean": float("nan"), "low": float("nan"), "high": float("nan"),
                    "n": sum(x["n"] for x in wins), "note": "outcomes not recoverable"}
        xs += [1.0] * c[0] + [0.5] * c[1] + [0.0] * c[2]
    m, lo, hi = mean_ci(xs)
    return {"mean": m, "low": lo, "high": hi, "n": len(xs)}


def final_ppo(out: Path, policy_dir: str) -> dict:
    """Mean RM score and KL over the last rows of the final PPO stage's metrics."""
    from instructrl.stages.common import read_metrics

    path = out / policy_dir  # pipeline.json paths are relative to the run directory
    rows = read_metrics(path / "metrics.jsonl")[-LAST_ROWS:]
    if not rows:
        return {"score": float("nan"), "kl": float("nan"), "stage": path.name}
    return {"score": sum(r["objective/scores"] for r in rows) / len(rows),
            "kl": sum(r["objective/kl"] for r in rows) / len(rows), "stage": path.name,
            "iteration": rows[-1]["iteration"]}


def recovered(sft: float, ppo: float, ptx: float) -> float:
    """Share of PPO's LM-loss regression over SFT that PPO-ptx wins back (1 = all of it);
    NaN when PPO did not regress."""
    return (ppo - ptx) / (ppo - sft) if ppo > sft else float("nan")


def seed_figures(out: Path, info: dict) -> dict:
    from instructrl.evaluate.suite import sandbox_view
    results = sandbox_view(json.loads((out / "eval" / "results.json").read_text()))
    pipe = json.loads((out / "pipeline.json").read_text())
    pol = results["policies"]
    tax = {n: pol[n]["tax"] for n in ("sft", "ppo", "ppo-ptx") if n in pol}
    return {
        "win": {n: pol[n]["win_rate"] for n in ("ppo-ptx", "ppo") if n in pol},
        "end": {n: final_ppo(out, pipe["policies"][n]) for n in ("ppo-ptx", "ppo")
                if n in pipe["policies"]},
        "tax": tax,
        "recovered": recovered(*(tax[n]["heldout_lm_loss"] for n in ("sft", "ppo", "ppo-ptx")))
        if len(tax) == 3 else float("nan"),
        "n_prompts": results["n_prompts"],
        **{k: info[k] for k in ("wall_s", "pipeline_s", "eval_s", "peak_gb", "resumed",
                                "reused")},
    }


def mark(ok: bool | None) -> str:
    return "  n/a" if ok is None else ("   ok" if ok else " MISS")


def fmt_win(w: dict) -> str:
    return f"{w['mean']:.3f} [{w['low']:.3f}, {w['high']:.3f}] n={w['n']}"


def print_block(title: str, f: dict) -> None:
    print(f"\n== {title} ==")
    for name in ("ppo-ptx", "ppo"):
        w = f["win"].get(name)
        if w is None:
            continue
        line = f"  win rate vs SFT, {name:<8} {fmt_win(w):<32}"
        if name == "ppo-ptx":
            ok = None if math.isnan(w["mean"]) else (w["mean"] >= TARGET_WIN and w["low"] > 0.5)
            line += f"target >= {TARGET_WIN} and CI above 0.5 {mark(ok)}"
        print(line)
    for name, e in f["end"].items():
        print(f"  end of PPO, {name:<8} RM score {e['score']:+.3f}  KL {e['kl']:.3f}  "
              f"({e.get('stage', '')}, mean of last {LAST_ROWS} iterations)")
    if f["tax"]:
        print(f"  {'alignment tax':<14} {'held-out LM loss':>17} {'public-task acc':>16}")
        for name, t in f["tax"].items():
            print(f"  {name:<14} {t['heldout_lm_loss']:>17.4f} "
                  f"{t['public_task_accuracy']:>16.3f}")
    r = f["recovered"]
    txt = "n/a (PPO did not regress the LM loss)" if math.isnan(r) else f"{r:.2f}"
    print(f"  ptx recovers {txt} of PPO's LM-loss regression     target >= {TARGET_RECOVER}"
          f"{mark(None if math.isnan(r) else r >= TARGET_RECOVER)}")
    if "wall_s" in f:
        note = (" (reused from an earlier run)" if f.get("reused") else "") + \
               (" (resumed run: not a fresh timing)" if f.get("resumed") else "")
        print(f"  demo wall time {f['wall_s']:.0f}s (pipeline {f['pipeline_s']:.0f}s, eval "
              f"{f['eval_s']:.0f}s)   target <= {TARGET_WALL_S:.0f}s"
              f"{mark(f['wall_s'] <= TARGET_WALL_S)}{note}")
        print(f"  peak memory {f['peak_gb']:.2f} GB (ru_maxrss self + children)   "
              f"target <= {TARGET_MEM_GB:.0f} GB{mark(f['peak_gb'] <= TARGET_MEM_GB)}")


def pooled(per_seed: list[dict]) -> dict:
    def mean(xs):
        xs = [x for x in xs if not math.isnan(x)]
        return sum(xs) / len(xs) if xs else float("nan")

    names = [n for n in ("ppo-ptx", "ppo") if all(n in f["win"] for f in per_seed)]
    tax = {n: {k: mean([f["tax"][n][k] for f in per_seed])
               for k in ("heldout_lm_loss", "public_task_accuracy")}
           for n in ("sft", "ppo", "ppo-ptx") if all(n in f["tax"] for f in per_seed)}
    return {
        "win": {n: pooled_win([f["win"][n] for f in per_seed]) for n in names},
        "end": {n: {"score": mean([f["end"][n]["score"] for f in per_seed]),
                    "kl": mean([f["end"][n]["kl"] for f in per_seed]), "stage": "mean"}
                for n in names if all(n in f["end"] for f in per_seed)},
        "tax": tax,
        "recovered": recovered(*(tax[n]["heldout_lm_loss"] for n in ("sft", "ppo", "ppo-ptx")))
        if len(tax) == 3 else float("nan"),
        "wall_s": max(f["wall_s"] for f in per_seed),
        "pipeline_s": max(f["pipeline_s"] for f in per_seed),
        "eval_s": max(f["eval_s"] for f in per_seed),
        "peak_gb": max(f["peak_gb"] for f in per_seed),
        "resumed": any(f["resumed"] for f in per_seed),
        "reused": any(f["reused"] for f in per_seed),
    }


# --------------------------------------------------------------------------- main
def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seeds", type=int, default=3, help="seeds 0..N-1 (default 3)")
    ap.add_argument("--recipe", default=str(ROOT / "recipes" / "sandbox.yaml"))
    ap.add_argument("--out", default="runs/bench-quality")
    ap.add_argument("--set", dest="overrides", action="append", default=[],
                    metavar="KEY=VALUE", help="extra recipe override (repeatable)")
    ap.add_argument("--force", action="store_true",
                    help="delete earlier runs under OUT instead of reusing them")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        return child(args)

    from instructrl.config import load_config

    recipe, out = Path(args.recipe), Path(args.out)
    cfg = load_config(recipe, args.overrides)  # fail early on a bad recipe
    print(f"sandbox quality benchmark: recipe {recipe}, {args.seeds} seeds, out {out}")
    print(f"  each seed N sets {', '.join(f'{s}.seed' for s in SEEDED)} = N; sandbox.seed "
          f"stays {cfg.sandbox.seed} (the world the base model was pretrained on)")
    per_seed, failed = [], []
    t0 = time.time()
    for seed in range(args.seeds):
        d = out / f"seed-{seed}"
        info = run_seed(recipe, d, args.overrides + seed_overrides(seed), args.force)
        if info is None:
            failed.append(seed)
            continue
        per_seed.append(seed_figures(d, info) | {"seed": seed})
    for f in per_seed:
        print_block(f"seed {f['seed']} ({f['n_prompts']} held-out users' prompts)", f)
    summary = {"recipe": str(recipe), "seeds": list(range(args.seeds)), "failed": failed,
               "per_seed": per_seed}
    if per_seed:
        pool = pooled(per_seed)
        summary["pooled"] = pool
        print_block(f"pooled over {len(per_seed)} seeds (win-rate CI from all outcomes; "
                    f"tax and end-of-PPO figures are means over seeds; wall time and memory "
                    f"are the worst seed)", pool)
    if failed:
        print(f"\nseeds that failed to run: {failed} (see OUT/seed-N/bench.log)")
    print(f"\nbenchmark wall time {time.time() - t0:.0f}s; figures in {out / 'summary.json'}")
    out.mkdir(parents=True, exist_ok=True)
    (out / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
