"""A user's own model (issue 17): any AutoModelForCausalLM family through every stage, LoRA
through peft, hub ids through the Hugging Face cache (offline-aware), and the errors a new
user meets. Tiny random models built from configs; nothing downloads."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from instructrl.errors import InputError
from instructrl.modeling import (ScalarHeadModel, load_causal_lm, load_tokenizer,
                                 resolve_model_path)
from instructrl.rollout import pad_left, response_logprobs, sample
from instructrl.rundir import RunDir
from instructrl.stages import ppo, reward, sft
from instructrl.templates import encode_prompt


def _family_dir(tiny_model_dir: Path, tmp: Path, family: str) -> Path:
    """A tiny random model of `family` with the conftest tokenizer. GPT-2 gets absolute
    positions and a tokenizer without a pad token, as the real GPT-2 has."""
    from transformers import (AutoTokenizer, GPT2Config, GPT2LMHeadModel, Qwen2Config,
                              Qwen2ForCausalLM)

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    out = tmp / family
    torch.manual_seed(0)
    if family == "llama":
        return tiny_model_dir
    if family == "qwen2":
        model = Qwen2ForCausalLM(Qwen2Config(
            vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
            num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
            pad_token_id=0, bos_token_id=1, eos_token_id=2, tie_word_embeddings=True))
    else:
        model = GPT2LMHeadModel(GPT2Config(
            vocab_size=len(tok), n_embd=32, n_layer=2, n_head=2, n_positions=256,
            bos_token_id=1, eos_token_id=2))
        tok.pad_token = None
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return out


@pytest.mark.parametrize("family", ["llama", "qwen2", "gpt2"])
def test_every_stage_runs_on_three_model_families(family, tiny_model_dir, tiny_run, make_cfg,
                                                  tmp_path):
    init = _family_dir(tiny_model_dir, tmp_path, family)
    cfg = make_cfg("sft.epochs=1", "rm.epochs=1", "ppo.episodes=16")
    run = RunDir(tiny_run)
    tok = load_tokenizer(init, cfg.model)
    assert tok.pad_token_id is not None  # GPT-2's missing pad token becomes its EOS
    sft_dir = sft.train(cfg, run, init)
    rm_dir = reward.train(cfg, run, sft_dir)
    out = ppo.train(cfg, run, init=sft_dir, ref=sft_dir, rm=rm_dir, value=rm_dir,
                    stage="ppo-ptx")
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert rows and all(torch.isfinite(torch.tensor(r["objective/kl"])) for r in rows)
    model = load_causal_lm(out)
    assert family.replace("2", "") in type(model).__name__.lower()


# -- LoRA ------------------------------------------------------------------------------------
LORA = ("lora.r=4", "lora.alpha=8", "lora.dropout=0.0")


def _params(model) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.named_parameters()}


def test_lora_sft_saves_a_merged_model_and_the_adapter(tiny_model_dir, tiny_run, make_cfg):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    cfg = make_cfg("sft.epochs=2", "sft.dropout=0.0", *LORA)
    out = sft.train(cfg, RunDir(tiny_run), tiny_model_dir)
    # Epochs keep the adapter alone, not a copy of the model.
    for e in ("01", "02"):
        names = {p.name for p in (out / "epochs" / e).iterdir()}
        assert "adapter_config.json" in names and "model.safetensors" not in names
    merged = AutoModelForCausalLM.from_pretrained(out).eval()  # plain transformers
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    adapted = PeftModel.from_pretrained(
        AutoModelForCausalLM.from_pretrained(tiny_model_dir), str(out / "adapter")).eval()
    ids = torch.tensor([[1, 5, 9, 12, 7, 3]])
    with torch.no_grad():
        a, b, c = merged(ids).logits, adapted(ids).logits, base(ids).logits
    torch.testing.assert_close(a, b, atol=1e-5, rtol=0)
    assert (a - c).abs().max() > 1e-4  # the adapter learned something


def test_lora_rm_trains_adapter_and_head_only(tiny_model_dir, tiny_run, make_cfg,
                                              monkeypatch):
    cfg = make_cfg("rm.epochs=1", *LORA)
    captured = []
    real = ScalarHeadModel.from_causal_lm

    def capture(*a, **k):
        captured.append(real(*a, **k))
        return captured[-1]

    monkeypatch.setattr(ScalarHeadModel, "from_causal_lm", staticmethod(capture))
    initial = _params(real(tiny_model_dir))
    out = reward.train(cfg, RunDir(tiny_run), tiny_model_dir)
    (model,) = captured
    now = {k.replace("base_model.model.", "").replace(".base_layer", ""): v
           for k, v in _params(model).items()}
    trained = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trained and all("lora_" in n or n.startswith("head.") for n in trained)
    for name, value in initial.items():
        if name.startswith("head."):
            assert not torch.equal(now[name], value), name
        else:
            assert torch.equal(now[name], value), f"frozen {name} changed"
    assert (out / "adapter" / "adapter_config.json").exists()
    # The saved, merged RM scores as the trained model with its adapter.
    saved = ScalarHeadModel.from_pretrained(out).eval()
    ids, mask = torch.tensor([[1, 5, 9, 12, 2]]), torch.ones(1, 5, dtype=torch.long)
    model.eval()
    with torch.no_grad():
        torch.testing.assert_close(saved(ids, mask), model(ids, mask), atol=1e-5, rtol=0)


def test_lora_ppo_reference_is_the_sft_model_and_only_adapters_move(
        tiny_model_dir, tiny_rm_dir, tiny_run, make_cfg, ppo_models_loaded):
    cfg = make_cfg("ppo.episodes=32", *LORA)
    m = ppo.load_models(cfg, tiny_model_dir, tiny_model_dir, tiny_rm_dir, tiny_rm_dir,
                        torch.device("cpu"))
    sft_model = load_causal_lm(tiny_model_dir).eval()
    rm = ScalarHeadModel.from_pretrained(tiny_rm_dir).eval()
    tok = load_tokenizer(tiny_model_dir)
    q, qm = pad_left([encode_prompt(tok, t, 32) for t in ("what does the zorp eat",
                                                          "where is the blip")], 0)
    r, rmask = sample(sft_model, q, qm, max_new_tokens=6, eos_token_id=2, pad_token_id=0,
                      generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        # Step 0: the reference (adapter disabled), and the policy itself (LoRA's B starts
        # at 0), give the SFT model's log-probs; the RM view gives the RM's scores.
        want = response_logprobs(sft_model, q, qm, r, rmask)
        torch.testing.assert_close(response_logprobs(m.ref, q, qm, r, rmask), want,
                                   atol=1e-5, rtol=0)
        torch.testing.assert_close(response_logprobs(m.policy, q, qm, r, rmask), want,
                                   atol=1e-5, rtol=0)
        ids, mask = torch.cat([q, r], 1), torch.cat([qm, rmask], 1)
        torch.testing.assert_close(m.rm(ids, mask), rm(ids, mask), atol=1e-5, rtol=0)
    # One copy of the weights: the reference has no parameters of its own.
    assert not list(m.ref.parameters())

    loaded = ppo_models_loaded
    loaded.clear()  # the models loaded above; now those ppo.train loads
    base_policy = _params(load_causal_lm(tiny_model_dir))
    out = ppo.train(cfg, RunDir(tiny_run), init=tiny_model_dir, ref=tiny_model_dir,
                    rm=tiny_rm_dir, value=tiny_rm_dir, stage="ppo-lora")
    (mm,) = loaded
    trained_p = {n for n, p in mm.policy.named_parameters() if p.requires_grad}
    trained_v = {n for n, p in mm.value.named_parameters() if p.requires_grad}
    assert trained_p and all("lora_" in n for n in trained_p)
    assert trained_v and all("lora_" in n or n.startswith("head.") for n in trained_v)
    for n, p in mm.policy.named_parameters():
        if "lora_" not in n:
            key = n.replace("base_model.model.", "").replace(".base_layer", "")
            assert torch.equal(p.detach(), base_policy[key]), f"frozen {n} changed"
    assert any(float(p.abs().max()) > 0 for n, p in mm.policy.named_parameters()
               if "lora_B" in n)  # the adapter moved off its zero init
    with torch.no_grad():  # the reward model view still scores as the RM did
        torch.testing.assert_close(mm.rm(ids, mask), rm(ids, mask), atol=1e-5, rtol=0)
    # Saved merged (plain transformers loads it) and as an adapter.
    from transformers import AutoModelForCausalLM
    assert AutoModelForCausalLM.from_pretrained(out) is not None
    assert (out / "adapter" / "adapter_config.json").exists()
    assert (out / "value" / "adapter" / "adapter_config.json").exists()


# -- micro-batches ---------------------------------------------------------------------------
@pytest.mark.parametrize("stage", ["sft", "rm"])
def test_micro_batches_give_the_same_step(stage, tiny_model_dir, tiny_run, make_cfg, tmp_path):
    results = []
    for micro in ("null", "2"):
        run_dir = tmp_path / f"run-{micro}"
        shutil.copytree(tiny_run, run_dir)
        if stage == "sft":
            cfg = make_cfg("sft.epochs=1", "sft.dropout=0.0", "sft.batch_size=8",
                           f"sft.micro_batch_size={micro}")
            out = sft.train(cfg, RunDir(run_dir), tiny_model_dir)
            results.append(_params(load_causal_lm(out / "epochs" / "01")))
        else:
            cfg = make_cfg("rm.epochs=1", "rm.batch_size=4", f"rm.micro_batch_size={micro}")
            out = reward.train(cfg, RunDir(run_dir), tiny_model_dir)
            results.append(_params(ScalarHeadModel.from_pretrained(out)))
    whole, parts = results
    # The head's bias gets an exactly-zero gradient from a ranking loss (it cancels in
    # r_w - r_l), so Adam turns float rounding into steps of lr size: only noise to compare.
    # The RM's output offset is set afterwards by the bias normalisation anyway.
    whole.pop("head.bias", None)
    for k in whole:
        torch.testing.assert_close(parts[k], whole[k], atol=2e-5, rtol=0,
                                   msg=lambda m, k=k: f"{k}: {m}")


# -- hub ids and errors ----------------------------------------------------------------------
def _fake_hub_cache(root: Path, repo: str, files_from: Path) -> Path:
    """The Hugging Face cache layout for a model: models--ORG--NAME/{refs/main, snapshots/SHA}."""
    sha = "0" * 40
    repo_dir = root / ("models--" + repo.replace("/", "--"))
    snap = repo_dir / "snapshots" / sha
    shutil.copytree(files_from, snap)
    (repo_dir / "refs").mkdir(parents=True)
    (repo_dir / "refs" / "main").write_text(sha)
    return snap


def test_a_cached_hub_id_loads_offline(tiny_model_dir, tmp_path, monkeypatch):
    from huggingface_hub import constants

    snap = _fake_hub_cache(tmp_path / "hub", "tiny-org/tiny-llama", tiny_model_dir)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    assert resolve_model_path("tiny-org/tiny-llama").resolve() == snap.resolve()
    model = load_causal_lm("tiny-org/tiny-llama")
    assert model.config.hidden_size == 32


def test_an_uncached_hub_id_offline_is_one_clear_error(tmp_path, monkeypatch, capsys,
                                                       tiny_run):
    from huggingface_hub import constants

    from instructrl.cli import main

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "empty-hub"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(InputError, match="HuggingFaceTB/SmolLM2-135M-Instruct.*hf download"):
        resolve_model_path("HuggingFaceTB/SmolLM2-135M-Instruct")
    rc = main(["sft", "--out", str(tiny_run), "--init", "HuggingFaceTB/SmolLM2-135M-Instruct"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1  # one line, no traceback
    assert "not in the Hugging Face cache" in err[-1]


@pytest.mark.parametrize("spec, message", [
    ("./no/such/dir", "model not found"),
    ("pkg:no_such_package_xyz/model.gguf", "not installed"),
])
def test_bad_model_specs_say_what_is_wrong(spec, message):
    with pytest.raises(InputError, match=message):
        resolve_model_path(spec)


def test_a_directory_that_is_not_a_model_is_refused(tmp_path):
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(InputError, match="not a model directory"):
        resolve_model_path(tmp_path)
    (tmp_path / "weights.bin").write_text("x")
    with pytest.raises(InputError, match=r"\.gguf"):
        resolve_model_path(tmp_path / "weights.bin")


def test_commands_that_do_not_split_their_work_refuse_many_processes(monkeypatch, capsys,
                                                                      tiny_run):
    from instructrl.cli import main

    monkeypatch.setenv("WORLD_SIZE", "2")
    for command in ("demo", "pretrain"):
        assert main([command, "--out", str(tiny_run)]) == 2
        err = capsys.readouterr().err
        assert "2 processes" in err
        assert "only collect, eval, pipeline, ppo, rm, sft share their work" in err
    assert not (tiny_run / "sft").exists() and not (tiny_run / "base").exists()


def test_a_stage_run_alone_records_its_settings(tiny_run, tiny_model_dir):
    from instructrl.cli import main
    from instructrl.config import load_config

    recipe = tiny_run.parent / "recipe.yaml"
    assert main(["sft", "--out", str(tiny_run), "--recipe", str(recipe), "--init",
                 str(tiny_model_dir), "--set", "sft.epochs=1"]) == 0
    cfg = load_config(tiny_run / "config.yaml")
    assert cfg.sft.epochs == 1 and cfg.sft.max_prompt_tokens == 32


def test_ppo_without_pretraining_text_says_what_to_do(tiny_run, make_cfg, tiny_model_dir,
                                                      tiny_rm_dir):
    (tiny_run / "data" / "ptx.jsonl").unlink()
    with pytest.raises(InputError, match=r"ptx\.jsonl.*ppo\.ptx_coef=0"):
        ppo.train(make_cfg(), RunDir(tiny_run), init=tiny_model_dir, ref=tiny_model_dir,
                  rm=tiny_rm_dir, value=tiny_rm_dir, stage="ppo-ptx")


def test_settings_a_trl_user_could_get_wrong_are_refused():
    from instructrl.config import load_config

    with pytest.raises(InputError, match="ppo.temperature"):
        load_config(None, ["ppo.temperature=0"])
    with pytest.raises(InputError, match="missing_eos_score.*subtracted"):
        load_config(None, ["ppo.missing_eos_penalty=1.0"])


def test_sandbox_labelers_do_not_judge_other_prompts(tiny_run, make_cfg, tiny_model_dir):
    from instructrl.stages import collect

    cfg = make_cfg("collect.k=2", "collect.n_prompts=4", "collect.n_valid_prompts=2",
                   "collect.max_new_tokens=4")
    run = RunDir(tiny_run)
    before = (tiny_run / "data" / "rankings.jsonl").read_text()
    with pytest.raises(InputError, match="only sandbox prompts"):
        collect.collect(cfg, run, {"sft": tiny_model_dir}, 0, label="sandbox")
    out = collect.collect(cfg, run, {"sft": tiny_model_dir}, 1)  # auto: left for people
    assert run.done_info(out.name)["labelled_by"] == "nobody yet"
    assert (tiny_run / "data" / "rankings.jsonl").read_text() == before


def test_a_resumed_ema_lives_where_its_parameters_do(tiny_model_dir):
    # A checkpoint is loaded on the CPU in float32; the EMA shadow must follow each parameter
    # (here to float64 and the meta device, standing in for a GPU) or the first update after
    # a resume mixes devices (issue 18).
    model = load_causal_lm(tiny_model_dir)
    saved = ppo.EMA(model, 0.9).shadow
    for target in (model.double(), load_causal_lm(tiny_model_dir).to("meta")):
        ema = ppo.EMA(load_causal_lm(tiny_model_dir), 0.9)
        ema.load(saved, target)
        params = dict(target.named_parameters())
        assert ema.shadow.keys() == params.keys()
        assert all(ema.shadow[k].device == p.device and ema.shadow[k].dtype == p.dtype
                   for k, p in params.items())
