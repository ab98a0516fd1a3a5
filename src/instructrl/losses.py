"""Every loss and estimator of the pipeline, as pure functions of tensors.

Imports torch only (DESIGN.md §3): no model, no config, no I/O. Each loss returns
``(loss, stats)`` where ``stats`` maps a metric name (lm-human-preferences / TRL names, so curves
compare) to a detached scalar tensor. Masks are explicit arguments: 1 (or True) marks a position
that counts, 0 a position that must not influence the result (padding, prompt tokens) -- not even
through NaN/inf values stored there.

Shapes: B batch, K responses per prompt, N responses in a flat batch, Q query, R response,
T = Q + R, V vocab.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

Stats = dict[str, torch.Tensor]

__all__ = [
    "masked_mean", "masked_var", "masked_whiten",
    "logprobs_from_logits", "entropy_from_logits", "selective_log_softmax",
    "sft_loss", "ptx_loss", "ranking_loss",
    "kl_penalty", "per_token_rewards", "gae",
    "ppo_policy_loss", "value_loss",
    "FixedKLController", "AdaptiveKLController",
]


def _stat(x: torch.Tensor | float) -> torch.Tensor:
    """A metric value: detached, float32 scalar (so stats never hold the graph)."""
    if isinstance(x, torch.Tensor):
        return x.detach().float()
    return torch.tensor(float(x))


def _check_same_shape(**tensors: torch.Tensor) -> None:
    shapes = {name: tuple(t.shape) for name, t in tensors.items()}
    if len(set(shapes.values())) != 1:
        raise ValueError(f"shape mismatch: {shapes}")


# --------------------------------------------------------------------------- masked statistics


def masked_mean(x: torch.Tensor, mask: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    """Mean of ``x`` over the positions where ``mask`` is set.

    ``dim=None`` reduces everything to a scalar; an int reduces that dimension only. A reduction
    with no masked-in entry is 0/0 = NaN, on purpose: an empty mean is a bug upstream, not 0.
    """
    m = mask.to(torch.bool)
    xs = torch.where(m, x, torch.zeros((), dtype=x.dtype, device=x.device))  # NaN-safe zeroing
    n = m.to(x.dtype)
    if dim is None:
        return xs.sum() / n.sum()
    return xs.sum(dim) / n.sum(dim)


def masked_var(x: torch.Tensor, mask: torch.Tensor, unbiased: bool = True) -> torch.Tensor:
    """Variance of ``x`` over all masked-in entries (a scalar).

    ``unbiased`` applies Bessel's correction n/(n-1); it needs at least 2 entries.
    """
    m = mask.to(torch.bool)
    mean = masked_mean(x, m)
    var = masked_mean((x - mean) ** 2, m)
    if unbiased:
        n = m.sum()
        if int(n) < 2:
            raise ValueError(f"unbiased masked_var needs >= 2 masked-in entries, got {int(n)}")
        var = var * n / (n - 1)
    return var


def masked_whiten(x: torch.Tensor, mask: torch.Tensor, shift_mean: bool = True,
                  eps: float = 1e-8) -> torch.Tensor:
    """Normalise ``x`` to mean 0 and (unbiased) variance 1 over the masked-in entries.

    Used for advantage whitening (and optional reward whitening) in PPO, as in
    lm-human-preferences. ``shift_mean=False`` rescales only and keeps the mean (for rewards,
    whose sign carries meaning). Statistics ignore masked-out entries, and masked-out outputs are
    0 so that garbage in padding never leaks into a later sum.
    """
    m = mask.to(torch.bool)
    mean, var = masked_mean(x, m), masked_var(x, m)
    white = (x - mean) * torch.rsqrt(var + eps)
    if not shift_mean:
        white = white + mean
    return torch.where(m, white, torch.zeros((), dtype=white.dtype, device=white.device))


# --------------------------------------------------------------------------- token log-probs


def logprobs_from_logits(logits: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """log p(token) under ``logits``: (..., V), (...) -> (...).

    Memory-light: gather the token's logit and subtract logsumexp, instead of materialising a
    full (..., V) log_softmax. Half-precision logits are upcast row by row (B rows of (T, V)),
    never as a whole, because logsumexp in bf16 is too coarse for PPO ratios.
    """
    if logits.shape[:-1] != tokens.shape:
        raise ValueError(f"logits {tuple(logits.shape)} and tokens {tuple(tokens.shape)} disagree")
    tokens = tokens.long()
    if logits.dtype in (torch.float32, torch.float64):
        picked = logits.gather(-1, tokens.unsqueeze(-1)).squeeze(-1)  # (...)
        return picked - torch.logsumexp(logits, dim=-1)  # (...)
    if logits.dim() == 1:
        return logprobs_from_logits(logits.float(), tokens)
    rows = [logprobs_from_logits(lg.float(), tk) for lg, tk in zip(logits, tokens)]
    return torch.stack(rows)  # (...), float32


def entropy_from_logits(logits: torch.Tensor, chunk_rows: int = 256) -> torch.Tensor:
    """Entropy of softmax(logits) over the last axis: (..., V) -> (...).

    H = logsumexp(l) - sum softmax(l) * l. Computed over chunks of ``chunk_rows`` positions so the
    (..., V) softmax is never allocated at full size (logits of a 50k vocabulary are large).
    Computed in float32.
    """
    flat = logits.reshape(-1, logits.shape[-1])  # (P, V), P = prod(...)
    out = []
    for chunk in flat.split(chunk_rows):
        c = chunk.float()
        p = torch.softmax(c, dim=-1)
        out.append(torch.logsumexp(c, dim=-1) - (p * c).sum(-1))
    if not out:  # zero positions
        return flat.new_zeros(logits.shape[:-1], dtype=torch.float32)
    return torch.cat(out).reshape(logits.shape[:-1])


def _chunk_rows(vocab: int) -> int:
    """Positions per chunk so that one float32 chunk of logits is ~32 MiB at most (1024
    positions of an 8k vocabulary, 65 of Llama-3's 128k): big enough that the per-chunk
    overhead vanishes, small enough that the temporaries stay far below the logits."""
    return max(1, (1 << 23) // max(1, vocab))


def _forward_chunks(chunk_logits, tokens: torch.Tensor, step: int, temperature: float,
                    with_entropy: bool):
    """The forward loop of both chunked log-softmaxes. `chunk_logits(s, e)`: float32 logits
    (e-s, V) of rows s..e-1; `tokens` (P,1). Returns logsumexp, log-prob of the token and (or
    None) entropy of softmax(logits / temperature), each (P,) float32."""
    P = tokens.shape[0]
    lse = torch.empty(P, dtype=torch.float32, device=tokens.device)
    logp = torch.empty_like(lse)
    ent = torch.empty_like(lse) if with_entropy else None
    for s in range(0, P, step):
        c = chunk_logits(s, s + step)
        if temperature != 1.0:
            c = c / temperature
        l = torch.logsumexp(c, dim=-1)
        lse[s:s + step] = l
        logp[s:s + step] = c.gather(1, tokens[s:s + step]).squeeze(1) - l
        if with_entropy:  # H = logsumexp(c) - sum softmax(c) * c
            ent[s:s + step] = l - (torch.softmax(c, dim=-1) * c).sum(-1)
    return lse, logp, ent


def _chunk_grad(c: torch.Tensor, lse: torch.Tensor, tok: torch.Tensor, g: torch.Tensor,
                temperature: float) -> torch.Tensor:
    """d(sum g * log p_token)/d logits for one float32 chunk (p,V): (1[j = y] - p_j) g / T."""
    if temperature != 1.0:
        c = c / temperature
    gs = g[:, None]
    gc = torch.exp(c - lse[:, None]).mul_(-gs)
    gc.scatter_add_(1, tok, gs)
    return gc / temperature if temperature != 1.0 else gc


def _outputs(ctx, logp: torch.Tensor, ent: torch.Tensor | None, shape: torch.Size):
    """(P,) results back in the tokens' shape; the entropy carries no gradient."""
    logp = logp.view(shape)
    if ent is None:
        return logp
    ent = ent.view(shape)
    ctx.mark_non_differentiable(ent)
    return logp, ent


class _SelectiveLogSoftmax(torch.autograd.Function):
    """log softmax(logits / T)[token] per position, with the float32 work done chunk by
    chunk in the forward pass and recomputed chunk by chunk in the backward pass. What is
    saved for backward is the input logits (already alive: the model produced them) and one
    float per position (the logsumexp), never a (..., V) float32 log-softmax; TRL's
    `selective_log_softmax` has the same aim in its forward pass only."""

    @staticmethod
    def forward(ctx, logits, tokens, temperature, with_entropy):
        V = logits.shape[-1]
        flat = logits.reshape(-1, V)  # (P,V)
        tok = tokens.reshape(-1, 1).long()  # (P,1)
        lse, logp, ent = _forward_chunks(lambda s, e: flat[s:e].float(), tok, _chunk_rows(V),
                                         temperature, with_entropy)
        ctx.save_for_backward(logits, tokens, lse)
        ctx.temperature = temperature
        return _outputs(ctx, logp, ent, tokens.shape)

    @staticmethod
    def backward(ctx, grad_logp, grad_ent=None):
        logits, tokens, lse = ctx.saved_tensors
        V = logits.shape[-1]
        flat = logits.reshape(-1, V)
        tok = tokens.reshape(-1, 1).long()
        g = grad_logp.reshape(-1).float()  # (P,)
        grad = torch.empty_like(flat)  # (P,V), the logits' dtype
        step = _chunk_rows(V)
        for s in range(0, flat.shape[0], step):
            grad[s:s + step] = _chunk_grad(flat[s:s + step].float(), lse[s:s + step],
                                           tok[s:s + step], g[s:s + step], ctx.temperature)
        return grad.view(logits.shape), None, None, None


def selective_log_softmax(logits: torch.Tensor, tokens: torch.Tensor, temperature: float = 1.0,
                          with_entropy: bool = False):
    """log softmax(logits / temperature) at ``tokens``: (..., V), (...) -> (...) float32,
    differentiable in ``logits``; with ``with_entropy`` also the entropy (...) of each
    softmax(logits / temperature), without gradient (a statistic, not a loss term).

    Memory-light in both passes: float32 work in chunks of positions (`_chunk_rows`), and
    the backward recomputes softmax per chunk from the saved logits instead of keeping a
    (..., V) float32 log-softmax from the forward pass. Equal to
    ``log_softmax(logits.float() / T).gather(tokens)`` up to float rounding (tested).
    """
    if logits.shape[:-1] != tokens.shape:
        raise ValueError(f"logits {tuple(logits.shape)} and tokens {tuple(tokens.shape)} disagree")
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    return _SelectiveLogSoftmax.apply(logits, tokens, float(temperature), bool(with_entropy))


def _matmul_dtype(x: torch.Tensor) -> torch.dtype:
    """The dtype a linear layer on `x` computes in here: autocast's when it is on."""
    kind = x.device.type
    return torch.get_autocast_dtype(kind) if torch.is_autocast_enabled(kind) else x.dtype


class _LinearLogSoftmax(torch.autograd.Function):
    """log softmax((hidden @ weight.T) / T)[token] per position, the output layer's matmul
    and the softmax done together chunk by chunk, in both passes: the (P, V) logits never
    exist at once, only a chunk of them (`_chunk_rows`). Saved for backward: the hidden
    states and the weight (both alive anyway: the output layer saves them too) and one float
    per position. The backward recomputes each chunk's logits (one more matmul of the
    output layer) to get d hidden = G @ W and d W = G.T @ hidden, G the chunk's
    (1[j = y] - p_j) / T scaled by the incoming gradient; d W accumulates in float32.
    Written by hand because no library does it in plain torch: liger-kernel's fused linear
    cross-entropy needs Triton on a GPU (issue 18 asks for a fallback that runs anywhere)."""

    @staticmethod
    def forward(ctx, hidden, weight, tokens, temperature, with_entropy):
        dt = _matmul_dtype(hidden)
        flat = hidden.reshape(-1, hidden.shape[-1])
        tok = tokens.reshape(-1, 1).long()
        w = weight.to(dt)
        with torch.autocast(hidden.device.type, enabled=False):
            lse, logp, ent = _forward_chunks(lambda s, e: (flat[s:e].to(dt) @ w.t()).float(),
                                             tok, _chunk_rows(weight.shape[0]), temperature,
                                             with_entropy)
        ctx.save_for_backward(hidden, weight, tokens, lse)
        ctx.temperature, ctx.dtype = temperature, dt
        return _outputs(ctx, logp, ent, tokens.shape)

    @staticmethod
    def backward(ctx, grad_logp, grad_ent=None):
        hidden, weight, tokens, lse = ctx.saved_tensors
        dt = ctx.dtype
        flat = hidden.reshape(-1, hidden.shape[-1])
        tok = tokens.reshape(-1, 1).long()
        g = grad_logp.reshape(-1).float()
        w = weight.to(dt)
        grad_h = torch.empty_like(flat)
        grad_w = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device)
        step = _chunk_rows(weight.shape[0])
        with torch.autocast(hidden.device.type, enabled=False):
            for s in range(0, flat.shape[0], step):
                h = flat[s:s + step].to(dt)
                gc = _chunk_grad((h @ w.t()).float(), lse[s:s + step], tok[s:s + step],
                                 g[s:s + step], ctx.temperature)  # (p,V)
                grad_h[s:s + step] = (gc.to(dt) @ w).to(grad_h.dtype)
                grad_w.addmm_(gc.t(), h.float())
        return grad_h.view(hidden.shape), grad_w.to(weight.dtype), None, None, None


def linear_log_softmax(hidden: torch.Tensor, weight: torch.Tensor, tokens: torch.Tensor,
                       temperature: float = 1.0, with_entropy: bool = False):
    """``selective_log_softmax(hidden @ weight.T, tokens, temperature, with_entropy)``
    without ever holding the (..., V) logits: (..., H), (V, H), (...) -> (...) float32,
    differentiable in ``hidden`` and ``weight`` (a bias-free output layer, as causal LMs'
    are). Equal to the unfused computation up to float rounding (tested)."""
    if hidden.shape[:-1] != tokens.shape or hidden.shape[-1] != weight.shape[-1]:
        raise ValueError(f"hidden {tuple(hidden.shape)}, weight {tuple(weight.shape)} and "
                         f"tokens {tuple(tokens.shape)} disagree")
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    return _LinearLogSoftmax.apply(hidden, weight, tokens, float(temperature),
                                   bool(with_entropy))


# --------------------------------------------------------------------------- language-model losses


def next_token_targets(labels: torch.Tensor, mask: torch.Tensor
                       ) -> tuple[torch.Tensor, torch.Tensor]:
    """(targets, target_mask), both (B, T-1): the token each position predicts (0 where it is
    no target) and whether it is one (see ``_next_token_nll`` for the shift)."""
    target_mask = mask[:, 1:].to(torch.bool)  # (B, T-1): token t+1 is a target
    return torch.where(target_mask, labels[:, 1:], torch.zeros_like(labels[:, 1:])), target_mask


def _next_token_nll(logits: torch.Tensor | None, labels: torch.Tensor, mask: torch.Tensor,
                    logprobs: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean next-token negative log-likelihood and the number of predicted tokens.

    The shift is done here and only here: ``logits[:, t]`` predicts ``labels[:, t + 1]``, so the
    loss uses logits[:, :-1] against labels[:, 1:], and ``mask[:, t]`` says whether the token AT
    position t is a target. Hence mask[:, 0] is never used (nothing predicts the first token).
    Values of ``labels`` where the mask is 0 are never read (-100 or padding ids are fine).
    ``logprobs`` (B, T-1): the targets' log-probs taken already (`next_token_targets`'s
    targets, fused with the output layer: rollout.fused_output); ``logits`` is then unused.
    """
    _check_same_shape(labels=labels, mask=mask)
    targets, target_mask = next_token_targets(labels, mask)  # (B, T-1)
    if logprobs is not None:
        _check_same_shape(logprobs=logprobs, targets=targets)
        return masked_mean(-logprobs, target_mask), target_mask.sum()
    if logits.shape[:-1] != labels.shape:
        raise ValueError(f"logits {tuple(logits.shape)} must be labels {tuple(labels.shape)} + (V,)")
    # Chunked, with the softmax recomputed in the backward: no (B, T, V) float32 temporary
    # in either pass (SFT and ptx over a 49k vocabulary: that temporary was the peak).
    logp = selective_log_softmax(logits[:, :-1], targets)  # (B, T-1)
    return masked_mean(-logp, target_mask), target_mask.sum()


def sft_loss(logits: torch.Tensor | None, labels: torch.Tensor, mask: torch.Tensor,
             logprobs: torch.Tensor | None = None) -> tuple[torch.Tensor, Stats]:
    """Supervised fine-tuning loss (paper §3.5 "SFT"): next-token cross-entropy on response tokens.

    logits (B, T, V) from the model run on prompt+response; labels (B, T) the same input ids;
    mask (B, T) marks the response tokens (1) vs prompt and padding (0). The prompt is context,
    not a target. Mean over all masked tokens of the batch (see ``_next_token_nll`` for the shift).
    ``logprobs``: as ``_next_token_nll``'s, in place of ``logits``.
    """
    loss, n = _next_token_nll(logits, labels, mask, logprobs)
    return loss, {"loss/sft": _stat(loss), "sft/tokens": _stat(n)}


def ptx_loss(logits: torch.Tensor | None, labels: torch.Tensor, mask: torch.Tensor,
             logprobs: torch.Tensor | None = None) -> tuple[torch.Tensor, Stats]:
    """Pretraining-mix LM loss of PPO-ptx (paper Eq. 2, the γ·E[log π(x)] term, App. C.4).

    Same next-token NLL as ``sft_loss``, on pretraining text: mask (B, T) marks real (non-pad)
    tokens. Returned unscaled (positive NLL); the caller multiplies by γ_ptx. ``logprobs``:
    as ``_next_token_nll``'s, in place of ``logits``.
    """
    loss, n = _next_token_nll(logits, labels, mask, logprobs)
    return loss, {"loss/ptx": _stat(loss), "ptx/tokens": _stat(n)}


# --------------------------------------------------------------------------- reward model


def ranking_loss(rewards: torch.Tensor, group: torch.Tensor, level: torch.Tensor,
                 ) -> tuple[torch.Tensor, Stats]:
    """K-wise reward-model loss of InstructGPT (paper §3.5 "RM", Eq. 1).

    Input: a flat batch of the N responses of several prompts (ragged K is fine).
      rewards (N,) float   RM score of each response
      group   (N,) int     which prompt the response answers (any ids; equal id = same prompt)
      level   (N,) int     rank level within its prompt, lower is better; equal level = tie.
                           A ranking record ``[[2], [0, 3], [1]]`` gives levels (1, 2, 0, 1).

    For each prompt p with untied pairs P_p = {(w, l): level_w < level_l}:
        loss_p = -1/|P_p| · Σ_{(w,l) ∈ P_p} log σ(r_w − r_l)
    and the loss is the mean of loss_p over prompts that have at least one untied pair, so each
    prompt weighs the same whatever its K (the paper trains all C(K,2) pairs of a prompt as one
    batch element to avoid overfitting). Tied pairs are dropped, so the normaliser is |P_p|, the
    number of untied pairs; without ties it is C(K,2) as in the paper. A prompt whose responses
    are all tied contributes nothing (and does not count in the mean); a batch with no untied pair
    at all gives loss 0.

    Vectorised over an (N, N) pair matrix; N is K·prompts per batch (a few hundred), so this is
    cheap next to the K forward passes.
    Stats: ``loss/rm``; ``rm/accuracy`` (fraction of untied pairs with r_w > r_l, over pairs);
    ``rm/margin`` (mean r_w − r_l over pairs); ``rm/pairs``; ``rm/prompts``.
    """
    _check_same_shape(rewards=rewards, group=group, level=level)
    if rewards.dim() != 1:
        raise ValueError(f"ranking_loss wants flat (N,) tensors, got {tuple(rewards.shape)}")
    _, gid = torch.unique(group, return_inverse=True)  # (N,) contiguous prompt index 0..G-1
    n_groups = int(gid.max()) + 1 if gid.numel() else 0
    wins = (gid[:, None] == gid[None, :]) & (level[:, None] < level[None, :])  # (N, N): i beats j
    margin = rewards[:, None] - rewards[None, :]  # (N, N): r_i - r_j
    pairs_per_group = torch.zeros(n_groups, dtype=rewards.dtype, device=rewards.device)
    pairs_per_group.index_add_(0, gid, wins.sum(1).to(rewards.dtype))  # (G,)
    n_prompts = (pairs_per_group > 0).sum()
    # weight 1/|P_p| on each pair of prompt p, 0 off the pair set (clamp avoids 0/0 for tie-only)
    weight = wins.to(rewards.dtype) / pairs_per_group.clamp(min=1)[gid][:, None]  # (N, N)
    pair_nll = -F.logsigmoid(margin)  # (N, N)
    loss = (weight * pair_nll).sum() / n_prompts.clamp(min=1)

    n_pairs = wins.sum()
    stats = {
        "loss/rm": _stat(loss),
        "rm/accuracy": _stat(((margin > 0) & wins).sum() / n_pairs.clamp(min=1)),
        "rm/margin": _stat(torch.where(wins, margin, torch.zeros_like(margin)).sum()
                           / n_pairs.clamp(min=1)),
        "rm/pairs": _stat(n_pairs),
        "rm/prompts": _stat(n_prompts),
    }
    return loss, stats


# --------------------------------------------------------------------------- KL and rewards


def kl_penalty(logprobs: torch.Tensor, ref_logprobs: torch.Tensor, mask: torch.Tensor,
               kind: str = "k1") -> tuple[torch.Tensor, Stats]:
    """Per-token estimators of KL(π ‖ π_ref) from tokens sampled from π (J. Schulman,
    "Approximating KL divergence", 2020).

    logprobs, ref_logprobs, mask: (B, R). With log r = log π_ref(x) − log π(x):
      k1 = −log r = log π − log π_ref     unbiased, can be negative per token (paper's penalty)
      k2 = ½ (log r)²                     biased, ≥ 0, low variance
      k3 = (r − 1) − log r                unbiased, ≥ 0, low variance
    Returns the per-token values (B, R), 0 where the mask is 0, and stats with the per-sequence
    sum averaged over the batch: ``objective/kl`` (k1), ``objective/kl2``, ``objective/kl3``.
    """
    _check_same_shape(logprobs=logprobs, ref_logprobs=ref_logprobs, mask=mask)
    log_r = ref_logprobs - logprobs  # (B, R)
    if kind == "k1":
        kl = -log_r
    elif kind == "k2":
        kl = 0.5 * log_r ** 2
    elif kind == "k3":
        # expm1 keeps precision when r ~ 1, which is the regime PPO lives in
        kl = torch.expm1(log_r) - log_r
    else:
        raise ValueError(f"kl_penalty kind must be 'k1', 'k2' or 'k3', got {kind!r}")
    m = mask.to(torch.bool)
    kl = torch.where(m, kl, torch.zeros((), dtype=kl.dtype, device=kl.device))  # (B, R)
    name = "objective/kl" if kind == "k1" else f"objective/kl{kind[1]}"
    return kl, {name: _stat(kl.sum(1).mean())}


def per_token_rewards(scores: torch.Tensor, logprobs: torch.Tensor, ref_logprobs: torch.Tensor,
                      mask: torch.Tensor, kl_coef: float) -> tuple[torch.Tensor, Stats]:
    """PPO's per-token reward (paper Eq. 2; Ziegler et al. 2019; App. C.4).

    scores (B,) RM score of each whole response; logprobs, ref_logprobs, mask (B, R).
    reward_t = −β·(log π − log π_ref)_t on every response token, and the RM score is added at the
    LAST masked-in token of each row (found per row, so ragged lengths and any padding side work).
    Every row needs at least one response token. Masked-out positions get reward 0.
    Stats: ``objective/kl`` (Σ_t k1 per sequence, mean over the batch), ``objective/kl3`` (same
    with k3), ``objective/non_score_reward`` (Σ_t −β k1, mean), ``objective/scores`` (mean score).
    """
    _check_same_shape(logprobs=logprobs, ref_logprobs=ref_logprobs, mask=mask)
    if scores.shape != logprobs.shape[:1]:
        raise ValueError(f"scores {tuple(scores.shape)} must be ({logprobs.shape[0]},)")
    m = mask.to(torch.bool)
    if not bool(m.any(dim=1).all()):
        raise ValueError("per_token_rewards: every response needs at least one masked-in token")
    k1, stats = kl_penalty(logprobs, ref_logprobs, m, "k1")  # (B, R)
    _, stats3 = kl_penalty(logprobs, ref_logprobs, m, "k3")
    non_score = -kl_coef * k1  # (B, R), already 0 off the mask
    R = m.shape[1]
    positions = torch.arange(R, device=m.device).expand_as(m)  # (B, R)
    last = torch.where(m, positions, torch.full_like(positions, -1)).max(dim=1).values  # (B,)
    rewards = non_score.clone()
    rewards[torch.arange(m.shape[0], device=m.device), last] += scores.to(rewards.dtype)
    stats.update(stats3)
    stats["objective/non_score_reward"] = _stat(non_score.sum(1).mean())
    stats["objective/scores"] = _stat(scores.mean())
    return rewards, stats


# --------------------------------------------------------------------------- PPO


def gae(rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, gamma: float,
        lam: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalised advantage estimation (Schulman et al. 2016), per response token.

    rewards, values, mask: (B, R). Returns (advantages, returns), both (B, R), detached
    (they are targets), 0 where the mask is 0.
      δ_t = r_t + γ V_{t'} − V_t,  A_t = δ_t + γλ A_{t'}
    where t' is the next masked-in token of the row; after the last one the bootstrap value is 0
    (the episode ends at EOS). Masked-out positions contribute nothing: their reward and value are
    never read, and they are skipped, not treated as zero-reward steps. returns = A + V.
    """
    _check_same_shape(rewards=rewards, values=values, mask=mask)
    rewards, values = rewards.detach(), values.detach()
    m = mask.to(torch.bool)
    B, R = rewards.shape
    zeros = rewards.new_zeros(B)
    next_value, next_adv = zeros, zeros  # (B,): bootstrap 0 after the last token
    adv = rewards.new_zeros(B, R)
    for t in reversed(range(R)):
        mt = m[:, t]
        delta = rewards[:, t] + gamma * next_value - values[:, t]  # (B,)
        a = delta + gamma * lam * next_adv  # (B,)
        adv[:, t] = torch.where(mt, a, zeros)
        next_adv = torch.where(mt, a, next_adv)  # a masked-out step passes the carry through
        next_value = torch.where(mt, values[:, t], next_value)
    returns = torch.where(m, adv + values, torch.zeros_like(adv))
    return adv, returns


def ppo_policy_loss(logprobs: torch.Tensor, old_logprobs: torch.Tensor, advantages: torch.Tensor,
                    mask: torch.Tensor, cliprange: float) -> tuple[torch.Tensor, Stats]:
    """PPO clipped surrogate (Schulman et al. 2017), mean over masked-in tokens.

    logprobs (B, R) under the current policy (with grad); old_logprobs, advantages (B, R) from the
    rollout; ratio ρ = exp(logπ − logπ_old);
        loss = mean_t max(−A ρ, −A clip(ρ, 1−ε, 1+ε)).
    Where the clipped term wins the gradient is 0. Token-level mean of this micro-batch: to
    accumulate micro-batches exactly, weight each loss by its token share of the minibatch.
    Stats: ``loss/policy``, ``policy/approxkl`` = ½ mean (logπ − logπ_old)², ``policy/clipfrac``
    (fraction of tokens where clipping is active), ``policy/ratio`` (mean ρ).
    """
    _check_same_shape(logprobs=logprobs, old_logprobs=old_logprobs, advantages=advantages,
                      mask=mask)
    m = mask.to(torch.bool)
    log_ratio = logprobs - old_logprobs.detach()  # (B, R)
    ratio = torch.exp(log_ratio)  # (B, R)
    adv = advantages.detach()
    pg1 = -adv * ratio  # (B, R)
    pg2 = -adv * torch.clamp(ratio, 1.0 - cliprange, 1.0 + cliprange)  # (B, R)
    loss = masked_mean(torch.maximum(pg1, pg2), m)
    stats = {
        "loss/policy": _stat(loss),
        "policy/approxkl": _stat(0.5 * masked_mean(log_ratio ** 2, m)),
        "policy/clipfrac": _stat(masked_mean((pg2 > pg1).float(), m)),
        "policy/ratio": _stat(masked_mean(ratio, m)),
    }
    return loss, stats


def value_loss(values: torch.Tensor, old_values: torch.Tensor, returns: torch.Tensor,
               mask: torch.Tensor, cliprange_value: float) -> tuple[torch.Tensor, Stats]:
    """Clipped value loss (PPO2 baselines / lm-human-preferences), mean over masked-in tokens.

    values (B, R) from the value network (with grad); old_values, returns (B, R) from the rollout.
        v_clip = V_old + clip(V − V_old, −ε, ε)
        loss   = ½ mean_t max((V − G)², (v_clip − G)²)
    Unscaled; the caller multiplies by the value coefficient.
    Stats: ``loss/value``, ``val/clipfrac``, ``val/var_explained`` = 1 − Var(G − V)/Var(G),
    ``val/mean`` (mean V), ``val/error`` (mean (V − G)²).
    """
    _check_same_shape(values=values, old_values=old_values, returns=returns, mask=mask)
    m = mask.to(torch.bool)
    old_values, returns = old_values.detach(), returns.detach()
    v_clipped = old_values + torch.clamp(values - old_values, -cliprange_value, cliprange_value)
    vf1 = (values - returns) ** 2  # (B, R)
    vf2 = (v_clipped - returns) ** 2  # (B, R)
    loss = 0.5 * masked_mean(torch.maximum(vf1, vf2), m)
    with torch.no_grad():
        var_explained = 1.0 - (masked_var(returns - values, m, unbiased=False)
                               / masked_var(returns, m, unbiased=False))
    stats = {
        "loss/value": _stat(loss),
        "val/clipfrac": _stat(masked_mean((vf2 > vf1).float(), m)),
        "val/var_explained": _stat(var_explained),
        "val/mean": _stat(masked_mean(values, m)),
        "val/error": _stat(masked_mean(vf1, m)),
    }
    return loss, stats


# --------------------------------------------------------------------------- KL controllers


class FixedKLController:
    """β fixed for the whole run (the paper: β = 0.02, App. C.4)."""

    def __init__(self, kl_coef: float):
        self.value = float(kl_coef)

    def update(self, current_kl: float, n_steps: int) -> None:
        """No-op, so the PPO loop calls ``update`` whichever controller it holds."""

    def state_dict(self) -> dict[str, float]:
        return {"value": self.value}

    def load_state_dict(self, state: dict[str, float]) -> None:
        self.value = float(state["value"])


class AdaptiveKLController:
    """Adaptive β of Ziegler et al. 2019 (lm-human-preferences ``AdaptiveKLController``).

    After each batch, with e = clip(KL / target − 1, −0.2, 0.2):  β ← β · (1 + e · n_steps / horizon),
    so β rises when the measured KL (``objective/kl``, per sequence) exceeds the target and falls
    below it; the clip bounds the step, the horizon sets its time scale (in episodes).
    """

    def __init__(self, init_kl_coef: float, target: float, horizon: int):
        if target <= 0 or horizon <= 0:
            raise ValueError(f"target ({target}) and horizon ({horizon}) must be > 0")
        self.value = float(init_kl_coef)
        self.target = float(target)
        self.horizon = int(horizon)

    def update(self, current_kl: float, n_steps: int) -> None:
        proportional_error = min(max(float(current_kl) / self.target - 1.0, -0.2), 0.2)
        self.value *= 1.0 + proportional_error * n_steps / self.horizon

    def state_dict(self) -> dict[str, float]:
        return {"value": self.value}

    def load_state_dict(self, state: dict[str, float]) -> None:
        self.value = float(state["value"])
