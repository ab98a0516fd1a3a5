"""The pipeline on a real model (recipes/smollm2-hh.yaml): what each stage costs and what it does.

    python bench/real_model.py [--recipe recipes/smollm2-hh.yaml] [--work runs/bench-real]
                               [--lora both|on|off] [--set KEY=VALUE ...]

Runs data import -> SFT -> RM -> SFT selection -> PPO-ptx -> PPO, each stage as its own
process (so its peak resident memory is its own), once with the recipe's LoRA and once with
every weight trained (`lora.r=0`; that run is cut to a smaller budget by `--full-set`, so
compare its seconds per step and its memory, not its wall time. Measured: about the same
seconds per step as LoRA on a CPU, 1.5x PPO's memory). Stages found done in the work directory are reused, so a killed
bench resumes. Then it prints, per run:

- each stage's wall time, steps, seconds per step and peak resident memory;
- the RM's pairwise accuracy on held-out HH pairs: the valid split (prompts the RM never
  trained on) and the test split (prompts no stage saw); orientation: 0.65-0.73 for
  billion-parameter RMs on HH, ~0.5 for a tiny random model (../shared/data/README.md);
- PPO-ptx's RM score and KL per iteration;
- responses of the base model, SFT and PPO-ptx to a few test prompts, with their RM scores.

It prints figures and asserts nothing. Needs SmolLM2 (`make smollm2`) and ../shared/data.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
WRAP = ("import resource, sys; from instructrl.cli import main; rc = main(sys.argv[1:]); "
        "u = resource.getrusage(resource.RUSAGE_SELF); "
        "print('__MAXRSS_KB__', u.ru_maxrss, u.ru_utime + u.ru_stime, flush=True); "
        "sys.exit(rc)")
FULL_SET = ["sft.epochs=1", "ppo.episodes=16", "sources.preferences=[{path: "
            "../shared/data/hh-rlhf-harmless-base-test.jsonl.gz, format: hh, limit: 120}]"]


def stage(name: str, args: list[str], out: Path) -> dict:
    """Run one `instructrl` command in its own process; wall time and peak RSS."""
    t0 = time.time()
    proc = subprocess.run([sys.executable, "-c", WRAP, *args], cwd=ROOT, text=True,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    wall = time.time() - t0
    marks = [line.split() for line in proc.stdout.splitlines()
             if line.startswith("__MAXRSS_KB__")]
    rss = [int(m[1]) for m in marks]
    cpu = [float(m[2]) for m in marks]
    log = out / "bench-logs" / f"{name}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    log.write_text(proc.stdout)
    if proc.returncode != 0:
        sys.exit(f"{name} failed (exit {proc.returncode}); its output: {log}\n"
                 + "\n".join(proc.stdout.splitlines()[-15:]))
    # CPU seconds beside wall time: on a shared machine wall time grows with others' load.
    return {"stage": name, "wall_s": wall, "cpu_s": cpu[0] if cpu else None,
            "peak_rss_gib": rss[0] / 2**20 if rss else None}


def steps(out: Path, name: str) -> int | None:
    path = out / name / "metrics.jsonl"
    if not path.exists():
        return None
    rows = [json.loads(x) for x in path.read_text().splitlines() if x.strip()]
    key = "iteration" if name.startswith("ppo") else "step"
    return max((r.get(key, 0) for r in rows), default=None)


def run_variant(label: str, recipe: str, out: Path, overrides: list[str]) -> list[dict]:
    sets = [a for o in overrides for a in ("--set", o)]
    common = ["--out", str(out), "--recipe", recipe, *sets]
    def selected_by_rm() -> bool:
        sel = out / "sft" / "selection.json"
        return sel.exists() and "rm" in json.loads(sel.read_text())

    plan = [("data import", ["data", "import", *common],
             (out / "data" / "prompts.jsonl").exists),
            ("sft", ["sft", *common], (out / "sft" / "done.json").exists),
            ("rm", ["rm", *common], (out / "rm" / "done.json").exists),
            ("sft select", ["sft", "select", *common, "--rm", str(out / "rm")], selected_by_rm),
            ("ppo-ptx", ["ppo", *common], (out / "ppo-ptx" / "done.json").exists),
            ("ppo", ["ppo", *common, "--set", "ppo.ptx_coef=0"],
             (out / "ppo" / "done.json").exists)]
    rows = []
    for name, args, done in plan:
        if done():
            print(f"[{label}] {name}: done already, reused", flush=True)
            rows.append({"stage": name, "wall_s": None, "cpu_s": None, "peak_rss_gib": None})
            continue
        print(f"[{label}] {name} ...", flush=True)
        row = {**stage(f"{label}-{name.replace(' ', '-')}", args, out), "stage": name}
        print(f"[{label}] {name}: {row['wall_s']:.0f} s, peak {row['peak_rss_gib']:.2f} GiB",
              flush=True)
        rows.append(row)
    for row in rows:
        row["steps"] = steps(out, row["stage"]) if row["stage"] in ("sft", "rm", "ppo-ptx",
                                                                     "ppo") else None
    return rows


def heldout_accuracy(out: Path, recipe: str, overrides: list[str]) -> dict:
    """The RM's pairwise accuracy on the test split's HH pairs (prompts no stage trained on)."""
    from instructrl.config import load_config
    from instructrl.modeling import ScalarHeadModel, load_tokenizer
    from instructrl.rundir import RunDir, join_prompts
    from instructrl.stages.reward import pairwise_accuracy, ranking_elements

    cfg = load_config(recipe, overrides)
    run = RunDir(out)
    pairs = [(p, r) for p, r in join_prompts(run.rankings(), run.prompts_by_id(), "rankings")
             if p.split == "test"]
    tok = load_tokenizer(out / "rm", cfg.model)
    rm = ScalarHeadModel.from_pretrained(out / "rm", model_cfg=cfg.model).eval()
    acc = pairwise_accuracy(rm, ranking_elements(pairs, tok, cfg.rm), tok.pad_token_id, 8)
    valid = json.loads((out / "rm" / "eval.json").read_text())["valid"].get("all", {})
    return {"valid": valid, "test": acc.get("all", {})}


def samples(out: Path, recipe: str, overrides: list[str], n: int = 4) -> list[dict]:
    """Responses of base, SFT and PPO-ptx to `n` test prompts (temperature 1, one seed)."""
    from instructrl.config import load_config
    from instructrl.generation import sample_texts, score_texts
    from instructrl.modeling import ScalarHeadModel, load_causal_lm, load_tokenizer
    from instructrl.rundir import RunDir

    cfg = load_config(recipe, overrides)
    run = RunDir(out)
    prompts = sorted(run.prompts("test"), key=lambda p: p.id)[:n]
    chats = [p.chat for p in prompts]
    rm = ScalarHeadModel.from_pretrained(out / "rm", model_cfg=cfg.model).eval()
    rows = [{"prompt": p.text[-300:]} for p in prompts]
    for name, spec in (("base", cfg.pipeline.base_model), ("sft", out / "sft"),
                       ("ppo-ptx", out / "ppo-ptx")):
        tok = load_tokenizer(spec, cfg.model)
        model = load_causal_lm(spec, model_cfg=cfg.model).eval()
        texts = sample_texts(model, tok, chats, max_prompt_tokens=cfg.ppo.max_prompt_tokens,
                             max_new_tokens=cfg.eval.max_new_tokens, seed=1)
        scores = score_texts(rm, tok, chats, texts, max_prompt_tokens=cfg.rm.max_prompt_tokens,
                             max_response_tokens=cfg.rm.max_response_tokens)
        for row, text, score in zip(rows, texts, scores.tolist()):
            row[name] = {"text": text, "rm": score}
    return rows


def report(label: str, out: Path, rows: list[dict], recipe: str, overrides: list[str]) -> dict:
    print(f"\n== {label}: {out}")
    print(f"load average at the end: {open('/proc/loadavg').read().split()[:3]} "
          f"(2 cores; above 2, wall time is inflated by other work)")
    print(f"{'stage':<12} {'wall s':>8} {'cpu s':>8} {'steps':>6} {'s/step':>7} {'peak GiB':>9}")
    for r in rows:
        wall = "reused" if r["wall_s"] is None else f"{r['wall_s']:.0f}"
        cpu = "" if r.get("cpu_s") is None else f"{r['cpu_s']:.0f}"
        per = (f"{r['wall_s'] / r['steps']:.1f}" if r["wall_s"] and r.get("steps") else "")
        mem = "" if r["peak_rss_gib"] is None else f"{r['peak_rss_gib']:.2f}"
        print(f"{r['stage']:<12} {wall:>8} {cpu:>8} {r.get('steps') or '':>6} {per:>7} {mem:>9}")
    total = sum(r["wall_s"] or 0 for r in rows)
    print(f"{'total':<12} {total:>8.0f}")
    acc = heldout_accuracy(out, recipe, overrides)
    print(f"RM pairwise accuracy: valid split {acc['valid'].get('accuracy', float('nan')):.3f} "
          f"({acc['valid'].get('pairs', 0)} pairs), test split "
          f"{acc['test'].get('accuracy', float('nan')):.3f} ({acc['test'].get('pairs', 0)} "
          f"pairs); orientation: 0.65-0.73 for 1B+ RMs on HH, ~0.5 at random")
    metrics = [json.loads(x) for x in (out / "ppo-ptx" / "metrics.jsonl").read_text().splitlines()
               if x.strip()]
    print("PPO-ptx per iteration: RM score, KL to SFT, ptx loss")
    for m in metrics:
        print(f"  {m['iteration']:>3}  score {m['objective/scores']:+.3f}  "
              f"kl {m['objective/kl']:.4f}  ptx {m.get('loss/ptx', float('nan')):.3f}")
    return {"label": label, "stages": rows, "rm_accuracy": acc, "ppo_ptx": metrics}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--recipe", default="recipes/smollm2-hh.yaml")
    p.add_argument("--work", default="runs/bench-real")
    p.add_argument("--lora", choices=["both", "on", "off"], default="both")
    p.add_argument("--set", dest="overrides", action="append", default=[],
                   help="override a recipe field in every run")
    p.add_argument("--full-set", action="append", default=None,
                   help=f"overrides of the run without LoRA (default: {FULL_SET})")
    p.add_argument("--samples", type=int, default=4, help="test prompts to show responses for")
    args = p.parse_args()
    from transformers.utils import logging as hf_logging
    hf_logging.disable_progress_bar()  # (loading bars between the figures)
    work = ROOT / args.work
    variants = []
    if args.lora in ("both", "on"):
        variants.append(("lora", work / "lora", list(args.overrides)))
    if args.lora in ("both", "off"):
        full = FULL_SET if args.full_set is None else args.full_set
        variants.append(("full", work / "full", [*args.overrides, "lora.r=0", *full]))
    t0 = time.time()
    results = []
    for label, out, overrides in variants:
        rows = run_variant(label, args.recipe, out, overrides)
        results.append(report(label, out, rows, args.recipe, overrides))
    first_label, first_out, first_over = variants[0]
    if args.samples:
        print(f"\nsamples ({first_label} run; test prompts; RM score in brackets)")
        shown = samples(first_out, args.recipe, first_over, args.samples)
        for row in shown:
            print(f"--- prompt: ...{row['prompt'][-200:]!r}")
            for name in ("base", "sft", "ppo-ptx"):
                print(f"  {name:<8} [{row[name]['rm']:+.2f}] {row[name]['text'][:200]!r}")
        results.append({"samples": shown})
    (work / "bench.json").write_text(json.dumps(results, indent=1) + "\n")
    print(f"\nbench total {time.time() - t0:.0f} s (this process's peak "
          f"{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20:.2f} GiB); "
          f"{work / 'bench.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
