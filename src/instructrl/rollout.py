"""Batched generation with a KV cache, and the per-token quantities PPO needs (section 3.5).

Layout of a batch: queries are LEFT-padded (B,Q), so every query ends at column Q-1 and the
responses, RIGHT-padded (B,R), start at column Q of the concatenated (B,T=Q+R) sequence.
Position ids come from the attention mask (`position_ids_from_mask`), so padding never
changes a result: a sequence gets the same log-probs alone or in a padded batch.

A response's mask is 1 up to and including its first EOS token; tokens after it are pad and
masked out everywhere.

Only the work PPO needs is done (issue 18): the sampler can return the log-probs of the tokens
it drew, which ARE the old policy's log-probs when training sees the same weights, temperature
and no dropout (then PPO skips a forward pass, as TRL does with its generation logits); scoring
forwards compute logits for the response positions only (`logits_to_keep`); log-probs and
entropies are taken chunk by chunk (`losses.selective_log_softmax`), so no float32
(B,R,V) log-softmax is ever kept (with ppo.fused_logprobs, together with the output layer,
so that not even the logits exist: `fused_output`); the decode loop can run on a static KV
cache with a `torch.compile`d step (CUDA graphs on a GPU).
"""

from __future__ import annotations

import contextlib
import dataclasses
import inspect
from dataclasses import dataclass
from typing import Sequence

import torch
import torch.nn.functional as F

from instructrl.losses import linear_log_softmax, next_token_targets, selective_log_softmax
from instructrl.modeling import AdapterDisabled, gather_last, position_ids_from_mask


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
    """The parameters of the model's own forward, under a peft wrapper or an
    `AdapterDisabled` view (whose forwards take **kwargs and pass them on)."""
    inner = model.model if isinstance(model, AdapterDisabled) else model
    inner = inner.get_base_model() if hasattr(inner, "get_base_model") else inner
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


def _last_logits(model, n: int = 1) -> dict:
    """Ask for the last `n` positions' logits only where the model supports it: the prefill
    then never materialises (B,Q,V) logits, and a scoring forward only the response's
    (B,R+1,V) (large for big vocabularies; the unembedding is ~40 % of a small model's
    FLOPs per token, so the prompt's logits are not free either)."""
    params = _forward_params(model)
    return {"logits_to_keep": n} if "logits_to_keep" in params else {}


def _decode_step(model, tokens, positions, mask, cache, cache_kw):
    """One decode step on a static cache: (B,1) tokens -> (B,V) logits of the next one."""
    out = model(input_ids=tokens, attention_mask=mask, position_ids=positions,
                use_cache=True, **{cache_kw: cache}, **_last_logits(model))
    return out.logits[:, -1, :]


_compiled_decode_step = None


def compiled_decode_step():
    """`_decode_step` through `torch.compile` (made once per process; dynamo caches one graph
    per model and shape). Inductor fuses the small elementwise ops of a decode step (RMSNorm,
    RoPE, SiLU * up, the cache write) that dominate at small sizes; on a GPU the
    "reduce-overhead" mode also replays the step as a CUDA graph, as transformers' own
    compiled `generate` does with a static cache."""
    global _compiled_decode_step
    if _compiled_decode_step is None:
        mode = "reduce-overhead" if torch.cuda.is_available() else None
        _compiled_decode_step = torch.compile(_decode_step, dynamic=False, mode=mode)
    return _compiled_decode_step


_last_static_cache: tuple = (None, None, None)  # (weakref to the model, (B, length), cache)


def _static_cache(model, batch: int, length: int):
    """A preallocated KV cache of `length` positions (transformers' StaticCache): each step
    writes one column in place (index_copy_) instead of concatenating a new, longer cache
    tensor per layer, and every step has the same shapes, which is what a compiled step and
    CUDA graphs need. The last one is kept and reset for the next call with the same model
    and shape (PPO samples every iteration), so its tensors keep their addresses: a CUDA
    graph recorded on them stays valid."""
    import weakref

    from transformers import StaticCache

    global _last_static_cache
    ref, key, cache = _last_static_cache
    if ref is not None and ref() is model and key == (batch, length):
        cache.reset()
        return cache
    cfg = model.config
    cfg = cfg.get_text_config() if hasattr(cfg, "get_text_config") else cfg
    cache = StaticCache(config=cfg, max_cache_len=length)
    _last_static_cache = (weakref.ref(model), (batch, length), cache)
    return cache


def sample(model, queries: torch.Tensor, query_mask: torch.Tensor, *, max_new_tokens: int,
           temperature: float = 1.0, eos_token_id: int | Sequence[int], pad_token_id: int,
           generator: torch.Generator | None = None, return_logprobs: bool = False,
           cache: str = "dynamic", compile_step: bool = False, draw: str = "multinomial",
           batch_rows: tuple[int, int] | None = None):
    """Sample responses to left-padded queries (B,Q) with a KV cache.

    Returns (responses (B,R), response_mask (B,R)) with R <= max_new_tokens (the loop stops
    when every row has emitted EOS), and with `return_logprobs` also (B,R) the log-probs of
    the drawn tokens under softmax(logits / temperature), 0 where masked: the distribution
    sampled from. Tokens after a row's first EOS are `pad_token_id` and masked out. Plain
    sampling from softmax(logits / temperature), no top-k/top-p (the paper samples at
    temperature 1, App. C.4); temperature 0 is greedy. Deterministic given `generator` (else
    torch's global RNG). The model runs in eval mode (no dropout) and is put back in its
    previous mode afterwards.

    `cache`: "dynamic" grows the cache by concatenation (transformers' DynamicCache);
    "static" preallocates Q + max_new_tokens positions (rounded up to a multiple of 64, so
    that batches of other prompt lengths reuse a compiled step) and writes in place.
    `compile_step` (static cache only) runs each decode step through `torch.compile`. All
    three draw the same tokens; log-probs agree to float rounding.

    `draw`: "multinomial" is torch.multinomial, what transformers' `generate` draws (the same
    tokens for the same seed); "cdf" inverts the cumulative distribution with one uniform per
    row, the same distribution from another random stream, ~15x cheaper on a CPU (torch's
    one-sample multinomial races V exponential variates per row: 8 ms of a decode step of
    32 x 8k vocabulary on one core, against 0.4 ms). `batch_rows` = (offset, size) says these
    B rows are rows offset..offset+B of a batch of `size` (one process's part of a batch
    split across processes): the "cdf" draw then takes their part of the whole batch's
    uniforms, so every split of a batch draws the tokens one process would.

    The loop runs in inference mode (no autograd bookkeeping at all: a decode step of a small
    model is hundreds of tiny ops, and that bookkeeping is a measurable share of each); what
    it returns are ordinary tensors, which autograd may later save (as gather indices).
    """
    with torch.inference_mode():
        out = _sample(model, queries, query_mask, max_new_tokens=max_new_tokens,
                      temperature=temperature, eos_token_id=eos_token_id,
                      pad_token_id=pad_token_id, generator=generator,
                      return_logprobs=return_logprobs, cache=cache, compile_step=compile_step,
                      draw=draw, batch_rows=batch_rows)
    return tuple(t.clone() for t in out)


def draw_cdf(probs: torch.Tensor, generator: torch.Generator | None = None,
             batch_rows: tuple[int, int] | None = None) -> torch.Tensor:
    """One token per row of probs (B,V) -> (B,), by inverting the cumulative distribution:
    the first index whose cumulative probability exceeds u ~ U(0, total). A zero-probability
    token is never drawn (its cumulative value equals its predecessor's). With `batch_rows`
    (offset, size), the uniforms of a batch of `size` are drawn and rows offset.. taken."""
    cdf = probs.cumsum(-1)  # (B,V)
    B = probs.shape[0]
    offset, size = batch_rows or (0, B)
    u = torch.rand(size, 1, generator=generator, device=probs.device,
                   dtype=cdf.dtype)[offset:offset + B] * cdf[:, -1:]  # (B,1)
    return torch.searchsorted(cdf, u, right=True).clamp_(max=probs.shape[-1] - 1).squeeze(1)


def _sample(model, queries, query_mask, *, max_new_tokens, temperature, eos_token_id,
            pad_token_id, generator, return_logprobs, cache, compile_step, draw, batch_rows):
    if draw not in ("multinomial", "cdf"):
        raise ValueError(f"draw must be 'multinomial' or 'cdf', got {draw!r}")
    if batch_rows is not None and draw != "cdf":
        raise ValueError("batch_rows needs draw='cdf' (a multinomial draw cannot be split)")
    if max_new_tokens < 1:
        raise ValueError("max_new_tokens must be >= 1")
    if cache not in ("dynamic", "static"):
        raise ValueError(f"cache must be 'dynamic' or 'static', got {cache!r}")
    if compile_step and cache != "static":
        raise ValueError("compile_step needs cache='static' (a compiled step needs fixed shapes)")
    if return_logprobs and temperature == 0:
        raise ValueError("greedy decoding (temperature 0) has no sampling log-probs")
    B, Q = queries.shape
    device = queries.device
    eos = _as_tensor_ids(eos_token_id, device)
    was_training = model.training
    model.eval()
    try:
        mask = query_mask.long()  # (B,Q) grows by one column per step (dynamic cache)
        positions = position_ids_from_mask(mask)  # (B,Q)
        cache_kw = cache_kwarg(model)
        kv = None
        if cache == "static":
            length = -(-(Q + max_new_tokens) // 64) * 64
            kv = _static_cache(model, B, length)
            # The whole mask up front: response slots are 1 (causality hides the future
            # ones), slots past Q + max_new_tokens are 0. Constant across steps.
            mask = torch.cat([mask, mask.new_ones(B, max_new_tokens),
                              mask.new_zeros(B, length - Q - max_new_tokens)], 1)  # (B,L)
            step_fn = compiled_decode_step() if compile_step else _decode_step
        out = model(input_ids=queries, attention_mask=mask, position_ids=positions,
                    use_cache=True, **({cache_kw: kv} if kv is not None else {}),
                    **_last_logits(model))
        kv = output_cache(out)
        logits = out.logits[:, -1, :]  # (B,V)
        next_pos = positions[:, -1:] + 1  # (B,1)
        done = torch.zeros(B, dtype=torch.bool, device=device)
        tokens, alive, logps = [], [], []
        for step in range(max_new_tokens):
            logits = logits.float()  # (B,V)
            if temperature == 0:
                tok = logits.argmax(-1)
            else:
                scaled = logits / temperature if temperature != 1.0 else logits
                probs = F.softmax(scaled, dim=-1)
                if draw == "cdf":
                    tok = draw_cdf(probs, generator, batch_rows)  # (B,)
                else:
                    tok = torch.multinomial(probs, 1, generator=generator).squeeze(1)  # (B,)
                if return_logprobs:
                    logps.append(scaled.gather(1, tok[:, None]).squeeze(1)
                                 - torch.logsumexp(scaled, dim=-1))  # (B,)
            alive.append(~done)
            tok = torch.where(done, torch.full_like(tok, pad_token_id), tok)
            tokens.append(tok)
            done = done | torch.isin(tok, eos)
            if bool(done.all()) or step == max_new_tokens - 1:
                break
            if cache == "static":
                logits = step_fn(model, tok[:, None], next_pos, mask, kv, cache_kw)
            else:
                mask = torch.cat([mask, torch.ones_like(mask[:, :1])], 1)
                out = model(input_ids=tok[:, None], attention_mask=mask, position_ids=next_pos,
                            use_cache=True, **{cache_kw: kv})
                kv = output_cache(out)
                logits = out.logits[:, -1, :]
            next_pos = next_pos + 1
        responses = torch.stack(tokens, 1)  # (B,R)
        response_mask = torch.stack(alive, 1).long()  # (B,R)
    finally:
        model.train(was_training)
    if not return_logprobs:
        return responses, response_mask
    return responses, response_mask, torch.stack(logps, 1) * response_mask  # (B,R)


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


FUSED_SWITCH = "ppo.fused_logprobs"  # the setting errors about fused log-probs name


def output_layer(model, switch: str = FUSED_SWITCH) -> torch.nn.Linear:
    """The causal LM's output layer (under a peft wrapper or an `AdapterDisabled` view), when
    it is a plain bias-free linear layer: what `fused_output` can stand in for. `switch`: the
    setting that asked for fused log-probs, named in the refusal."""
    inner = model.model if isinstance(model, AdapterDisabled) else model
    head = inner.get_output_embeddings()
    # (isinstance: FSDP2 makes a sharded layer an FSDPLinear, a subclass; a quantised
    # subclass stores its weight packed, not (out, in).)
    if (not isinstance(head, torch.nn.Linear) or head.bias is not None
            or tuple(head.weight.shape) != (head.out_features, head.in_features)
            or "forward" in vars(head)):  # (wrapped already: accelerate's device-map hooks)
        raise ValueError(f"fused log-probs need a plain bias-free nn.Linear output layer; "
                         f"this model's is {type(head).__name__} (a LoRA adapter on it, "
                         f"quantised, or wrapped): set {switch} false")
    return head


@contextlib.contextmanager
def fused_output(model, tokens: torch.Tensor, temperature: float = 1.0,
                 with_entropy: bool = False, switch: str = FUSED_SWITCH):
    """While inside, the model's output layer returns, instead of logits, the log-probs of
    `tokens` (B,n) under softmax(logits / temperature), position t-1 predicting token t, with
    the n+1 last positions it is given (the last predicts nothing): a (B,n,1) tensor, or
    (B,n,2) with the entropy (no gradient) second. Computed by `losses.linear_log_softmax`
    from the hidden states and the layer's weight chunk by chunk, so no (B,n,V) logits exist.
    The model's forward is called as usual (its wrappers, FSDP's hooks included, run as
    always); it must pass the layer's output through as its logits, which most causal LMs
    do and some do not (a final soft-cap or scale): `check_fused` compares once per model."""
    head = output_layer(model, switch)

    def forward(hidden):
        n = tokens.shape[1]
        out = linear_log_softmax(hidden[:, -(n + 1):-1], head.weight, tokens, temperature,
                                 with_entropy)
        return torch.stack(out, -1) if with_entropy else out.unsqueeze(-1)

    head.forward = forward  # an instance attribute: nn.Module.__call__ (and its hooks) use it
    try:
        yield
    finally:
        del head.forward


def check_fused(model, queries, query_mask, responses, response_mask,
                temperature: float = 1.0, half: bool = False) -> None:
    """Raise unless `response_logprobs` with and without `fused` agree on this batch: a model
    whose forward changes its output layer's logits (Gemma's soft-cap, a logit scale) would
    get wrong log-probs fused. `half`: the model computes in bf16/fp16 (a looser tolerance)."""
    with torch.no_grad():
        a = response_logprobs(model, queries, query_mask, responses, response_mask, temperature)
        b = response_logprobs(model, queries, query_mask, responses, response_mask, temperature,
                              fused=True)
    _same_logprobs(a, b, half, FUSED_SWITCH)


def check_fused_lm(model, ids: torch.Tensor, attention_mask: torch.Tensor,
                   target_mask: torch.Tensor, half: bool = False,
                   switch: str = FUSED_SWITCH) -> None:
    """`check_fused` for a next-token loss's forward (`lm_loss_inputs`): the targets'
    log-probs fused and from the model's own logits must agree on this batch."""
    with torch.no_grad():
        a = lm_loss_inputs(model, ids, attention_mask, target_mask)["logits"]
        targets, tmask = next_token_targets(ids, target_mask)
        a = selective_log_softmax(a[:, :-1], targets)
        b = lm_loss_inputs(model, ids, attention_mask, target_mask, fused=True,
                           switch=switch)["logprobs"]
    _same_logprobs(a[tmask], b[tmask], half, switch)


def _same_logprobs(a: torch.Tensor, b: torch.Tensor, half: bool, switch: str) -> None:
    atol = 5e-2 if half else 1e-3
    err = float((a - b).abs().max()) if a.numel() else 0.0
    if not err <= atol:
        raise ValueError(f"fused log-probs differ from the model's own by {err:.3g} (more than "
                         f"{atol}): its forward changes the output layer's logits; set "
                         f"{switch} false")


def lm_loss_inputs(model, ids: torch.Tensor, attention_mask: torch.Tensor,
                   target_mask: torch.Tensor, fused: bool = False,
                   switch: str = FUSED_SWITCH) -> dict:
    """One forward over (B,T) `ids` for a next-token loss (`losses.sft_loss`, `ptx_loss`),
    whose `mask` is `target_mask`: the loss's keyword arguments, {"logits": (B,T,V)} or, with
    `fused`, {"logits": None, "logprobs": (B,T-1)}: the targets' log-probs taken together
    with the output layer (`fused_output`), so that no (B,T,V) logits exist."""
    if not fused:
        return {"logits": model(input_ids=ids, attention_mask=attention_mask,
                                use_cache=False).logits}
    targets, _ = next_token_targets(ids, target_mask)
    with fused_output(model, targets, switch=switch):
        got = model(input_ids=ids, attention_mask=attention_mask, use_cache=False).logits
    return {"logits": None, "logprobs": got[..., 0]}


def response_logprobs(model, queries: torch.Tensor, query_mask: torch.Tensor,
                      responses: torch.Tensor, response_mask: torch.Tensor,
                      temperature: float = 1.0, return_entropy: bool = False,
                      fused: bool = False):
    """Log-probs (B,R) of each response token under `model`, from one forward pass over the
    (B,T=Q+R) sequence; logits are divided by `temperature` (the sampling temperature, so the
    log-probs are those of the distribution sampled from). Masked positions are 0.
    With `return_entropy`, also the (B,R) entropy of each predicted distribution (masked 0),
    computed without gradients (PPO reports it; nothing is trained on it).
    The model's train/eval mode is the caller's.

    Only the response positions' logits are computed where the model takes `logits_to_keep`,
    and the log-softmax is taken chunk by chunk (`selective_log_softmax`): what stays for the
    backward pass is the model's own (B,R+1,V) logits, never a float32 copy or a full
    log-softmax of them. With `fused` not even those: the output layer and the log-softmax
    run together chunk by chunk (`fused_output`; memory for large vocabularies, one more
    output-layer matmul in the backward pass).
    """
    R = responses.shape[1]
    queries, query_mask, responses, response_mask = trim_padding(queries, query_mask,
                                                                 responses, response_mask)
    input_ids, mask, positions = _concat(queries, query_mask, responses, response_mask)
    r = responses.shape[1]
    kw = dict(input_ids=input_ids, attention_mask=mask, position_ids=positions,
              use_cache=False, **_last_logits(model, r + 1))
    if fused:
        with fused_output(model, responses, temperature, return_entropy):
            got = model(**kw).logits  # (B,r,1|2)
        out = (got[..., 0], got[..., 1].detach()) if return_entropy else got[..., 0]
    else:
        logits = model(**kw).logits  # (B,r+1,V) or (B,T,V)
        logits = logits[:, -(r + 1):-1, :]  # (B,r,V): position t-1 predicts token t
        out = selective_log_softmax(logits, responses, temperature, with_entropy=return_entropy)
    rmask = response_mask.to(torch.float32)
    if not return_entropy:
        return _pad_to(out * rmask, R)
    logprobs, entropy = out
    return _pad_to(logprobs * rmask, R), _pad_to(entropy * rmask, R)


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
