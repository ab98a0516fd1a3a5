"""rollout.py: padding, KV-cached sampling, log-probs and values against naive loops."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from instructrl.config import PretrainConfig
from instructrl.modeling import ScalarHeadModel
from instructrl.rollout import (Rollout, eos_mask, last_token_index, pad_left, pad_right,
                                response_logprobs, response_scores, response_values, sample,
                                sample_generate, trim_padding)
from instructrl.stages.pretrain import build_model, train_tokenizer

TEXTS = [f"the {b} eats {c}. the {b} lives in {d}." for b in ("kund", "zozap", "musot")
         for c in ("seeds", "moss", "roots") for d in ("snan", "reethu")] * 5
TINY = PretrainConfig(vocab_size=300, hidden_size=32, intermediate_size=64, num_layers=2,
                      num_heads=2, max_position=96, seq_len=32)


@pytest.fixture(scope="module")
def tiny():
    tok = train_tokenizer(TEXTS, TINY.vocab_size)
    model = build_model(TINY, tok).eval()
    return model, tok


def queries_for(tok):
    seqs = [tok(t)["input_ids"] for t in
            ("the kund eats", "the musot lives in snan. the zozap eats", "the", "roots. the kund")]
    return seqs, *pad_left(seqs, tok.pad_token_id)


class EosBoost:
    """Raise the EOS logit so responses end at varied lengths within a few tokens."""

    def __init__(self, model, eos, boost):
        self.handle = model.lm_head.register_forward_hook(
            lambda m, a, out: out + boost * F.one_hot(torch.tensor(eos), out.shape[-1]))

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.handle.remove()


def test_pad_left_right():
    ids, mask = pad_left([[5, 6, 7], [8]], 0)
    assert ids.tolist() == [[5, 6, 7], [0, 0, 8]] and mask.tolist() == [[1, 1, 1], [0, 0, 1]]
    ids, mask = pad_right([[5, 6, 7], [8]], 0)
    assert ids.tolist() == [[5, 6, 7], [8, 0, 0]] and mask.tolist() == [[1, 1, 1], [1, 0, 0]]


def test_eos_mask():
    r = torch.tensor([[4, 2, 4, 2], [4, 4, 4, 4], [2, 5, 5, 5]])
    assert eos_mask(r, 2).tolist() == [[1, 1, 0, 0], [1, 1, 1, 1], [1, 0, 0, 0]]
    assert eos_mask(r, [2, 5]).tolist() == [[1, 1, 0, 0], [1, 1, 1, 1], [1, 0, 0, 0]]


def test_sample_masks_after_eos_and_is_deterministic(tiny):
    model, tok = tiny
    _, q, qm = queries_for(tok)
    q, qm = q.repeat(4, 1), qm.repeat(4, 1)  # (16, Q)
    kw = dict(max_new_tokens=20, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    with EosBoost(model, tok.eos_token_id, 4.0):
        r1, m1 = sample(model, q, qm, generator=torch.Generator().manual_seed(1), **kw)
        r2, m2 = sample(model, q, qm, generator=torch.Generator().manual_seed(1), **kw)
        r3, _ = sample(model, q, qm, generator=torch.Generator().manual_seed(2), **kw)
    assert torch.equal(r1, r2) and torch.equal(m1, m2)
    assert not torch.equal(r1, r3)
    assert r1.shape[1] <= 20
    lengths = m1.sum(1)
    assert len(set(lengths.tolist())) > 2  # responses end at varied lengths
    assert torch.equal(m1, eos_mask(r1, tok.eos_token_id))
    for row, n in zip(r1, lengths):
        ended = tok.eos_token_id in row[:n].tolist()
        if ended:
            assert row[n - 1] == tok.eos_token_id
        assert (row[n:] == tok.pad_token_id).all()
    assert not model.training


def test_sample_stops_when_all_rows_end(tiny):
    model, tok = tiny
    _, q, qm = queries_for(tok)
    with EosBoost(model, tok.eos_token_id, 50.0):
        r, m = sample(model, q, qm, max_new_tokens=30, eos_token_id=tok.eos_token_id,
                      pad_token_id=tok.pad_token_id, generator=torch.Generator().manual_seed(0))
    assert r.shape == (4, 1) and m.tolist() == [[1]] * 4


def test_sample_matches_generate_and_greedy_matches_uncached(tiny):
    model, tok = tiny
    seqs, q, qm = queries_for(tok)
    kw = dict(max_new_tokens=12, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    with EosBoost(model, tok.eos_token_id, 3.0):
        ours = sample(model, q, qm, generator=torch.Generator().manual_seed(3), **kw)
        hf = sample_generate(model, q, qm, seed=3, **kw)
    width = ours[0].shape[1]
    assert torch.equal(ours[0], hf[0][:, :width]) and torch.equal(ours[1], hf[1][:, :width])
    # Greedy with the KV cache and left padding = greedy without cache, one sequence at a time.
    greedy, gm = sample(model, q, qm, temperature=0, **kw)
    for i, s in enumerate(seqs):
        ids = torch.tensor([s])
        for _ in range(12):
            with torch.no_grad():
                nxt = model(input_ids=ids).logits[0, -1].argmax()
            ids = torch.cat([ids, nxt.view(1, 1)], 1)
        assert greedy[i].tolist() == ids[0, len(s):].tolist()


def naive_logprobs(model, seq_q, seq_r, temperature=1.0):
    ids = torch.tensor([seq_q + seq_r])
    with torch.no_grad():
        logits = model(input_ids=ids).logits[0].float() / temperature
    logp = F.log_softmax(logits, -1)
    lp = [logp[len(seq_q) - 1 + t, tok_id].item() for t, tok_id in enumerate(seq_r)]
    ent = [-(logp[len(seq_q) - 1 + t].exp() * logp[len(seq_q) - 1 + t]).sum().item()
           for t in range(len(seq_r))]
    return lp, ent


def test_response_logprobs_equal_naive_without_padding(tiny):
    model, tok = tiny
    seqs, q, qm = queries_for(tok)
    resp_seqs = [tok(t, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
                 for t in ("moss.", "the kund lives in snan and eats roots.", "x", "seeds")]
    r, rm = pad_right(resp_seqs, tok.pad_token_id)
    with torch.no_grad():
        lp, ent = response_logprobs(model, q, qm, r, rm, temperature=0.7, return_entropy=True)
    assert lp.shape == r.shape
    for i in range(len(seqs)):
        n = len(resp_seqs[i])
        want_lp, want_ent = naive_logprobs(model, seqs[i], resp_seqs[i], temperature=0.7)
        assert torch.allclose(lp[i, :n], torch.tensor(want_lp), atol=1e-5)
        assert torch.allclose(ent[i, :n], torch.tensor(want_ent), atol=1e-5)
        assert (lp[i, n:] == 0).all() and (ent[i, n:] == 0).all()


def test_response_values_and_scores_alignment(tiny, tmp_path):
    model, tok = tiny
    from instructrl.modeling import save_pretrained_atomic
    save_pretrained_atomic(model, tok, tmp_path / "m")
    vf = ScalarHeadModel.from_causal_lm(tmp_path / "m").eval()
    vf.set_bias(0.5)
    seqs, q, qm = queries_for(tok)
    resp_seqs = [[7, 8, tok.eos_token_id], [9], [10, 11, 12, 13], [tok.eos_token_id]]
    r, rm = pad_right(resp_seqs, tok.pad_token_id)
    with torch.no_grad():
        values = response_values(vf, q, qm, r, rm)
        scores = response_scores(vf, q, qm, r, rm)
    assert values.shape == r.shape and scores.shape == (4,)
    idx = last_token_index(q, rm)
    for i in range(4):
        with torch.no_grad():
            ids = torch.tensor([seqs[i] + resp_seqs[i]])
            full = vf(ids, torch.ones_like(ids))[0]
        n, Lq = len(resp_seqs[i]), len(seqs[i])
        # value of the state before response token t = output at the token before it
        assert torch.allclose(values[i, :n], full[Lq - 1:Lq - 1 + n], atol=1e-5)
        assert (values[i, n:] == 0).all()
        assert torch.allclose(scores[i], full[-1], atol=1e-5)
        assert idx[i] == q.shape[1] + n - 1


def test_columns_of_padding_only_are_trimmed_without_changing_results(tiny, tmp_path):
    model, tok = tiny
    from instructrl.modeling import save_pretrained_atomic
    save_pretrained_atomic(model, tok, tmp_path / "m")
    vf = ScalarHeadModel.from_causal_lm(tmp_path / "m").eval()
    _, q, qm = queries_for(tok)
    r, rm = pad_right([[7, 8, tok.eos_token_id], [9], [10, 11, 12, 13]], tok.pad_token_id)
    q, qm = q[:3], qm[:3]
    pad = tok.pad_token_id
    # Three more all-padding query columns on the left, five response columns on the right.
    wq = torch.cat([torch.full((3, 3), pad), q], 1)
    wqm = torch.cat([torch.zeros(3, 3, dtype=qm.dtype), qm], 1)
    wr = torch.cat([r, torch.full((3, 5), pad)], 1)
    wrm = torch.cat([rm, torch.zeros(3, 5, dtype=rm.dtype)], 1)
    tq, tqm, tr, trm = trim_padding(wq, wqm, wr, wrm)
    assert tq.shape[1] == int(qm.sum(1).max()) and tr.shape[1] == 4
    assert torch.equal(tq, q[:, q.shape[1] - tq.shape[1]:]) and torch.equal(trm, rm)
    with torch.no_grad():
        lp, ent = response_logprobs(model, wq, wqm, wr, wrm, return_entropy=True)
        lp0, ent0 = response_logprobs(model, q, qm, r, rm, return_entropy=True)
        v, v0 = response_values(vf, wq, wqm, wr, wrm), response_values(vf, q, qm, r, rm)
        s, s0 = response_scores(vf, wq, wqm, wr, wrm), response_scores(vf, q, qm, r, rm)
    assert lp.shape == ent.shape == v.shape == wr.shape
    for wide, narrow in ((lp, lp0), (ent, ent0), (v, v0)):
        assert torch.allclose(wide[:, :4], narrow, atol=1e-5) and (wide[:, 4:] == 0).all()
    assert torch.allclose(s, s0, atol=1e-5)


def test_rollout_minibatch_indexing():
    ro = Rollout(queries=torch.zeros(4, 3), query_mask=torch.ones(4, 3),
                 responses=torch.arange(8).view(4, 2), response_mask=torch.ones(4, 2),
                 scores=torch.arange(4.))
    mb = ro[torch.tensor([2, 0])]
    assert mb.responses.tolist() == [[4, 5], [0, 1]] and mb.scores.tolist() == [2.0, 0.0]
    assert mb.logprobs is None
