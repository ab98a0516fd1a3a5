"""Stage 2: the reward model, trained on K-wise rankings (paper section 3.5, App. C.2).

    instructrl rm --out RUN [--init RUN/sft] [--rankings FILE]

The RM is the SFT model with its unembedding replaced by a scalar head; the score is read at
the last response token (the EOS). All K responses of one prompt form ONE batch element: the
prompt goes through the model once and each of the K responses once on top of its KV cache
(`generation.score_groups`), and the loss averages -log sigmoid(r_w - r_l) over that prompt's
C(K,2) pairs (ties dropped), so every prompt weighs the same and the batch size counts prompts
(App. C.2: this avoids the overfitting of shuffling pairs). One epoch, cosine decay to 10 %.
Afterwards a bias is set so that the labeler demonstrations score mean 0 (section 3.5:
"normalized ... so that the labeler demonstrations achieve a mean score of 0 before doing RL");
it is stored with the model and applied whenever it is loaded.
"""

from __future__ import annotations

import argparse
import json
import random
import time
from collections import defaultdict
from pathlib import Path

import torch
from tqdm.auto import tqdm

from instructrl.cli import add_common, run_config
from instructrl.config import RMConfig, RunConfig
from instructrl.data.jsonl import atomic_write_text, read_records
from instructrl.data.records import Prompt, Ranking
from instructrl.distributed import precision, runtime
from instructrl.losses import ranking_loss
from instructrl.generation import score_groups, score_sequences
from instructrl.modeling import (ScalarHeadModel, load_tokenizer,
                                 lora_enabled, prepare_for_training, resolve_model_path,
                                 weights_dtype)
from instructrl.rundir import RunDir, join_prompts
from instructrl.stages.common import (Checkpoint, MetricsLog, adamw_cosine, batches,
                                      resume_training_state, save_training_state,
                                      seed_everything, seed_process, trainable)
from instructrl.templates import encode_prompt, encode_response


def ranking_elements(pairs: list[tuple[Prompt, Ranking]], tokenizer, cfg: RMConfig) -> list[dict]:
    """One batch element per ranking: the prompt's ids, its K responses' ids and their rank
    levels."""
    out = []
    for prompt, r in pairs:
        if r.skipped or not r.pairs():
            continue  # nothing to learn from a skip or an all-tied ranking
        level = [0] * len(r.responses)
        for lv, group in enumerate(r.ranking):
            for i in group:
                level[i] = lv
        out.append({"prompt": encode_prompt(tokenizer, prompt.chat, cfg.max_prompt_tokens),
                    "responses": [encode_response(tokenizer, resp.text, cfg.max_response_tokens)
                                  for resp in r.responses],
                    "level": level, "category": prompt.category, "labeler": r.labeler_id})
    return out


def flatten(elements: list[dict]) -> tuple[list, list[int], list[int]]:
    """The batch as (prompt ids, its K response ids) groups, with every response's prompt
    index and level."""
    groups, group, level = [], [], []
    for g, el in enumerate(elements):
        groups.append((el["prompt"], el["responses"]))
        group += [g] * len(el["responses"])
        level += el["level"]
    return groups, group, level


def element_length(el: dict) -> int:
    """Tokens of an element's longest (prompt, response) sequence: the key batches group by."""
    return len(el["prompt"]) + max(len(r) for r in el["responses"])


def forward_batch(model, elements: list[dict], pad_id: int):
    groups, group, level = flatten(elements)
    rewards = score_groups(model, groups, pad_id)  # (N,) each prompt once, its K responses
    return ranking_loss(rewards, torch.tensor(group, device=rewards.device),
                        torch.tensor(level, device=rewards.device))


def train_step(model, opt, sched, elements: list[dict], pad_id: int, micro: int,
               prec) -> dict:
    """One optimizer step on a batch of ranking elements, the gradient accumulated over
    micro-batches of `micro` prompts of this process's shard and summed over processes. The
    loss is a mean over prompts (each element has at least one untied pair), so a micro-batch
    weighs its share of the batch's prompts: the same step as one forward/backward over the
    whole batch."""
    opt.zero_grad(set_to_none=True)
    stats = dict.fromkeys(("loss/rm", "rm/accuracy", "rm/margin", "rm/prompts"), 0.0)
    pairs = 0.0
    n_batch = len(elements)
    mine = runtime().shard(elements)
    for s in runtime().lockstep(len(mine), n_batch, micro):
        # (None: a pass of weight zero, so that sharded weights see every process's pass)
        with prec.autocast():
            loss, st = forward_batch(model, mine[s] if s is not None else elements[:1], pad_id)
        prec.backward(loss * ((s.stop - s.start) / n_batch if s is not None else 0.0))
        if s is None:
            continue
        n = float(st["rm/pairs"])
        pairs += n
        stats["loss/rm"] += float(loss.detach()) * (s.stop - s.start)
        for k in ("rm/accuracy", "rm/margin"):  # means over pairs
            stats[k] += float(st[k]) * n
        stats["rm/prompts"] += float(st["rm/prompts"])
    runtime().sync_gradients(trainable(model))
    prec.step(opt, trainable(model))
    if prec.update():
        sched.step()
    stats = runtime().sum_stats({**stats, "rm/pairs": pairs})
    stats["loss/rm"] /= n_batch
    for k in ("rm/accuracy", "rm/margin"):
        stats[k] /= max(stats["rm/pairs"], 1.0)
    return stats


@torch.no_grad()
def pairwise_accuracy(model, elements: list[dict], pad_id: int, batch_size: int) -> dict:
    """Fraction of untied pairs the RM orders as the labeler did: overall and by category.
    The overall entry also holds [pairs right, pairs] of each ranking ("rankings"), for an
    interval that counts a ranking's pairs as the dependent draws they are."""
    model.eval()
    hits: dict[str, list[float]] = defaultdict(lambda: [0.0, 0.0])
    per_ranking = []
    for chunk in batches(elements, batch_size):
        groups, group, level = flatten(chunk)
        r = score_groups(model, groups, pad_id).tolist()
        mine = [[0, 0] for _ in chunk]  # [right, pairs] of each ranking of the chunk
        for i in range(len(r)):
            for j in range(len(r)):
                if group[i] == group[j] and level[i] < level[j]:
                    mine[group[i]][0] += int(r[i] > r[j])
                    mine[group[i]][1] += 1
        for element, (right, n) in zip(chunk, mine):
            if n:
                per_ranking.append([right, n])
                for key in ("all", element["category"]):
                    hits[key][0] += right
                    hits[key][1] += n
    out = {k: {"accuracy": h / n, "pairs": int(n)} for k, (h, n) in sorted(hits.items())}
    if "all" in out:
        out["all"]["rankings"] = per_ranking
    return out


@torch.no_grad()
def normalise_bias(model: ScalarHeadModel, seqs: list[tuple[list, list]], pad_id: int,
                   batch_size: int) -> float:
    """Shift the bias so the given sequences (labeler demonstrations) score mean 0."""
    model.eval()
    scores = torch.cat([score_sequences(model, chunk, pad_id)
                        for chunk in batches(seqs, batch_size)])
    mean = float(scores.double().mean())
    model.bias.sub_(mean)
    return mean


def split_rankings(run: RunDir, rankings: list[Ranking], path: str):
    """Training: training labelers on train prompts. Validation: training labelers on valid
    prompts. Held-out: held-out labelers anywhere (never trained on, paper section 3.4)."""
    heldout = run.heldout_labelers()
    pairs = join_prompts(rankings, run.prompts_by_id(), path)
    train = [(p, r) for p, r in pairs if r.labeler_id not in heldout and p.split == "train"]
    valid = [(p, r) for p, r in pairs if r.labeler_id not in heldout and p.split == "valid"]
    held = [(p, r) for p, r in pairs if r.labeler_id in heldout]
    return train, valid, held


def build_model(cfg: RunConfig, init: Path) -> ScalarHeadModel:
    """The RM to train: a scalar head on `init`'s transformer, every weight in float32, or
    with LoRA an adapter on the backbone and the whole head."""
    lora = lora_enabled(cfg.lora, "rm")
    model = ScalarHeadModel.from_causal_lm(init, model_cfg=cfg.model, trained=not lora)
    if lora:
        model.with_lora(cfg.lora)
    return model


def train(cfg: RunConfig, run: RunDir, init: str | Path, rankings_path: str | Path | None = None,
          stage: str = "rm") -> Path:
    c = cfg.rm
    out = run.stage(stage)
    seed_everything(c.seed)
    rt = runtime()
    device = rt.device
    path = Path(rankings_path) if rankings_path else run.data / "rankings.jsonl"
    init = resolve_model_path(init, trust_remote_code=cfg.model.trust_remote_code)
    tokenizer = load_tokenizer(init, cfg.model)
    pad = tokenizer.pad_token_id
    tr, va, ho = split_rankings(run, read_records(path, Ranking.from_dict), str(path))
    train_el = ranking_elements(tr, tokenizer, c)
    valid_el = ranking_elements(va, tokenizer, c)
    held_el = ranking_elements(ho, tokenizer, c)
    if not train_el:
        raise SystemExit(f"rm: no usable training rankings in {path} (training labelers on "
                         f"train-split prompts)")
    lora = lora_enabled(cfg.lora, "rm")
    model = prepare_for_training(build_model(cfg, init), cfg.model).to(device)
    rt.broadcast_parameters(model)
    model = rt.wrap(model)
    steps_per_epoch = -(-len(train_el) // c.batch_size)
    total = steps_per_epoch * c.epochs
    opt, sched = adamw_cosine(model, c.lr, c.betas, c.weight_decay, total, c.lr_final_ratio)
    prec = precision(cfg.model, device)
    ckpt = Checkpoint(out)
    state = resume_training_state(ckpt, model, opt, sched, prec)
    step = 0 if state is None else state["step"]
    if state is not None and rt.is_main:
        print(f"{stage}: resuming at step {step} from {ckpt.path}")
    seed_process(c.seed, step)
    log = MetricsLog(out / "metrics.jsonl", resume_step=step, enabled=rt.is_main)
    order = random.Random(c.seed)
    plan = [b for _ in range(c.epochs)
            for b in batches(train_el, c.batch_size, order, length=element_length)]
    bar = tqdm(total=total, initial=step, desc=stage, unit="step", disable=not rt.is_main)
    model.train()
    micro = c.micro_batch_size or c.batch_size
    for i in range(step, total):
        stats = train_step(model, opt, sched, plan[i], pad, micro, prec)
        bar.update(1)
        bar.set_postfix(loss=f"{stats['loss/rm']:.3f}", acc=f"{stats['rm/accuracy']:.2f}")
        log.write({"step": i + 1, "lr": sched.get_last_lr()[0], **stats})
        if (i + 1) % c.checkpoint_every == 0 and i + 1 < total:
            save_training_state(ckpt, model, opt, sched, prec, step=i + 1)
            rt.barrier()
    bar.close()
    weights = rt.full_state(model)  # (gathered from the shards under FSDP: a collective)
    if not rt.is_main:  # the trained model is the same on every process: one evaluates it
        rt.barrier()
        return out
    if rt.fsdp:  # which it does on a plain copy: a sharded model's forward needs them all
        model = build_model(cfg, init)
        model.load_state_dict(weights)
        model = model.to(device)
    # Bias: labeler demonstrations on training prompts score mean 0 (section 3.5).
    from instructrl.stages.sft import sft_examples
    demos = sft_examples(run, tokenizer, "train", c.max_prompt_tokens, c.max_response_tokens)
    shift = normalise_bias(model, demos, pad, micro) if demos else 0.0
    results = {
        "train_rankings": len(train_el), "bias_shift": shift, "bias": float(model.bias),
        "valid": pairwise_accuracy(model, valid_el, pad, micro),
        "heldout_labelers": pairwise_accuracy(model, held_el, pad, micro),
    }
    model.save_pretrained(out, tokenizer, dtype=weights_dtype(cfg.model))
    atomic_write_text(out / "eval.json", json.dumps(results, indent=1) + "\n")
    ckpt.remove()
    run.mark_done(stage, rankings=str(path), init=str(init), lora=lora)
    for name in ("valid", "heldout_labelers"):
        acc = results[name].get("all")
        if acc:
            print(f"rm: pairwise accuracy on {name.replace('_', ' ')}: "
                  f"{acc['accuracy']:.3f} over {acc['pairs']} pairs")
    rt.barrier()
    return out


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_common(p)
    p.add_argument("--init", default=None, help="model to start from (default: RUN/sft)")
    p.add_argument("--rankings", default=None,
                   help="rankings jsonl (default: RUN/data/rankings.jsonl)")
    p.add_argument("--stage", default="rm", help="stage dir name (default: rm)")


def run(args: argparse.Namespace) -> int:
    cfg = run_config(args, record="rm")
    rd = RunDir(args.out)
    t0 = time.time()
    train(cfg, rd, args.init or rd.stage("sft"), args.rankings, stage=args.stage)
    if runtime().is_main:
        print(f"rm: {time.time() - t0:.1f}s")
    return 0
