"""Over-optimisation of the reward model along a PPO run (paper section 3.5: the KL penalty
"mitigates over-optimization of the reward model"), for sandbox runs:

    trajectory(cfg, run, "ppo-nokl")  ->  RUN/eval/overoptimisation-ppo-nokl.json

The RM is a learned stand-in for the labelers, right only near the responses it was trained
on. A policy pushed far from them finds responses the RM scores high and people do not like:
its RM score keeps rising while what people prefer peaks and falls. The penalty on the KL to
the SFT policy keeps it near. To see it, each policy snapshot of a PPO run (`ppo.snapshot_every`)
and the baseline it started from (iteration 0) sample responses to held-out users' prompts;
each is measured twice, by the RM PPO optimised (what went up) and by the sandbox's held-out
labelers as a win rate against the baseline's samples (what people prefer). With beta = 0
the first should keep rising while the second falls; with the paper's beta much less so.

The file is rewritten after every point, and a rerun keeps the points already there: a killed
evaluation continues at the next snapshot.
"""

from __future__ import annotations

import json
from pathlib import Path

from tqdm.auto import tqdm

from instructrl.config import RunConfig
from instructrl.data.jsonl import atomic_write_text
from instructrl.errors import InputError
from instructrl.rundir import RunDir


def snapshots(run: RunDir, stage: str) -> list[tuple[Path, dict]]:
    """(directory, snapshot.json) of each complete snapshot of `stage`, by iteration."""
    found = [(p.parent, json.loads(p.read_text()))
             for p in (run.stage(stage) / "snapshots").glob("iter-*/snapshot.json")]
    return sorted(found, key=lambda s: s[1]["iteration"])


def kl_coef(cfg: RunConfig, run: RunDir, stage: str) -> float:
    """The stage's beta: its done.json's, else the run's config's, else `cfg`'s."""
    done = run.stage(stage) / "done.json"
    info = json.loads(done.read_text()) if done.exists() else {}
    if "kl_coef" in info:
        return info["kl_coef"]
    own = run.root / "config.yaml"
    if own.exists():
        from instructrl.config import load_config
        return load_config(own).ppo.kl_coef
    return cfg.ppo.kl_coef


def trajectory(cfg: RunConfig, run: RunDir, stage: str, *, rm_stage: str = "rm",
               baseline: str = "sft") -> dict:
    """One point per snapshot of RUN/`stage` plus the baseline RUN/`baseline` (the policy PPO
    started from) at iteration 0: train-time KL and RM score (snapshot.json), the RM's mean
    score on the test prompts' samples and the held-out labelers' win rate against the
    baseline's (the baseline against a second sample of its own). Written to
    RUN/eval/overoptimisation-`stage`.json after every point; points already there are kept."""
    from instructrl.distributed import runtime
    from instructrl.evaluate.sandbox_eval import SandboxJudges, is_sandbox_run, test_prompts
    from instructrl.evaluate.lm import eval_samples
    from instructrl.generation import score_texts
    from instructrl.modeling import (ScalarHeadModel, default_device, load_causal_lm,
                                     load_tokenizer)

    c = cfg.eval
    rt = runtime()
    ok, why = is_sandbox_run(cfg, run)
    if not ok:
        raise InputError(f"over-optimisation is judged by the sandbox's held-out labelers, "
                         f"which judge only sandbox runs: {why}")
    snaps = snapshots(run, stage)
    if not snaps:
        raise InputError(f"no policy snapshots in {run.stage(stage) / 'snapshots'}: train the "
                         f"stage with ppo.snapshot_every > 0")
    prompts = test_prompts(run, c.n_prompts)
    texts = [p.text for p in prompts]
    sj = SandboxJudges(cfg, c.n_tax)
    path = run.stage("eval") / f"overoptimisation-{stage}.json"
    out = {"stage": stage, "kl_coef": kl_coef(cfg, run, stage), "rm": rm_stage,
           "baseline": baseline, "n_prompts": len(prompts), "judge": sj.labelers,
           "points": []}
    old = json.loads(path.read_text()) if path.exists() else {}
    same = all(old.get(k) == out[k] for k in ("rm", "baseline", "n_prompts"))
    have = {p["iteration"]: p for p in old.get("points", [])} if same else {}

    device = default_device()
    loaded: dict = {}

    def sample(spec: Path, *seeds: int) -> tuple:
        """(tokenizer, [samples of each seed]) of one policy, loaded once."""
        tok = load_tokenizer(spec, cfg.model)
        model = load_causal_lm(spec, model_cfg=cfg.model).to(device).eval()
        return tok, [eval_samples(model, tok, texts, c, seed=seed, desc=f"{spec.name} samples")
                     for seed in seeds]

    def base() -> list[str]:
        """The baseline's samples, once, only when a point needs them; with a second,
        independent sample when its own point does (its win rate is then an honest ~0.5)."""
        if "base" not in loaded:
            seeds = (c.seed,) if 0 in have else (c.seed, c.seed + 1)
            loaded["tok"], got = sample(run.stage(baseline), *seeds)
            loaded["base"], loaded["again"] = got[0], got[-1]
        return loaded["base"]

    def rm_score(tok, responses: list[str]) -> float:
        if "rm" not in loaded:
            loaded["rm"] = ScalarHeadModel.from_pretrained(
                run.stage(rm_stage), model_cfg=cfg.model).to(device).eval()
        return float(score_texts(loaded["rm"], tok, texts, responses,
                                 max_prompt_tokens=c.max_prompt_tokens,
                                 max_response_tokens=c.max_new_tokens, split=True).mean())

    # Iteration 0 is the baseline itself: KL 0 to the reference it is; no train-time score.
    todo = [(None, {"iteration": 0, "episodes": 0, "kl": 0.0, "rm_score": None})] + snaps
    for spec, info in tqdm(todo, desc=f"over-optimisation {stage}", unit="policy",
                           disable=not rt.is_main):
        if info["iteration"] in have:
            out["points"].append(have[info["iteration"]])
            continue
        if spec is None:
            name, ours, theirs, tok = baseline, base(), loaded["again"], loaded["tok"]
        else:
            name, theirs = f"{stage}@{info['iteration']}", base()
            tok, (ours,) = sample(spec, c.seed)
        # `win` judges each named policy against the baseline, and the baseline against
        # `again`: naming this one the baseline judges `ours` against `theirs` alone.
        win = sj.win(prompts, {name: ours}, name, theirs)[name]
        out["points"].append({**{k: info[k] for k in ("iteration", "episodes", "kl",
                                                     "rm_score")},
                              "eval_rm_score": rm_score(tok, ours), "win_rate": win})
        if rt.is_main:
            atomic_write_text(path, json.dumps(out, indent=1) + "\n")
    text = json.dumps(out, indent=1) + "\n"  # (points of snapshots no longer there go)
    if rt.is_main and not (path.exists() and path.read_text() == text):
        atomic_write_text(path, text)
    rt.barrier()  # the others wait until it has written
    return out
