"""Comparison collection (paper section 3.5): K responses per prompt from one or more policies
at temperature 1, written as samples for labelers to rank.

    instructrl collect --out RUN --policy sft [--policy ppo-ptx] [--round 0] [--label sandbox]

Samples go to RUN/collect-<round>/samples.jsonl, one line per prompt:
``{"prompt_id": ..., "responses": [{"text": ..., "policy": ...}, ...]}`` — the format the
labeling app imports. With ``--label sandbox`` the sandbox's simulated labelers rank them at
once and the rankings are appended to RUN/data/rankings.jsonl; people rank them in the
labeling app instead (`instructrl label`), whose export has the same record format.

Each round takes prompts no earlier round used (the paper collects on new prompts as the
policies improve). Training labelers rank train-split samples (RM training data) and
valid-split samples (RM validation); held-out labelers rank a share of valid-split samples so
the RM can be scored against people who never trained it (section 3.4).

A round killed while it samples resumes with the batches it had not sampled: each finished
batch waits in RUN/collect-<round>/partial/ until samples.jsonl is written (any number of
processes, before and after).
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import time
from pathlib import Path

from instructrl.cli import add_common, run_config
from instructrl.config import CollectConfig, RunConfig
from instructrl.data.jsonl import read_jsonl, write_records
from instructrl.data.records import Prompt, Ranking, Response
from instructrl.generation import sample_texts
from instructrl.errors import InputError
from instructrl.distributed import runtime
from instructrl.modeling import default_device, load_causal_lm, load_tokenizer, resolve_model_path
from instructrl.rundir import RunDir


def is_sandbox_prompt(p: Prompt) -> bool:
    """Written by the sandbox's simulated users: its task spec is what its labelers check."""
    return "task" in p.meta


def round_prompts(prompts: list[Prompt], n: int, rnd: int, seed: int) -> list[Prompt]:
    """Round `rnd`'s `n` prompts: consecutive slices of one seeded shuffle, so rounds do not
    reuse prompts until the set runs out. An `n` larger than the set takes every prompt more
    than once (each time with new samples): more rankings from a small prompt set."""
    order = sorted(prompts, key=lambda p: p.id)
    random.Random(seed).shuffle(order)
    if not order:
        return []
    start = (rnd * n) % len(order)
    return [order[(start + i) % len(order)] for i in range(n)]


def split_k(k: int, n_policies: int) -> list[int]:
    """How many of the K responses each policy writes (as even as possible)."""
    return [k // n_policies + (i < k % n_policies) for i in range(n_policies)]


def collect_samples(policies: dict[str, Path], prompts: list[Prompt], c: CollectConfig,
                    seed: int, model_cfg=None, progress: Path | None = None) -> list[dict]:
    """{prompt_id, responses: [{text, policy}]} for each prompt, K responses, policies mixed
    in a per-prompt shuffled order (so position says nothing about the policy). With
    `progress` (a folder), each policy's finished batches are kept under it, so a rerun
    after a kill samples only the rest (the caller deletes it once the samples are saved)."""
    device = default_device()
    # One response list per entry of `prompts` (a prompt may appear more than once).
    per_row: list[list[Response]] = [[] for _ in prompts]
    for (name, path), quota in zip(policies.items(), split_k(c.k, len(policies))):
        tok = load_tokenizer(path, model_cfg)
        model = load_causal_lm(path, model_cfg=model_cfg).to(device)
        texts = [p.chat for p in prompts for _ in range(quota)]
        owners = [i for i in range(len(prompts)) for _ in range(quota)]
        outs = sample_texts(model, tok, texts, max_prompt_tokens=c.max_prompt_tokens,
                            max_new_tokens=c.max_new_tokens, temperature=c.temperature,
                            batch_size=c.batch_size, seed=seed, desc=f"collect {name}",
                            split=True, progress=None if progress is None else progress / name,
                            model_key=str(path))
        for row, text in zip(owners, outs):
            per_row[row].append(Response(text=text, policy=name))
        del model
    rng = random.Random(seed)
    samples = []
    for p, responses in zip(prompts, per_row):
        rng.shuffle(responses)
        samples.append({"prompt_id": p.id,
                        "responses": [{"text": r.text, "policy": r.policy} for r in responses]})
    return samples


def sandbox_rankings(cfg: RunConfig, prompts: dict[str, Prompt], samples: list[dict],
                     rnd: int) -> list[Ranking]:
    """The sandbox's simulated labelers rank the samples: training labelers rank every
    prompt's K responses; held-out labelers also rank a share of the valid-split prompts
    (RM evaluation data that never enters training)."""
    from instructrl.sandbox.generate import Sandbox
    from instructrl.sandbox.labelers import assign

    ps = [prompts[s["prompt_id"]] for s in samples]
    foreign = [p.id for p in ps if not is_sandbox_prompt(p)]
    if foreign:
        raise InputError(f"the sandbox's labelers judge only sandbox prompts, and "
                         f"{len(foreign)} of these are not (e.g. {foreign[0]}): leave the "
                         f"samples for people (--label none, then the labeling app) or train "
                         f"the RM on preferences you have", field="--label")
    sb = Sandbox(cfg.sandbox)
    resp = [[Response(r["text"], r["policy"]) for r in s["responses"]] for s in samples]
    out = sb.label_rankings(ps, resp, salt=str(rnd))
    rng = random.Random(f"heldout:{cfg.collect.seed}:{rnd}")
    for p, rs in zip(ps, resp):
        if p.split == "valid" and rng.random() < cfg.collect.heldout_share:
            lab = assign(sb.heldout_labelers, ("rank", p.id, rnd), cfg.sandbox.seed)
            out.append(lab.rank(p, rs, salt=str(rnd)))
    return out


def default_label(run: RunDir) -> str | None:
    """'sandbox' when every prompt of the run is the sandbox's, else None (people rank)."""
    prompts = run.prompts()
    return "sandbox" if prompts and all(is_sandbox_prompt(p) for p in prompts) else None


def collect(cfg: RunConfig, run: RunDir, policies: dict[str, str | Path], rnd: int,
            label: str | None = "auto") -> Path:
    c = cfg.collect
    stage = f"collect-{rnd}"
    out = run.stage(stage)
    if label == "auto":
        label = default_label(run)
    trust = cfg.model.trust_remote_code
    resolved = {name: resolve_model_path(path, trust_remote_code=trust)
                for name, path in policies.items()}
    train = round_prompts(run.prompts("train"), c.n_prompts, rnd, c.seed)
    valid = round_prompts(run.prompts("valid"), c.n_valid_prompts, rnd, c.seed)
    samples_path = out / "samples.jsonl"
    partial = out / "partial"  # batches sampled so far, for a rerun after a kill
    rt = runtime()
    if not samples_path.exists():
        t0 = time.time()
        # Under N processes each samples its share of the batches; the main one writes.
        samples = collect_samples(resolved, train + valid, c, seed=c.seed * 7919 + rnd,
                                  model_cfg=cfg.model, progress=partial)
        if rt.is_main:
            write_records(samples_path, samples)
            print(f"collect: {len(samples)} prompts x {c.k} responses from "
                  f"{', '.join(resolved)} in {time.time() - t0:.1f}s")
    rt.barrier()
    if rt.is_main and partial.exists():  # the batches are in samples.jsonl now
        shutil.rmtree(partial)
    if rt.is_main:  # labels (the sandbox's) and done.json, while the others wait
        samples = [obj for _, obj in read_jsonl(samples_path)]
        if label == "sandbox":
            rankings = sandbox_rankings(cfg, run.prompts_by_id(), samples, rnd)
            # Idempotent: a rerun after a crash between this write and done.json adds nothing.
            new = {json.dumps(r.to_dict(), sort_keys=True) for r in rankings}
            existing = [r for r in run.rankings()
                        if json.dumps(r.to_dict(), sort_keys=True) not in new]
            write_records(run.data / "rankings.jsonl", existing + rankings)
            skipped = sum(r.skipped is not None for r in rankings)
            print(f"collect: {len(rankings)} rankings by sandbox labelers ({skipped} skipped) "
                  f"appended to {run.data / 'rankings.jsonl'}")
        run.mark_done(stage, policies={k: str(v) for k, v in resolved.items()},
                      prompts=len(samples), labelled_by=label or "nobody yet")
    rt.barrier()
    return out


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_common(p)
    p.add_argument("--policy", action="append", default=[], metavar="NAME[=DIR]",
                   help="policy to sample from: a stage name in RUN (sft, ppo-ptx, ...) or "
                        "NAME=DIR (repeatable; default: sft)")
    p.add_argument("--round", type=int, default=0, help="collection round (new prompts each)")
    p.add_argument("--label", choices=["auto", "sandbox", "none"], default="auto",
                   help="rank with the sandbox's simulated labelers (sandbox prompts only), "
                        "or leave the samples for people (labeling app); auto (default): "
                        "the sandbox's labelers on a sandbox run, people otherwise")


def run(args: argparse.Namespace) -> int:
    cfg = run_config(args, record="collect")
    rd = RunDir(args.out)
    policies = {}
    for spec in args.policy or ["sft"]:
        name, _, path = spec.partition("=")
        policies[name] = path or rd.stage(name)
    out = collect(cfg, rd, policies, args.round, None if args.label == "none" else args.label)
    if runtime().is_main:
        print(json.dumps(rd.done_info(out.name)))
    return 0
