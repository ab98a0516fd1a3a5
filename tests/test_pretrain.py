"""`instructrl pretrain` on a tiny corpus: it learns, it saves a loadable model, and a killed
run resumed from its checkpoint ends exactly where an uninterrupted one does."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch

from instructrl.config import PretrainConfig
from instructrl.errors import InputError
from instructrl.stages.pretrain import batch_indices, main, pack, train_tokenizer

TINY = PretrainConfig(vocab_size=320, hidden_size=32, intermediate_size=64, num_layers=2,
                      num_heads=2, max_position=64, seq_len=32, batch_size=8, steps=8,
                      lr=3e-3, warmup_steps=2, checkpoint_every=3, log_every=1, heldout_docs=5)


@pytest.fixture(scope="module")
def texts():
    from instructrl.sandbox.corpus import corpus
    from instructrl.sandbox.world import World
    return corpus(World(seed=0), 150, seed=0)


class Killed(Exception):
    pass


def kill_at(step_to_die):
    def on_step(step):
        if step == step_to_die:
            raise Killed
    return on_step


def weights(path):
    from safetensors.torch import load_file
    return load_file(str(path / "model.safetensors"))


def test_kill_and_resume_equals_uninterrupted(texts, tmp_path):
    a, b = tmp_path / "a" / "base", tmp_path / "b" / "base"
    final_a = main(TINY, a, texts, progress=False)
    # Killed at step 5: the last checkpoint is step 3, so steps 4-5 are redone on resume.
    with pytest.raises(Killed):
        main(TINY, b, texts, on_step=kill_at(5), progress=False)
    assert torch.load(b / "checkpoint" / "trainer_state.pt", weights_only=False)["step"] == 3
    assert not (b / "model.safetensors").exists()
    final_b = main(TINY, b, texts, progress=False)
    wa, wb = weights(a), weights(b)
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)
    rows_a = [json.loads(x) for x in (a / "metrics.jsonl").read_text().splitlines()]
    rows_b = [json.loads(x) for x in (b / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows_b] == list(range(1, 9))
    assert [r["loss"] for r in rows_a] == [r["loss"] for r in rows_b]
    assert final_a["heldout_loss"] == final_b["heldout_loss"]


def test_learns_and_saves_a_loadable_model(texts, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer
    cfg = dataclasses.replace(TINY, steps=200, checkpoint_every=1000, log_every=10)
    out = tmp_path / "base"
    final = main(cfg, out, texts, progress=False)
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    # Starts near uniform over the vocabulary (ln 320 = 5.8) and learns the corpus.
    assert rows[0]["loss"] > 5.0 and rows[-1]["loss"] < 3.6
    assert final["heldout_loss"] < 3.7
    tok = AutoTokenizer.from_pretrained(str(out))
    model = AutoModelForCausalLM.from_pretrained(str(out))
    assert tok.bos_token == "<bos>" and tok.eos_token == "<eos>" and tok.pad_token == "<pad>"
    ids = tok(["the kund eats"], return_tensors="pt")["input_ids"]
    assert ids[0, 0] == tok.bos_token_id
    assert model(input_ids=ids).logits.shape == (1, ids.shape[1], len(tok))
    assert (out / "checkpoint" / "trainer_state.pt").exists()


def test_resume_with_other_settings_is_refused(texts, tmp_path):
    out = tmp_path / "base"
    with pytest.raises(Killed):
        main(TINY, out, texts, on_step=kill_at(3), progress=False)
    with pytest.raises(InputError, match="pretrain.lr"):
        main(dataclasses.replace(TINY, lr=1e-3), out, texts, progress=False)
    with pytest.raises(InputError, match="different corpus"):
        main(TINY, out, texts[:-1], progress=False)


def test_tokenizer_is_byte_level_and_pack_separates_documents(texts):
    tok = train_tokenizer(texts, 320)
    odd = "ünïcode ☃ never seen"
    assert tok.decode(tok(odd, add_special_tokens=False)["input_ids"]) == odd
    assert tok.unk_token_id not in tok(odd)["input_ids"]
    chunks = pack(tok, ["a b", "c d"], 2)
    stream = chunks.flatten().tolist()
    assert stream[0] == tok.bos_token_id and tok.eos_token_id in stream


def test_batch_indices_cover_each_pass_once():
    seen = torch.cat([batch_indices(10, 4, s, seed=0) for s in range(5)])  # 20 rows = 2 passes
    assert sorted(seen[:10].tolist()) == list(range(10))
    assert sorted(seen[10:].tolist()) == list(range(10))
    assert not torch.equal(seen[:10], seen[10:])


def test_ship_in_half_precision_loads_as_float32(texts, tmp_path):
    """`--ship-dtype float16` halves the bytes; the model loads in float32 like any other and
    computes what the trained one does, to half precision's rounding of the weights."""
    from instructrl.modeling import load_causal_lm
    from instructrl.stages.pretrain import ship

    out = tmp_path / "base"
    main(TINY, out, texts, progress=False)
    dest = ship(out, tmp_path / "shipped", provenance={"command": "x"}, dtype=torch.float16)
    assert all(v.dtype == torch.float16 for v in weights(dest).values())
    assert json.loads((dest / "config.json").read_text())["dtype"] == "float16"
    assert (dest / "tokenizer.json").exists() and (dest / "provenance.json").exists()
    trained, shipped = load_causal_lm(out).eval(), load_causal_lm(dest).eval()
    assert next(shipped.parameters()).dtype == torch.float32
    ids = torch.tensor([[1, 5, 9, 30, 2]])
    with torch.no_grad():
        a, b = trained(input_ids=ids).logits, shipped(input_ids=ids).logits
    assert not torch.equal(a, b) and torch.allclose(a, b, atol=5e-3)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["base", "shipped"]  # no temp left


@pytest.mark.parametrize("name", ["sandbox", "sandbox-large"])
def test_shipped_base_model_is_loadable_and_knows_the_current_corpus(name):
    """Each base model in the package was trained on today's sandbox corpus; when the corpus
    generator changes, this fails until it is retrained with the command in provenance.json."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from instructrl.modeling import sandbox_base_model_path
    from instructrl.sandbox.corpus import corpus
    from instructrl.sandbox.world import World
    from instructrl.stages.pretrain import corpus_fingerprint

    path = sandbox_base_model_path(name)
    prov = json.loads((path / "provenance.json").read_text())
    seed, n_docs = prov["sandbox"]["seed"], prov["sandbox"]["n_corpus_docs"]
    assert corpus_fingerprint(corpus(World(seed=seed), n_docs, seed=seed)) == \
        prov["corpus_fingerprint"], f"stale sandbox base model; retrain: {prov['command']}"
    assert prov["heldout_loss"] < 1.0
    tok = AutoTokenizer.from_pretrained(str(path))
    model = AutoModelForCausalLM.from_pretrained(str(path), dtype=torch.float32).eval()
    ids = tok(["the kund eats"], return_tensors="pt")["input_ids"]
    with torch.no_grad():
        logits = model(input_ids=ids).logits
    assert logits.shape == (1, ids.shape[1], len(tok)) and torch.isfinite(logits).all()
