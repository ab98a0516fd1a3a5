"""Shared fixtures for the stage tests: a tiny tokenizer + Llama model built from configs (no
downloads), a tiny reward model, and a run directory with every data file a stage reads.

Everything is small enough that a stage runs in about a second on a 2-core CPU.
"""

from __future__ import annotations

import random
from pathlib import Path

import pytest
import torch

WORDS = ("the zorp eats fish blip lives in caves red blue what does where user assistant "
         "yes no is a").split()

# A recipe small enough for tests; tests override fields with `make_cfg(..., "sft.epochs=1")`.
TINY_RECIPE = """\
sft: {epochs: 2, lr: 0.001, batch_size: 8, select_prompts: 8, max_prompt_tokens: 32,
      max_response_tokens: 16}
rm: {lr: 0.001, batch_size: 4, checkpoint_every: 3, max_prompt_tokens: 32,
     max_response_tokens: 16}
ppo: {episodes: 32, batch_size: 16, mini_batch_size: 8, micro_batch_size: 4, lr: 0.001,
      max_prompt_tokens: 32, max_new_tokens: 8, ptx_per_episode: 2, ptx_max_tokens: 16,
      sample_every: 1, checkpoint_every: 1, warmup_iters: 1}
"""


def _sentences(n: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    return [" ".join(rng.choice(WORDS) for _ in range(rng.randint(4, 14))) for _ in range(n)]


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    """save_pretrained dir of a byte-level BPE tokenizer (<pad>, <bos>, <eos>, <unk>) and a
    randomly initialised 2-layer LlamaForCausalLM (hidden 32, 2 heads) that samples EOS often."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    out = tmp_path_factory.mktemp("tiny_model")
    texts = _sentences(300, 0) + ["user: what does the zorp eat\nassistant:\n"] * 20
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=400,
                                  special_tokens=["<pad>", "<bos>", "<eos>", "<unk>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(texts, trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", bos_token="<bos>",
                                   eos_token="<eos>", unk_token="<unk>")
    assert (fast.pad_token_id, fast.bos_token_id, fast.eos_token_id) == (0, 1, 2)
    cfg = LlamaConfig(vocab_size=len(fast), hidden_size=32, intermediate_size=64,
                      num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=2,
                      max_position_embeddings=256, pad_token_id=0, bos_token_id=1,
                      eos_token_id=2)
    torch.manual_seed(0)
    model = LlamaForCausalLM(cfg)
    with torch.no_grad():
        # A larger EOS unembedding row, so that sampled responses end at ragged lengths
        # (a random init almost never samples EOS): micro-batches then hold different token
        # counts, and some responses end with EOS within a few tokens and some do not.
        model.lm_head.weight[fast.eos_token_id] = torch.randn(cfg.hidden_size) * 0.7
    model.save_pretrained(out)
    fast.save_pretrained(out)
    return out


@pytest.fixture(scope="session")
def tiny_rm_dir(tiny_model_dir, tmp_path_factory) -> Path:
    """A reward model (scalar head on the tiny model's backbone) with a non-zero bias, as
    `ScalarHeadModel.save_pretrained` writes it. Untrained: PPO tests need a frozen scorer,
    not a good one."""
    import torch
    from instructrl.modeling import ScalarHeadModel, load_tokenizer

    out = tmp_path_factory.mktemp("tiny_rm") / "rm"
    torch.manual_seed(1)
    rm = ScalarHeadModel.from_causal_lm(tiny_model_dir)
    rm.set_bias(0.37)
    rm.save_pretrained(out, load_tokenizer(tiny_model_dir))
    return out


def _write_run(root: Path, *, n_prompts: int = 60) -> None:
    from instructrl.data.jsonl import write_records
    from instructrl.data.records import Demonstration, Labeler, Prompt, Ranking, Response

    rng = random.Random(0)
    prompts, demos, ranks = [], [], []
    for i in range(n_prompts):
        split = "train" if i < 40 else ("valid" if i < 50 else "test")
        p = Prompt(id=f"p{i}", user_id=f"u{i % 10}",
                   text=f"what does the {rng.choice(WORDS)} eat {i % 3}", category=(
                       "open_qa" if i % 2 else "generation"), split=split)
        prompts.append(p)
        demos.append(Demonstration(p.id, "l1", " ".join(
            ["the zorp eats fish"] + [rng.choice(WORDS) for _ in range(i % 4)])))
        resps = [Response(" ".join(rng.choice(WORDS) for _ in range(rng.randint(2, 6))), "sft")
                 for _ in range(4)]
        order = sorted(range(4), key=lambda j: -resps[j].text.count("fish") - 0.01 * j)
        if i % 5 == 0:  # a tie between the two middle responses
            ranking = [[order[0]], [order[1], order[2]], [order[3]]]
        else:
            ranking = [[j] for j in order]
        labeler = "l9" if i % 7 == 3 else "l2"  # l9 is held out
        ranks.append(Ranking(p.id, labeler, resps, ranking))
    data = root / "data"
    write_records(data / "prompts.jsonl", prompts)
    write_records(data / "demonstrations.jsonl", demos)
    write_records(data / "rankings.jsonl", ranks)
    write_records(data / "labelers.jsonl",
                  [Labeler("l1"), Labeler("l2"), Labeler("l9", heldout=True)])
    write_records(data / "ptx.jsonl", [{"text": s} for s in _sentences(50, 1)])


@pytest.fixture
def tiny_run(tmp_path) -> Path:
    """A run directory: data/{prompts (40 train / 10 valid / 10 test), demonstrations,
    rankings (K = 4, some ties, labeler l9 held out), labelers, ptx}.jsonl, and recipe.yaml."""
    root = tmp_path / "run"
    _write_run(root)
    (tmp_path / "recipe.yaml").write_text(TINY_RECIPE)
    return root


@pytest.fixture
def make_cfg(tiny_run):
    """make_cfg("sft.epochs=1", ...) -> RunConfig from the tiny recipe plus overrides."""
    from instructrl.config import load_config

    def make(*overrides: str):
        return load_config(tiny_run.parent / "recipe.yaml", list(overrides))
    return make


@pytest.fixture
def ppo_models_loaded(monkeypatch) -> list:
    """The `Models` each `ppo.train` of the test loads, appended as they are loaded (to look
    inside the trained policy and value afterwards)."""
    from instructrl.stages import ppo

    loaded = []
    real_load = ppo.load_models

    def capture(*args, **kwargs):
        loaded.append(real_load(*args, **kwargs))
        return loaded[-1]

    monkeypatch.setattr(ppo, "load_models", capture)
    return loaded


class ScaledLogits(torch.nn.Module):
    """A causal LM whose forward changes its output layer's logits (as Gemma's soft-cap or
    Cohere's logit scale do): fused log-probs would be wrong for it."""

    def __init__(self, model):
        super().__init__()
        self.inner = model

    def get_output_embeddings(self):
        return self.inner.get_output_embeddings()

    def forward(self, **kw):
        out = self.inner(**kw)
        out.logits = out.logits * 0.5
        return out


class Crash(Exception):
    """A stage killed mid-run, as the resume tests simulate it."""


def crash_on_call(monkeypatch, owner, name: str, n: int):
    """Make `owner.name` raise Crash on its `n`-th call (counting from 1) and behave as
    before otherwise; returns the real function (to put back before the resumed run)."""
    real = getattr(owner, name)
    calls = {"n": 0}

    def wrapped(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == n:
            raise Crash
        return real(*args, **kwargs)

    monkeypatch.setattr(owner, name, wrapped)
    return real


def write_sandbox_run(tmp_path: Path, recipe_text: str, policies: dict[str, Path],
                      base: Path) -> tuple[Path, Path]:
    """A run directory holding the sandbox world's prompts, generated and prepared as the
    pipeline does, and a pipeline.json naming `policies` (the tiny model stands in for them):
    (run, recipe)."""
    import json

    from instructrl.config import load_config
    from instructrl.data.jsonl import read_records, write_records
    from instructrl.data.prompts import prepare
    from instructrl.data.records import Prompt
    from instructrl.sandbox.generate import generate

    recipe = tmp_path / "sb.yaml"
    recipe.write_text(recipe_text)
    cfg = load_config(recipe)
    run = tmp_path / "sbrun"
    generate(cfg.sandbox, run)
    prompts, _ = prepare(read_records(run / "data" / "raw_prompts.jsonl", Prompt.from_dict),
                         cfg.data)
    write_records(run / "data" / "prompts.jsonl", prompts)
    (run / "pipeline.json").write_text(json.dumps(
        {"policies": {k: str(v) for k, v in policies.items()}, "base": str(base)}))
    return run, recipe
