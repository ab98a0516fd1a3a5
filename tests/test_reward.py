"""Stage 2, the K-wise reward model (instructrl.stages.reward; paper section 3.5, App. C.2)."""

from __future__ import annotations

import json
import math
import shutil

import pytest
import torch
import torch.nn.functional as F

from instructrl.config import load_config
from instructrl.data.jsonl import read_records, write_records
from instructrl.data.records import Prompt, Ranking, Response
from instructrl.generation import score_sequences
from instructrl.modeling import ScalarHeadModel, load_tokenizer
from instructrl.rundir import RunDir
from instructrl.stages import reward
from instructrl.stages.common import read_metrics
from instructrl.templates import encode_example
from conftest import Crash, crash_on_call


def rm_state(directory) -> dict[str, torch.Tensor]:
    m = ScalarHeadModel.from_pretrained(directory)
    return {k: v.clone() for k, v in m.state_dict().items()}


def test_bias_makes_demonstrations_score_zero_and_survives_save_load(tiny_run, make_cfg,
                                                                     tiny_model_dir):
    cfg = make_cfg()
    run = RunDir(tiny_run)
    out = reward.train(cfg, run, tiny_model_dir)
    results = json.loads((out / "eval.json").read_text())
    assert abs(results["bias_shift"]) > 1e-3  # without the bias the mean would be far off 0

    rm = ScalarHeadModel.from_pretrained(out).eval()
    assert float(rm.bias) == pytest.approx(results["bias"], abs=1e-7)
    tok = load_tokenizer(out)
    prompts = run.prompts_by_id()
    seqs = [encode_example(tok, prompts[d.prompt_id].text, d.response, cfg.rm.max_prompt_tokens,
                           cfg.rm.max_response_tokens)
            for d in run.demonstrations() if prompts[d.prompt_id].split == "train"]
    assert len(seqs) == 40
    with torch.no_grad():
        scores = torch.cat([score_sequences(rm, seqs[i:i + 7], tok.pad_token_id)
                            for i in range(0, len(seqs), 7)])  # another batching than training's
    assert abs(float(scores.double().mean())) < 1e-4
    assert float(scores.std()) > 1e-3  # the scores themselves are not all 0


def _element(tok, text: str, responses: list[str], ranking: list[list[int]], cfg):
    prompt = Prompt(id="x", user_id="u", text=text, category="open_qa", split="train")
    r = Ranking("x", "l", [Response(t, "sft") for t in responses], ranking)
    return reward.ranking_elements([(prompt, r)], tok, cfg.rm)[0], r


def test_kwise_batch_element_equals_explicit_pairwise_loss_on_the_model(tiny_model_dir):
    cfg = load_config(None, ["rm.max_response_tokens=16", "rm.max_prompt_tokens=32"])
    tok = load_tokenizer(tiny_model_dir)
    specs = [  # ragged K, with and without ties
        ("what does the zorp eat", ["fish", "the zorp eats fish", "caves", "red blue"],
         [[1], [0], [3], [2]]),
        ("where is the blip", ["in caves", "no", "yes it is", "the blip lives in caves"],
         [[3], [0, 2], [1]]),
        ("is a zorp red", ["yes", "no", "blue"], [[0], [2], [1]]),
        ("what eats fish", ["the zorp", "a blip"], [[1], [0]]),
    ]
    built = [_element(tok, *s, cfg) for s in specs]
    elements = [e for e, _ in built]
    torch.manual_seed(0)
    model = ScalarHeadModel.from_causal_lm(tiny_model_dir).eval()
    params = [p for p in model.parameters() if p.requires_grad]

    # The stage's K-wise element: every prompt of the batch through the model once, then all
    # responses at once on top of their prompt's KV cache.
    calls = []
    hook = model.backbone.register_forward_hook(
        lambda mod, args, kwargs, out: calls.append(kwargs["input_ids"].shape[0]),
        with_kwargs=True)
    loss, stats = reward.forward_batch(model, elements, tok.pad_token_id)
    hook.remove()
    assert calls == [len(built), sum(len(r.responses) for _, r in built)]  # 4 prompts, 13 responses
    kwise_grads = torch.autograd.grad(loss, params)

    # Explicit pairwise formulation: each pair through the model on its own, each prompt's
    # pairs weighted 1/C(K,2) (1/|untied pairs| with ties), prompts averaged.
    total = 0.0
    n_pairs = 0
    for el, r in built:
        pairs = r.pairs()
        if not any(len(g) > 1 for g in r.ranking):
            assert len(pairs) == math.comb(len(r.responses), 2)
        prompt_loss = 0.0
        for w, l in pairs:
            r_w = score_sequences(model, [(el["prompt"], el["responses"][w])], tok.pad_token_id)[0]
            r_l = score_sequences(model, [(el["prompt"], el["responses"][l])], tok.pad_token_id)[0]
            prompt_loss = prompt_loss - F.logsigmoid(r_w - r_l)
        total = total + prompt_loss / len(pairs)
        n_pairs += len(pairs)
    pairwise = total / len(built)
    pairwise_grads = torch.autograd.grad(pairwise, params)

    assert int(stats["rm/pairs"]) == n_pairs == 6 + 5 + 3 + 1
    assert loss.item() == pytest.approx(pairwise.item(), abs=1e-6)
    head_bias = model.head.bias
    for p, g1, g2 in zip(params, kwise_grads, pairwise_grads):
        # The loss sees score differences only, so the head's bias gets no gradient (exactly
        # 0 up to rounding); every other parameter does.
        if p is head_bias:
            assert g1.abs().max() < 1e-6
        else:
            assert g1.abs().max() > 0
        torch.testing.assert_close(g1, g2, atol=1e-6, rtol=1e-4)


def _poison(path, select) -> int:
    """Reverse the ranking of every record `select` picks; returns how many it changed."""
    rows = read_records(path, Ranking.from_dict)
    out, n = [], 0
    for r in rows:
        if select(r):
            r = Ranking(r.prompt_id, r.labeler_id, r.responses, list(reversed(r.ranking)))
            n += 1
        out.append(r)
    write_records(path, out)
    return n


def test_heldout_labelers_and_validation_rankings_never_train(tiny_run, make_cfg,
                                                              tiny_model_dir):
    cfg = make_cfg()
    run = RunDir(tiny_run)
    clean = tiny_run.parent / "clean"
    shutil.copytree(tiny_run / "data", clean / "data")
    split = {p.id: p.split for p in run.prompts()}
    reward.train(cfg, RunDir(clean), tiny_model_dir)

    # Reverse every held-out labeler's ranking, and every validation-split ranking.
    path = tiny_run / "data" / "rankings.jsonl"
    assert _poison(path, lambda r: r.labeler_id == "l9") > 0
    assert _poison(path, lambda r: split[r.prompt_id] == "valid" and r.labeler_id != "l9") > 0
    out = reward.train(cfg, run, tiny_model_dir)
    a, b = rm_state(out), rm_state(clean / "rm")
    assert all(torch.equal(a[k], b[k]) for k in a)

    # Counts: trained on training labelers' train-split rankings only; evaluated on the rest.
    rankings = run.rankings()
    pairs = {"train": 0, "valid": 0, "held": 0}
    n_train = 0
    for r in rankings:
        if r.labeler_id == "l9":
            pairs["held"] += len(r.pairs())
        elif split[r.prompt_id] in ("train", "valid"):
            pairs[split[r.prompt_id]] += len(r.pairs())
            n_train += split[r.prompt_id] == "train"
    results = json.loads((out / "eval.json").read_text())
    assert results["train_rankings"] == n_train
    assert results["valid"]["all"]["pairs"] == pairs["valid"]
    assert results["heldout_labelers"]["all"]["pairs"] == pairs["held"]

    # Control: reversing one training ranking does change the model, so the check above can fail.
    shutil.rmtree(clean / "rm")
    first = next(r for r in rankings if r.labeler_id != "l9" and split[r.prompt_id] == "train")
    assert _poison(clean / "data" / "rankings.jsonl",
                   lambda r: r.prompt_id == first.prompt_id) == 1
    reward.train(cfg, RunDir(clean), tiny_model_dir)
    c = rm_state(clean / "rm")
    assert not all(torch.equal(a[k], c[k]) for k in a)


def test_eval_json_reports_pairwise_accuracy_on_valid_and_heldout_labelers(
        tiny_run, make_cfg, tiny_model_dir):
    cfg = make_cfg()
    run = RunDir(tiny_run)
    out = reward.train(cfg, run, tiny_model_dir)
    results = json.loads((out / "eval.json").read_text())
    rm = ScalarHeadModel.from_pretrained(out).eval()
    tok = load_tokenizer(out)
    prompts = run.prompts_by_id()

    # Recount each accuracy from the saved RM, one ranking at a time.
    want: dict[str, dict[str, list[int]]] = {"valid": {}, "heldout_labelers": {}}
    per_ranking: dict[str, list[list[int]]] = {"valid": [], "heldout_labelers": []}
    for r in run.rankings():
        p = prompts[r.prompt_id]
        name = "heldout_labelers" if r.labeler_id == "l9" else (
            "valid" if p.split == "valid" else None)
        if name is None:
            continue
        seqs = [encode_example(tok, p.text, x.text, cfg.rm.max_prompt_tokens,
                               cfg.rm.max_response_tokens) for x in r.responses]
        with torch.no_grad():
            s = score_sequences(rm, seqs, tok.pad_token_id).tolist()
        for key in ("all", p.category):
            h = want[name].setdefault(key, [0, 0])
            for w, l in r.pairs():
                h[0] += s[w] > s[l]
                h[1] += 1
        if r.pairs():
            per_ranking[name].append([sum(s[w] > s[l] for w, l in r.pairs()), len(r.pairs())])
    for name in ("valid", "heldout_labelers"):
        got = results[name]
        assert set(got) == {"all", "open_qa", "generation"}
        assert sorted(got["all"].pop("rankings")) == sorted(per_ranking[name])
        for key, (hits, n) in want[name].items():
            assert got[key]["pairs"] == n
            assert got[key]["accuracy"] == pytest.approx(hits / n)
            assert 0.0 <= got[key]["accuracy"] <= 1.0


def test_resume_after_crash_matches_uninterrupted_run(tiny_run, make_cfg, tiny_model_dir,
                                                      monkeypatch):
    cfg = make_cfg("rm.checkpoint_every=3")
    other = tiny_run.parent / "uninterrupted"
    shutil.copytree(tiny_run / "data", other / "data")
    reward.train(cfg, RunDir(other), tiny_model_dir)

    # at step 5: after the step-3 checkpoint and 4 metrics rows
    real = crash_on_call(monkeypatch, reward, "forward_batch", 5)
    with pytest.raises(Crash):
        reward.train(cfg, RunDir(tiny_run), tiny_model_dir)
    out = tiny_run / "rm"
    assert torch.load(out / "checkpoint" / "state.pt", weights_only=False)["step"] == 3
    monkeypatch.setattr(reward, "forward_batch", real)
    reward.train(cfg, RunDir(tiny_run), tiny_model_dir)

    a, b = rm_state(out), rm_state(other / "rm")
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert (out / "eval.json").read_text() == (other / "rm" / "eval.json").read_text()
    assert read_metrics(out / "metrics.jsonl") == read_metrics(other / "rm" / "metrics.jsonl")
    assert not (out / "checkpoint").exists()


def test_score_groups_equals_scoring_each_sequence_alone(tiny_model_dir, monkeypatch):
    """Prompts of different lengths (left padding in the prompt pass) with ragged K and
    responses of different lengths: the shared-prompt scores are the per-sequence scores,
    also through the fallback for a cache that cannot be re-indexed (found once per model)."""
    from transformers.cache_utils import DynamicCache

    from instructrl.generation import score_groups

    tok = load_tokenizer(tiny_model_dir)
    model = ScalarHeadModel.from_causal_lm(tiny_model_dir).eval()
    model.set_bias(0.25)
    enc = lambda p, r: encode_example(tok, p, r, 32, 16)  # noqa: E731
    specs = [("what does the zorp eat", ["fish", "the zorp eats red fish", ""]),
             ("is it", ["yes", "no it is not"]),
             ("where does the blip live on a cold day", ["caves", "in the caves", "no", "x"])]
    groups = [(enc(p, rs[0])[0], [enc(p, r)[1] for r in rs]) for p, rs in specs]
    expected = score_sequences(model, [(q, r) for q, rs in groups for r in rs], tok.pad_token_id)
    cached = []  # per backbone call: did it run on top of a KV cache?
    model.backbone.register_forward_hook(
        lambda mod, args, kwargs, out: cached.append(
            kwargs.get("cache", kwargs.get("past_key_values")) is not None), with_kwargs=True)
    with torch.no_grad():
        torch.testing.assert_close(score_groups(model, groups, tok.pad_token_id), expected,
                                   atol=1e-5, rtol=1e-5)
        assert cached == [False, True]  # prompts once, then the responses on their cache
        owner = next(c for c in DynamicCache.__mro__ if "batch_select_indices" in vars(c))
        monkeypatch.delattr(owner, "batch_select_indices")
        cached.clear()
        torch.testing.assert_close(score_groups(model, groups, tok.pad_token_id), expected,
                                   atol=1e-5, rtol=1e-5)
        assert cached == [False, False]  # the fallback: whole sequences
        cached.clear()  # the model remembers it: no prompt pass thrown away any more
        torch.testing.assert_close(score_groups(model, groups, tok.pad_token_id), expected,
                                   atol=1e-5, rtol=1e-5)
        assert cached == [False]
