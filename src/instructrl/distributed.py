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
its wrapper.

Sharded weights (FSDP): launched with an accelerate config whose `distributed_type` is FSDP
(`accelerate launch` exports ACCELERATE_USE_FSDP and FSDP_*), `wrap` shards a trained
model's weights, gradients and optimizer state over the processes with torch's FSDP2
(`fully_shard` on each transformer block, then on the whole model); gradients are then
reduce-scattered by FSDP (as sums, like `sync_gradients`) instead of all-reduced here.
`reshard_after_forward` follows the config (FULL_SHARD / true: ZeRO-3-like; SHARD_GRAD_OP /
false: ZeRO-2-like), and FSDP_OFFLOAD_PARAMS keeps the shards in CPU memory. Every forward and
backward of a sharded model is a collective, so every process must make the same number of
them (`lockstep`), and checkpoints gather the whole state (`trainable_state`,
`optimizer_state`) and load it back whatever the number of processes. SFT, the RM and PPO
train sharded, with LoRA too (a group holds the frozen base weights and the adapters of its
block; under peft the groups go on the plain model that peft's forward calls).

DeepSpeed: launched with an accelerate config whose `distributed_type` is DEEPSPEED (its
`deepspeed_config`, or a DeepSpeed JSON file), the same FSDP2 sharding runs what the config
asks (`deepspeed_sharding`): ZeRO-3 reshards after forward, ZeRO-1/2 do not, ZeRO-0 is plain
data parallelism, CPU offload of parameters or optimizer is FSDP2's CPU offload; precision
follows the file's bf16/fp16 sections. DeepSpeed's engine itself is not used (why: beside
`_ZERO_STAGES`); the main process says so at start, with the config's batch, optimizer and
clipping settings that the recipe overrides.

Precision lives here too (`precision`): `model.mixed_precision` (auto follows `accelerate
launch --mixed_precision` / its config file, else bf16 on a GPU that has it and float32 on a
CPU) gives every stage the same autocast, and for fp16 the loss scaling that goes with it.
"""

from __future__ import annotations

import os
import contextlib
from functools import lru_cache
from typing import NamedTuple

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

        plan = sharding_plan() if self.world > 1 else None
        self.fsdp = plan is not None
        self.reshard_after_forward = plan.reshard_after_forward if plan else True
        self.offload = bool(plan and plan.offload)
        if self.world > 1 and self.is_main and _env_true("ACCELERATE_USE_DEEPSPEED"):
            print(deepspeed_note(plan), flush=True)

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
        parameter without a gradient on this process contributes zeros. Sharded parameters
        (FSDP's DTensors) are left alone: FSDP has summed their gradients already."""
        if not self.distributed:
            return
        by_dtype: dict[torch.dtype, list[torch.nn.Parameter]] = {}
        for p in params:
            if _is_sharded(p):
                continue
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

    def wrap(self, model: torch.nn.Module) -> torch.nn.Module:
        """`model` with its weights sharded over the processes when launched with FSDP (see
        the module's docstring); else `model` as it is. Call after `broadcast_parameters`
        and before making the optimizer."""
        if not self.fsdp:
            return model
        from torch.distributed.fsdp import CPUOffloadPolicy, FSDPModule, fully_shard

        kw = {"reshard_after_forward": self.reshard_after_forward}
        if self.offload and self.device.type != "cpu":
            kw["offload_policy"] = CPUOffloadPolicy()  # (on a CPU they are there already)
        blocks = {name for m in model.modules()
                  for name in (getattr(m, "_no_split_modules", None) or [])}
        for m in model.modules():
            if type(m).__name__ in blocks:
                fully_shard(m, **kw)
        # Children the stages call directly (the RM's backbone and head) need hooks of their
        # own; a child that shares a weight with another (tied embeddings) stays in the root's.
        # Under peft the forward reaches the plain model without calling the wrappers between
        # (peft calls get_base_model()), so the groups go on that model's children and on it.
        from instructrl.modeling import is_peft
        core = model.get_base_model() if is_peft(model) else model
        owners: dict[int, set[int]] = {}
        for i, child in enumerate(core.children()):
            for q in child.parameters():
                owners.setdefault(id(q), set()).add(i)
        for i, child in enumerate(core.children()):
            params = list(child.parameters())
            if params and all(owners[id(q)] == {i} for q in params):
                fully_shard(child, **kw)
        if core is not model:
            fully_shard(core, **kw)
        fully_shard(model, **kw)
        for m in model.modules():
            if isinstance(m, FSDPModule):
                # Each process weighs its loss by its share of the global batch, so the
                # gradients are summed, not averaged (and gloo has no pre-multiplied sum).
                m.set_force_sum_reduction_for_comms(True)
                m.set_gradient_divide_factor(1.0)
        if self.is_main:
            print(f"{type(model).__name__} sharded over {self.world} processes (FSDP2, "
                  f"reshard after forward: {'yes' if self.reshard_after_forward else 'no'})",
                  flush=True)
        return model

    def lockstep(self, n_mine: int, n_global: int, size: int) -> list[slice | None]:
        """Slices of `size` over this process's shard (`n_mine` items of a global batch of
        `n_global`). Sharded, every forward and backward is a collective that every process
        joins, so the list is padded with None up to the largest shard's count: the caller
        runs a pass of weight zero for each None."""
        parts = [slice(s, min(s + size, n_mine)) for s in range(0, n_mine, size)]
        if self.fsdp:
            most = -(-(-(-n_global // self.world)) // size)
            parts += [None] * (most - len(parts))
        return parts

    def trainable_state(self, model: torch.nn.Module) -> dict[str, torch.Tensor]:
        """The trained parameters by name, whole (gathered from the shards under FSDP, on
        the main process; every process must call it then)."""
        if not is_sharded(model):
            return {k: v.detach() for k, v in model.named_parameters() if v.requires_grad}
        from torch.distributed.checkpoint.state_dict import (StateDictOptions,
                                                             get_model_state_dict)
        full = get_model_state_dict(model, options=StateDictOptions(
            full_state_dict=True, cpu_offload=True, ignore_frozen_params=True))
        trained = set(_trained_names(model))  # (buffers come along; they are not trained)
        return {k: v for k, v in full.items() if k in trained}

    def full_state(self, model: torch.nn.Module) -> dict[str, torch.Tensor]:
        """Every weight and buffer of `model`, whole (see `trainable_state`)."""
        if not is_sharded(model):
            return model.state_dict()
        from torch.distributed.checkpoint.state_dict import (StateDictOptions,
                                                             get_model_state_dict)
        return get_model_state_dict(model, options=StateDictOptions(
            full_state_dict=True, cpu_offload=True))

    def load_trainable_state(self, model: torch.nn.Module, state: dict) -> None:
        """`trainable_state`'s dict back into the live (possibly sharded) parameters; every
        process passes the whole dict."""
        from instructrl.modeling import load_trainable_state
        if not is_sharded(model):
            return load_trainable_state(model, state)
        from torch.distributed.checkpoint.state_dict import (StateDictOptions,
                                                             set_model_state_dict)
        set_model_state_dict(model, state, options=StateDictOptions(
            full_state_dict=True, strict=False))

    def optimizer_state(self, model: torch.nn.Module, opt: torch.optim.Optimizer) -> dict:
        """`opt.state_dict()`, whole: in torch's own format (parameters by position) however
        the weights were sharded, so a checkpoint resumes under any number of processes."""
        if not is_sharded(model):
            return opt.state_dict()
        from torch.distributed.checkpoint.state_dict import (StateDictOptions,
                                                             get_optimizer_state_dict)
        full = get_optimizer_state_dict(model, opt, options=StateDictOptions(
            full_state_dict=True, cpu_offload=True))
        if not self.is_main:
            return {}
        index = {name: i for i, name in enumerate(_trained_names(model))}
        return {"state": {index[k]: v for k, v in full["state"].items()},
                "param_groups": [{**g, "params": [index[k] for k in g["params"]]}
                                 for g in full["param_groups"]]}

    def load_optimizer_state(self, model: torch.nn.Module, opt: torch.optim.Optimizer,
                             state: dict) -> None:
        if not is_sharded(model):
            return opt.load_state_dict(state)
        from torch.distributed.checkpoint.state_dict import (StateDictOptions,
                                                             set_optimizer_state_dict)
        names = _trained_names(model)
        by_name = {"state": {names[i]: v for i, v in state["state"].items()},
                   "param_groups": [{**g, "params": [names[i] for i in g["params"]]}
                                    for g in state["param_groups"]]}
        set_optimizer_state_dict(model, opt, by_name, options=StateDictOptions(
            full_state_dict=True))

    @contextlib.contextmanager
    def unsharded(self, model: torch.nn.Module):
        """Within: `model`'s weights gathered whole on every process (one all-gather), so
        that its forwards need no collective, as sampling does (each process decodes its own
        number of steps); resharded after. A model that is not sharded is left alone."""
        if not is_sharded(model):
            yield model
            return
        from torch.distributed.fsdp import FSDPModule
        groups = [m for m in model.modules() if isinstance(m, FSDPModule)]
        for m in groups:
            m.unshard()
            m.set_reshard_after_forward(False, recurse=False)
        try:
            yield model
        finally:
            for m in groups:
                m.set_reshard_after_forward(self.reshard_after_forward, recurse=False)
                m.reshard()

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


def _env_true(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in ("1", "true", "yes")


class Sharding(NamedTuple):
    """How `wrap` shards: FSDP2 with or without resharding after each forward (ZeRO-3's or
    ZeRO-2's arithmetic), parameters and optimizer step in CPU memory or not, and what the
    launcher asked for in its own words."""
    reshard_after_forward: bool
    offload: bool
    asked: str


def sharding_plan() -> Sharding | None:
    """What `accelerate launch` asked for: its FSDP settings, or its DeepSpeed ones run as
    FSDP2's equivalent (`deepspeed_sharding`); None for plain data parallelism."""
    if _env_true("ACCELERATE_USE_FSDP"):
        return Sharding(_reshard_after_forward(), _env_true("FSDP_OFFLOAD_PARAMS"), "FSDP")
    if _env_true("ACCELERATE_USE_DEEPSPEED"):
        return deepspeed_sharding()
    return None


# DeepSpeed configs are honoured with FSDP2 rather than DeepSpeed's engine: the stages own
# their optimizers, sum gradients and write checkpoints in torch's format that resume under
# any number of processes (module docstring); the engine would own the optimizer and step,
# average gradients, and save ZeRO checkpoints per rank. One sharding mechanism serves both
# kinds of config file, and ZeRO's stages map onto FSDP2's two modes.
_ZERO_STAGES = {0: None, 1: False, 2: False, 3: True}  # stage -> reshard after forward
# Sections of a DeepSpeed config that the recipe sets instead (batch sizes, optimizer,
# schedule, clipping): named to the user when the file sets them to other than "auto".
_RECIPE_KEYS = ("train_batch_size", "train_micro_batch_size_per_gpu",
                "gradient_accumulation_steps", "gradient_clipping", "optimizer", "scheduler")


def deepspeed_config() -> tuple[dict, str | None]:
    """The DeepSpeed JSON file accelerate was given (ACCELERATE_DEEPSPEED_CONFIG_FILE) and its
    path; ({}, None) without one."""
    from instructrl.errors import InputError
    path = os.environ.get("ACCELERATE_DEEPSPEED_CONFIG_FILE", "").strip()
    if not path or path.lower() == "none":
        return {}, None
    import json
    try:
        with open(path, encoding="utf-8") as f:
            cfg = json.load(f)
    except FileNotFoundError:
        raise InputError("the DeepSpeed config file does not exist", path=path,
                         field="deepspeed_config_file") from None
    except json.JSONDecodeError as e:
        raise InputError(f"not valid JSON: {e.msg}", path=path, line=e.lineno) from None
    if not isinstance(cfg, dict):
        raise InputError("a DeepSpeed config must be a JSON object", path=path)
    return cfg, path


def deepspeed_sharding() -> Sharding | None:
    """accelerate's DeepSpeed settings as FSDP2's: ZeRO-3 reshards parameters after each
    forward, ZeRO-2 (and ZeRO-1, which FSDP2 has no mode for: ZeRO-2 shards more) keeps them
    gathered between forward and backward, ZeRO-0 is plain data parallelism (None);
    offloading parameters or the optimizer to the CPU becomes FSDP2's CPU offload (both
    move together there). The stage and offload devices come from the config file's
    `zero_optimization` when accelerate was given one, else from accelerate's own keys
    (zero_stage, default 2 as in accelerate; offload_param_device, offload_optimizer_device)."""
    from instructrl.errors import InputError
    cfg, path = deepspeed_config()
    if path is not None:
        zero = cfg.get("zero_optimization", {})
        if not isinstance(zero, dict):
            raise InputError("must be an object", path=path, field="zero_optimization")
        stage, where = zero.get("stage", 0), "zero_optimization.stage"
        devices = {f"zero_optimization.{k}.device": (zero.get(k) or {}).get("device", "none")
                   for k in ("offload_param", "offload_optimizer")}
        source = path
    else:
        stage = os.environ.get("ACCELERATE_DEEPSPEED_ZERO_STAGE", "2")
        where = "zero_stage"
        devices = {k: os.environ.get(f"ACCELERATE_DEEPSPEED_{k.upper()}", "none")
                   for k in ("offload_param_device", "offload_optimizer_device")}
        source = "accelerate config"
    try:
        stage = int(stage)
        reshard = _ZERO_STAGES[stage]
    except (TypeError, ValueError, KeyError):
        raise InputError(f"ZeRO stage {stage!r} is not 0, 1, 2 or 3", path=path,
                         field=where) from None
    offload = False
    for field, device in devices.items():
        device = str(device).lower()
        if device == "nvme":
            raise InputError("NVMe offload is not supported (FSDP2, which runs DeepSpeed "
                             "configs here, offloads to CPU memory): use cpu or none",
                             path=path, field=field)
        if device not in ("none", "cpu"):
            raise InputError(f"offload device {device!r} is not none, cpu or nvme",
                             path=path, field=field)
        offload = offload or device == "cpu"
    if reshard is None:
        return None
    return Sharding(reshard, offload, f"DeepSpeed ZeRO-{stage} ({source})")


def _deepspeed_precision() -> str | None:
    """bf16 or fp16 when the DeepSpeed config file enables it ("auto" defers to accelerate)."""
    cfg, _ = deepspeed_config()
    for name in ("bf16", "fp16"):
        section = cfg.get(name)
        if isinstance(section, dict) and section.get("enabled") is True:
            return name
    return None


def deepspeed_note(plan: Sharding | None) -> str:
    """What a DeepSpeed launch becomes, said once by the main process."""
    cfg, path = deepspeed_config()
    if plan is None:
        said = "DeepSpeed ZeRO-0: plain data parallelism, every weight on every process"
    else:
        said = (f"{plan.asked}: trained models are sharded with FSDP2 (reshard after forward: "
                f"{'yes' if plan.reshard_after_forward else 'no'}, CPU offload: "
                f"{'yes' if plan.offload else 'no'}); DeepSpeed's engine is not used")
    ignored = [k for k in _RECIPE_KEYS if k in cfg and cfg[k] != "auto"]
    if ignored:
        said += (f". Set by the recipe, not by {path}: " + ", ".join(ignored))
    return said


def _reshard_after_forward() -> bool:
    """accelerate's FSDP settings: FSDP_RESHARD_AFTER_FORWARD (its FSDP2 key) or
    FSDP_SHARDING_STRATEGY (FSDP1's: FULL_SHARD = true, SHARD_GRAD_OP = false)."""
    from instructrl.errors import InputError
    if os.environ.get("FSDP_VERSION", "1") == "2" and "FSDP_RESHARD_AFTER_FORWARD" in os.environ:
        return _env_true("FSDP_RESHARD_AFTER_FORWARD")
    strategy = os.environ.get("FSDP_SHARDING_STRATEGY", "FULL_SHARD").upper()
    modes = {"FULL_SHARD": True, "1": True, "SHARD_GRAD_OP": False, "2": False}
    if strategy not in modes:
        raise InputError(f"{strategy!r} is not supported (FULL_SHARD or SHARD_GRAD_OP; for no "
                         f"sharding launch without FSDP)", field="fsdp_sharding_strategy")
    return modes[strategy]


def _is_sharded(p: torch.Tensor) -> bool:
    from torch.distributed.tensor import DTensor
    return isinstance(p, DTensor)


def local(p: torch.Tensor) -> torch.Tensor:
    """This process's shard of a sharded parameter (FSDP's DTensor); else `p` itself."""
    return p.to_local() if _is_sharded(p) else p


def gather_like(p: torch.Tensor, shard: torch.Tensor) -> torch.Tensor:
    """The whole tensor of which `shard` is this process's part, laid out as parameter `p`
    (a collective when `p` is sharded); `shard` itself otherwise."""
    if not _is_sharded(p):
        return shard
    from torch.distributed.tensor import DTensor
    return DTensor.from_local(shard, p.device_mesh, p.placements, shape=p.shape,
                              stride=p.stride()).full_tensor()


def shard_like(p: torch.Tensor, whole: torch.Tensor) -> torch.Tensor:
    """This process's part of `whole`, laid out as parameter `p`, on its device and dtype."""
    whole = whole.to(p.device, p.dtype)
    if not _is_sharded(p):
        return whole
    from torch.distributed.tensor import distribute_tensor
    return distribute_tensor(whole, p.device_mesh, p.placements).to_local()


def is_sharded(model: torch.nn.Module) -> bool:
    """Whether `model` was sharded by `Runtime.wrap` (FSDP)."""
    from torch.distributed.fsdp import FSDPModule
    return isinstance(model, FSDPModule)


def _trained_names(model: torch.nn.Module) -> list[str]:
    """Names of the trained parameters in the order an optimizer over `trainable(model)`
    holds them."""
    return [k for k, v in model.named_parameters() if v.requires_grad]


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

    def half(self, model) -> bool:
        """`model` computes in a half-precision dtype (autocast, or weights loaded so)."""
        return self.dtype is not None or next(model.parameters()).dtype != torch.float32

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
    is 'no'; under DeepSpeed also its config file's bf16/fp16 "enabled": true), else bf16 on a
    GPU that has it, else fp32 (these CPUs run bf16 ~4x slower)."""
    device = device or runtime().device
    name = getattr(model_cfg, "mixed_precision", "auto") if model_cfg is not None else "auto"
    if name == "auto":
        launched = os.environ.get("ACCELERATE_MIXED_PRECISION", "").lower()
        if launched in ("", "no") and _env_true("ACCELERATE_USE_DEEPSPEED"):
            launched = _deepspeed_precision() or launched
        name = launched or (
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
