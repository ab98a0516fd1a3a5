"""instructrl.losses against naive Python loops and hand-computed values."""

from __future__ import annotations

import math
import statistics
import subprocess
import sys

import pytest
import torch

from instructrl import losses as L


@pytest.fixture(autouse=True)
def _float64():
    """float64 so comparisons against Python-float loops are tight; restored for other modules."""
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(old)


def _rng(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _ragged_mask(lengths: list[int], R: int) -> torch.Tensor:
    return torch.tensor([[1 if t < n else 0 for t in range(R)] for n in lengths])


def _assert_stats_are_detached_scalars(stats: dict) -> None:
    assert stats
    for name, v in stats.items():
        assert isinstance(v, torch.Tensor) and v.dim() == 0, name
        assert not v.requires_grad, name
        assert torch.isfinite(v), name


# --------------------------------------------------------------------------- masked statistics


def test_masked_mean_matches_loop_and_ignores_masked_out_nan():
    g = _rng(1)
    x = torch.randn(4, 6, generator=g)
    mask = torch.rand(4, 6, generator=g) > 0.4
    mask[:, 0] = True
    x_dirty = torch.where(mask, x, torch.full_like(x, float("nan")))
    vals = [x[b, t].item() for b in range(4) for t in range(6) if mask[b, t]]
    assert L.masked_mean(x_dirty, mask).item() == pytest.approx(sum(vals) / len(vals))
    rows = L.masked_mean(x_dirty, mask, dim=1)
    for b in range(4):
        row = [x[b, t].item() for t in range(6) if mask[b, t]]
        assert rows[b].item() == pytest.approx(sum(row) / len(row))
    # an empty mean is NaN, not a silent 0
    assert torch.isnan(L.masked_mean(x, torch.zeros_like(mask)))


def test_masked_var_matches_statistics_module():
    g = _rng(2)
    x = torch.randn(3, 7, generator=g)
    mask = torch.rand(3, 7, generator=g) > 0.3
    vals = [x[b, t].item() for b in range(3) for t in range(7) if mask[b, t]]
    assert L.masked_var(x, mask).item() == pytest.approx(statistics.variance(vals))
    assert L.masked_var(x, mask, unbiased=False).item() == pytest.approx(statistics.pvariance(vals))
    one = torch.zeros_like(mask)
    one[0, 0] = True
    with pytest.raises(ValueError):
        L.masked_var(x, one)


def test_masked_whiten_mean0_var1_on_masked_entries_and_ignores_the_rest():
    g = _rng(3)
    x = 5.0 + 3.0 * torch.randn(4, 9, generator=g)
    mask = _ragged_mask([9, 5, 2, 7], 9).bool()
    w = L.masked_whiten(x, mask)
    vals = [w[b, t].item() for b in range(4) for t in range(9) if mask[b, t]]
    assert statistics.mean(vals) == pytest.approx(0.0, abs=1e-9)
    assert statistics.variance(vals) == pytest.approx(1.0, rel=1e-6)
    assert (w[~mask] == 0).all()
    # masked-out entries (even inf / nan) do not change the result
    x2 = x.clone()
    x2[~mask] = float("inf")
    x2[1, 6] = float("nan")
    assert torch.equal(L.masked_whiten(x2, mask), w)
    # hand value: [1, 3] -> mean 2, unbiased var 2 -> [-1/sqrt2, 1/sqrt2]
    h = L.masked_whiten(torch.tensor([[1.0, 3.0, 100.0]]), torch.tensor([[1, 1, 0]]))
    assert h.tolist()[0] == pytest.approx([-1 / math.sqrt(2), 1 / math.sqrt(2), 0.0], abs=1e-7)
    # shift_mean=False keeps the mean, rescales the spread
    k = L.masked_whiten(x, mask, shift_mean=False)
    mean = L.masked_mean(x, mask)
    assert torch.allclose(k[mask], w[mask] + mean)


# --------------------------------------------------------------------------- token log-probs


def test_logprobs_from_logits_hand_value_and_loop():
    # logits (0, ln 3): p(1) = 3/4
    lp = L.logprobs_from_logits(torch.tensor([[0.0, math.log(3.0)]]), torch.tensor([1]))
    assert lp.item() == pytest.approx(math.log(0.75))
    g = _rng(4)
    logits = torch.randn(2, 5, 11, generator=g)
    tokens = torch.randint(0, 11, (2, 5), generator=g)
    lp = L.logprobs_from_logits(logits, tokens)
    for b in range(2):
        for t in range(5):
            row = logits[b, t].tolist()
            z = math.log(sum(math.exp(v) for v in row))
            assert lp[b, t].item() == pytest.approx(row[tokens[b, t]] - z)
    # bf16 logits go through the float32 row path and agree with the float64 result
    lp16 = L.logprobs_from_logits(logits.to(torch.bfloat16), tokens)
    assert lp16.dtype == torch.float32
    ref = L.logprobs_from_logits(logits.to(torch.bfloat16).double(), tokens)
    assert torch.allclose(lp16.double(), ref, atol=1e-5)


def test_entropy_from_logits_uniform_loop_and_chunking():
    assert L.entropy_from_logits(torch.zeros(3, 7)).tolist() == pytest.approx([math.log(7)] * 3)
    g = _rng(5)
    logits = 2 * torch.randn(3, 4, 13, generator=g)
    h = L.entropy_from_logits(logits)
    assert h.shape == (3, 4)
    for b in range(3):
        for t in range(4):
            row = logits[b, t].tolist()
            z = sum(math.exp(v) for v in row)
            ps = [math.exp(v) / z for v in row]
            assert h[b, t].item() == pytest.approx(-sum(p * math.log(p) for p in ps), rel=1e-5)
    assert torch.allclose(L.entropy_from_logits(logits, chunk_rows=5), h)


# --------------------------------------------------------------------------- SFT / ptx


def _naive_next_token_nll(logits, labels, mask):
    total, n = 0.0, 0
    B, T, _ = logits.shape
    for b in range(B):
        for t in range(1, T):
            if mask[b, t]:
                row = logits[b, t - 1].tolist()
                z = math.log(sum(math.exp(v) for v in row))
                total += z - row[labels[b, t]]
                n += 1
    return total / n


def test_sft_loss_matches_loop_and_only_response_tokens_count():
    g = _rng(6)
    B, T, V = 3, 8, 10
    logits = torch.randn(B, T, V, generator=g, requires_grad=True)
    labels = torch.randint(0, V, (B, T), generator=g)
    # prompt of 3 tokens, ragged responses, right padding
    mask = torch.zeros(B, T, dtype=torch.long)
    for b, end in enumerate([8, 6, 4]):
        mask[b, 3:end] = 1
    loss, stats = L.sft_loss(logits, labels, mask)
    assert loss.item() == pytest.approx(_naive_next_token_nll(logits.detach(), labels, mask))
    assert stats["sft/tokens"].item() == mask[:, 1:].sum().item()
    _assert_stats_are_detached_scalars(stats)
    # gradient reaches only positions that predict a response token: t with mask[t+1] = 1
    loss.backward()
    predicts = torch.zeros(B, T, dtype=torch.bool)
    predicts[:, :-1] = mask[:, 1:].bool()
    assert (logits.grad[~predicts] == 0).all()
    assert (logits.grad[predicts].abs().sum(-1) > 0).all()
    # labels under the mask are never read (-100 as HF uses is fine)
    labels2 = torch.where(mask.bool(), labels, torch.full_like(labels, -100))
    assert L.sft_loss(logits.detach(), labels2, mask)[0].item() == pytest.approx(loss.item())


def test_sft_loss_hand_value():
    # T=2, V=2: position 0's logits (0, ln 3) predict token 1 at position 1 -> -log(3/4)
    logits = torch.tensor([[[0.0, math.log(3.0)], [5.0, -5.0]]])
    loss, _ = L.sft_loss(logits, torch.tensor([[0, 1]]), torch.tensor([[0, 1]]))
    assert loss.item() == pytest.approx(-math.log(0.75))


def test_ptx_loss_is_the_lm_loss_on_real_tokens():
    g = _rng(7)
    logits = torch.randn(2, 6, 9, generator=g)
    labels = torch.randint(0, 9, (2, 6), generator=g)
    mask = _ragged_mask([6, 4], 6)
    loss, stats = L.ptx_loss(logits, labels, mask)
    assert loss.item() == pytest.approx(_naive_next_token_nll(logits, labels, mask))
    assert set(stats) == {"loss/ptx", "ptx/tokens"}
    _assert_stats_are_detached_scalars(stats)


# --------------------------------------------------------------------------- ranking loss


def _ranking_batch():
    """Three prompts, ragged K (4, 2, 5), ties, non-contiguous prompt ids, shuffled order;
    plus one prompt whose 3 responses are all tied (contributes nothing)."""
    levels = {
        10: [0, 1, 1, 2],      # K=4, one tie -> 5 untied pairs
        3: [1, 0],             # K=2 -> 1 pair
        7: [0, 1, 2, 3, 4],    # K=5 -> C(5,2)=10 pairs
        42: [0, 0, 0],         # all tied -> no pair
    }
    group, level = [], []
    for p, lv in levels.items():
        group += [p] * len(lv)
        level += lv
    perm = torch.randperm(len(group), generator=_rng(8))
    group = torch.tensor(group)[perm]
    level = torch.tensor(level)[perm]
    rewards = torch.randn(len(group), generator=_rng(9))
    return rewards, group, level


def _explicit_pairs(group, level):
    """Naive enumeration: (winner, loser, weight 1/C_p) for every untied pair of every prompt."""
    pairs_by_prompt = {}
    n = len(group)
    for i in range(n):
        for j in range(n):
            if group[i] == group[j] and level[i] < level[j]:
                pairs_by_prompt.setdefault(int(group[i]), []).append((i, j))
    out = []
    for ps in pairs_by_prompt.values():
        out += [(i, j, 1.0 / len(ps)) for i, j in ps]
    return out, len(pairs_by_prompt)


def test_ranking_loss_equals_pairwise_formulation_in_loss_and_gradients():
    rewards, group, level = _ranking_batch()
    pairs, n_prompts = _explicit_pairs(group.tolist(), level.tolist())
    assert n_prompts == 3 and len(pairs) == 5 + 1 + 10

    r1 = rewards.clone().requires_grad_(True)
    loss, stats = L.ranking_loss(r1, group, level)
    loss.backward()

    r2 = rewards.clone().requires_grad_(True)
    explicit = sum(-w * torch.nn.functional.logsigmoid(r2[i] - r2[j]) for i, j, w in pairs)
    explicit = explicit / n_prompts
    explicit.backward()

    # a plain-float loop too, independent of torch ops
    rv = rewards.tolist()
    naive = sum(w * math.log1p(math.exp(-(rv[i] - rv[j]))) for i, j, w in pairs) / n_prompts
    assert loss.item() == pytest.approx(naive)
    assert loss.item() == pytest.approx(explicit.item())
    assert torch.allclose(r1.grad, r2.grad)
    # the all-tied prompt gets no gradient
    assert (r1.grad[group == 42] == 0).all()

    _assert_stats_are_detached_scalars(stats)
    assert stats["rm/pairs"].item() == len(pairs)
    assert stats["rm/prompts"].item() == 3
    acc = sum(rv[i] > rv[j] for i, j, _ in pairs) / len(pairs)
    margin = sum(rv[i] - rv[j] for i, j, _ in pairs) / len(pairs)
    assert stats["rm/accuracy"].item() == pytest.approx(acc)
    assert stats["rm/margin"].item() == pytest.approx(margin)


def test_ranking_loss_each_prompt_weighs_the_same():
    # prompt A: K=2, pair margin 0 -> log 2. prompt B: K=4 no ties, every margin 0 -> log 2.
    # mean over prompts = log 2 whatever K; if pairs (not prompts) were averaged, still log 2 --
    # so use different margins: A's pair has margin +1, B's six pairs have margin 0.
    rewards = torch.tensor([1.0, 0.0, 0.0, 0.0, 0.0, 0.0])
    group = torch.tensor([0, 0, 1, 1, 1, 1])
    level = torch.tensor([0, 1, 0, 1, 2, 3])
    loss, stats = L.ranking_loss(rewards, group, level)
    expected = 0.5 * (math.log1p(math.exp(-1.0)) + math.log(2.0))
    assert loss.item() == pytest.approx(expected)
    assert stats["rm/accuracy"].item() == pytest.approx(1 / 7)  # only A's pair is strictly right


def test_ranking_loss_hand_value_k3_with_tie_and_degenerate_batches():
    # levels (0, 1, 1): pairs (0,1), (0,2); rewards (2, 0, 1): -1/2 (log σ(2) + log σ(1))
    loss, _ = L.ranking_loss(torch.tensor([2.0, 0.0, 1.0]), torch.tensor([5, 5, 5]),
                             torch.tensor([0, 1, 1]))
    assert loss.item() == pytest.approx(0.5 * (math.log1p(math.exp(-2)) + math.log1p(math.exp(-1))))
    # a batch of only ties has no pair: loss 0, no NaN
    r = torch.tensor([1.0, 2.0], requires_grad=True)
    loss, stats = L.ranking_loss(r, torch.tensor([0, 0]), torch.tensor([0, 0]))
    loss.backward()
    assert loss.item() == 0.0 and (r.grad == 0).all() and stats["rm/pairs"].item() == 0
    with pytest.raises(ValueError):
        L.ranking_loss(torch.zeros(3), torch.zeros(2, dtype=torch.long), torch.zeros(3))


# --------------------------------------------------------------------------- KL


def test_kl_estimators_hand_values_k1_identity_and_k3_nonnegative():
    lp = torch.tensor([[math.log(0.5), math.log(0.2)]])
    ref = torch.tensor([[math.log(0.25), math.log(0.4)]])
    mask = torch.tensor([[1, 1]])
    k1, s1 = L.kl_penalty(lp, ref, mask, "k1")
    k2, s2 = L.kl_penalty(lp, ref, mask, "k2")
    k3, s3 = L.kl_penalty(lp, ref, mask, "k3")
    assert torch.allclose(k1, lp - ref)
    # token 0: r = 0.5; token 1: r = 2
    assert k2[0].tolist() == pytest.approx([0.5 * math.log(0.5) ** 2, 0.5 * math.log(2) ** 2])
    assert k3[0].tolist() == pytest.approx([-0.5 - math.log(0.5), 1.0 - math.log(2)])
    assert s1["objective/kl"].item() == pytest.approx(k1.sum().item())
    assert "objective/kl2" in s2 and "objective/kl3" in s3

    g = _rng(10)
    lp = 3 * torch.randn(5, 30, generator=g)
    ref = 3 * torch.randn(5, 30, generator=g)
    mask = _ragged_mask([30, 1, 17, 9, 0], 30)
    k3, _ = L.kl_penalty(lp, ref, mask, "k3")
    assert (k3 >= 0).all() and (k3[~mask.bool()] == 0).all()
    k1, stats = L.kl_penalty(lp, ref, mask)
    assert torch.equal(k1, torch.where(mask.bool(), lp - ref, torch.zeros_like(lp)))
    assert stats["objective/kl"].item() == pytest.approx(
        sum(sum((lp[b, t] - ref[b, t]).item() for t in range(30) if mask[b, t]) for b in range(5)) / 5)
    with pytest.raises(ValueError):
        L.kl_penalty(lp, ref, mask, "k4")


def test_k1_and_k3_are_unbiased_estimators_of_the_true_kl():
    # sample x ~ p from a categorical; mean k1 and k3 approach KL(p || q)
    g = _rng(11)
    p = torch.softmax(torch.randn(6, generator=g), 0)
    q = torch.softmax(torch.randn(6, generator=g), 0)
    true_kl = (p * (p / q).log()).sum().item()
    x = torch.multinomial(p, 400_000, replacement=True, generator=g).reshape(1, -1)
    lp, ref = p.log()[x], q.log()[x]
    mask = torch.ones_like(x)
    for kind in ("k1", "k3"):
        est, _ = L.kl_penalty(lp, ref, mask, kind)
        assert est.mean().item() == pytest.approx(true_kl, abs=0.02), kind


def test_per_token_rewards_puts_score_on_last_unmasked_token_ragged_and_left_padded():
    g = _rng(12)
    B, R, beta = 4, 7, 0.05
    lp = torch.randn(B, R, generator=g)
    ref = torch.randn(B, R, generator=g)
    scores = torch.tensor([1.5, -2.0, 0.25, 3.0])
    mask = _ragged_mask([7, 3, 1, 5], R)
    mask[3] = torch.tensor([0, 0, 1, 1, 1, 1, 0])  # padding on both sides
    rewards, stats = L.per_token_rewards(scores, lp, ref, mask, beta)
    last = [6, 2, 0, 5]
    for b in range(B):
        for t in range(R):
            expect = 0.0
            if mask[b, t]:
                expect = -beta * (lp[b, t] - ref[b, t]).item()
                if t == last[b]:
                    expect += scores[b].item()
            assert rewards[b, t].item() == pytest.approx(expect), (b, t)
    _assert_stats_are_detached_scalars(stats)
    kl = [sum((lp[b, t] - ref[b, t]).item() for t in range(R) if mask[b, t]) for b in range(B)]
    assert stats["objective/kl"].item() == pytest.approx(sum(kl) / B)
    assert stats["objective/non_score_reward"].item() == pytest.approx(-beta * sum(kl) / B)
    k3 = [sum(math.expm1((ref[b, t] - lp[b, t]).item()) - (ref[b, t] - lp[b, t]).item()
              for t in range(R) if mask[b, t]) for b in range(B)]
    assert stats["objective/kl3"].item() == pytest.approx(sum(k3) / B)
    mask[2] = 0
    with pytest.raises(ValueError):
        L.per_token_rewards(scores, lp, ref, mask, beta)


# --------------------------------------------------------------------------- GAE


def _naive_gae(rewards, values, mask, gamma, lam):
    """Per row: keep only the masked-in steps, run the textbook reverse loop, put them back."""
    B, R = len(rewards), len(rewards[0])
    adv = [[0.0] * R for _ in range(B)]
    ret = [[0.0] * R for _ in range(B)]
    for b in range(B):
        steps = [t for t in range(R) if mask[b][t]]
        last_gae, next_v = 0.0, 0.0
        for t in reversed(steps):
            delta = rewards[b][t] + gamma * next_v - values[b][t]
            last_gae = delta + gamma * lam * last_gae
            adv[b][t] = last_gae
            ret[b][t] = last_gae + values[b][t]
            next_v = values[b][t]
    return adv, ret


@pytest.mark.parametrize("gamma,lam", [(1.0, 0.95), (0.9, 0.8), (1.0, 1.0), (0.99, 0.0)])
def test_gae_matches_reverse_loop(gamma, lam):
    g = _rng(13)
    B, R = 5, 9
    rewards = torch.randn(B, R, generator=g)
    values = torch.randn(B, R, generator=g)
    mask = _ragged_mask([9, 4, 1, 6, 7], R)
    mask[4] = torch.tensor([0, 1, 1, 0, 1, 1, 1, 0, 0])  # left padding and a hole
    dirty_r = torch.where(mask.bool(), rewards, torch.full_like(rewards, float("nan")))
    dirty_v = torch.where(mask.bool(), values, torch.full_like(values, 1e9))
    adv, ret = L.gae(dirty_r, dirty_v, mask, gamma, lam)
    n_adv, n_ret = _naive_gae(rewards.tolist(), values.tolist(), mask.tolist(), gamma, lam)
    assert torch.allclose(adv, torch.tensor(n_adv))
    assert torch.allclose(ret, torch.tensor(n_ret))


def test_gae_hand_values():
    rewards = torch.tensor([[0.0, 0.0, 1.0, 0.0]])
    values = torch.tensor([[0.5, 0.2, 0.3, 9.0]])
    mask = torch.tensor([[1, 1, 1, 0]])
    # gamma = lam = 1: advantage = reward-to-go - V; returns = reward-to-go (bootstrap 0 after t=2)
    adv, ret = L.gae(rewards, values, mask, 1.0, 1.0)
    assert adv[0].tolist() == pytest.approx([0.5, 0.8, 0.7, 0.0])
    assert ret[0].tolist() == pytest.approx([1.0, 1.0, 1.0, 0.0])
    # lam = 0: one-step TD error r_t + V_{t+1} - V_t
    adv, _ = L.gae(rewards, values, mask, 1.0, 0.0)
    assert adv[0].tolist() == pytest.approx([-0.3, 0.1, 0.7, 0.0])
    # targets carry no graph
    v = values.clone().requires_grad_(True)
    a, r = L.gae(rewards, v, mask, 1.0, 0.95)
    assert not a.requires_grad and not r.requires_grad


# --------------------------------------------------------------------------- PPO losses


def test_ppo_policy_loss_matches_loop():
    g = _rng(14)
    B, R, eps = 4, 6, 0.2
    old = torch.randn(B, R, generator=g)
    lp = old + 0.4 * torch.randn(B, R, generator=g)
    adv = torch.randn(B, R, generator=g)
    mask = _ragged_mask([6, 2, 5, 3], R)
    loss, stats = L.ppo_policy_loss(lp, old, adv, mask, eps)
    terms, clipped, kls = [], [], []
    for b in range(B):
        for t in range(R):
            if not mask[b, t]:
                continue
            ratio = math.exp(lp[b, t].item() - old[b, t].item())
            a = adv[b, t].item()
            u, c = -a * ratio, -a * min(max(ratio, 1 - eps), 1 + eps)
            terms.append(max(u, c))
            clipped.append(c > u)
            kls.append(0.5 * (lp[b, t].item() - old[b, t].item()) ** 2)
    assert loss.item() == pytest.approx(sum(terms) / len(terms))
    assert stats["policy/clipfrac"].item() == pytest.approx(sum(clipped) / len(clipped))
    assert stats["policy/approxkl"].item() == pytest.approx(sum(kls) / len(kls))
    assert 0 < stats["policy/clipfrac"].item() < 1  # the data exercise both branches
    _assert_stats_are_detached_scalars(stats)


def test_ppo_policy_loss_clipping_zeroes_gradient():
    # ratios 1.5, 0.5, 1.5, 0.5 with advantages +1, +1, -1, -1 (eps 0.2):
    #   A>0, ρ=1.5: clipped (-1.2 > -1.5)     A>0, ρ=0.5: not clipped (-0.5 > -0.8)
    #   A<0, ρ=1.5: not clipped (1.5 > 1.2)   A<0, ρ=0.5: clipped (0.8 > 0.5)
    old = torch.zeros(1, 4)
    lp = torch.tensor([[math.log(1.5), math.log(0.5), math.log(1.5), math.log(0.5)]],
                      requires_grad=True)
    adv = torch.tensor([[1.0, 1.0, -1.0, -1.0]])
    loss, stats = L.ppo_policy_loss(lp, old, adv, torch.ones(1, 4), 0.2)
    assert loss.item() == pytest.approx((-1.2 - 0.5 + 1.5 + 0.8) / 4)
    assert stats["policy/clipfrac"].item() == pytest.approx(0.5)
    loss.backward()
    # d/dlogp of -A ρ / 4 is -A ρ / 4 where unclipped
    assert lp.grad[0].tolist() == pytest.approx([0.0, -0.5 / 4, 1.5 / 4, 0.0])


def test_value_loss_matches_loop_and_clipping():
    g = _rng(15)
    B, R, eps = 3, 5, 0.2
    old = torch.randn(B, R, generator=g)
    v = (old + 0.5 * torch.randn(B, R, generator=g)).requires_grad_(True)
    ret = torch.randn(B, R, generator=g)
    mask = _ragged_mask([5, 3, 4], R)
    loss, stats = L.value_loss(v, old, ret, mask, eps)
    terms, clipped, vs, gs = [], [], [], []
    for b in range(B):
        for t in range(R):
            if not mask[b, t]:
                continue
            vv, o, G = v[b, t].item(), old[b, t].item(), ret[b, t].item()
            vc = o + min(max(vv - o, -eps), eps)
            f1, f2 = (vv - G) ** 2, (vc - G) ** 2
            terms.append(0.5 * max(f1, f2))
            clipped.append(f2 > f1)
            vs.append(vv)
            gs.append(G)
    assert loss.item() == pytest.approx(sum(terms) / len(terms))
    assert stats["val/clipfrac"].item() == pytest.approx(sum(clipped) / len(clipped))
    assert 0 < stats["val/clipfrac"].item() < 1
    assert stats["val/mean"].item() == pytest.approx(statistics.mean(vs))
    ve = 1 - statistics.pvariance([G - x for G, x in zip(gs, vs)]) / statistics.pvariance(gs)
    assert stats["val/var_explained"].item() == pytest.approx(ve)
    _assert_stats_are_detached_scalars(stats)
    # gradient is zero exactly where the clipped term wins
    loss.backward()
    vc = old + (v.detach() - old).clamp(-eps, eps)
    where_clipped = ((vc - ret) ** 2 > (v.detach() - ret) ** 2) & mask.bool()
    assert (v.grad[where_clipped] == 0).all()
    assert (v.grad[~where_clipped & mask.bool()] != 0).all()
    assert (v.grad[~mask.bool()] == 0).all()


def test_value_loss_hand_values():
    ret = torch.tensor([[1.0, 2.0, 3.0]])
    m = torch.ones(1, 3)
    # perfect values: loss 0, var_explained 1
    loss, s = L.value_loss(ret.clone(), ret.clone(), ret, m, 0.2)
    assert loss.item() == 0.0 and s["val/var_explained"].item() == pytest.approx(1.0)
    # constant prediction at the mean of returns explains nothing
    _, s = L.value_loss(torch.full((1, 3), 2.0), torch.full((1, 3), 2.0), ret, m, 0.2)
    assert s["val/var_explained"].item() == pytest.approx(0.0)
    # V moved 1.0 from V_old = 0 toward G = 1: clipped to 0.2 -> 0.5 * max(0, 0.64) = 0.32
    loss, s = L.value_loss(torch.tensor([[1.0]]), torch.tensor([[0.0]]), torch.tensor([[1.0]]),
                           torch.ones(1, 1), 0.2)
    assert loss.item() == pytest.approx(0.32) and s["val/clipfrac"].item() == 1.0


# --------------------------------------------------------------------------- KL controllers


def test_kl_controllers():
    fixed = L.FixedKLController(0.02)
    fixed.update(100.0, 512)
    assert fixed.value == 0.02
    c = L.AdaptiveKLController(0.1, target=6.0, horizon=10_000)
    c.update(6.6, 512)  # error +0.1
    assert c.value == pytest.approx(0.1 * (1 + 0.1 * 512 / 10_000))
    v = c.value
    c.update(60.0, 1000)  # error 9 clipped to +0.2
    assert c.value == pytest.approx(v * (1 + 0.2 * 1000 / 10_000))
    v = c.value
    c.update(0.0, 1000)  # error -1 clipped to -0.2
    assert c.value == pytest.approx(v * (1 - 0.2 * 1000 / 10_000))
    c2 = L.AdaptiveKLController(0.5, target=6.0, horizon=10_000)
    c2.load_state_dict(c.state_dict())
    assert c2.value == c.value
    with pytest.raises(ValueError):
        L.AdaptiveKLController(0.1, target=0.0, horizon=10)


# --------------------------------------------------------------------------- light import


def test_losses_import_does_not_import_transformers():
    code = ("import sys, instructrl.losses; "
            "bad = [m for m in ('transformers', 'accelerate', 'datasets') if m in sys.modules]; "
            "assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True)
