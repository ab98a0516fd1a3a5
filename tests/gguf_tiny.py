"""Write a tiny Llama save_pretrained directory as a GGUF file, for tests of the GGUF path
(`instructrl.modeling.gguf_to_pretrained`) without the real 98 MB SmolLM2 file.

The file follows llama.cpp's conventions (convert_hf_to_gguf.py), which is what transformers'
GGUF loader undoes (transformers/modeling_gguf_pytorch_utils.py, the "legacy" loader that
handles arch "llama" in transformers 5.x; integrations/gguf/gguf_tokenizer_mapping.py for the
tokenizer):

- arch "llama"; hyperparameters under llama.* (context_length, embedding_length, block_count,
  feed_forward_length, attention.head_count[_kv], attention.layer_norm_rms_epsilon,
  rope.dimension_count (read back as head_dim), rope.freq_base (rope_theta), vocab_size);
- tensors token_embd, blk.N.{attn_q,attn_k,attn_v,attn_output,ffn_gate,ffn_up,ffn_down,
  attn_norm,ffn_norm}, output_norm, and output unless the embeddings are tied (transformers
  sets tie_word_embeddings from whether output.weight is present);
- Q and K rows permuted the way llama.cpp does for its rotary layout
  (`LlamaTensorProcessor._reverse_permute_weights` undoes it);
- tokenizer.ggml.model "gpt2" (byte-level BPE): tokens in id order, token_type (CONTROL for
  special added tokens, USER_DEFINED for other added tokens), merges as "a b" strings, the
  bos/eos/unk/pad ids, and add_bos/add_eos false (the conftest tokenizer adds neither).

`dtype` "F32" (exact), "F16" or "Q8_0" for the 2-D weights; 1-D norms stay F32, as in
llama.cpp, and so does any matrix whose rows are not whole Q8_0 blocks.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

_TOKEN_NORMAL, _TOKEN_CONTROL, _TOKEN_USER_DEFINED = 1, 3, 4


def _permute_rotary(w: np.ndarray, n_head: int) -> np.ndarray:
    """llama.cpp's `LlamaModel.permute`: HF's half-split rotary rows -> interleaved pairs."""
    return (w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:])
            .swapaxes(1, 2)
            .reshape(w.shape))


def _tensors(state: dict, cfg: dict) -> dict[str, np.ndarray]:
    """HF state dict (numpy float32) -> GGUF tensor name -> array, Q/K permuted."""
    n_head = cfg["num_attention_heads"]
    n_kv = cfg.get("num_key_value_heads") or n_head
    out = {"token_embd.weight": state["model.embed_tokens.weight"],
           "output_norm.weight": state["model.norm.weight"]}
    if not cfg.get("tie_word_embeddings", False):
        out["output.weight"] = state["lm_head.weight"]
    leaves = {"self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k",
              "self_attn.v_proj": "attn_v", "self_attn.o_proj": "attn_output",
              "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up", "mlp.down_proj": "ffn_down",
              "input_layernorm": "attn_norm", "post_attention_layernorm": "ffn_norm"}
    for i in range(cfg["num_hidden_layers"]):
        for hf, gg in leaves.items():
            w = state[f"model.layers.{i}.{hf}.weight"]
            if gg == "attn_q":
                w = _permute_rotary(w, n_head)
            elif gg == "attn_k":
                w = _permute_rotary(w, n_kv)
            out[f"blk.{i}.{gg}.weight"] = w
    used = {"model.embed_tokens.weight", "model.norm.weight", "lm_head.weight"} | {
        f"model.layers.{i}.{hf}.weight" for i in range(cfg["num_hidden_layers"]) for hf in leaves}
    extra = sorted(set(state) - used)
    if extra:  # biases (attention_bias / mlp_bias), anything this writer does not know
        raise ValueError(f"write_tiny_llama_gguf: unsupported tensors {extra[:4]}")
    return out


def _vocab(model_dir: Path, vocab_size: int):
    """(tokens, token types, merges, special ids, chat template) of a byte-level BPE
    tokenizer saved in `model_dir`."""
    from transformers import AutoTokenizer

    spec = json.loads((model_dir / "tokenizer.json").read_text())
    model = spec["model"]
    if model.get("type") != "BPE":
        raise ValueError("write_tiny_llama_gguf: a BPE tokenizer is needed, "
                         f"not {model.get('type')}")
    vocab: dict[str, int] = dict(model["vocab"])
    added = {t["id"]: t for t in spec.get("added_tokens", [])}
    for i, t in added.items():
        vocab.setdefault(t["content"], i)
    tokens: list = [None] * (max(vocab.values()) + 1)
    for token, i in vocab.items():
        tokens[i] = token
    if None in tokens or len(tokens) != vocab_size:
        raise ValueError(f"write_tiny_llama_gguf: token ids must be 0..{vocab_size - 1}, "
                         f"the model's vocab_size ({len(tokens)} tokens)")
    types = [(_TOKEN_CONTROL if added[i].get("special") else _TOKEN_USER_DEFINED)
             if i in added else _TOKEN_NORMAL for i in range(len(tokens))]
    merges = [m if isinstance(m, str) else " ".join(m) for m in model.get("merges", [])]
    tok = AutoTokenizer.from_pretrained(str(model_dir))
    ids = {"bos": tok.bos_token_id, "eos": tok.eos_token_id, "unk": tok.unk_token_id,
           "pad": tok.pad_token_id}
    template = tok.chat_template if isinstance(tok.chat_template, str) else None
    return tokens, types, merges, ids, template


def write_tiny_llama_gguf(model_dir: Path, out_file: Path, dtype: str = "F32") -> None:
    """Write the LlamaForCausalLM + byte-level BPE tokenizer saved in `model_dir` as a GGUF
    file `out_file` that transformers loads (`gguf_file=`) to the same model and tokenizer."""
    from gguf import GGMLQuantizationType, GGUFWriter, LlamaFileType, TokenType
    from gguf.quants import quantize
    from safetensors.numpy import load_file

    model_dir, out_file = Path(model_dir), Path(out_file)
    cfg = json.loads((model_dir / "config.json").read_text())
    if cfg.get("model_type") != "llama":
        raise ValueError("write_tiny_llama_gguf: a llama model is needed, "
                         f"not {cfg.get('model_type')}")
    rope = cfg.get("rope_parameters") or {}
    if rope.get("rope_type", "default") != "default":
        raise ValueError(f"write_tiny_llama_gguf: only default rope, not {rope}")
    rope_theta = float(rope.get("rope_theta", cfg.get("rope_theta", 10000.0)))
    n_head = cfg["num_attention_heads"]
    head_dim = cfg.get("head_dim") or cfg["hidden_size"] // n_head
    if head_dim * n_head != cfg["hidden_size"]:
        # GGUF llama carries no head_dim of its own: transformers reads rope.dimension_count
        raise ValueError("write_tiny_llama_gguf: head_dim * heads must equal hidden_size")
    qtype = {"F32": GGMLQuantizationType.F32, "F16": GGMLQuantizationType.F16,
             "Q8_0": GGMLQuantizationType.Q8_0}[dtype]
    ftype = {"F32": LlamaFileType.ALL_F32, "F16": LlamaFileType.MOSTLY_F16,
             "Q8_0": LlamaFileType.MOSTLY_Q8_0}[dtype]

    weights = load_file(str(model_dir / "model.safetensors"))
    state = {k: v.astype(np.float32) for k, v in weights.items()}
    tokens, types, merges, ids, template = _vocab(model_dir, cfg["vocab_size"])

    out_file.parent.mkdir(parents=True, exist_ok=True)
    w = GGUFWriter(str(out_file), "llama")
    w.add_name(f"tiny llama from {model_dir.name}")
    w.add_file_type(int(ftype))
    w.add_vocab_size(cfg["vocab_size"])
    w.add_context_length(cfg["max_position_embeddings"])
    w.add_embedding_length(cfg["hidden_size"])
    w.add_block_count(cfg["num_hidden_layers"])
    w.add_feed_forward_length(cfg["intermediate_size"])
    w.add_head_count(n_head)
    w.add_head_count_kv(cfg.get("num_key_value_heads") or n_head)
    w.add_rope_dimension_count(head_dim)
    w.add_rope_freq_base(rope_theta)
    w.add_layer_norm_rms_eps(float(cfg["rms_norm_eps"]))

    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("gpt-2")
    w.add_token_list(tokens)
    w.add_token_types([TokenType(t) for t in types])
    w.add_token_merges(merges)
    for name, add in (("bos", w.add_bos_token_id), ("eos", w.add_eos_token_id),
                      ("unk", w.add_unk_token_id), ("pad", w.add_pad_token_id)):
        if ids[name] is not None:
            add(ids[name])
    w.add_add_bos_token(False)
    w.add_add_eos_token(False)
    if template:
        w.add_chat_template(template)

    block = 32  # Q8_0 block size, along a row
    for name, arr in _tensors(state, cfg).items():
        if arr.ndim == 1 or qtype == GGMLQuantizationType.F32 or (
                qtype == GGMLQuantizationType.Q8_0 and arr.shape[-1] % block):
            w.add_tensor(name, np.ascontiguousarray(arr, dtype=np.float32))
        elif qtype == GGMLQuantizationType.F16:
            w.add_tensor(name, np.ascontiguousarray(arr, dtype=np.float16))
        else:
            w.add_tensor(name, quantize(np.ascontiguousarray(arr), qtype), raw_dtype=qtype)

    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
