"""Batched generation with a KV cache, and the per-token quantities PPO needs (section 3.5).

Layout of a batch: queries are LEFT-padded (B,Q), so every query ends at column Q-1 and the
responses, RIGHT-padded (B,R), start at column Q of the concatenated (B,T=Q+R) sequence.
Position ids come from the attention mask (`position_ids_from_mask`), so padding never
changes a result: a sequence gets the same log-probs alone or in a padded batch.

A response's mask is 1 up to and including its first EOS token; tokens after it are pad and
masked out everywhere.
"""

from __future__ import annotations

import dataclasses
import inspect
from dataclasses import dataclass
from typing import Sequence

import torch
import torch.nn.functional as F

from instructrl.modeling import gather_last, position_ids_from_mask


@dataclass
class Rollout:
    """One PPO batch. Fields are filled in phases (sample, then score) and may be None
    until then."""

    queries: torch.Tensor  # (B,Q) left-padded prompt ids
    query_mask: torch.Tensor  # (B,Q) 1 = real token
    responses: torch.Tensor  # (B,R) right-padded response ids (pad after the first EOS)
    response_mask: torch.Tensor  # (B,R) 1 up to and including the first EOS
    logprobs: torch.Tensor | None = None  # (B,R) policy log-probs of the response tokens
    ref_logprobs: torch.Tensor | None = None  # (B,R) reference (SFT) log-probs
    values: torch.Tensor | None = None  # (B,R) value of the state before each response token
    scores: torch.Tensor | None = None  # (B,) reward-model score of each whole response

    def to(self, device) -> "Rollout":
        return Rollout(**{f.name: (None if getattr(self, f.name) is None
                                   else getattr(self, f.name).to(device))
                          for f in dataclasses.fields(self)})

    def __getitem__(self, index) -> "Rollout":
        """Rows `index` (a slice or index tensor) of every field: a minibatch."""
        return Rollout(**{f.name: (None if getattr(self, f.name) is None
                                   else getattr(self, f.name)[index])
                          for f in dataclasses.fields(self)})


# -- padding ----------------------------------------------------------------------------------
def pad_left(seqs: Sequence[Sequence[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Token lists -> (ids (B,L), mask (B,L)), padded on the left (queries)."""
    width = max((len(s) for s in seqs), default=0)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for i, s in enumerate(seqs):
        if len(s):
            ids[i, width - len(s):] = torch.as_tensor(list(s), dtype=torch.long)
            mask[i, width - len(s):] = 1
    return ids, mask


def pad_right(seqs: Sequence[Sequence[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Token lists -> (ids (B,L), mask (B,L)), padded on the right (responses)."""
    width = max((len(s) for s in seqs), default=0)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for i, s in enumerate(seqs):
        if len(s):
            ids[i, :len(s)] = torch.as_tensor(list(s), dtype=torch.long)
            mask[i, :len(s)] = 1
    return ids, mask


def eos_mask(responses: torch.Tensor, eos_token_id: int | Sequence[int]) -> torch.Tensor:
    """(B,R) ids -> (B,R) mask: 1 up to and including the first EOS, 0 after it."""
    is_eos = torch.isin(responses, _as_tensor_ids(eos_token_id, responses.device)).long()
    eos_before = is_eos.cumsum(1) - is_eos  # EOS tokens strictly before each column
    return (eos_before == 0).long()


def _as_tensor_ids(ids: int | Sequence[int], device) -> torch.Tensor:
    ids = [ids] if isinstance(ids, int) else list(ids)
    return torch.tensor(ids, dtype=torch.long, device=device)


# -- sampling ---------------------------------------------------------------------------------
def _forward_params(model):
    """The parameters of the model's own forward, under a peft wrapper (whose forward takes
    **kwargs and passes them on)."""
    inner = model.get_base_model() if hasattr(model, "get_base_model") else model
    return inspect.signature(inner.forward).parameters


def cache_kwarg(model) -> str:
    """transformers >= 5.? names the KV cache argument `cache`; earlier, `past_key_values`."""
    params = _forward_params(model)
    return "cache" if "cache" in params else "past_key_values"


def output_cache(out):
    """The KV cache a forward with use_cache=True returned (`cache`, formerly
    `past_key_values`), or None."""
    cache = getattr(out, "cache", None)
    return cache if cache is not None else getattr(out, "past_key_values", None)


def _last_logits_only(model) -> dict:
    """Ask for the last position's logits only where the model supports it: the prefill
    then never materialises (B,Q,V) logits (large for big vocabularies)."""
    params = _forward_params(model)
    return {"logits_to_keep": 1} if "logits_to_keep" in params else {}


@torch.no_grad()
def sample(model, queries: torch.Tensor, query_mask: torch.Tensor, *, max_new_tokens: int,
           temperature: float = 1.0, eos_token_id: int | Sequence[int], pad_token_id: int,
           generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Sample responses to left-padded queries (B,Q) with a KV cache.

    Returns (responses (B,R), response_mask (B,R)) with R <= max_new_tokens (the loop stops
    when every row has emitted EOS). Tokens after a row's first EOS are `pad_token_id` and
    masked out. Plain sampling from softmax(logits / temperature), no top-k/top-p (the paper
    samples at temperature 1, App. C.4); temperature 0 is greedy. Deterministic given
    `generator` (else torch's global RNG). The model runs in eval mode (no dropout) and is
    put back in its previous mode afterwards.
    """
    if max_new_tokens < 1:
        raise ValueError("max_new_tokens must be >= 1")
    B, device = queries.shape[0], queries.device
    eos = _as_tensor_ids(eos_token_id, device)
    was_training = model.training
    model.eval()
    try:
        mask = query_mask.long()  # (B,Q) grows by one column per step
        positions = position_ids_from_mask(mask)  # (B,Q)
        cache_kw = cache_kwarg(model)
        out = model(input_ids=queries, attention_mask=mask, position_ids=positions,
                    use_cache=True, **_last_logits_only(model))
        next_pos = positions[:, -1:] + 1  # (B,1)
        done = torch.zeros(B, dtype=torch.bool, device=device)
        tokens, alive = [], []
        for step in range(max_new_tokens):
            logits = out.logits[:, -1, :].float()  # (B,V)
            if temperature == 0:
                tok = logits.argmax(-1)
            else:
                probs = F.softmax(logits / temperature, dim=-1)
                tok = torch.multinomial(probs, 1, generator=generator).squeeze(1)  # (B,)
            alive.append(~done)
            tok = torch.where(done, torch.full_like(tok, pad_token_id), tok)
            tokens.append(tok)
            done = done | torch.isin(tok, eos)
            if bool(done.all()) or step == max_new_tokens - 1:
                break
            mask = torch.cat([mask, torch.ones_like(mask[:, :1])], 1)
            out = model(input_ids=tok[:, None], attention_mask=mask, position_ids=next_pos,
                        use_cache=True, **{cache_kw: output_cache(out)})
            next_pos = next_pos + 1
        responses = torch.stack(tokens, 1)  # (B,R)
        response_mask = torch.stack(alive, 1).long()  # (B,R)
    finally:
        model.train(was_training)
    return responses, response_mask


def sample_generate(model, queries: torch.Tensor, query_mask: torch.Tensor, *,
                    max_new_tokens: int, temperature: float = 1.0,
                    eos_token_id: int | Sequence[int], pad_token_id: int,
                    seed: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """The same contract as `sample`, through `model.generate` (kept to compare speed with
    the hand loop: bench/ and tests). `generate` draws from torch's global RNG, so a seed is
    applied inside a forked RNG state."""
    was_training = model.training
    model.eval()
    try:
        with torch.random.fork_rng(devices=[] if queries.device.type == "cpu"
                                   else [queries.device]):
            if seed is not None:
                torch.manual_seed(seed)
            kwargs = dict(do_sample=temperature > 0, max_new_tokens=max_new_tokens,
                          eos_token_id=eos_token_id, pad_token_id=pad_token_id)
            if temperature > 0:
                kwargs.update(temperature=temperature, top_k=0, top_p=1.0)
            out = model.generate(input_ids=queries, attention_mask=query_mask, **kwargs)
    finally:
        model.train(was_training)
    responses = out[:, queries.shape[1]:]
    response_mask = eos_mask(responses, eos_token_id)
    responses = torch.where(response_mask.bool(), responses,
                            torch.full_like(responses, pad_token_id))
    return responses, response_mask


# -- scoring ----------------------------------------------------------------------------------
def trim_padding(queries: torch.Tensor, query_mask: torch.Tensor, responses: torch.Tensor,
                 response_mask: torch.Tensor):
    """Drop the query columns that are padding in every row and the response columns past
    every row's end. Padding never changes a result (positions come from the mask and the
    model is causal), so this only saves compute: a micro-batch is often much shorter than
    the whole batch's widest query plus its longest response."""
    real = query_mask.bool().any(0)  # (Q,)
    start = int(real.long().argmax()) if bool(real.any()) else queries.shape[1] - 1
    r_len = max(1, int(response_mask.long().sum(1).max())) if response_mask.numel() else 1
    return (queries[:, start:], query_mask[:, start:], responses[:, :r_len],
            response_mask[:, :r_len])


def _pad_to(x: torch.Tensor, width: int) -> torch.Tensor:
    """(B,r) -> (B,width) with zeros on the right (masked response positions are 0)."""
    return F.pad(x, (0, width - x.shape[1]))


def _concat(queries, query_mask, responses, response_mask):
    input_ids = torch.cat([queries, responses], 1)  # (B,T)
    mask = torch.cat([query_mask.long(), response_mask.long()], 1)  # (B,T)
    return input_ids, mask, position_ids_from_mask(mask)


def response_logprobs(model, queries: torch.Tensor, query_mask: torch.Tensor,
                      responses: torch.Tensor, response_mask: torch.Tensor,
                      temperature: float = 1.0, return_entropy: bool = False):
    """Log-probs (B,R) of each response token under `model`, from one forward pass over the
    (B,T=Q+R) sequence; logits are divided by `temperature` (the sampling temperature, so the
    log-probs are those of the distribution sampled from). Masked positions are 0.
    With `return_entropy`, also the (B,R) entropy of each predicted distribution (masked 0).
    The model's train/eval mode is the caller's.
    """
    R = responses.shape[1]
    queries, query_mask, responses, response_mask = trim_padding(queries, query_mask,
                                                                 responses, response_mask)
    input_ids, mask, positions = _concat(queries, query_mask, responses, response_mask)
    Q = queries.shape[1]
    logits = model(input_ids=input_ids, attention_mask=mask, position_ids=positions,
                   use_cache=False).logits  # (B,T,V)
    logits = logits[:, Q - 1:-1, :].float()  # (B,R,V): position t-1 predicts token t
    if temperature != 1.0:
        logits = logits / temperature
    logp_all = F.log_softmax(logits, dim=-1)  # (B,R,V)
    rmask = response_mask.to(logp_all.dtype)
    logprobs = logp_all.gather(-1, responses.unsqueeze(-1)).squeeze(-1) * rmask  # (B,R)
    if not return_entropy:
        return _pad_to(logprobs, R)
    entropy = -(logp_all.exp() * logp_all).sum(-1) * rmask  # (B,R)
    return _pad_to(logprobs, R), _pad_to(entropy, R)


def response_values(scalar_model, queries: torch.Tensor, query_mask: torch.Tensor,
                    responses: torch.Tensor, response_mask: torch.Tensor) -> torch.Tensor:
    """Values (B,R) of a `ScalarHeadModel` (the value function) for each response step.

    Alignment: the value of state t, from which response token t is emitted, is read at the
    position of the token BEFORE response token t (column Q-1+t of the (B,T) sequence: the
    last query token for t = 0), the same position whose logits give token t's log-prob.
    Masked positions are 0.
    """
    R = responses.shape[1]
    queries, query_mask, responses, response_mask = trim_padding(queries, query_mask,
                                                                 responses, response_mask)
    input_ids, mask, positions = _concat(queries, query_mask, responses, response_mask)
    Q = queries.shape[1]
    values = scalar_model(input_ids, mask, positions)  # (B,T)
    return _pad_to(values[:, Q - 1:-1] * response_mask.to(values.dtype), R)  # (B,R)


def last_token_index(queries: torch.Tensor, response_mask: torch.Tensor) -> torch.Tensor:
    """(B,) column in the (B,T) sequence of each response's last token (its EOS when it has
    one; the last query token for an empty response)."""
    return queries.shape[1] - 1 + response_mask.long().sum(1)


def response_scores(scalar_model, queries: torch.Tensor, query_mask: torch.Tensor,
                    responses: torch.Tensor, response_mask: torch.Tensor) -> torch.Tensor:
    """Reward-model score (B,) of each response, read at its last token (section 3.5)."""
    queries, query_mask, responses, response_mask = trim_padding(queries, query_mask,
                                                                 responses, response_mask)
    input_ids, mask, positions = _concat(queries, query_mask, responses, response_mask)
    values = scalar_model(input_ids, mask, positions)  # (B,T)
    return gather_last(values, last_token_index(queries, response_mask))
