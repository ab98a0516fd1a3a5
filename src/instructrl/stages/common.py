"""What every training stage shares: seeding, LR schedules, resumable checkpoints, metrics
logs, and batching of (query, response) token sequences."""

from __future__ import annotations

import json
import math
import os
import random
from pathlib import Path
from typing import Any

import torch


def seed_everything(seed: int) -> None:
    random.seed(seed)
    torch.manual_seed(seed)


def seed_process(seed: int, position: int) -> None:
    """Under N processes, give each its own torch RNG stream from here on (dropout masks must
    differ between processes' shards), derived from the seed, the rank and the point the
    stage starts or resumes at. One process keeps the stream `seed_everything` began (and a
    checkpoint restored), so a resumed single-process run equals an uninterrupted one."""
    from instructrl.distributed import runtime
    rt = runtime()
    if rt.distributed:
        torch.manual_seed(hash((seed, rt.rank, position)) % 2**63)


def cosine_lambda(total_steps: int, final_ratio: float):
    """Cosine decay from 1 to `final_ratio` over `total_steps`, no warmup (App. C.1, C.2)."""
    def f(step: int) -> float:
        t = min(step, total_steps) / max(1, total_steps)
        return final_ratio + (1 - final_ratio) * 0.5 * (1 + math.cos(math.pi * t))
    return f


def rng_state() -> dict:
    return {"python": random.getstate(), "torch": torch.get_rng_state()}


def set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    torch.set_rng_state(state["torch"])


class Checkpoint:
    """One resumable state file per stage, replaced atomically: a stage killed at any moment
    finds either the previous or the new checkpoint, never half of one."""

    def __init__(self, stage_dir: str | Path):
        self.path = Path(stage_dir) / "checkpoint" / "state.pt"

    def save(self, state: dict[str, Any]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        torch.save(state, tmp)
        os.replace(tmp, self.path)

    def load(self) -> dict[str, Any] | None:
        if not self.path.exists():
            return None
        return torch.load(self.path, map_location="cpu", weights_only=False)

    def remove(self) -> None:
        self.path.unlink(missing_ok=True)
        if self.path.parent.exists() and not any(self.path.parent.iterdir()):
            self.path.parent.rmdir()


def trainable(model: torch.nn.Module) -> list[torch.nn.Parameter]:
    """The parameters an optimizer updates: all of them, or LoRA's adapters and heads."""
    return [p for p in model.parameters() if p.requires_grad]


def adamw_cosine(model: torch.nn.Module, lr: float, betas: tuple[float, float],
                 weight_decay: float, total_steps: int, final_ratio: float):
    """AdamW with cosine decay to `final_ratio` of the peak and no warmup (SFT and RM)."""
    opt = torch.optim.AdamW(trainable(model), lr=lr, betas=betas, weight_decay=weight_decay)
    return opt, torch.optim.lr_scheduler.LambdaLR(opt, cosine_lambda(total_steps, final_ratio))


def save_training_state(ckpt: "Checkpoint", model, opt, sched, prec, **progress: Any) -> None:
    """The trained parameters (not frozen LoRA base weights), optimizer, schedule, fp16's
    loss scale, RNG. Every process calls it (sharded weights are gathered: a collective);
    the main one writes."""
    from instructrl.distributed import runtime
    rt = runtime()
    weights, optimizer = rt.trainable_state(model), rt.optimizer_state(model, opt)
    if rt.is_main:
        ckpt.save({"model": weights, "optimizer": optimizer, "scheduler": sched.state_dict(),
                   "scaler": prec.state_dict(), "rng": rng_state(), **progress})


def resume_training_state(ckpt: "Checkpoint", model, opt, sched, prec) -> dict | None:
    """Load what `save_training_state` saved into the live objects; the progress fields
    (epoch, step) come back in the returned dict. None when there is no checkpoint."""
    from instructrl.distributed import runtime
    rt = runtime()
    state = ckpt.load()
    if state is not None:
        rt.load_trainable_state(model, state["model"])
        rt.load_optimizer_state(model, opt, state["optimizer"])
        sched.load_state_dict(state["scheduler"])
        prec.load_state_dict(state.get("scaler"))
        set_rng_state(state["rng"])
    return state


class MetricsLog:
    """metrics.jsonl, one object per step. On resume, rows past the checkpoint are dropped so
    the log reads as if the run had never stopped."""

    def __init__(self, path: str | Path, resume_step: int | None = None, key: str = "step",
                 enabled: bool = True):
        self.path = Path(path)
        self.enabled = enabled  # False on every process but the main one: it writes nothing
        if not enabled:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        rows = []
        if resume_step is not None and self.path.exists():
            for line in self.path.read_text().splitlines():
                try:
                    row = json.loads(line)
                except json.JSONDecodeError:  # a row cut off by a kill, or a blank line
                    continue
                if row.get(key, 0) <= resume_step:
                    rows.append(line + "\n")
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text("".join(rows))
        os.replace(tmp, self.path)

    def write(self, row: dict[str, Any]) -> None:
        if not self.enabled:
            return
        clean = {k: (float(v) if isinstance(v, torch.Tensor) else v) for k, v in row.items()}
        with self.path.open("a") as f:
            f.write(json.dumps(clean) + "\n")


def read_metrics(path: str | Path) -> list[dict]:
    path = Path(path)
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def collate(pairs: list[tuple[list[int], list[int]]], pad_id: int):
    """Right-padded batch of query+response sequences.

    Returns input_ids (B,T), attention_mask (B,T), response_mask (B,T) marking response tokens
    (the tokens a loss is taken on), and last (B,) the index of each sequence's final token
    (the EOS, where a reward model reads its score)."""
    lengths = [len(q) + len(r) for q, r in pairs]
    T = max(lengths)
    B = len(pairs)
    input_ids = torch.full((B, T), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((B, T), dtype=torch.long)
    response_mask = torch.zeros((B, T), dtype=torch.long)
    for i, (q, r) in enumerate(pairs):
        n = len(q) + len(r)
        input_ids[i, :n] = torch.tensor(q + r, dtype=torch.long)
        attention_mask[i, :n] = 1
        response_mask[i, len(q):n] = 1
    last = torch.tensor(lengths, dtype=torch.long) - 1
    return input_ids, attention_mask, response_mask, last


def pretraining_examples(texts: list[str], tokenizer, n: int, max_tokens: int, seed: int
                         ) -> list[tuple[list[int], list[int]]]:
    """`n` pretraining examples, random windows of `max_tokens` of the texts, as (empty query,
    tokens) pairs so that `collate` puts the LM loss on all of them (ptx, App. C.3 and C.4)."""
    rng = random.Random(seed)
    out = []
    for _ in range(n if texts else 0):
        ids = tokenizer(texts[rng.randrange(len(texts))], add_special_tokens=False)["input_ids"]
        start = rng.randrange(max(1, len(ids) - max_tokens + 1))
        out.append(([], ids[start:start + max_tokens]))
    return out


def chunks(n: int, size: int) -> list[slice]:
    """Slices of `size` (the last one shorter) covering range(n): micro-batches."""
    return [slice(s, min(s + size, n)) for s in range(0, n, size)]


def batches(items: list, batch_size: int, generator: random.Random | None = None,
            length=None, pool: int = 8) -> list[list]:
    """Fixed-size batches, shuffled when given a Random. With `length` (item -> tokens), items
    are sorted by length within pools of `pool` batches and the batches shuffled again, so a
    batch pads to similar lengths (padding is most of the cost of short, ragged sequences)."""
    idx = list(range(len(items)))
    if generator is not None:
        generator.shuffle(idx)
    if length is not None:
        span = batch_size * pool
        idx = [i for s in range(0, len(idx), span)
               for i in sorted(idx[s:s + span], key=lambda j: length(items[j]))]
    out = [[items[i] for i in idx[s:s + batch_size]] for s in range(0, len(idx), batch_size)]
    if length is not None and generator is not None:
        generator.shuffle(out)
    return out
