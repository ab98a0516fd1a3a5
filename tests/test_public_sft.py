"""SFT on the sandbox's public NLP tasks in instruction form (the paper's FLAN / T0 baselines,
Fig. 5): the data (instructrl.sandbox.public_demos) and the second SFT stage it trains."""

from __future__ import annotations

import hashlib
import json
import shutil

import pytest
import torch
from safetensors.torch import load_file

from instructrl.config import RunConfig
from instructrl.data.records import Demonstration, Prompt
from instructrl.modeling import load_tokenizer, resolve_model_path
from instructrl.rundir import RunDir
from instructrl.sandbox import text as T
from instructrl.sandbox.corpus import public_tasks
from instructrl.sandbox.public_demos import public_task_demonstrations, train_public
from instructrl.sandbox.world import ATTRIBUTES, NEGATIVE, POSITIVE, World
from instructrl.stages import sft
from instructrl.stages.common import read_metrics
from conftest import Crash, crash_on_call


@pytest.fixture(scope="module")
def world() -> World:
    return World(RunConfig().sandbox.seed)


def weights(directory) -> dict[str, torch.Tensor]:
    return load_file(str(directory / "model.safetensors"))


def same_weights(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def tree_digest(root) -> dict[str, str]:
    """Every file under `root` (relative path -> sha256 of its bytes)."""
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def test_only_words_and_tokens_the_sandbox_knows(world):
    prompts, demos = public_task_demonstrations(world, 400, seed=0, n_valid=40)
    assert "xylophone" not in world.vocab  # (the check below can fail)
    unknown = {w for p, d in zip(prompts, demos)
               for w in T.words_of(p.text + " " + d.response) if w not in world.vocab}
    assert not unknown
    tok = load_tokenizer(resolve_model_path("sandbox"))
    assert tok.unk_token_id is not None
    for p, d in zip(prompts, demos):
        q = tok(f"user: {p.text}\nassistant:\n", add_special_tokens=False)["input_ids"]
        r = tok(d.response, add_special_tokens=False)["input_ids"]
        assert tok.unk_token_id not in q + r
        assert len(q) <= 48 and len(r) <= 4  # sandbox prompts stay ~48 tokens; FLAN targets


def test_records_ids_splits_categories_answers_and_determinism(world):
    prompts, demos = public_task_demonstrations(world, 60, seed=3, n_valid=10)
    assert [p.id for p in prompts] == [f"pub-{i:06d}" for i in range(70)]
    assert [d.prompt_id for d in demos] == [p.id for p in prompts]
    assert [p.split for p in prompts] == ["train"] * 60 + ["valid"] * 10
    assert {p.user_id for p in prompts} == {d.labeler_id for d in demos} == {"public-nlp"}
    assert {p.style for p in prompts} == {"plain"}
    assert [p.category for p in prompts[:4]] == ["open_qa", "classification"] * 2
    assert all(p.meta["source"] == "public-nlp" for p in prompts)
    # Records as the rest of the project reads them (category and split validated).
    assert [Prompt.from_dict(p.to_dict()) for p in prompts] == prompts
    assert [Demonstration.from_dict(d.to_dict()) for d in demos] == demos

    for p, d in zip(prompts, demos):
        m = p.meta
        if p.category == "open_qa":  # the world's truth, one word, about the asked creature
            assert d.response == world.truth(m["entity"], m["attribute"]) == m["answer"]
            assert m["question"] in p.text and m["entity"] in p.text
            assert (m["entity"], m["attribute"]) not in world.falsehoods
        else:
            adj = T.words_of(m["review"])[-1]
            assert d.response == ("positive" if adj in POSITIVE else "negative")
            assert adj in POSITIVE + NEGATIVE and m["review"] in p.text
    # Validation items are items of their own (facts and reviews SFT did not train on).
    def key(p):
        return (p.meta.get("entity"), p.meta.get("attribute"), p.meta.get("review"))
    assert not {key(p) for p in prompts[:60]} & {key(p) for p in prompts[60:]}

    again = public_task_demonstrations(world, 60, seed=3, n_valid=10)
    assert again == (prompts, demos)
    other = public_task_demonstrations(world, 60, seed=4, n_valid=10)
    assert [p.text for p in other[0]] != [p.text for p in prompts]


def test_never_an_item_of_the_alignment_tax(world):
    cfg = RunConfig()
    tax = public_tasks(world, cfg.eval.n_tax, seed=cfg.eval.seed)
    # The item each tax prompt asks (its last question or review), read back from its text.
    questions = {q.format(e=e): (e, a) for e in world.creatures for a in ATTRIBUTES
                 for q in T.QUESTION[a]}
    tax_pairs, tax_reviews = set(), set()
    for item in tax:
        if item.task == "qa":
            q = item.prompt.rsplit("q: ", 1)[1].removesuffix(" a:")
            tax_pairs.add(questions[q])
        else:
            tax_reviews.add(item.prompt.rsplit("review: ", 1)[1].removesuffix(" sentiment:"))
    assert len(tax_pairs) > 20 and len(tax_reviews) > 50
    prompts, _ = public_task_demonstrations(world, 2000, seed=cfg.eval.seed, n_valid=200)
    pairs = {(p.meta["entity"], p.meta["attribute"]) for p in prompts if "entity" in p.meta}
    reviews = {p.meta["review"] for p in prompts if "review" in p.meta}
    assert len(pairs) > 50 and len(reviews) > 200
    assert not pairs & tax_pairs and not reviews & tax_reviews
    assert not pairs & set(world.falsehoods)  # TruthfulQA's probe, not a public task
    texts = " | ".join(p.text for p in prompts)
    assert not [r for r in tax_reviews if r in texts]
    assert not [q for q, ea in questions.items() if ea in tax_pairs and q in texts]


def test_public_sft_writes_its_own_stage_and_leaves_sft_untouched(tiny_run, make_cfg,
                                                                  tiny_model_dir):
    cfg = make_cfg("sft.epochs=2")
    run = RunDir(tiny_run)
    sft.train(cfg, run, tiny_model_dir)
    before = tree_digest(tiny_run / "sft"), tree_digest(tiny_run / "data")

    # Like for like: as many train (40) and valid (10) demonstrations as the users' in RUN/data.
    out = train_public(cfg, run, tiny_model_dir)
    assert out == tiny_run / "sft-public"
    assert (tree_digest(tiny_run / "sft"), tree_digest(tiny_run / "data")) == before
    assert run.is_done("sft-public") and run.done_info("sft-public")["epochs"] == 2
    assert not (out / "checkpoint").exists()
    assert sorted(p.name for p in (out / "epochs").iterdir()) == ["01", "02"]
    assert json.loads((out / "selection.json").read_text())["epoch"] in (1, 2)
    # It trained on the public demonstrations it left in RUN/sft-public/data, not RUN/data's.
    data = RunDir(out)
    assert [p.split for p in data.prompts()] == ["train"] * 40 + ["valid"] * 10
    assert all(p.id.startswith("pub-") for p in data.prompts())
    want = public_task_demonstrations(World(cfg.sandbox.seed), 40, cfg.sandbox.seed,
                                      n_valid=10)
    assert (data.prompts(), data.demonstrations()) == want
    tok = load_tokenizer(tiny_model_dir)
    n_tokens = sum(len(tok(d.response, add_special_tokens=False)["input_ids"]) + 1
                   for p, d in zip(*want) if p.split == "train")
    steps = [r for r in read_metrics(out / "metrics.jsonl") if "loss/sft" in r]
    assert len(steps) == 2 * 5
    assert sum(r["sft/tokens"] for r in steps[:5]) == n_tokens  # one epoch: every response
    assert not same_weights(weights(out), weights(tiny_run / "sft"))


def test_public_sft_resumes_after_crash_to_the_same_weights(tiny_run, make_cfg,
                                                           tiny_model_dir, monkeypatch):
    cfg = make_cfg("sft.epochs=2")  # dropout stays on: the RNG state must resume too
    demos = public_task_demonstrations(World(0), 24, seed=0, n_valid=8)
    other = tiny_run.parent / "uninterrupted"
    shutil.copytree(tiny_run / "data", other / "data")
    sft.train(cfg, RunDir(other), tiny_model_dir, stage="sft-public", demonstrations=demos)

    # 3 train + 1 valid batches per epoch at batch size 8: call 6 is epoch 2's second step,
    # so metrics.jsonl holds a row (step 4) that the epoch-1 checkpoint does not.
    real_loss = crash_on_call(monkeypatch, sft, "sft_loss", 6)
    with pytest.raises(Crash):
        sft.train(cfg, RunDir(tiny_run), tiny_model_dir, stage="sft-public",
                  demonstrations=demos)
    out = tiny_run / "sft-public"
    assert (out / "checkpoint" / "state.pt").exists()
    assert not RunDir(tiny_run).is_done("sft-public")
    assert max(r["step"] for r in read_metrics(out / "metrics.jsonl")) == 4
    monkeypatch.setattr(sft, "sft_loss", real_loss)
    sft.train(cfg, RunDir(tiny_run), tiny_model_dir, stage="sft-public", demonstrations=demos)

    ref = other / "sft-public"
    for e in ("01", "02"):
        assert same_weights(weights(out / "epochs" / e), weights(ref / "epochs" / e))
    assert same_weights(weights(out), weights(ref))
    assert read_metrics(out / "metrics.jsonl") == read_metrics(ref / "metrics.jsonl")
    assert RunDir(tiny_run).is_done("sft-public") and not (tiny_run / "sft").exists()
