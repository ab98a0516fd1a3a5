"""Comparison collection (instructrl.stages.collect): which prompts a round takes, and K
responses per prompt entry even when a round takes a prompt more than once."""

from __future__ import annotations

from collections import Counter

import pytest

from instructrl.data.records import Prompt
from instructrl.stages.collect import collect_samples, round_prompts, split_k


def _prompts(n: int) -> list[Prompt]:
    return [Prompt(id=f"p{i}", user_id="u0", text=f"what does the zorp eat {i}")
            for i in range(n)]


def test_rounds_take_new_prompts_until_the_set_runs_out():
    pool = _prompts(10)
    r0, r1 = round_prompts(pool, 4, 0, seed=3), round_prompts(pool, 4, 1, seed=3)
    assert len(r0) == len(r1) == 4
    assert not {p.id for p in r0} & {p.id for p in r1}
    assert round_prompts(pool, 4, 0, seed=3) == r0  # seeded


def test_a_round_larger_than_the_set_takes_every_prompt_as_evenly_as_it_can():
    pool = _prompts(10)
    counts = Counter(p.id for p in round_prompts(pool, 25, 0, seed=3))
    assert set(counts) == {p.id for p in pool}
    assert sorted(set(counts.values())) == [2, 3] and sum(counts.values()) == 25


def test_split_k_shares_k_between_policies():
    assert split_k(6, 1) == [6]
    assert split_k(7, 2) == [4, 3]


def test_a_repeated_prompt_gets_its_own_k_new_responses(tiny_model_dir, make_cfg):
    c = make_cfg("collect.k=3", "collect.max_new_tokens=6").collect
    p0, p1 = _prompts(2)
    prompts = [p0, p1, p0]
    samples = collect_samples({"sft": tiny_model_dir}, prompts, c, seed=1)
    assert [s["prompt_id"] for s in samples] == ["p0", "p1", "p0"]
    assert all(len(s["responses"]) == 3 for s in samples)
    texts = [sorted(r["text"] for r in s["responses"]) for s in samples]
    assert texts[0] != texts[2]  # the second visit of p0 is new samples, not a copy


def test_an_interrupted_collect_samples_only_the_batches_it_lacks(tiny_model_dir, make_cfg,
                                                                  tmp_path, monkeypatch, capsys):
    import instructrl.generation as generation

    c = make_cfg("collect.k=3", "collect.max_new_tokens=6", "collect.batch_size=4").collect
    prompts = _prompts(10)  # 30 texts: 8 batches
    whole = collect_samples({"sft": tiny_model_dir}, prompts, c, seed=1)
    real, calls = generation.sample, []

    def sample(*args, **kw):
        calls.append(1)
        if kill_after is not None and len(calls) > kill_after:
            raise KeyboardInterrupt  # a kill after 3 batches
        return real(*args, **kw)

    monkeypatch.setattr(generation, "sample", sample)
    partial = tmp_path / "partial"
    kill_after = 3
    with pytest.raises(KeyboardInterrupt):
        collect_samples({"sft": tiny_model_dir}, prompts, c, seed=1, progress=partial)
    (log,) = (partial / "sft").glob("*.jsonl")
    assert len(log.read_text().splitlines()) == 1 + 3  # the key, then one line per batch
    with log.open("a") as f:
        f.write('{"batch": 7, "tex')  # a line the kill cut short
    calls.clear()
    kill_after = None
    assert collect_samples({"sft": tiny_model_dir}, prompts, c, seed=1,
                           progress=partial) == whole
    assert len(calls) == 8 - 3
    calls.clear()  # other settings (here the seed) reuse nothing, and say so
    collect_samples({"sft": tiny_model_dir}, prompts, c, seed=2, progress=partial)
    assert len(calls) == 8
    assert "hold batches of another model, settings or prompts" in capsys.readouterr().out
