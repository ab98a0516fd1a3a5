"""Stage 0: the sandbox's base model, its GPT-3 (DESIGN.md section 5).

    instructrl pretrain --out RUN [--recipe recipes/pretrain-sandbox.yaml] [--ship [NAME]]

Trains a byte-level BPE tokenizer (`tokenizers`) on the sandbox's web-text corpus, then a
small Llama-style causal LM built from `PretrainConfig`, on the corpus packed into
fixed-length sequences (`<bos> doc <eos> <bos> doc <eos> ...`), with AdamW, linear warmup and
cosine decay. Writes RUN/base/ as a save_pretrained directory (model + tokenizer) that
`AutoModelForCausalLM` / `AutoTokenizer` load, plus metrics.jsonl. Every `checkpoint_every`
steps, RUN/base/checkpoint/ holds the model, tokenizer, optimizer, scheduler, RNG states and
step (replaced atomically); a killed run started again with the same command resumes there
and ends bit-for-bit where an uninterrupted run would have (on the same machine).
`--ship` copies the result into the package (instructrl/sandbox/base_model/), the base model
every sandbox run starts from; `--ship sandbox-large` (with recipes/pretrain-sandbox-large.yaml)
to instructrl/sandbox/base_model_large/, the larger base of `instructrl reproduce`
(`modeling.SHIPPED_BASES`). `--ship-dtype float16` stores the weights in half precision (half
the bytes in git; they load as float32 like any model).
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import math
import random
import shutil
import time
from pathlib import Path
from typing import Callable, Sequence

import torch
from tqdm.auto import tqdm

from instructrl.config import PretrainConfig, RunConfig, SandboxConfig, dump_config, load_config
from instructrl.data.jsonl import atomic_write_text
from instructrl.errors import InputError
from instructrl.modeling import (SHIPPED_BASES, atomic_dir, cast_state,
                                 sandbox_base_model_path, save_pretrained_atomic)
from instructrl.stages.common import MetricsLog, read_metrics

SPECIAL_TOKENS = ("<pad>", "<bos>", "<eos>", "<unk>")
STATE_FILE = "trainer_state.pt"
# Fields that may change between a run and its resume without changing the result.
_RESUME_FREE = {"checkpoint_every", "log_every"}
# What --ship copies into the package: the model and tokenizer, nothing run-specific.
SHIPPED_FILES = ("config.json", "generation_config.json", "model.safetensors",
                 "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")


# -- data --------------------------------------------------------------------------------------
def sandbox_corpus(sandbox: SandboxConfig, heldout_docs: int) -> tuple[list[str], list[str]]:
    """(training documents, held-out documents) of the sandbox world `sandbox.seed`."""
    from instructrl.sandbox.corpus import corpus, heldout_text
    from instructrl.sandbox.world import World

    world = World(seed=sandbox.seed)
    return (corpus(world, sandbox.n_corpus_docs, seed=sandbox.seed),
            heldout_text(world, heldout_docs, seed=sandbox.seed))


def train_tokenizer(texts: Sequence[str], vocab_size: int):
    """Byte-level BPE (every byte is a token, so nothing is ever unknown) with special tokens
    <pad> <bos> <eos> <unk>; encoding puts <bos> first, as in pretraining. Returned as a
    transformers fast tokenizer, which `AutoTokenizer` loads back from save_pretrained."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=list(SPECIAL_TOKENS),
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  min_frequency=2, show_progress=False)
    tok.train_from_iterator(texts, trainer)
    bos = tok.token_to_id("<bos>")
    tok.post_processor = processors.TemplateProcessing(
        single="<bos> $A", pair="<bos> $A <bos> $B", special_tokens=[("<bos>", bos)])
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", bos_token="<bos>",
                                   eos_token="<eos>", unk_token="<unk>")
    fast.padding_side = "left"
    return fast


def pack(tokenizer, texts: Sequence[str], seq_len: int) -> torch.Tensor:
    """Documents -> (N, seq_len) token ids of the stream `<bos> doc <eos> <bos> doc <eos> ...`
    cut into consecutive chunks (the last partial chunk is dropped)."""
    encoded = tokenizer(list(texts), add_special_tokens=True)["input_ids"]  # <bos> first
    eos = tokenizer.eos_token_id
    stream = [t for ids in encoded for t in (*ids, eos)]
    n = len(stream) // seq_len
    if n == 0:
        raise InputError(f"the corpus has {len(stream)} tokens, fewer than one sequence of "
                         f"pretrain.seq_len={seq_len}", field="pretrain.seq_len")
    return torch.tensor(stream[:n * seq_len], dtype=torch.long).view(n, seq_len)


def batch_indices(n_chunks: int, batch_size: int, step: int, seed: int) -> torch.Tensor:
    """Rows of the packed corpus for `step`: a fresh permutation per pass over the data,
    computed from (seed, pass) alone, so a resumed run needs no data-loader state."""
    start = step * batch_size
    rows = []
    while len(rows) < batch_size:
        epoch, offset = divmod(start + len(rows), n_chunks)
        gen = torch.Generator().manual_seed(seed * 100003 + epoch)
        perm = torch.randperm(n_chunks, generator=gen)
        rows.extend(perm[offset:offset + batch_size - len(rows)].tolist())
    return torch.tensor(rows, dtype=torch.long)


def corpus_fingerprint(texts: Sequence[str]) -> str:
    h = hashlib.sha256()
    for t in texts:
        h.update(t.encode("utf-8"))
        h.update(b"\0")
    return h.hexdigest()[:16]


# -- model and optimisation --------------------------------------------------------------------
def build_model(cfg: PretrainConfig, tokenizer):
    """A Llama-style decoder (RMSNorm, rotary positions, SwiGLU MLP) sized by `cfg`."""
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=cfg.hidden_size,
        intermediate_size=cfg.intermediate_size, num_hidden_layers=cfg.num_layers,
        num_attention_heads=cfg.num_heads, num_key_value_heads=cfg.num_heads,
        max_position_embeddings=cfg.max_position, tie_word_embeddings=cfg.tie_embeddings,
        pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id, rope_theta=10000.0)
    torch.manual_seed(cfg.seed)
    return LlamaForCausalLM(config).float()


def make_optimizer(model, cfg: PretrainConfig) -> torch.optim.AdamW:
    decay = [p for p in model.parameters() if p.requires_grad and p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.requires_grad and p.dim() < 2]
    return torch.optim.AdamW([{"params": decay, "weight_decay": cfg.weight_decay},
                              {"params": no_decay, "weight_decay": 0.0}],
                             lr=cfg.lr, betas=(0.9, 0.95))


def lr_factor(cfg: PretrainConfig) -> Callable[[int], float]:
    """Linear warmup from 0 over `warmup_steps`, then cosine to `lr_final_ratio`."""
    def f(step: int) -> float:
        if step < cfg.warmup_steps:
            return (step + 1) / cfg.warmup_steps
        t = min(1.0, (step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps))
        return cfg.lr_final_ratio + (1 - cfg.lr_final_ratio) * 0.5 * (1 + math.cos(math.pi * t))
    return f


@torch.no_grad()
def eval_loss(model, chunks: torch.Tensor, batch_size: int) -> float:
    """Mean next-token loss over packed held-out sequences (N, L)."""
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    for i in range(0, len(chunks), batch_size):
        x = chunks[i:i + batch_size]
        total += float(model(input_ids=x, labels=x).loss) * len(x)
        count += len(x)
    model.train(was_training)
    return total / max(1, count)


# -- checkpoints -------------------------------------------------------------------------------
def _save_checkpoint(ckpt_dir: Path, model, tokenizer, optimizer, scheduler, step: int,
                     cfg: PretrainConfig, fingerprint: str) -> None:
    with atomic_dir(ckpt_dir) as tmp:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        torch.save({"step": step, "optimizer": optimizer.state_dict(),
                    "scheduler": scheduler.state_dict(), "config": dataclasses.asdict(cfg),
                    "corpus": fingerprint,
                    "rng": {"python": random.getstate(), "torch": torch.get_rng_state()}},
                   tmp / STATE_FILE)


def _check_resumable(state: dict, cfg: PretrainConfig, fingerprint: str, ckpt_dir: Path) -> None:
    saved = {k: v for k, v in state["config"].items() if k not in _RESUME_FREE}
    now = {k: v for k, v in dataclasses.asdict(cfg).items() if k not in _RESUME_FREE}
    changed = sorted(k for k in now if saved.get(k) != now[k])
    if changed:
        raise InputError(f"the checkpoint was made with different settings ({', '.join(changed)});"
                         " use another --out or delete the checkpoint", path=str(ckpt_dir),
                         field=f"pretrain.{changed[0]}")
    if state["corpus"] != fingerprint:
        raise InputError("the checkpoint was trained on a different corpus; use another --out "
                         "or delete the checkpoint", path=str(ckpt_dir))


# -- the stage ---------------------------------------------------------------------------------
def main(cfg: PretrainConfig, out_dir: str | Path, corpus_texts: Sequence[str] | None = None, *,
         heldout_texts: Sequence[str] | None = None,
         on_step: Callable[[int], None] | None = None, progress: bool = True) -> dict:
    """Train (or resume) the base model into `out_dir`; returns the final metrics.

    `corpus_texts` defaults to the default sandbox world's corpus, `heldout_texts` to its
    held-out stream (or the last 5 % of `corpus_texts` when those are given).
    `on_step(step)` is called after each optimiser step, once any checkpoint of that step is
    written (tests use it to kill a run)."""
    from transformers import LlamaForCausalLM

    from instructrl.modeling import load_tokenizer

    cfg.validate()
    out_dir = Path(out_dir)
    if corpus_texts is None:
        corpus_texts, default_heldout = sandbox_corpus(SandboxConfig(), cfg.heldout_docs)
        heldout_texts = default_heldout if heldout_texts is None else heldout_texts
    corpus_texts = list(corpus_texts)
    if heldout_texts is None:
        n = max(1, len(corpus_texts) // 20)
        corpus_texts, heldout_texts = corpus_texts[:-n], corpus_texts[-n:]
    if not corpus_texts:
        raise InputError("the pretraining corpus is empty")
    fingerprint = corpus_fingerprint(corpus_texts)
    ckpt_dir = out_dir / "checkpoint"
    metrics_path = out_dir / "metrics.jsonl"
    t0 = time.time()

    state = None
    if (ckpt_dir / STATE_FILE).exists():
        state = torch.load(ckpt_dir / STATE_FILE, map_location="cpu", weights_only=False)
        _check_resumable(state, cfg, fingerprint, ckpt_dir)
        tokenizer = load_tokenizer(ckpt_dir)
        model = LlamaForCausalLM.from_pretrained(str(ckpt_dir), dtype=torch.float32)
        start = state["step"]
    else:
        tokenizer = train_tokenizer(corpus_texts, cfg.vocab_size)
        model = build_model(cfg, tokenizer)
        start = 0
    chunks = pack(tokenizer, corpus_texts, cfg.seq_len)  # (N, L)
    heldout = pack(tokenizer, heldout_texts, cfg.seq_len) if heldout_texts else chunks[:0]
    optimizer = make_optimizer(model, cfg)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_factor(cfg))
    if state is not None:
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        random.setstate(state["rng"]["python"])
        torch.set_rng_state(state["rng"]["torch"])
    else:
        random.seed(cfg.seed)
        torch.manual_seed(cfg.seed)
    log = MetricsLog(metrics_path, resume_step=start)  # rows past the checkpoint dropped

    n_params = sum(p.numel() for p in model.parameters())
    print(f"pretrain: {n_params / 1e6:.2f} M parameters, vocab {len(tokenizer)}, "
          f"{chunks.numel() / 1e3:.0f}k training tokens in {len(chunks)} sequences of "
          f"{cfg.seq_len}; {'resuming at step ' + str(start) if start else 'from scratch'}")
    model.train()
    window: list[float] = []
    bar = tqdm(total=cfg.steps, initial=start, desc="pretrain", disable=not progress,
               dynamic_ncols=True)
    tick = time.time()
    for step in range(start, cfg.steps):
        x = chunks[batch_indices(len(chunks), cfg.batch_size, step, cfg.seed)]  # (B, L)
        loss = model(input_ids=x, labels=x).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        window.append(loss.item())
        done = step + 1
        bar.update(1)
        bar.set_postfix(loss=f"{window[-1]:.3f}")
        if done % cfg.log_every == 0 or done == cfg.steps:
            elapsed = time.time() - tick
            row = {"step": done, "loss": sum(window) / len(window),
                   "lr": scheduler.get_last_lr()[0],
                   "tokens_per_s": len(window) * x.numel() / max(elapsed, 1e-9)}
            log.write(row)
            window, tick = [], time.time()
        if done % cfg.checkpoint_every == 0 or done == cfg.steps:
            _save_checkpoint(ckpt_dir, model, tokenizer, optimizer, scheduler, done, cfg,
                             fingerprint)
        if on_step is not None:
            on_step(done)
    bar.close()

    final = {"step": cfg.steps, "heldout_loss": eval_loss(model, heldout, cfg.batch_size)
             if len(heldout) else None,
             "train_loss_last": _last_train_loss(metrics_path), "params": n_params,
             "vocab": len(tokenizer), "corpus_fingerprint": fingerprint,
             "train_tokens": chunks.numel(),
             "train_s": round(_train_seconds(metrics_path, cfg.batch_size * cfg.seq_len), 1),
             "wall_s": round(time.time() - t0, 1)}
    save_pretrained_atomic(model, tokenizer, out_dir)
    atomic_write_text(out_dir / "final.json", json.dumps(final, indent=2) + "\n")
    print(f"pretrain: step {cfg.steps}, train loss {final['train_loss_last']:.3f}, held-out "
          f"loss {final['heldout_loss']:.3f}, {final['train_s']} s of training -> {out_dir}")
    return final


def _last_train_loss(metrics_path: Path) -> float | None:
    rows = read_metrics(metrics_path)
    return rows[-1]["loss"] if rows else None


def _train_seconds(metrics_path: Path, tokens_per_step: int) -> float:
    """Optimisation time summed over the metrics log, so it counts every resumed part."""
    total, prev = 0.0, 0
    for row in read_metrics(metrics_path):
        total += (row["step"] - prev) * tokens_per_step / max(row["tokens_per_s"], 1e-9)
        prev = row["step"]
    return total


def ship(base_dir: str | Path, dest: str | Path | None = None, provenance: dict | None = None,
         dtype: torch.dtype | None = None) -> Path:
    """Copy the model and tokenizer files of `base_dir` into the package (atomically), the
    weights cast to `dtype` when given."""
    from safetensors.torch import load_file, save_file

    base_dir = Path(base_dir)
    dest = Path(dest) if dest is not None else sandbox_base_model_path()
    with atomic_dir(dest) as tmp:
        for name in SHIPPED_FILES:
            if (base_dir / name).exists() and not (dtype and name == "model.safetensors"):
                shutil.copyfile(base_dir / name, tmp / name)
        if dtype is not None:
            weights = load_file(str(base_dir / "model.safetensors"))
            save_file(cast_state(weights, dtype), str(tmp / "model.safetensors"),
                      metadata={"format": "pt"})
            config = json.loads((tmp / "config.json").read_text())
            config["dtype"] = str(dtype).removeprefix("torch.")
            (tmp / "config.json").write_text(json.dumps(config, indent=2) + "\n")
        if provenance is not None:
            (tmp / "provenance.json").write_text(json.dumps(provenance, indent=2) + "\n")
    return dest


# -- CLI ---------------------------------------------------------------------------------------
def add_arguments(parser: argparse.ArgumentParser) -> None:
    from instructrl.cli import add_common

    add_common(parser)
    parser.add_argument("--ship", nargs="?", const="sandbox", choices=sorted(SHIPPED_BASES),
                        help="copy the trained model into the package as the shipped base "
                             "model NAME (default 'sandbox': instructrl/sandbox/base_model/)")
    parser.add_argument("--ship-dtype", choices=("float32", "float16", "bfloat16"),
                        help="store the shipped weights in this dtype (default: as trained)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    cfg: RunConfig = load_config(args.recipe, args.overrides)
    out = Path(args.out)
    base = out / "base"
    atomic_write_text(base / "config.yaml", dump_config(cfg))
    train, heldout = sandbox_corpus(cfg.sandbox, cfg.pretrain.heldout_docs)
    final = main(cfg.pretrain, base, train, heldout_texts=heldout, progress=not args.no_progress)
    if args.ship:
        cmd = "instructrl pretrain --out " + str(out) + (
            f" --recipe {args.recipe}" if args.recipe else "") + "".join(
            f" --set {o}" for o in args.overrides) + f" --ship {args.ship}" + (
            f" --ship-dtype {args.ship_dtype}" if args.ship_dtype else "")
        dest = ship(base, sandbox_base_model_path(args.ship),
                    provenance={"command": cmd, "pretrain": dataclasses.asdict(cfg.pretrain),
                                "sandbox": dataclasses.asdict(cfg.sandbox), **final},
                    dtype=getattr(torch, args.ship_dtype) if args.ship_dtype else None)
        print(f"pretrain: shipped {base} -> {dest}")
    return 0
