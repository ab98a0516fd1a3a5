"""The one place that knows about devices and processes.

A stage runs as one plain process, or as N data-parallel processes under `torchrun` or
`accelerate launch` (accelerate's `PartialState` joins the process group: gloo on CPUs, NCCL on
GPUs, one GPU per local rank). Every process holds every weight (data parallelism, as DDP);
what is split is the work:

- each global batch is the same list on every process (same seeds, same shuffles), and a
  process takes its shard of it (`shard`);
- each process weighs its loss by its shard's share of the *global* batch (tokens or
  prompts), and `sync_gradients` sums the gradients over processes, so the step is the one a
  single process takes on the whole batch: N processes equal one process with the same
  global batch, to float rounding (tests/test_distributed.py checks it on 2 CPU processes);
- metrics are summed the same way (`sum_stats`), rollouts gathered (`gather_rows`), and
  sampled texts (`gather_objects`);
- only the main process writes files; the others wait for it (`barrier`).

Why gradients are summed here rather than by wrapping models in DistributedDataParallel:
PPO's four models share weights (the LoRA reference and RM are views of the policy and the
value model with the adapter disabled), EMA and checkpoints address parameters by name, and a
process whose shard is empty (a batch smaller than N) must still join the all-reduce. A sum
of the trainable parameters' gradients after the backward passes is DDP's arithmetic without
its wrapper. What this does not do is shard weights or optimizer state (FSDP, DeepSpeed
ZeRO): every process must hold the whole model.

Precision lives here too (`precision`): `model.mixed_precision` (auto follows `accelerate
launch --mixed_precision` / its config file, else bf16 on a GPU that has it and float32 on a
CPU) gives every stage the same autocast, and for fp16 the loss scaling that goes with it.
"""

from __future__ import annotations

import os
import contextlib
from functools import lru_cache

import torch


class Runtime:
    """This process's place in the run: rank, world size and device."""

    def __init__(self) -> None:
        self.world = int(os.environ.get("WORLD_SIZE", "1") or 1)
        if self.world > 1:
            from datetime import timedelta

            from accelerate import PartialState
            # The other processes wait while the main one alone evaluates or selects (the
            # RM's evaluation, `sft select`): longer than torch's 30-minute default allows.
            state = PartialState(cpu=not torch.cuda.is_available(),
                                 timeout=timedelta(hours=3))
            self.rank = state.process_index
            self.world = state.num_processes
            self.device = (torch.device("cpu") if state.device.type == "cpu"
                           else state.device)
        else:
            self.rank = 0
            self.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world > 1

    def shard(self, items):
        """This process's part of a global batch (a list, or a tensor of row indices): every
        N-th item from its rank, so each part has the batch's mix of lengths."""
        return items[self.rank::self.world]

    def barrier(self) -> None:
        if self.distributed:
            torch.distributed.barrier()

    def sum_stats(self, stats: dict[str, float]) -> dict[str, float]:
        """Each key summed over processes (each process passes its weighted part; every
        process must pass the same keys, an empty shard's as zeros)."""
        if not self.distributed:
            return stats
        keys = sorted(stats)
        t = torch.tensor([float(stats[k]) for k in keys], dtype=torch.float64,
                         device=self._comm_device())
        torch.distributed.all_reduce(t)
        return dict(zip(keys, t.tolist()))

    def sync_gradients(self, params: list[torch.nn.Parameter]) -> None:
        """Sum the gradients of `params` over processes (one flat buffer per dtype). A
        parameter without a gradient on this process contributes zeros."""
        if not self.distributed:
            return
        by_dtype: dict[torch.dtype, list[torch.nn.Parameter]] = {}
        for p in params:
            if p.grad is None:
                p.grad = torch.zeros_like(p)
            by_dtype.setdefault(p.grad.dtype, []).append(p)
        for group in by_dtype.values():
            flat = torch.cat([p.grad.reshape(-1) for p in group])
            torch.distributed.all_reduce(flat)
            offset = 0
            for p in group:
                n = p.grad.numel()
                p.grad.copy_(flat[offset:offset + n].view_as(p.grad))
                offset += n

    def broadcast_parameters(self, model: torch.nn.Module) -> None:
        """Every process starts from the main process's trainable weights (DDP does the same
        at wrap time), whatever each one's random initialisation of new layers was."""
        if not self.distributed:
            return
        for p in model.parameters():
            if p.requires_grad:
                torch.distributed.broadcast(p.data, src=0)

    def gather_rows(self, t: torch.Tensor, pad: float | int = 0) -> torch.Tensor:
        """Concatenate every process's `t` along dim 0, in rank order; a 2-D `t` is first
        right-padded with `pad` to the widest process's dim 1."""
        if not self.distributed:
            return t
        if t.dim() == 2:
            width = torch.tensor([t.shape[1]], device=self._comm_device())
            torch.distributed.all_reduce(width, op=torch.distributed.ReduceOp.MAX)
            extra = int(width) - t.shape[1]
            if extra:
                t = torch.cat([t, t.new_full((t.shape[0], extra), pad)], 1)
        parts = [torch.empty_like(t) for _ in range(self.world)]
        torch.distributed.all_gather(parts, t.contiguous())
        return torch.cat(parts, 0)

    def gather_objects(self, obj) -> list:
        """Every process's picklable `obj`, in rank order."""
        if not self.distributed:
            return [obj]
        out = [None] * self.world
        torch.distributed.all_gather_object(out, obj)
        return out

    def _comm_device(self) -> torch.device:
        return self.device if torch.distributed.get_backend() == "nccl" else torch.device("cpu")

    def map_shard(self, fn, items: list) -> list:
        """`fn` (a list -> one result per item, each item's result its own) on this process's
        shard of `items`; every item's result, in `items`' order, on every process: what
        `fn(items)` returns in one process. Every process calls it with the same `items`.
        An item may be a whole batch, so that batches (and their seeds) stay as one
        process would make them."""
        if not self.distributed:
            return list(fn(items))
        out = [None] * len(items)
        for rank, part in enumerate(self.gather_objects(list(fn(self.shard(items))))):
            out[rank::self.world] = part
        return out


@lru_cache(maxsize=1)
def runtime() -> Runtime:
    """The process's Runtime (joins the process group on first use under a launcher)."""
    return Runtime()


class Precision:
    """Mixed precision of the forwards: autocast to bf16 or fp16 over float32 master weights,
    as `accelerate`'s `mixed_precision` does (fp32 runs everything in the weights' dtype).
    fp16 also scales the loss (torch's GradScaler: a step whose gradients overflowed is
    skipped and the scale halved). Every process takes the same decision, because the
    gradients are summed over processes before they are unscaled and checked.

    A training step reads: `with p.autocast(): loss = ...`; `p.backward(loss)`; sum the
    gradients; `p.step(opt, params, max_norm)` for each optimizer; `if p.update():` step the
    LR schedules."""

    def __init__(self, name: str, device: torch.device):
        self.name = name
        self.device = device
        self.dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(name)
        self.scaler = torch.amp.GradScaler(device.type) if name == "fp16" else None

    def autocast(self):
        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.dtype)

    def backward(self, loss: torch.Tensor) -> None:
        (loss if self.scaler is None else self.scaler.scale(loss)).backward()

    def step(self, opt: torch.optim.Optimizer, params: list[torch.nn.Parameter],
             max_norm: float | None = None) -> None:
        """Unscale (fp16), clip to `max_norm` if given, and step (skipped by fp16's scaler
        when a gradient is not finite)."""
        if self.scaler is not None:
            self.scaler.unscale_(opt)
        if max_norm is not None:
            torch.nn.utils.clip_grad_norm_(params, max_norm)
        if self.scaler is None:
            opt.step()
        else:
            self.scaler.step(opt)

    def update(self) -> bool:
        """After every optimizer of the step has stepped: fp16's scale for the next step.
        False when fp16 skipped the step (an overflow halved the scale): as accelerate does,
        the caller then leaves its LR schedule where it was."""
        if self.scaler is None:
            return True
        before = self.scaler.get_scale()
        self.scaler.update()
        return self.scaler.get_scale() >= before

    def state_dict(self) -> dict:
        return {} if self.scaler is None else self.scaler.state_dict()

    def load_state_dict(self, state: dict | None) -> None:
        if self.scaler is not None and state:
            self.scaler.load_state_dict(state)


def mixed_precision(model_cfg=None, device: torch.device | None = None) -> str:
    """`model.mixed_precision` resolved to fp32 | bf16 | fp16. auto: what `accelerate launch`
    was told (`--mixed_precision`, or its config file: ACCELERATE_MIXED_PRECISION, where fp32
    is 'no'), else bf16 on a GPU that has it, else fp32 (these CPUs run bf16 ~4x slower)."""
    device = device or runtime().device
    name = getattr(model_cfg, "mixed_precision", "auto") if model_cfg is not None else "auto"
    if name == "auto":
        name = os.environ.get("ACCELERATE_MIXED_PRECISION", "").lower() or (
            "bf16" if device.type == "cuda" and torch.cuda.is_bf16_supported() else "fp32")
        name = {"no": "fp32"}.get(name, name)
    if name not in ("fp32", "bf16", "fp16"):
        from instructrl.errors import InputError
        raise InputError(f"mixed precision {name!r} is not one of no, bf16, fp16",
                         field="ACCELERATE_MIXED_PRECISION")
    return name


def precision(model_cfg=None, device: torch.device | None = None) -> Precision:
    """The stage's Precision (one per training run: fp16's scaler carries state)."""
    device = device or runtime().device
    return Precision(mixed_precision(model_cfg, device), device)
