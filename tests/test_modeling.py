"""modeling.py and templates.py on tiny models built from configs (no downloads)."""

from __future__ import annotations

import json

import pytest
import torch

from instructrl.config import PretrainConfig
from instructrl.errors import InputError
from instructrl.modeling import (ScalarHeadModel, atomic_dir, gather_last, load_causal_lm,
                                 load_tokenizer, position_ids_from_mask, save_pretrained_atomic,
                                 set_dropout)
from instructrl.stages.pretrain import build_model, train_tokenizer
from instructrl.templates import SANDBOX_TEMPLATE, encode_example, format_prompt

TEXTS = [f"the {a} {b} eats {c}. the {b} lives in {d}." for a in ("big", "small", "green")
         for b in ("kund", "zozap", "musot", "lotek") for c in ("seeds", "moss", "roots")
         for d in ("snan", "reethu")] * 3
TINY = PretrainConfig(vocab_size=300, hidden_size=32, intermediate_size=64, num_layers=2,
                      num_heads=2, max_position=64, seq_len=32, tie_embeddings=False)


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """A tiny tokenizer + Llama model saved with save_pretrained_atomic."""
    tok = train_tokenizer(TEXTS, TINY.vocab_size)
    model = build_model(TINY, tok).eval()
    path = tmp_path_factory.mktemp("base") / "base"
    save_pretrained_atomic(model, tok, path)
    return path, model, tok


def batch(tok, texts):
    enc = tok(texts, return_tensors="pt", padding=True)
    return enc["input_ids"], enc["attention_mask"]


def test_base_model_round_trip_identical_logits(saved):
    path, model, tok = saved
    tok2 = load_tokenizer(path)
    model2 = load_causal_lm(path).eval()
    assert tok2.pad_token_id is not None and tok2.padding_side == "left"
    texts = ["the big kund eats moss.", "the zozap lives in snan. the kund"]
    assert tok2(texts)["input_ids"] == tok(texts)["input_ids"]
    ids, mask = batch(tok2, texts)
    pos = position_ids_from_mask(mask)
    with torch.no_grad():
        a = model(input_ids=ids, attention_mask=mask, position_ids=pos).logits
        b = model2(input_ids=ids, attention_mask=mask, position_ids=pos).logits
    assert torch.equal(a, b)
    # AutoModelForCausalLM / AutoTokenizer load it without our helpers, too.
    from transformers import AutoModelForCausalLM, AutoTokenizer
    assert AutoTokenizer.from_pretrained(str(path))(texts)["input_ids"] == tok(texts)["input_ids"]
    plain = AutoModelForCausalLM.from_pretrained(str(path)).eval()
    with torch.no_grad():
        assert torch.equal(plain(input_ids=ids, attention_mask=mask, position_ids=pos).logits, a)


def test_load_missing_path_is_input_error(tmp_path):
    with pytest.raises(InputError, match="not found"):
        load_causal_lm(tmp_path / "nope")


def test_scalar_head_replaces_unembedding_and_bias_survives(saved, tmp_path):
    path, _, tok = saved
    rm = ScalarHeadModel.from_causal_lm(path).eval()
    # The unembedding is gone: no parameter has the vocabulary as its output dimension,
    # and the only new parameters are the (1, hidden) head.
    names = [n for n, _ in rm.named_parameters()]
    assert not any("lm_head" in n for n in names)
    assert rm.head.weight.shape == (1, TINY.hidden_size)
    ids, mask = batch(tok, ["the kund eats moss.", "the big lotek lives in reethu."])
    with torch.no_grad():
        v0 = rm(ids, mask)
    assert v0.shape == ids.shape
    rm.set_bias(0.75)
    with torch.no_grad():
        v1 = rm(ids, mask)
    assert torch.allclose(v1 - v0, torch.full_like(v0, 0.75))
    out = tmp_path / "rm"
    rm.save_pretrained(out, tokenizer=tok)
    assert json.loads((out / "scalar_head.json").read_text())["bias"] == 0.75
    rm2 = ScalarHeadModel.from_pretrained(out).eval()
    assert float(rm2.bias) == 0.75
    with torch.no_grad():
        assert torch.equal(rm2(ids, mask), v1)
    assert load_tokenizer(out)(["the kund"])["input_ids"] == tok(["the kund"])["input_ids"]


def test_scalar_head_from_pretrained_needs_head(saved):
    path, _, _ = saved
    with pytest.raises(InputError, match="scalar_head.json"):
        ScalarHeadModel.from_pretrained(path)


def test_set_dropout_hooks_llama_train_only(saved):
    path, _, tok = saved
    model = load_causal_lm(path, dropout=0.2)
    ids, mask = batch(tok, ["the kund eats moss. the zozap lives in snan."])
    model.eval()
    with torch.no_grad():
        ref = model(input_ids=ids, attention_mask=mask).logits
    model.train()
    with torch.no_grad():
        t1 = model(input_ids=ids, attention_mask=mask).logits
        t2 = model(input_ids=ids, attention_mask=mask).logits
    assert not torch.allclose(t1, ref) and not torch.allclose(t1, t2)
    set_dropout(model, 0.2)  # again: hooks are not registered twice
    o_proj = model.model.layers[0].self_attn.o_proj
    assert len(o_proj._forward_hooks) == 1
    set_dropout(model, 0.0)
    with torch.no_grad():
        assert torch.allclose(model(input_ids=ids, attention_mask=mask).logits, ref, atol=1e-6)
    # Dropout applies to the scalar-head model's backbone too.
    rm = ScalarHeadModel.from_causal_lm(path, dropout=0.3).train()
    with torch.no_grad():
        assert not torch.allclose(rm(ids, mask), rm(ids, mask))
        rm.eval()
        assert torch.equal(rm(ids, mask), rm(ids, mask))


def test_set_dropout_native_modules_gpt2():
    from transformers import GPT2Config, GPT2LMHeadModel
    model = GPT2LMHeadModel(GPT2Config(vocab_size=50, n_embd=16, n_layer=1, n_head=2,
                                       n_positions=16, resid_pdrop=0.1))
    set_dropout(model, 0.25)
    assert model.config.resid_pdrop == 0.25
    drops = [m for m in model.modules() if isinstance(m, torch.nn.Dropout)]
    assert drops and all(m.p == 0.25 for m in drops)
    ids = torch.randint(0, 50, (2, 8))
    model.train()
    with torch.no_grad():
        assert not torch.allclose(model(ids).logits, model(ids).logits)
    model.eval()
    with torch.no_grad():
        assert torch.equal(model(ids).logits, model(ids).logits)
    with pytest.raises(ValueError):
        set_dropout(model, 1.0)


def test_positions_and_gather_last():
    mask = torch.tensor([[0, 0, 1, 1, 1], [1, 1, 1, 1, 1], [0, 1, 1, 0, 0]])
    assert position_ids_from_mask(mask).tolist() == [[0, 0, 0, 1, 2], [0, 1, 2, 3, 4],
                                                     [0, 0, 1, 1, 1]]
    values = torch.arange(15.).view(3, 5)
    assert gather_last(values, torch.tensor([4, 0, 2])).tolist() == [4.0, 5.0, 12.0]


def test_atomic_dir_keeps_old_on_failure_and_carries_extras(tmp_path):
    target = tmp_path / "stage"
    with atomic_dir(target) as tmp:
        (tmp / "model.bin").write_text("v1")
    (target / "metrics.jsonl").write_text("{}\n")
    with pytest.raises(RuntimeError):
        with atomic_dir(target) as tmp:
            (tmp / "model.bin").write_text("half")
            raise RuntimeError("killed")
    assert (target / "model.bin").read_text() == "v1"
    with atomic_dir(target) as tmp:
        (tmp / "model.bin").write_text("v2")
    assert (target / "model.bin").read_text() == "v2"
    assert (target / "metrics.jsonl").read_text() == "{}\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["stage"]  # no temp dirs left


# -- templates ---------------------------------------------------------------------------------
def test_sandbox_template_and_encode_example(saved):
    _, _, tok = saved
    assert format_prompt(tok, "what does the kund eat?") == SANDBOX_TEMPLATE.format(
        text="what does the kund eat?")
    q, r = encode_example(tok, "what does the kund eat?", "the kund eats moss.", 64, 64)
    assert q[0] == tok.bos_token_id and q.count(tok.bos_token_id) == 1
    assert r[-1] == tok.eos_token_id and tok.eos_token_id not in r[:-1]
    assert tok.decode(q + r, skip_special_tokens=True) == (
        "user: what does the kund eat?\nassistant:\nthe kund eats moss.")
    # Response tokens are the same alone as after the prompt (the template ends a line).
    joint = tok(format_prompt(tok, "hi") + "the kund eats moss.")["input_ids"]
    assert joint == encode_example(tok, "hi", "the kund eats moss.", 64, 64)[0] + r[:-1]


def test_truncation_left_for_prompt_right_for_response(saved):
    _, _, tok = saved
    long_prompt = "the kund eats moss. " * 20 + "where does the lotek live?"
    full_q, full_r = encode_example(tok, long_prompt, "the lotek lives in snan. " * 5, 1000, 1000)
    q, r = encode_example(tok, long_prompt, "the lotek lives in snan. " * 5, 12, 7)
    assert len(q) == 12 and q[0] == tok.bos_token_id and q[1:] == full_q[-11:]
    assert r == full_r[:7] and tok.eos_token_id not in r  # cut off: no EOS
    q, r = encode_example(tok, "hi", "moss.", 64, len(full_r))
    assert r[-1] == tok.eos_token_id


def test_chat_template_and_single_bos(saved):
    _, _, tok = saved
    import copy
    chat = copy.deepcopy(tok)
    chat.chat_template = ("{{ bos_token }}{% for m in messages %}"
                          "<{{ m['role'] }}>{{ m['content'] }}{% endfor %}{% if add_generation_prompt %}<assistant>{% endif %}")
    text = format_prompt(chat, "hello kund")
    assert text == "<bos><user>hello kund<assistant>"
    q, _ = encode_example(chat, "hello kund", "moss", 64, 64)
    assert q.count(chat.bos_token_id) == 1 and q[0] == chat.bos_token_id
