"""Load and save the models of the pipeline, for any Hugging Face `AutoModelForCausalLM`.

- policy / reference / SFT models: `load_causal_lm`, saved with `save_pretrained_atomic`;
- reward model and value function: `ScalarHeadModel`, the causal LM's transformer with its
  unembedding replaced by a scalar head (paper section 3.5, "Reward modeling"; the value
  function is initialised from the RM, App. C.4);
- residual dropout (App. C.1: 0.2 for SFT) for any architecture: `set_dropout`.

Every save goes to a temporary directory beside the target and is renamed into place, so a
crash never leaves a half-written checkpoint (`atomic_dir`).
"""

from __future__ import annotations

import contextlib
import json
import os
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
_UMASK = os.umask(0o022)
os.umask(_UMASK)


# -- paths --------------------------------------------------------------------------------
def sandbox_base_model_path() -> Path:
    """The sandbox base model shipped inside the package (made by `instructrl pretrain
    --recipe recipes/pretrain-sandbox.yaml`; the 'GPT-3' of the sandbox)."""
    return Path(__file__).resolve().parent / "sandbox" / "base_model"


def resolve_model_path(name: str | os.PathLike) -> Path:
    """'sandbox' -> the shipped sandbox base model; anything else is a path that must exist."""
    if str(name) == "sandbox":
        path = sandbox_base_model_path()
        if not (path / "config.json").exists():
            raise InputError("the sandbox base model is not shipped in this checkout; run "
                             "`instructrl pretrain --recipe recipes/pretrain-sandbox.yaml "
                             "--out runs/base --ship`", path=str(path))
        return path
    path = Path(name)
    if not path.exists():
        raise InputError("model directory not found", path=str(path))
    return path


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
def load_tokenizer(path: str | os.PathLike, *, gguf_file: str | None = None):
    """AutoTokenizer with a pad token (the EOS token when the model has none) and left
    padding, which batched generation needs (queries end where responses start)."""
    from transformers import AutoTokenizer

    path = resolve_model_path(path)
    kwargs = {"gguf_file": gguf_file} if gguf_file else {}
    tok = AutoTokenizer.from_pretrained(str(path), **kwargs)
    if tok.eos_token is None:
        raise InputError("the tokenizer has no EOS token; responses could never end",
                         path=str(path))
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    tok.padding_side = "left"
    return tok


def load_causal_lm(path: str | os.PathLike, *, dropout: float = 0.0, dtype=None,
                   gguf_file: str | None = None):
    """AutoModelForCausalLM from a save_pretrained dir (or a GGUF file inside `path`),
    with residual dropout `dropout` (`set_dropout`). `dtype` defaults to float32, which
    CPU training wants; pass torch.bfloat16 or "auto" for large models on accelerators."""
    from transformers import AutoModelForCausalLM

    path = resolve_model_path(path)
    kwargs = {"gguf_file": gguf_file} if gguf_file else {}
    model = AutoModelForCausalLM.from_pretrained(
        str(path), dtype=torch.float32 if dtype is None else dtype, **kwargs)
    set_dropout(model, dropout)
    return model


def save_pretrained_atomic(model, tokenizer, directory: str | os.PathLike) -> Path:
    """model.save_pretrained + tokenizer.save_pretrained into `directory`, atomically."""
    with atomic_dir(directory) as tmp:
        model.save_pretrained(tmp)
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
    return Path(directory)


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
        if parts[-1] in _OUTPUT_PROJECTIONS and any(p.isdigit() for p in parts[:-1]) \
                and not any(True for _ in module.children()):
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
    dropouts = [m for m in model.modules() if isinstance(m, nn.Dropout)]
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
    def from_causal_lm(cls, path: str | os.PathLike, dropout: float = 0.0, *, dtype=None,
                       gguf_file: str | None = None) -> "ScalarHeadModel":
        """Backbone of the causal LM at `path` with a fresh scalar head (RM initialisation)."""
        lm = load_causal_lm(path, dropout=0.0, dtype=dtype, gguf_file=gguf_file)
        model = cls(lm.base_model)
        del lm  # drops the unembedding
        set_dropout(model, dropout)
        return model

    @classmethod
    def from_pretrained(cls, directory: str | os.PathLike, dropout: float = 0.0, *,
                        dtype=None) -> "ScalarHeadModel":
        """Backbone + head + bias saved by `save_pretrained`."""
        from safetensors.torch import load_file
        from transformers import AutoModel

        directory = Path(directory)
        meta_path = directory / SCALAR_HEAD_CONFIG
        if not meta_path.exists():
            raise InputError(f"not a scalar-head model directory (no {SCALAR_HEAD_CONFIG})",
                             path=str(directory))
        meta = json.loads(meta_path.read_text())
        backbone = AutoModel.from_pretrained(
            str(directory), dtype=torch.float32 if dtype is None else dtype)
        state = load_file(str(directory / SCALAR_HEAD_WEIGHTS))
        head = nn.Linear(state["weight"].shape[1], 1)
        head.load_state_dict(state)
        model = cls(backbone, head, bias=float(meta["bias"]))
        set_dropout(model, dropout)
        return model

    def save_pretrained(self, directory: str | os.PathLike, tokenizer=None) -> Path:
        """Backbone via save_pretrained, head in safetensors, bias in scalar_head.json;
        atomically (temp dir + rename)."""
        from safetensors.torch import save_file

        with atomic_dir(directory) as tmp:
            self.backbone.save_pretrained(tmp)
            save_file({k: v.detach().cpu().contiguous() for k, v in self.head.state_dict().items()},
                      str(tmp / SCALAR_HEAD_WEIGHTS))
            (tmp / SCALAR_HEAD_CONFIG).write_text(json.dumps(
                {"bias": float(self.bias), "hidden_size": self.head.in_features}, indent=2))
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
