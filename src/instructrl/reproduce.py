"""`instructrl reproduce`: InstructGPT's findings, measured in the sandbox, next to the paper's.

    instructrl reproduce [--out runs/reproduce] [--recipe recipes/reproduce.yaml] [--seeds N]

The plan, one run directory, each step skipped when its output is there and each training
stage resumable from its own checkpoint (so a killed reproduce continues where it stopped):

  pipeline        data (one category and one style held out of training: the "ood" split),
                  SFT, collect, RM, then
  choose          PPO's settings among reproduce.choose, on validation prompts judged by the
                  training labelers (stages/choose.py), when the recipe asks; chosen at the
                  recipe's budget, the chosen candidate is the PPO-ptx stage; then
  pipeline        PPO-ptx and PPO with them (policy snapshots along the way)
  ppo-nokl        PPO from SFT with the KL penalty off (reproduce.overopt_kl_coef)
  sft-public      SFT on the corpus's public NLP tasks in instruction form (FLAN / T0)
  sft-big         SFT on a base model 4x larger (reproduce.big_base), when one is named;
                  its settings chosen among reproduce.choose_big as PPO's are, when asked
  ... select      their epochs chosen by the RM, as the user SFT's are
  eval            every judge of `instructrl eval`, those SFT models among the policies and
                  PPO-ptx judged against the larger SFT as well
  over-opt.       RM score and held-out-labeler win rate along PPO, beta = 0 and default
  rm agreement    the RM on held-out labelers next to inter-labeler agreement
  findings        RUN/reproduce.md, RUN/reproduce.json, RUN/reproduce.html (the table with
                  its plots) and the table on the terminal

The table's figures are read from those steps' results files (`evaluate.findings`), never
written here. With `--seeds N` the plan runs once per seed in OUT/seed-K and the table pools
them (win rates outcome by outcome, other figures averaged). Wall time and peak memory of
the command are printed and recorded. Each finished step's time is kept in
RUN/reproduce/steps.json, so a plan finished over several invocations counts the steps that
earlier ones finished; a step killed midway counts only the invocation that finished it
(the time before the kill is not known), and a step redone adds its times together.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import resource
import time
from pathlib import Path

from instructrl.cli import add_common
from instructrl.config import RunConfig, load_config
from instructrl.data.jsonl import atomic_write_text
from instructrl.errors import InputError
from instructrl.rundir import RunDir

DEFAULT_RECIPE = Path(__file__).resolve().parents[2] / "recipes" / "reproduce.yaml"
NOKL = "ppo-nokl"
PUBLIC = "sft-public"
BIG = "sft-big"
SNAPSHOTS = 8  # points along PPO for the over-optimisation curve when the recipe sets none
SEEDED = ("data", "sft", "collect", "rm", "ppo", "eval")  # what --seeds varies


class Steps:
    """Each step's wall time, kept in RUN/reproduce/steps.json across invocations."""

    def __init__(self, run: RunDir):
        self.path = run.root / "reproduce" / "steps.json"
        self.seconds: dict[str, float] = (json.loads(self.path.read_text())
                                          if self.path.exists() else {})

    def run(self, name: str, done: bool, fn, *args, **kwargs):
        if done:
            print(f"[reproduce] {name}: done already", flush=True)
            return None
        print(f"[reproduce] {name} ...", flush=True)
        t0 = time.time()
        out = fn(*args, **kwargs)
        took = time.time() - t0
        before = self.seconds.get(name, 0.0)  # a step redone (its outputs removed) adds up
        self.seconds[name] = before + took
        atomic_write_text(self.path, json.dumps(self.seconds, indent=1) + "\n")
        print(f"[reproduce] {name}: {took:.0f}s"
              + (f" ({self.seconds[name]:.0f}s with its earlier runs)" if before else ""),
              flush=True)
        return out


def with_snapshots(cfg: RunConfig) -> RunConfig:
    """The recipe, with PPO snapshots every 1/SNAPSHOTS of the run when it asks for none."""
    if cfg.ppo.snapshot_every > 0:
        return cfg
    iters = max(1, cfg.ppo.episodes // cfg.ppo.batch_size)
    every = max(1, iters // SNAPSHOTS)
    return dataclasses.replace(cfg, ppo=dataclasses.replace(cfg.ppo, snapshot_every=every))


def check_recipe(cfg: RunConfig) -> None:
    if cfg.sources.any():
        raise InputError("reproduce measures the paper's findings in the sandbox world, whose "
                         "held-out labelers and checks judge it; a recipe with `sources` (data "
                         "of your own) cannot be judged by them: use `instructrl pipeline` and "
                         "`instructrl eval`", field="sources")


def measure(cfg: RunConfig, out: Path) -> tuple[dict, dict, Steps]:
    """Every step of the plan in run directory `out`: (the findings' sources, the rows not
    measured and why, the steps' wall times)."""
    from instructrl.evaluate import agreement, findings, overoptimisation
    from instructrl.evaluate.suite import evaluate_run
    from instructrl.pipeline import run_pipeline
    from instructrl.rundir import write_run_config
    from instructrl.sandbox.public_demos import train_public
    from instructrl.modeling import resolve_model_path
    from instructrl.stages import choose, ppo, sft

    cfg = with_snapshots(cfg)
    run = RunDir(out)
    run.root.mkdir(parents=True, exist_ok=True)
    write_run_config(run, cfg, "reproduce")
    steps = Steps(run)
    finished = (run.root / "pipeline.json").exists()
    steps.run("pipeline to the RM", finished, run_pipeline, cfg, run.root, until="ppo")
    if cfg.reproduce.choose:
        choice = _chosen(steps, run, "PPO", "choice.json", choose.choose, cfg, run,
                         cfg.reproduce.choose, episodes=cfg.reproduce.choose_episodes)
        cfg = choose.with_settings(cfg, choice["best"])
        write_run_config(run, cfg, "reproduce")
        if choose.at_budget(cfg, choice) and choose.adopt(run, choice, "ppo-ptx"):
            print(f"[reproduce] ppo-ptx: the chosen candidate, trained at the recipe's "
                  f"budget ({cfg.ppo.episodes} episodes), is the PPO-ptx stage", flush=True)
    steps.run("pipeline", finished, run_pipeline, cfg, run.root)
    summary = json.loads((run.root / "pipeline.json").read_text())
    sft_dir, first_rm = run.stage("sft"), run.stage("rm")
    nokl = dataclasses.replace(cfg, ppo=dataclasses.replace(
        cfg.ppo, kl_coef=cfg.reproduce.overopt_kl_coef, adaptive_kl=False))
    steps.run(NOKL, run.is_done(NOKL), ppo.train, nokl, run, init=sft_dir, ref=sft_dir,
              rm=first_rm, value=first_rm, stage=NOKL, ptx_coef=0.0)
    extra, against, skip = {}, [], {}
    if cfg.reproduce.public_sft:
        steps.run(PUBLIC, run.is_done(PUBLIC), train_public, cfg, run, Path(summary["base"]),
                  stage=PUBLIC)
        extra[PUBLIC] = str(run.stage(PUBLIC))
    else:
        skip["public_sft_loses"] = "reproduce.public_sft is false"
    if cfg.reproduce.big_base:
        big = resolve_model_path(cfg.reproduce.big_base,
                                 trust_remote_code=cfg.model.trust_remote_code)
        if cfg.reproduce.choose_big:
            choice = _chosen(steps, run, BIG, f"choice-{BIG}.json", choose.choose_sft, cfg, run,
                             cfg.reproduce.choose_big, big, stage=BIG)
            choose.adopt(run, choice, BIG)
        steps.run(BIG, run.is_done(BIG), sft.train, cfg, run, big, stage=BIG)
        extra[BIG] = str(run.stage(BIG))
        against.append(BIG)
    else:
        skip["small_ppo_beats_big_sft"] = ("reproduce.big_base is not set (no base model 4x "
                                           "the shipped one is available to this recipe)")
    for stage in extra:  # checkpoints chosen as the user SFT's: by the RM (App. C.1)
        steps.run(f"{stage} select", sft.selected(run, stage), sft.select, cfg, run, first_rm,
                  stage=stage)
    results = run.stage("eval") / "results.json"
    steps.run("eval", _evaluated(results, extra), evaluate_run, cfg, run,
              summary.get("timings", ""), extra_policies=extra, against=against)
    for stage in (NOKL, "ppo"):
        path = run.stage("eval") / f"overoptimisation-{stage}.json"
        steps.run(f"over-optimisation {stage}", _trajectory_done(run, stage, path),
                  overoptimisation.trajectory, cfg, run, stage, rm_stage="rm")
    gen_path = run.root / "reproduce" / "rm_generalisation.json"

    def _agreement():
        g = agreement.rm_generalisation(cfg, run, summary["rm"])
        atomic_write_text(gen_path, json.dumps(g, indent=1) + "\n")

    steps.run("rm agreement", gen_path.exists(), _agreement)
    return findings.load_sources(run, beta0_stage=NOKL), skip, steps


def reproduce(cfg: RunConfig, out: str | Path, seeds: int = 1) -> dict:
    """The plan once in `out`, or with `seeds` > 1 once per seed in OUT/seed-K (the seed of
    data splits, SFT, collection, RM, PPO and evaluation; the world stays the shipped base
    model's), and one table from all of them (`findings.pool`)."""
    from instructrl.config import apply_overrides
    from instructrl.evaluate import findings
    from instructrl.evaluate.reproduce_report import write_page

    check_recipe(cfg)
    out = Path(out)
    t0 = time.time()
    runs = [(cfg, out)] if seeds == 1 else [
        (apply_overrides(cfg, [f"{sec}.seed={k}" for sec in SEEDED], f"seed {k}"),
         out / f"seed-{k}") for k in range(seeds)]
    measured = []
    for k, (c, root) in enumerate(runs):
        if seeds > 1:
            print(f"[reproduce] seed {k} of {seeds}: {root}", flush=True)
        measured.append(measure(c, root))
    skip = {rid: why for _, sk, _ in measured for rid, why in sk.items()}
    src = findings.pool([src for src, _, _ in measured])
    rows = findings.findings(src, skip)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB -> GiB
    if (out / "reproduce.json").exists():  # the largest of every invocation's
        peak = max(peak, json.loads((out / "reproduce.json").read_text()).get("peak_rss_gib", 0))
    per_seed = [steps.seconds for _, _, steps in measured]
    total = sum(sum(x.values()) for x in per_seed)
    report = {"created": time.strftime("%Y-%m-%d %H:%M:%S"), "seeds": seeds, "rows": rows,
              "wall_seconds": {"total": total, "this_invocation": time.time() - t0,
                               "steps": per_seed if seeds > 1 else per_seed[0]},
              "peak_rss_gib": peak, "skipped": skip}
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "reproduce.json", json.dumps(report, indent=1) + "\n")
    pooled = f", {seeds} seeds pooled" if seeds > 1 else ""
    md = (f"# InstructGPT's findings in the sandbox\n\n{findings.markdown(rows)}\n\n"
          f"Wall time {total / 60:.1f} min in all{pooled}; peak memory {peak:.2f} GiB.\n")
    atomic_write_text(out / "reproduce.md", md)
    page = write_page(out, rows, src, md.strip().splitlines()[-1])
    print()
    print(findings.terminal(rows))
    print(f"\nreproduce: {out / 'reproduce.md'}, {page}; wall time {total / 60:.1f} min "
          f"(this invocation {(time.time() - t0) / 60:.1f}), peak memory {peak:.2f} GiB")
    return report


def _chosen(steps: Steps, run: RunDir, what: str, name: str, fn, *args, **kwargs) -> dict:
    """The step "choose `what` settings" (`fn`, writing RUN/choose/`name`), unless its choice
    is there already; that choice, its best settings printed."""
    path = run.root / "choose" / name
    steps.run(f"choose {what} settings", path.exists(), fn, *args, **kwargs)
    choice = json.loads(path.read_text())
    print(f"[reproduce] {what} settings chosen on validation prompts by the training "
          f"labelers: {' '.join(choice['best'])}", flush=True)
    return choice


def _evaluated(results: Path, extra: dict[str, str]) -> bool:
    """results.json exists and judged every policy reproduce needs."""
    if not results.exists():
        return False
    have = json.loads(results.read_text()).get("policies", {})
    return all(name in have for name in extra)


def _trajectory_done(run: RunDir, stage: str, path: Path) -> bool:
    """Every snapshot of `stage` has its point in `path` (the trajectory resumes otherwise)."""
    if not path.exists():
        return False
    snaps = list((run.stage(stage) / "snapshots").glob("iter-*/snapshot.json"))
    return len(json.loads(path.read_text()).get("points", [])) >= len(snaps) + 1


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_common(p, out_required=False)
    p.set_defaults(out="runs/reproduce")
    p.add_argument("--seeds", type=int, default=1,
                   help="run the plan once per seed in OUT/seed-K and pool the table "
                        "(default 1: once, in OUT)")


def run(args: argparse.Namespace) -> int:
    # A rerun of a run directory keeps the settings it started with (RUN/config.yaml).
    # (with --seeds, the first seed's: each seed's own seed and choice are applied again)
    own = [p for p in (Path(args.out) / "config.yaml", Path(args.out) / "seed-0" / "config.yaml")
           if p.exists()]
    recipe = args.recipe or (own[0] if own else DEFAULT_RECIPE)
    print(f"reproduce: settings from {recipe}", flush=True)
    cfg = load_config(recipe, args.overrides)
    if args.seeds < 1:
        raise InputError("must be >= 1", field="--seeds")
    reproduce(cfg, args.out, args.seeds)
    return 0
