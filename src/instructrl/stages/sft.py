"""Stage 1: supervised fine-tuning on labeler demonstrations (paper section 3.5, App. C.1).

    instructrl sft --out RUN [--init DIR]          train, one model per epoch
    instructrl sft select --out RUN --rm RUN/rm    pick the epoch by reward-model score

The loss is taken on response tokens only. Paper defaults: 16 epochs, cosine decay to 10 % of
the peak LR with no warmup, residual dropout 0.2, Adam betas (0.9, 0.95). Every epoch is kept
under sft/epochs/NN; the model at sft/ is the selected epoch: by validation loss right after
training, and by mean RM score on validation prompts once `sft select` ran (the paper selects
by RM score, App. C.1: validation loss keeps rising after epoch 1 while quality improves).
The RL initialisation of App. C.3 is the same stage with `sft.ptx_fraction: 0.1`, 2 epochs.
`train(..., stage=, demonstrations=)` trains another SFT model on other demonstrations into
RUN/<stage> beside RUN/sft: the paper's FLAN / T0 baselines of Fig. 5 (sandbox.public_demos).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import random
import shutil
import tempfile
import time
from pathlib import Path

import torch
from tqdm.auto import tqdm

from instructrl.cli import add_common, run_config
from instructrl.config import RunConfig
from instructrl.data.jsonl import atomic_write_text
from instructrl.data.records import Demonstration, Prompt
from instructrl.losses import sft_loss
from instructrl.distributed import precision, runtime
from instructrl.modeling import (ADAPTER_DIR, add_lora, default_device, load_causal_lm,
                                 load_tokenizer, lora_enabled, prepare_for_training,
                                 resolve_model_path, save_pretrained_atomic, set_dropout,
                                 weights_dtype)
from instructrl.rollout import check_fused_lm, lm_loss_inputs
from instructrl.rundir import RunDir, join_prompts
from instructrl.stages.common import (Checkpoint, MetricsLog, adamw_cosine, batches,
                                      collate, pretraining_examples, read_metrics,
                                      resume_training_state, save_training_state,
                                      seed_everything, seed_process, trainable)
from instructrl.templates import encode_example

FUSED = "sft.fused_logprobs"  # named in a refusal of fused log-probs

# Prompts and their demonstrations, given instead of RUN/data's (e.g. sandbox.public_demos).
Demonstrations = tuple[list[Prompt], list[Demonstration]]


def sft_examples(run: RunDir, tokenizer, split: str, max_prompt_tokens: int,
                 max_response_tokens: int, demonstrations: Demonstrations | None = None
                 ) -> list[tuple[list, list]]:
    """(query ids, response ids) for each demonstration on a prompt of `split`: RUN/data's,
    or those of `demonstrations` (prompts, demonstrations) when given."""
    if demonstrations is None:
        prompts = run.prompts_by_id()
        demos, where = run.demonstrations(), str(run.data / "demonstrations.jsonl")
    else:
        prompts = {p.id: p for p in demonstrations[0]}
        demos, where = demonstrations[1], "(demonstrations given to sft)"
    out = []
    for prompt, demo in join_prompts(demos, prompts, where):
        if prompt.split == split:
            out.append(encode_example(tokenizer, prompt.chat, demo.response,
                                      max_prompt_tokens, max_response_tokens))
    return out


@torch.no_grad()
def eval_loss(model, examples, pad_id: int, batch_size: int, device, prec=None,
              fused: bool = False) -> float:
    """Mean response-token loss over `examples`, each process taking its shard (under the
    training's autocast when `prec` is given; `fused`: sft.fused_logprobs)."""
    model.eval()
    total, count = 0.0, 0.0
    mine = runtime().shard(examples)
    for s in runtime().lockstep(len(mine), len(examples), batch_size):
        ids, mask, resp, _ = (t.to(device) for t in collate(
            mine[s] if s is not None else examples[:1], pad_id))
        with prec.autocast() if prec is not None else contextlib.nullcontext():
            loss, stats = micro_loss(model, ids, mask, resp, fused)
        n = float(stats["sft/tokens"]) if s is not None else 0.0
        total, count = total + float(loss) * n, count + n
    sums = runtime().sum_stats({"total": total, "count": count})
    return sums["total"] / max(sums["count"], 1)


def micro_loss(model, ids, mask, resp, fused: bool):
    """`sft_loss` of one micro-batch; with `fused` (sft.fused_logprobs) the targets' log-probs
    are taken with the output layer, and the (B, T, V) logits never exist."""
    return sft_loss(labels=ids, mask=resp, **lm_loss_inputs(model, ids, mask, resp, fused,
                                                            switch=FUSED))


def check_fused(model, examples: list, pad: int, device, prec) -> None:
    """Once per process start, with sft.fused_logprobs: do the fused log-probs equal the
    model's own on the first examples (a forward that changes its logits would be trained
    wrongly)? Dropout off for the comparison; it draws no random numbers."""
    model.eval()
    ids, mask, resp, _ = (t.to(device) for t in collate(examples, pad))
    with prec.autocast():
        check_fused_lm(model, ids, mask, resp, half=prec.half(model), switch=FUSED)
    model.train()


def load_model(cfg: RunConfig, init: str | Path, *, dropout: float):
    """The model SFT trains: every weight in float32, or with `lora` a frozen base in the
    model's dtype plus adapters. Residual dropout goes on after the adapters, so it acts on
    each sub-layer's whole output."""
    lora = lora_enabled(cfg.lora, "sft")
    model = load_causal_lm(init, model_cfg=cfg.model, trained=not lora)
    if lora:
        model = add_lora(model, cfg.lora)
    set_dropout(model, dropout)
    return prepare_for_training(model, cfg.model)


def train_step(model, opt, sched, chunk: list, pad: int, micro: int, device, prec,
               fused: bool = False) -> dict:
    """One optimizer step on `chunk` (the global batch), its gradient accumulated over
    micro-batches of `micro` sequences of this process's shard, each weighted by its share of
    the batch's response tokens, and summed over processes: the same step as one
    forward/backward over the whole batch (the loss is a mean over its response tokens)."""
    total = sum(len(r) for _, r in chunk)
    opt.zero_grad(set_to_none=True)
    stats = {"loss/sft": 0.0, "sft/tokens": 0.0}  # (an empty shard adds zeros)
    mine = runtime().shard(chunk)
    for s in runtime().lockstep(len(mine), len(chunk), micro):
        # (None: a pass of weight zero, so that sharded weights see every process's pass)
        part = mine[s] if s is not None else chunk[:1]
        ids, mask, resp, _ = (t.to(device) for t in collate(part, pad))
        with prec.autocast():
            loss, st = micro_loss(model, ids, mask, resp, fused)
        w = float(st["sft/tokens"]) / max(total, 1) if s is not None else 0.0
        prec.backward(loss * w)
        if s is not None:
            stats["loss/sft"] += float(loss.detach()) * w
            stats["sft/tokens"] += float(st["sft/tokens"])
    runtime().sync_gradients(trainable(model))
    prec.step(opt, trainable(model))
    if prec.update():
        sched.step()
    return runtime().sum_stats(stats)


def train(cfg: RunConfig, run: RunDir, init: str | Path, *, stage: str = "sft",
          demonstrations: Demonstrations | None = None) -> Path:
    """Fine-tune `init` into RUN/<stage> on RUN/data's demonstrations, or on
    `demonstrations` (prompts with their splits, and demonstrations) when given: a second SFT
    model on other data (the paper's FLAN / T0 baselines, Fig. 5) beside RUN/sft."""
    c = cfg.sft
    out = run.stage(stage)
    seed_everything(c.seed)
    rt = runtime()
    device = rt.device
    init = resolve_model_path(init, trust_remote_code=cfg.model.trust_remote_code)
    tokenizer = load_tokenizer(init, cfg.model)
    model = load_model(cfg, init, dropout=c.dropout).to(device)
    rt.broadcast_parameters(model)
    model = rt.wrap(model)
    train_ex = sft_examples(run, tokenizer, "train", c.max_prompt_tokens, c.max_response_tokens,
                            demonstrations)
    valid_ex = sft_examples(run, tokenizer, "valid", c.max_prompt_tokens, c.max_response_tokens,
                            demonstrations)
    if not train_ex:
        raise SystemExit("no demonstrations on train prompts "
                         + (f"in {run.data}" if demonstrations is None else "given to sft"))
    if c.ptx_fraction > 0:  # App. C.3: mix pretraining data into the RL initialisation
        n_ptx = round(len(train_ex) * c.ptx_fraction / (1 - c.ptx_fraction))
        train_ex = train_ex + pretraining_examples(run.ptx_texts(), tokenizer, n_ptx,
                                           c.max_prompt_tokens + c.max_response_tokens, c.seed)
    steps_per_epoch = -(-len(train_ex) // c.batch_size)
    total = steps_per_epoch * c.epochs
    opt, sched = adamw_cosine(model, c.lr, c.betas, c.weight_decay, total, c.lr_final_ratio)
    prec = precision(cfg.model, device)
    ckpt = Checkpoint(out)
    state = resume_training_state(ckpt, model, opt, sched, prec)
    # (a checkpoint of an older version holds the epoch only: it was taken at its end)
    step = 0 if state is None else state.get("step", state["epoch"] * steps_per_epoch)
    start_epoch, skip = divmod(step, steps_per_epoch)
    if state is not None and rt.is_main:
        print(f"{stage}: resuming at step {step} (epoch {start_epoch + 1}) from {ckpt.path}")
    seed_process(c.seed, step)
    log = MetricsLog(out / "metrics.jsonl", resume_step=step, enabled=rt.is_main)
    if rt.is_main:
        atomic_write_text(out / "init.json", json.dumps({"init": str(init)}) + "\n")
    pad = tokenizer.pad_token_id
    micro = c.micro_batch_size or c.batch_size
    order = random.Random(c.seed)
    def seq_len(ex):
        return len(ex[0]) + len(ex[1])

    for _ in range(start_epoch):  # replay the shuffles of finished epochs
        batches(train_ex, c.batch_size, order, length=seq_len)
    if c.fused_logprobs:
        check_fused(model, train_ex[:micro], pad, device, prec)
    bar = tqdm(total=total, initial=step, desc=stage, unit="step", disable=not rt.is_main)
    for epoch in range(start_epoch, c.epochs):
        model.train()
        plan = batches(train_ex, c.batch_size, order, length=seq_len)
        for chunk in plan[skip if epoch == start_epoch else 0:]:
            stats = train_step(model, opt, sched, chunk, pad, micro, device, prec,
                               c.fused_logprobs)
            bar.update(1)
            bar.set_postfix(epoch=epoch + 1, loss=f"{stats['loss/sft']:.3f}")
            log.write({"step": bar.n, "epoch": epoch + 1, "lr": sched.get_last_lr()[0], **stats})
            if bar.n % c.checkpoint_every == 0 and bar.n % steps_per_epoch:
                save_training_state(ckpt, model, opt, sched, prec, epoch=epoch, step=bar.n)
                rt.barrier()
        val = (eval_loss(model, valid_ex, pad, micro, device, prec, c.fused_logprobs)
               if valid_ex else float("nan"))
        log.write({"step": bar.n, "epoch": epoch + 1, "val/loss": val})
        weights = rt.full_state(model)  # (gathered from the shards under FSDP)
        if rt.is_main:
            save_epoch(cfg, model, tokenizer, epoch_dir(out, epoch + 1), weights)
        save_training_state(ckpt, model, opt, sched, prec, epoch=epoch + 1, step=bar.n)
        rt.barrier()
    bar.close()
    if rt.is_main:
        sel = select(cfg, run, None, stage=stage)
        ckpt.remove()
        run.mark_done(stage, epochs=c.epochs, selected_epoch=sel["epoch"], init=str(init),
                      lora=lora_enabled(cfg.lora, "sft"))
    rt.barrier()
    return out


def save_epoch(cfg: RunConfig, model, tokenizer, directory: Path, weights=None) -> None:
    """An epoch's model, as little as selection needs: with LoRA the adapter alone (peft's
    format, applied to the init model when the epoch is loaded), else the whole model in the
    model's dtype (`model.dtype`; float32 on a CPU)."""
    if lora_enabled(cfg.lora, "sft"):
        from instructrl.modeling import atomic_dir
        with atomic_dir(directory) as tmp:
            # a peft model saves its adapter only (taken from the gathered `weights`)
            model.save_pretrained(tmp, state_dict=weights)
            tokenizer.save_pretrained(tmp)
    else:
        save_pretrained_atomic(model, tokenizer, directory, dtype=weights_dtype(cfg.model),
                               state=weights)


def load_epoch(cfg: RunConfig, out: Path, epoch: int):
    """The causal LM of a saved epoch (an adapter is merged into the init model)."""
    path = epoch_dir(out, epoch)
    if not (path / "adapter_config.json").exists():
        return load_causal_lm(path, model_cfg=cfg.model)
    from peft import PeftModel
    init = json.loads((out / "init.json").read_text())["init"]
    base = load_causal_lm(init, model_cfg=cfg.model)
    return PeftModel.from_pretrained(base, str(path)).merge_and_unload()


def _epoch_rows(out: Path) -> list[dict]:
    return [r for r in read_metrics(out / "metrics.jsonl") if "val/loss" in r]


def epoch_dir(out: Path, epoch: int) -> Path:
    return out / "epochs" / f"{epoch:02d}"


def install_epoch(cfg: RunConfig, out: Path, epoch: int, selection: dict) -> None:
    """Make sft/ the model of `epoch`: copy its files over (each file replaced atomically; the
    config and tokenizer are the same for every epoch, so only the weights change). A LoRA
    epoch is merged into its init model first, so sft/ is a plain model (PPO's reference must
    be the SFT model itself: a LoRA SFT is merged before PPO adds its own adapter), and its
    adapter is kept in sft/adapter/."""
    src = epoch_dir(out, epoch)
    staging = None
    if (src / "adapter_config.json").exists():
        staging = Path(tempfile.mkdtemp(prefix=".sft-merge-", dir=out))
        tok = load_tokenizer(src)
        save_pretrained_atomic(load_epoch(cfg, out, epoch), tok, staging / "model",
                               dtype=weights_dtype(cfg.model))
        shutil.copytree(src, staging / "model" / ADAPTER_DIR)
        src = staging / "model"
    try:
        for f in src.iterdir():
            if f.is_file():
                tmp = out / f".{f.name}.tmp"
                shutil.copyfile(f, tmp)
                tmp.replace(out / f.name)
            elif f.name == ADAPTER_DIR:
                tmp = out / f".{f.name}.tmp"
                shutil.rmtree(tmp, ignore_errors=True)
                shutil.copytree(f, tmp)
                shutil.rmtree(out / f.name, ignore_errors=True)
                tmp.rename(out / f.name)
    finally:
        if staging is not None:
            shutil.rmtree(staging, ignore_errors=True)
    atomic_write_text(out / "selection.json", json.dumps(selection, indent=1) + "\n")


def selected(run: RunDir, stage: str = "sft") -> bool:
    """RUN/<stage>'s epoch has been selected by a reward model (`select`)."""
    path = run.stage(stage) / "selection.json"
    return path.exists() and "rm" in json.loads(path.read_text())


@torch.no_grad()
def select(cfg: RunConfig, run: RunDir, rm_dir: str | Path | None, *,
           stage: str = "sft") -> dict:
    """Pick the epoch of RUN/<stage> whose samples on RUN/data's validation prompts (the
    users') the RM scores highest; the paper chose its FLAN / T0 baselines' checkpoints the
    same way. Without an RM, the epoch of least validation loss."""
    out = run.stage(stage)
    rows = {r["epoch"]: r["val/loss"] for r in _epoch_rows(out)}
    if rm_dir is None:
        # NaN (no validation demonstrations) sorts last, so the last epoch wins then.
        best = min(sorted(rows), key=lambda e: (rows[e] != rows[e], rows[e], -e))
        sel = {"selected_by": "validation loss (no reward model yet)", "epoch": best,
               "table": [{"epoch": e, "val_loss": v} for e, v in sorted(rows.items())]}
        print(f"{stage}: no reward model given, selecting epoch {best} by validation loss")
        install_epoch(cfg, out, best, sel)
        return sel
    from instructrl.generation import sample_texts, score_texts
    from instructrl.modeling import ScalarHeadModel

    device = default_device()
    rm = ScalarHeadModel.from_pretrained(rm_dir, model_cfg=cfg.model).to(device).eval()
    prompts = run.prompts("valid")
    random.Random(cfg.sft.seed).shuffle(prompts)
    texts = [p.chat for p in prompts[:cfg.sft.select_prompts]]
    c = cfg.sft
    table = []
    for epoch in tqdm(sorted(rows), desc=f"{stage} select", unit="epoch"):
        tok = load_tokenizer(epoch_dir(out, epoch), cfg.model)
        policy = load_epoch(cfg, out, epoch).to(device).eval()
        responses = sample_texts(policy, tok, texts, max_prompt_tokens=c.max_prompt_tokens,
                                 max_new_tokens=c.max_response_tokens, seed=c.seed)
        scores = score_texts(rm, tok, texts, responses, max_prompt_tokens=c.max_prompt_tokens,
                             max_response_tokens=c.max_response_tokens)
        table.append({"epoch": epoch, "rm_score": float(scores.mean()),
                      "val_loss": rows[epoch]})
    best = max(table, key=lambda r: r["rm_score"])
    sel = {"selected_by": f"mean RM score on {len(texts)} validation prompts",
           "rm": str(rm_dir), "epoch": best["epoch"], "table": table}
    install_epoch(cfg, out, best["epoch"], sel)
    print(f"{'epoch':>5} {'RM score':>9} {'val loss':>9}")
    for r in table:
        mark = "  <- selected" if r is best else ""
        print(f"{r['epoch']:>5} {r['rm_score']:>9.3f} {r['val_loss']:>9.3f}{mark}")
    return sel


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("action", nargs="?", choices=["train", "select"], default="train",
                   help="train (default), or select the epoch by reward-model score")
    add_common(p)
    p.add_argument("--init", default=None,
                   help="model to fine-tune: a directory, a .gguf file, pkg:MODULE/FILE, a hub "
                        "id or 'sandbox' (default: RUN/base, else pipeline.base_model)")
    p.add_argument("--rm", default=None, help="reward model dir for `select`")


def default_init(cfg: RunConfig, run: RunDir) -> Path | str:
    """RUN/base when the run pretrained one, else the recipe's `pipeline.base_model`."""
    if (run.stage("base") / "config.json").exists():
        return run.stage("base")
    return cfg.pipeline.base_model


def run(args: argparse.Namespace) -> int:
    cfg = run_config(args, record="sft")
    rd = RunDir(args.out)
    t0 = time.time()
    rt = runtime()
    if args.action == "select":
        if rt.is_main:  # a few samples per epoch: one process does it, the others wait
            select(cfg, rd, args.rm)
        rt.barrier()
    else:
        train(cfg, rd, args.init or default_init(cfg, rd))
    if rt.is_main:
        print(f"sft {args.action}: {time.time() - t0:.1f}s")
    return 0
