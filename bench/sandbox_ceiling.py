"""How far can a policy get past SFT in the sandbox, and where does PPO's win rate go?

    python bench/sandbox_ceiling.py [--run runs/demo] [--recipe recipes/sandbox.yaml]
                                    [--samples 3] [--n 8] [--set K=V ...]
                                    [--policy NAME=DIR ...] [--oracle-stage NAME | --no-oracle-ppo]

Every row is judged the way `instructrl eval` judges (held-out labelers on held-out users'
prompts, ties count half) against the run's SFT model sampled at temperature 1, with
`--samples` independent samples per prompt (a tighter estimate than the demo's one):

- sft, another seed: the noise floor (~0.5);
- sft at temperature 0.7 and greedy: what sharpening the SFT policy alone buys;
- best of N SFT samples picked by the run's reward model, and picked by the held-out
  labelers' own noise-free utility: how much of the judges' taste the RM has learnt;
- the reference answers (what a careful labeler would write): the top of the scale;
- the run's final policies (pipeline.json), and any `--policy NAME=DIR`;
- PPO with an oracle reward: the recipe's PPO (no ptx) with the training labelers' mean
  noise-free utility in place of the RM (shifted so demonstrations score 0, as the RM's bias
  is): what PPO reaches on this budget with a perfect reward model of its labelers.
  Trained into RUN/ppo-oracle once (skipped when done; `--set ppo.KEY=V` changes its
  settings, so give such a run its own `--oracle-stage`; --no-oracle-ppo leaves it out).

Issue 4's target is a PPO-ptx win rate of 0.65: compare it with these rows. Needs a run with
sft/ and rm/ (`make demo` makes runs/demo). Prints figures; asserts nothing.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--run", default=str(ROOT / "runs" / "demo"))
    ap.add_argument("--recipe", default=str(ROOT / "recipes" / "sandbox.yaml"))
    ap.add_argument("--set", dest="overrides", action="append", default=[])
    ap.add_argument("--samples", type=int, default=3, help="samples per prompt and policy")
    ap.add_argument("--n", type=int, default=8, help="N of best-of-N")
    ap.add_argument("--policy", action="append", default=[], metavar="NAME=DIR",
                    help="another policy to judge (repeatable)")
    ap.add_argument("--oracle-stage", default="ppo-oracle",
                    help="stage dir of the oracle-reward PPO run (default: ppo-oracle)")
    ap.add_argument("--no-oracle-ppo", action="store_true")
    args = ap.parse_args()

    from instructrl.config import load_config
    from instructrl.evaluate.sandbox_eval import test_prompts
    from instructrl.evaluate.stats import mean_ci
    from instructrl.generation import sample_texts, score_texts
    from instructrl.modeling import ScalarHeadModel, load_causal_lm, load_tokenizer
    from instructrl.rundir import RunDir
    from instructrl.sandbox.generate import Sandbox
    from instructrl.sandbox.tasks import reference_answer

    cfg = load_config(args.recipe, args.overrides)
    run = RunDir(args.run)
    sft_dir, rm_dir = run.stage("sft"), run.stage("rm")
    if not (run.is_done("sft") and run.is_done("rm")):
        print(f"{run.root} has no finished sft/ and rm/: run `make demo` (or `instructrl "
              f"demo --out {run.root}`) first", file=sys.stderr)
        return 2
    t_start = time.time()
    sb = Sandbox(cfg.sandbox)
    c = cfg.eval
    prompts = test_prompts(run, c.n_prompts)
    S, N = args.samples, args.n
    rep = [p for p in prompts for _ in range(S)]  # S copies of each prompt, adjacent
    texts = [p.text for p in rep]
    tok = load_tokenizer(sft_dir)
    sft = load_causal_lm(sft_dir)

    def draw(model, prompt_texts, seed, temperature=c.temperature):
        return sample_texts(model, tok, prompt_texts, max_prompt_tokens=c.max_prompt_tokens,
                            max_new_tokens=c.max_new_tokens, temperature=temperature,
                            seed=seed)

    baseline = draw(sft, texts, seed=c.seed)

    def judge(name: str, ours: list[str]) -> None:
        outcomes = [sb.heldout_judge(p, a, b, salt=f"ceiling:{name}:{i % S}").score
                    for i, (p, a, b) in enumerate(zip(rep, ours, baseline))]
        m, lo, hi = mean_ci(outcomes)
        print(f"  {name:<40} {m:.3f} [{lo:.3f}, {hi:.3f}]", flush=True)

    print(f"win rate against SFT (temperature {c.temperature}), {len(prompts)} held-out "
          f"users' prompts x {S} samples, judged by held-out labelers:")
    judge("sft, another seed", draw(sft, texts, seed=c.seed + 1))
    judge("sft, temperature 0.7", draw(sft, texts, seed=c.seed + 2, temperature=0.7))
    judge("sft, greedy", draw(sft, texts, seed=c.seed + 3, temperature=0.0))
    # Best of N: N candidates per (prompt, sample), picked by the RM or by the judges' taste.
    cand_prompts = [t for t in texts for _ in range(N)]
    cand = draw(sft, cand_prompts, seed=c.seed + 4)
    groups = [cand[i * N:(i + 1) * N] for i in range(len(rep))]
    rm = ScalarHeadModel.from_pretrained(rm_dir).eval()
    scores = score_texts(rm, tok, cand_prompts, cand,
                         max_prompt_tokens=c.max_prompt_tokens,
                         max_response_tokens=c.max_new_tokens).view(len(rep), N)
    judge(f"best of {N} by the RM", [g[int(s.argmax())] for g, s in zip(groups, scores)])
    judge(f"best of {N} by held-out labelers' utility",
          [max(g, key=lambda r, p=p: mean_utility(sb, sb.heldout_labelers, p, r))
           for p, g in zip(rep, groups)])
    judge("reference answers", [reference_answer(sb.world, p) for p in rep])

    finals = {}
    if (run.root / "pipeline.json").exists():
        finals = {name: run.root / rel for name, rel in
                  json.loads((run.root / "pipeline.json").read_text())["policies"].items()}
    for spec in args.policy:
        name, _, path = spec.partition("=")
        finals[name] = Path(path or name)
    if not args.no_oracle_ppo:
        finals["ppo, oracle reward"] = train_oracle_ppo(cfg, run, sb, args.oracle_stage)
    for name, path in finals.items():
        if name == "sft":
            continue
        judge(name, draw(load_causal_lm(path), texts, seed=c.seed + 5))
    print(f"(issue 4's target for PPO-ptx: 0.65; {time.time() - t_start:.0f}s)")
    return 0


def mean_utility(sb, labelers, prompt, response: str) -> float:
    """The labelers' mean noise-free utility of one response."""
    checks = sb.check(prompt, response)
    return sum(lab.utility(checks) for lab in labelers) / len(labelers)


def train_oracle_ppo(cfg, run, sb, stage: str) -> Path:
    """The recipe's PPO without ptx, rewarded by the training labelers' mean noise-free
    utility instead of the RM; shifted so the labeler demonstrations score mean 0."""
    import torch

    from instructrl.stages import ppo

    prompts = run.prompts_by_id()
    demos = [(prompts[d.prompt_id], d.response) for d in run.demonstrations()
             if prompts[d.prompt_id].split == "train"]
    shift = sum(mean_utility(sb, sb.train_labelers, p, r) for p, r in demos) / len(demos)

    def reward(ps, texts):
        return torch.tensor([mean_utility(sb, sb.train_labelers, p, t) - shift
                             for p, t in zip(ps, texts)])

    if not run.is_done(stage):
        t0 = time.time()
        ppo.train(cfg, run, init=run.stage("sft"), ref=run.stage("sft"), rm=run.stage("rm"),
                  value=run.stage("rm"), stage=stage, ptx_coef=0.0, reward_fn=reward)
        print(f"  (trained {stage} in {time.time() - t0:.0f}s)")
    return run.stage(stage)


if __name__ == "__main__":
    sys.exit(main())
