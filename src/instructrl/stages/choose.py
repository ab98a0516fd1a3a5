"""Choosing PPO's settings without looking at what the findings are judged on (issue 21).

`choose(cfg, run, grid)`: for each combination of the grid (["ppo.lr=5e-5,2e-4",
"ppo.kl_coef=0.02,0.1"]), the recipe's PPO-ptx with those settings (and `episodes`, when
given, to keep the search cheap), trained from RUN/sft against RUN/rm into
RUN/choose-<settings>; its samples on the run's VALIDATION prompts judged against SFT's by
the sandbox's TRAINING labelers. The test prompts and the held-out labelers, who judge
`instructrl reproduce`'s findings, take no part, so no setting is tuned to them. The best by
win rate (on an exact tie, the first in the grid's order) is kept in RUN/choose/choice.json
with every candidate's figures. A candidate
already trained is not trained again, and a killed candidate resumes from its checkpoint,
like any PPO stage. Sandbox runs only (its labelers judge).

Short runs favour settings that move fast, and those can over-optimise the reward model over
the recipe's whole budget (measured on `instructrl reproduce`: chosen on 2,400 episodes, the
9,600-episode run lost to SFT). Chosen at the recipe's own budget (`episodes` 0), each
candidate is exactly the recipe's PPO-ptx stage with its settings, snapshots included, so
`adopt` makes the chosen one RUN/ppo-ptx instead of training it again.

`choose_sft(cfg, run, grid, init, stage="sft-big")` does the same for an SFT model of
another base (["sft.lr=1.0e-3,2.0e-3"]): each candidate trained from `init` into
RUN/choose-<stage>-<settings>, its epoch selected by the RM as the user SFT's, judged against
RUN/sft the same way, kept in RUN/choose/choice-<stage>.json; the chosen one becomes
RUN/<stage> (`adopt`). SFT's settings were made for the pipeline's own base; a base 4x
larger at the same learning rate is a weaker baseline than the paper's, whose 175B SFT was
tuned for its size (measured in `instructrl reproduce`'s runs: on validation, the larger SFT
at the small model's lr 0.425 against the small SFT, at twice it 0.477, chosen; on the test
prompts by the held-out labelers that choice took it from 0.451 to 0.532; at 2951392, with
the closed-domain check corrected, 0.427 and 0.495 on validation, 0.540 on test).
"""

from __future__ import annotations

import dataclasses
import itertools
import json
from pathlib import Path

from instructrl.config import RunConfig, apply_overrides
from instructrl.data.jsonl import atomic_write_text
from instructrl.errors import InputError
from instructrl.rundir import RunDir


def combinations(grid: list[str] | tuple[str, ...], section: str = "ppo",
                 field: str = "reproduce.choose") -> list[list[str]]:
    """["ppo.lr=1,2", "ppo.kl_coef=3"] -> [["ppo.lr=1", "ppo.kl_coef=3"], ["ppo.lr=2", ...]]."""
    axes = []
    for spec in grid:
        key, _, values = spec.partition("=")
        if not key.startswith(f"{section}.") or not values:
            raise InputError(f"{spec!r}: expected {section}.KEY=V1,V2,...", field=field)
        axes.append([f"{key}={v.strip()}" for v in values.split(",")])
    return [list(c) for c in itertools.product(*axes)]


def stage_name(combo: list[str], prefix: str = "choose-") -> str:
    return prefix + "-".join(s.split(".", 1)[1].replace("=", "") for s in combo)


def with_settings(cfg: RunConfig, combo: list[str], field: str = "reproduce.choose") -> RunConfig:
    """`cfg` with the combination's settings (validated as any recipe's)."""
    return apply_overrides(cfg, combo, field)


class Validation:
    """RUN/sft's samples on the run's validation prompts (`samples` each), and any policy's
    win rate against them by the sandbox's TRAINING labelers: what every choice here is
    judged on (the test prompts and held-out labelers judge the findings)."""

    def __init__(self, cfg: RunConfig, run: RunDir, samples: int = 2):
        from instructrl.evaluate.sandbox_eval import test_prompts
        from instructrl.modeling import load_tokenizer
        from instructrl.sandbox.generate import Sandbox

        self.cfg, self.run, self.samples = cfg, run, samples
        self.sandbox = Sandbox(cfg.sandbox)
        self.prompts = [p for p in test_prompts(run, cfg.eval.n_prompts, split="valid")
                        for _ in range(samples)]
        if not self.prompts:
            raise InputError("no validation prompts to choose settings on",
                             path=str(run.data / "prompts.jsonl"))
        self.tokenizer = load_tokenizer(run.stage("sft"), cfg.model)
        self.baseline = self.draw("sft")

    def draw(self, stage: str) -> list[str]:
        from instructrl.evaluate.lm import eval_samples
        from instructrl.modeling import default_device, load_causal_lm

        model = load_causal_lm(self.run.stage(stage), model_cfg=self.cfg.model)
        return eval_samples(model.to(default_device()), self.tokenizer,
                            [p.text for p in self.prompts], self.cfg.eval,
                            seed=self.cfg.eval.seed, desc=f"{stage} on validation prompts")

    def win_rate(self, stage: str) -> dict:
        """RUN/<stage>'s samples against SFT's, judged by the training labelers."""
        from instructrl.evaluate.stats import win_figure

        n = self.samples
        outcomes = [self.sandbox.judge(p, a, b, salt=f"choose:{stage}:{i % n}",
                                       pool=self.sandbox.train_labelers).score
                    for i, (p, a, b) in enumerate(zip(self.prompts, self.draw(stage),
                                                      self.baseline))]
        return win_figure(outcomes)

    def write(self, rows: list[dict], name: str, **extra) -> dict:
        """The best row by win rate (on an exact tie, the first), kept with every row in
        RUN/choose/<name>."""
        best = max(rows, key=lambda r: r["win_rate"]["mean"])
        out = {"judged_by": "the sandbox's training labelers, on validation prompts",
               "n_prompts": len(self.prompts) // self.samples, "samples": self.samples,
               **extra, "rows": rows, "best": best["settings"]}
        atomic_write_text(self.run.root / "choose" / name, json.dumps(out, indent=1) + "\n")
        for r in rows:
            w = r["win_rate"]
            more = "".join(f"  {k} {r[k]:.3f}" for k in ("rm_score", "kl") if k in r)
            print(f"  {' '.join(r['settings']):<40} {w['mean']:.3f} [{w['low']:.3f}, "
                  f"{w['high']:.3f}]{more}" + ("  <- chosen" if r is best else ""), flush=True)
        return out


def choose(cfg: RunConfig, run: RunDir, grid, *, episodes: int = 0, samples: int = 2) -> dict:
    from tqdm.auto import tqdm

    from instructrl.stages import ppo
    from instructrl.stages.common import read_metrics

    val = Validation(cfg, run, samples)
    sft_dir, rm_dir = run.stage("sft"), run.stage("rm")
    rows = []
    for combo in tqdm(combinations(grid), desc="choose", unit="setting"):
        ccfg = with_settings(cfg, combo)
        if episodes and episodes != cfg.ppo.episodes:  # a short run: only its end is judged
            ccfg = dataclasses.replace(ccfg, ppo=dataclasses.replace(
                ccfg.ppo, episodes=episodes, snapshot_every=0))
        name = stage_name(combo)
        if not run.is_done(name):
            ppo.train(ccfg, run, init=sft_dir, ref=sft_dir, rm=rm_dir, value=rm_dir,
                      stage=name, ptx_coef=ccfg.ppo.ptx_coef)
        last = read_metrics(run.stage(name) / "metrics.jsonl")[-5:]
        rows.append({"settings": combo, "stage": name, "episodes": ccfg.ppo.episodes,
                     "win_rate": val.win_rate(name),
                     "rm_score": sum(r["objective/scores"] for r in last) / len(last),
                     "kl": sum(r["objective/kl"] for r in last) / len(last)})
    return val.write(rows, "choice.json", episodes=episodes or cfg.ppo.episodes)


def choose_sft(cfg: RunConfig, run: RunDir, grid, init: str | Path, *, stage: str,
               samples: int = 2) -> dict:
    """SFT on `init` with each setting of `grid`, its epoch selected by RUN/rm, judged
    against RUN/sft; RUN/choose/choice-<stage>.json (module docstring)."""
    from tqdm.auto import tqdm

    from instructrl.stages import sft

    field = "reproduce.choose_big"
    val = Validation(cfg, run, samples)
    rows = []
    for combo in tqdm(combinations(grid, "sft", field), desc=f"choose {stage}", unit="setting"):
        ccfg = with_settings(cfg, combo, field)
        name = stage_name(combo, f"choose-{stage}-")
        if not run.is_done(name):
            sft.train(ccfg, run, init, stage=name)
        if not sft.selected(run, name):
            sft.select(ccfg, run, run.stage("rm"), stage=name)
        rows.append({"settings": combo, "stage": name, "win_rate": val.win_rate(name)})
    return val.write(rows, f"choice-{stage}.json")


def at_budget(cfg: RunConfig, choice: dict) -> bool:
    """The chosen PPO candidate was trained at the recipe's own budget: it is the stage."""
    return best_row(choice).get("episodes") == cfg.ppo.episodes


def best_row(choice: dict) -> dict:
    return next(r for r in choice["rows"] if r["settings"] == choice["best"])


def adopt(run: RunDir, choice: dict, stage: str) -> bool:
    """Make the candidate `choice` chose RUN/`stage`; False, and nothing done, when `stage`
    is done already. Copied whole (but its checkpoint) to a temporary directory, then
    renamed: a kill leaves no half stage behind. For PPO only a candidate trained at the
    recipe's budget is the stage (`at_budget`)."""
    import shutil

    best = best_row(choice)
    if run.is_done(stage):
        return False
    src, dst = run.stage(best["stage"]), run.stage(stage)
    tmp = dst.with_name(dst.name + ".adopting")
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(src, tmp, ignore=shutil.ignore_patterns("checkpoint"))
    shutil.rmtree(dst, ignore_errors=True)  # a partial run of it, if any: this one is whole
    tmp.rename(dst)
    info = run.done_info(stage)
    run.mark_done(stage, **{**info, "adopted_from": best["stage"]})
    return True
