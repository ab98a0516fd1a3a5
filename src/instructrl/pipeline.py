"""`instructrl pipeline`: every stage, chained through one run directory.

    data -> SFT -> collect -> RM -> SFT select -> PPO-ptx and PPO
    then `pipeline.rounds` iterated rounds: collect from SFT and the current PPO-ptx policy on
    new prompts -> rank -> RM retrained on all rankings so far -> PPO(-ptx) continues.

A stage whose output exists (its done.json) is skipped, so a killed pipeline resumes where it
stopped; a stage killed midway resumes from its own checkpoint. `pipeline.json` names the
final model of each kind for evaluation.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from instructrl.cli import add_common
from instructrl.config import RunConfig, config_changes, dump_config, load_config
from instructrl.data.jsonl import atomic_write_text
from instructrl.rundir import RunDir


class Timer:
    """Wall time per stage, printed as it goes, so the demo's budget stays visible."""

    def __init__(self):
        self.rows: list[tuple[str, float, bool]] = []

    def run(self, name: str, done: bool, fn, *args, **kwargs):
        if done:
            print(f"[{name}] done already, skipped")
            self.rows.append((name, 0.0, True))
            return None
        print(f"[{name}] ...", flush=True)
        t0 = time.time()
        out = fn(*args, **kwargs)
        dt = time.time() - t0
        self.rows.append((name, dt, False))
        print(f"[{name}] {dt:.1f}s", flush=True)
        return out

    def summary(self) -> str:
        lines = [f"  {name:<22} {'skipped' if skipped else f'{dt:7.1f}s'}"
                 for name, dt, skipped in self.rows]
        total = sum(dt for _, dt, _ in self.rows)
        return "\n".join(["wall time per stage:"] + lines + [f"  {'total':<22} {total:7.1f}s"])


def prepare_sandbox_data(cfg: RunConfig, run: RunDir, timer: Timer) -> None:
    from instructrl.data.jsonl import read_records, write_records
    from instructrl.data.prompts import prepare
    from instructrl.data.records import Prompt
    from instructrl.sandbox.generate import demonstrate, generate

    timer.run("sandbox data", (run.data / "raw_prompts.jsonl").exists(), generate,
              cfg.sandbox, run.root)

    def _prepare():
        prompts = read_records(run.data / "raw_prompts.jsonl", Prompt.from_dict)
        out, report = prepare(prompts, cfg.data)
        write_records(run.data / "prompts.jsonl", out)
        print("\n".join(report.lines()))

    timer.run("data prepare", (run.data / "prompts.jsonl").exists(), _prepare)
    timer.run("demonstrations", (run.data / "demonstrations.jsonl").exists(), demonstrate,
              cfg.sandbox, run.root)


def base_model(cfg: RunConfig, run: RunDir, timer: Timer) -> Path:
    """The model SFT starts from: the shipped sandbox base model ('sandbox'), a directory, or
    'pretrain': train one from scratch on the sandbox corpus into RUN/base first."""
    from instructrl.modeling import resolve_model_path
    from instructrl.stages import pretrain

    if cfg.pipeline.base_model != "pretrain":
        return resolve_model_path(cfg.pipeline.base_model)
    base = run.stage("base")

    def _train():
        texts, heldout = pretrain.sandbox_corpus(cfg.sandbox, cfg.pretrain.heldout_docs)
        pretrain.main(cfg.pretrain, base, texts, heldout_texts=heldout)

    timer.run("pretrain", (base / "final.json").exists(), _train)
    return base


def write_run_config(run: RunDir, cfg: RunConfig, who: str) -> None:
    """Record `cfg` as the run's config.yaml, first saying on stderr which settings differ
    from the one already there: stages already done are kept as they were made (resuming
    skips them), so a run continued with other settings mixes both."""
    own = run.root / "config.yaml"
    changes = config_changes(load_config(own), cfg) if own.exists() else []
    if changes:
        print(f"{who}: {run.root} was run with other settings: {'; '.join(changes)}. "
              f"Stages already done there are kept as they were made; use a new --out to "
              f"run everything with these settings.", file=sys.stderr)
    atomic_write_text(own, dump_config(cfg))


def run_pipeline(cfg: RunConfig, out: str | Path) -> dict:
    from instructrl.stages import collect, ppo, reward, sft

    run = RunDir(out)
    run.root.mkdir(parents=True, exist_ok=True)
    write_run_config(run, cfg, "pipeline")
    timer = Timer()
    base = base_model(cfg, run, timer)
    if not (run.data / "demonstrations.jsonl").exists():
        # No data of the user's own in the run directory: the sandbox world provides it.
        prepare_sandbox_data(cfg, run, timer)
    timer.run("sft", run.is_done("sft"), sft.train, cfg, run, base)
    sft_dir = run.stage("sft")
    policies0 = {name: (base if name == "base" else run.stage(name))
                 for name in cfg.collect.policies}
    timer.run("collect-0", run.is_done("collect-0"), collect.collect, cfg, run, policies0, 0)
    timer.run("rm", run.is_done("rm"), reward.train, cfg, run, sft_dir)
    if not (sft_dir / "selection.json").exists() or \
            "rm" not in json.loads((sft_dir / "selection.json").read_text()):
        timer.run("sft select", False, sft.select, cfg, run, run.stage("rm"))
    rm_dir = run.stage("rm")
    finals = {"sft": str(sft_dir)}
    for name, coef in (("ppo-ptx", cfg.ppo.ptx_coef), ("ppo", 0.0)):
        timer.run(name, run.is_done(name), ppo.train, cfg, run, init=sft_dir, ref=sft_dir,
                  rm=rm_dir, value=rm_dir, stage=name, ptx_coef=coef)
        finals[name] = str(run.stage(name))
    for rnd in range(1, cfg.pipeline.rounds + 1):
        # Most comparisons come from the SFT and the current PPO policies (section 3.5).
        pols = {"sft": sft_dir, "ppo-ptx": Path(finals["ppo-ptx"])}
        timer.run(f"collect-{rnd}", run.is_done(f"collect-{rnd}"), collect.collect, cfg, run,
                  pols, rnd)
        rm_r = f"rm-r{rnd}"
        # The round's RM: retrained from the SFT model on all rankings so far.
        timer.run(rm_r, run.is_done(rm_r), reward.train, cfg, run, sft_dir, stage=rm_r)
        for name, coef in (("ppo-ptx", cfg.ppo.ptx_coef), ("ppo", 0.0)):
            stage = f"{name}-r{rnd}"
            prev = Path(finals[name])
            timer.run(stage, run.is_done(stage), ppo.train, cfg, run, init=prev, ref=sft_dir,
                      rm=run.stage(rm_r), value=prev / "value", stage=stage, ptx_coef=coef)
            finals[name] = str(run.stage(stage))
        rm_dir = run.stage(rm_r)
    # Paths inside the run are stored relative to it, so the run directory can move.
    summary = {"policies": {k: _rel(run, v) for k, v in finals.items()},
               "rm": _rel(run, rm_dir), "base": str(base), "timings": timer.summary()}
    atomic_write_text(run.root / "pipeline.json", json.dumps(summary, indent=1) + "\n")
    print(timer.summary())
    return summary


def _rel(run: RunDir, path: str | Path) -> str:
    return str(Path(path).resolve().relative_to(run.root.resolve()))


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_common(p)


def run(args: argparse.Namespace) -> int:
    from instructrl.demo import DEFAULT_RECIPE
    cfg = load_config(args.recipe or DEFAULT_RECIPE, args.overrides)
    t0 = time.time()
    summary = run_pipeline(cfg, args.out)
    print(f"pipeline: {time.time() - t0:.1f}s; models: {json.dumps(summary['policies'])}")
    return 0
