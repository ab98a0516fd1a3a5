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
"""

from __future__ import annotations

import os
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


@lru_cache(maxsize=1)
def runtime() -> Runtime:
    """The process's Runtime (joins the process group on first use under a launcher)."""
    return Runtime()
