"""`instructrl pipeline`: every stage, chained through one run directory.

    data -> SFT -> collect -> RM -> SFT select -> PPO-ptx and PPO
    then `pipeline.rounds` iterated rounds: collect from SFT and the current PPO-ptx policy on
    new prompts -> rank -> RM retrained on all rankings so far -> PPO(-ptx) continues.

Data: the recipe's `sources` (a user's own prompts, demonstrations, preferences and
pretraining text, imported into RUN/data once), else data already in RUN/data, else the
sandbox world's. Rankings: the sandbox's simulated labelers rank samples of sandbox prompts
at once; anyone else's samples wait for people (the labeling app): the pipeline stops after
writing them and says how to label them, and a rerun continues once their rankings are in
RUN/data/rankings.jsonl. Preferences the user gave (`sources.preferences`) train the first
RM directly, without a collection round.

A stage whose output exists (its done.json) is skipped, so a killed pipeline resumes where it
stopped; a stage killed midway resumes from its own checkpoint. `pipeline.json` names the
final model of each kind for evaluation.

Under N processes (`torchrun`, `accelerate launch`) the training stages and collection share
their work as they do when run alone (instructrl.distributed); the steps that write data or
pick a model (data import, sandbox data, pretraining the sandbox base, SFT selection) run on
the main process while the others wait for it.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from instructrl.cli import add_common
from instructrl.config import RunConfig, load_config
from instructrl.data.jsonl import atomic_write_text
from instructrl.distributed import runtime
from instructrl.rundir import RunDir, write_run_config


class Timer:
    """Wall time per stage, printed as it goes (by the main process), so the demo's budget
    stays visible."""

    def __init__(self):
        self.rows: list[tuple[str, float, bool]] = []
        self.rt = runtime()

    def say(self, msg: str) -> None:
        if self.rt.is_main:
            print(msg, flush=True)

    def run(self, name: str, done: bool, fn, *args, main_only: bool = False, **kwargs):
        """`fn(*args, **kwargs)` unless `done`; `main_only`: on the main process alone, the
        others waiting for it (a step that writes files and has no work to share)."""
        if done:
            self.say(f"[{name}] done already, skipped")
            self.rows.append((name, 0.0, True))
            return None
        self.say(f"[{name}] ...")
        t0 = time.time()
        out = fn(*args, **kwargs) if self.rt.is_main or not main_only else None
        if main_only:
            self.rt.barrier()
        dt = time.time() - t0
        self.rows.append((name, dt, False))
        self.say(f"[{name}] {dt:.1f}s")
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
              cfg.sandbox, run.root, main_only=True)

    def _prepare():
        prompts = read_records(run.data / "raw_prompts.jsonl", Prompt.from_dict)
        out, report = prepare(prompts, cfg.data)
        write_records(run.data / "prompts.jsonl", out)
        print("\n".join(report.lines()))

    timer.run("data prepare", (run.data / "prompts.jsonl").exists(), _prepare, main_only=True)
    timer.run("demonstrations", (run.data / "demonstrations.jsonl").exists(), demonstrate,
              cfg.sandbox, run.root, main_only=True)


def import_user_data(cfg: RunConfig, run: RunDir, timer: Timer) -> None:
    """The recipe's `sources` into RUN/data, once (RUN/data/done.json marks it)."""
    from instructrl.data.sources import import_sources

    def _import():
        print("\n".join(import_sources(cfg, run)))
        run.mark_done("data", sources="recipe")

    timer.run("data import", run.is_done("data"), _import, main_only=True)


def base_model(cfg: RunConfig, run: RunDir, timer: Timer) -> Path:
    """The model SFT starts from: the shipped sandbox base model ('sandbox'), a directory, a
    GGUF file, a hub id, or 'pretrain': train one from scratch on the sandbox corpus into
    RUN/base first."""
    from instructrl.modeling import resolve_model_path
    from instructrl.stages import pretrain

    if cfg.pipeline.base_model != "pretrain":
        return resolve_model_path(cfg.pipeline.base_model,
                                  trust_remote_code=cfg.model.trust_remote_code)
    base = run.stage("base")

    def _train():
        texts, heldout = pretrain.sandbox_corpus(cfg.sandbox, cfg.pretrain.heldout_docs)
        pretrain.main(cfg.pretrain, base, texts, heldout_texts=heldout)

    timer.run("pretrain", (base / "final.json").exists(), _train, main_only=True)
    return base


def run_pipeline(cfg: RunConfig, out: str | Path, *, until: str | None = None) -> dict:
    """Every stage; `until="ppo"`: stop before the first PPO stage (after SFT selection),
    returning {"stopped_before": "ppo"} (`instructrl reproduce` chooses PPO's settings
    there, then calls this again to go on)."""
    from instructrl.stages import collect, ppo, reward, sft

    run = RunDir(out)
    timer = Timer()
    if timer.rt.is_main:
        run.root.mkdir(parents=True, exist_ok=True)
        write_run_config(run, cfg, "pipeline")
    timer.rt.barrier()
    base = base_model(cfg, run, timer)
    if cfg.sources.any():
        import_user_data(cfg, run, timer)
    elif not (run.data / "demonstrations.jsonl").exists():
        # No data of the user's own in the run directory: the sandbox world provides it.
        prepare_sandbox_data(cfg, run, timer)
    label = collect.default_label(run)  # the sandbox's labelers, or people
    timer.run("sft", run.is_done("sft"), sft.train, cfg, run, base)
    sft_dir = run.stage("sft")
    policies0 = {name: (base if name == "base" else run.stage(name))
                 for name in cfg.collect.policies}
    if label == "sandbox" or not run.rankings():
        timer.run("collect-0", run.is_done("collect-0"), collect.collect, cfg, run, policies0,
                  0, label)
        if waiting_for_labels(run, "collect-0"):
            return stop_for_labels(run, timer, "collect-0")
    timer.run("rm", run.is_done("rm"), reward.train, cfg, run, sft_dir)
    if not (sft_dir / "selection.json").exists() or \
            "rm" not in json.loads((sft_dir / "selection.json").read_text()):
        timer.run("sft select", False, sft.select, cfg, run, run.stage("rm"), main_only=True)
    rm_dir = run.stage("rm")
    if until == "ppo":
        return {"stopped_before": "ppo", "timings": timer.summary()}
    finals = {"sft": str(sft_dir)}
    for name, coef in (("ppo-ptx", cfg.ppo.ptx_coef), ("ppo", 0.0)):
        timer.run(name, run.is_done(name), ppo.train, cfg, run, init=sft_dir, ref=sft_dir,
                  rm=rm_dir, value=rm_dir, stage=name, ptx_coef=coef)
        finals[name] = str(run.stage(name))
    for rnd in range(1, cfg.pipeline.rounds + 1):
        # Most comparisons come from the SFT and the current PPO policies (section 3.5).
        pols = {"sft": sft_dir, "ppo-ptx": Path(finals["ppo-ptx"])}
        timer.run(f"collect-{rnd}", run.is_done(f"collect-{rnd}"), collect.collect, cfg, run,
                  pols, rnd, label)
        if waiting_for_labels(run, f"collect-{rnd}"):
            return stop_for_labels(run, timer, f"collect-{rnd}")
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
    if timer.rt.is_main:
        atomic_write_text(run.root / "pipeline.json", json.dumps(summary, indent=1) + "\n")
    timer.rt.barrier()
    timer.say(timer.summary())
    return summary


def waiting_for_labels(run: RunDir, stage: str) -> bool:
    """Whether `stage`'s samples were left for people and none of them is ranked yet in
    RUN/data/rankings.jsonl (a ranking of a sample has the sample's response texts)."""
    import json as _json

    if run.done_info(stage).get("labelled_by") == "sandbox":
        return False
    samples = [_json.loads(line) for line in
               (run.stage(stage) / "samples.jsonl").read_text().splitlines() if line.strip()]
    wanted = {(s["prompt_id"], tuple(sorted(r["text"] for r in s["responses"])))
              for s in samples}
    have = {(r.prompt_id, tuple(sorted(x.text for x in r.responses))) for r in run.rankings()}
    return not wanted & have


def stop_for_labels(run: RunDir, timer: Timer, stage: str) -> dict:
    """Stop the pipeline where people must rank samples, saying how (the labeling app)."""
    msg = (f"pipeline: {run.stage(stage) / 'samples.jsonl'} waits for people to rank it "
           f"(the sandbox's labelers judge only sandbox prompts). With the labeling app:\n"
           f"  instructrl label import --db sqlite:///labels.db --run {run.root}\n"
           f"  instructrl label assign --db sqlite:///labels.db --kind rank --pool train\n"
           f"  instructrl label serve --db sqlite:///labels.db     (people rank)\n"
           f"  instructrl label export --db sqlite:///labels.db --out {run.data}\n"
           f"then run this command again: it continues from here.")
    timer.say(timer.summary())
    timer.say(msg)
    return {"waiting_for": stage, "policies": {}, "timings": timer.summary()}


def _rel(run: RunDir, path: str | Path) -> str:
    return str(Path(path).resolve().relative_to(run.root.resolve()))


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_common(p)


def run(args: argparse.Namespace) -> int:
    from instructrl.demo import DEFAULT_RECIPE
    cfg = load_config(args.recipe or DEFAULT_RECIPE, args.overrides)
    t0 = time.time()
    summary = run_pipeline(cfg, args.out)
    if "waiting_for" in summary or not runtime().is_main:
        return 0
    print(f"pipeline: {time.time() - t0:.1f}s; models: {json.dumps(summary['policies'])}")
    return 0
