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


def combinations(grid: list[str] | tuple[str, ...]) -> list[list[str]]:
    """["ppo.lr=1,2", "ppo.kl_coef=3"] -> [["ppo.lr=1", "ppo.kl_coef=3"], ["ppo.lr=2", ...]]."""
    axes = []
    for spec in grid:
        key, _, values = spec.partition("=")
        if not key.startswith("ppo.") or not values:
            raise InputError(f"{spec!r}: expected ppo.KEY=V1,V2,...", field="reproduce.choose")
        axes.append([f"{key}={v.strip()}" for v in values.split(",")])
    return [list(c) for c in itertools.product(*axes)]


def stage_name(combo: list[str]) -> str:
    return "choose-" + "-".join(s.split(".", 1)[1].replace("=", "") for s in combo)


def with_settings(cfg: RunConfig, combo: list[str]) -> RunConfig:
    """`cfg` with the combination's ppo settings (validated as any recipe's)."""
    return apply_overrides(cfg, combo, "reproduce.choose")


def choose(cfg: RunConfig, run: RunDir, grid, *, episodes: int = 0, samples: int = 2) -> dict:
    from tqdm.auto import tqdm

    from instructrl.evaluate.sandbox_eval import test_prompts
    from instructrl.evaluate.stats import win_figure
    from instructrl.evaluate.lm import eval_samples
    from instructrl.modeling import default_device, load_causal_lm, load_tokenizer
    from instructrl.sandbox.generate import Sandbox
    from instructrl.stages import ppo
    from instructrl.stages.common import read_metrics

    sb = Sandbox(cfg.sandbox)
    c = cfg.eval
    prompts = [p for p in test_prompts(run, c.n_prompts, split="valid") for _ in range(samples)]
    if not prompts:
        raise InputError("no validation prompts to choose PPO's settings on",
                         path=str(run.data / "prompts.jsonl"))
    texts = [p.text for p in prompts]
    sft_dir, rm_dir = run.stage("sft"), run.stage("rm")
    tok = load_tokenizer(sft_dir, cfg.model)

    def draw(path: Path, what: str) -> list[str]:
        model = load_causal_lm(path, model_cfg=cfg.model).to(default_device())
        return eval_samples(model, tok, texts, c, seed=c.seed,
                            desc=f"{what} on validation prompts")

    baseline = draw(sft_dir, "sft")
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
        ours = draw(run.stage(name), name)
        outcomes = [sb.judge(p, a, b, salt=f"choose:{name}:{i % samples}",
                             pool=sb.train_labelers).score
                    for i, (p, a, b) in enumerate(zip(prompts, ours, baseline))]
        last = read_metrics(run.stage(name) / "metrics.jsonl")[-5:]
        rows.append({"settings": combo, "stage": name, "episodes": ccfg.ppo.episodes,
                     "win_rate": win_figure(outcomes),
                     "rm_score": sum(r["objective/scores"] for r in last) / len(last),
                     "kl": sum(r["objective/kl"] for r in last) / len(last)})
    best = max(rows, key=lambda r: r["win_rate"]["mean"])
    out = {"judged_by": "the sandbox's training labelers, on validation prompts",
           "n_prompts": len(prompts) // samples, "samples": samples,
           "episodes": episodes or cfg.ppo.episodes, "rows": rows, "best": best["settings"]}
    atomic_write_text(run.root / "choose" / "choice.json", json.dumps(out, indent=1) + "\n")
    for r in rows:
        w = r["win_rate"]
        print(f"  {' '.join(r['settings']):<40} {w['mean']:.3f} [{w['low']:.3f}, "
              f"{w['high']:.3f}]  RM score {r['rm_score']:.3f}  KL {r['kl']:.2f}"
              + ("  <- chosen" if r is best else ""), flush=True)
    return out


def adopt(cfg: RunConfig, run: RunDir, choice: dict, stage: str = "ppo-ptx") -> bool:
    """Make the candidate `choice` (RUN/choose/choice.json) chose RUN/`stage` when it was
    trained at the recipe's own budget (then it is that stage: same settings, start, reward
    model and seed); False, and nothing done, when the choice was made on shorter runs or
    `stage` is done already. Copied whole to a temporary directory, then renamed: a kill
    leaves no half stage behind."""
    import shutil

    best = next(r for r in choice["rows"] if r["settings"] == choice["best"])
    if run.is_done(stage) or best.get("episodes") != cfg.ppo.episodes:
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
