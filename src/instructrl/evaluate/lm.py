"""What the benchmarks ask of a causal LM: log-likelihoods of continuations and generated
texts, both with a shared prefix computed once.

Benchmarks repeat a long prefix in every item (TruthfulQA's six-question QA primer, about 250
tokens, before each of ~8 answer options of 817 questions; the "respectful" instruction before
every RealToxicityPrompts prompt; N samples of one prompt). On a CPU the prefix would be most
of the compute, so it runs once per batch and its KV cache is repeated for every row; the
rest of each row follows it, left-padded, with positions taken from the attention mask (the
padding between prefix and row is masked and does not move positions). Scores and samples are
the same as without the shared prefix (tests compare both).

Likelihood scoring reads raw text (no chat template): it measures the LM's distribution, the
way TruthfulQA's MC tasks, CrowS-Pairs and lm-eval do. Generation goes through the run's
prompt format (`templates.encode_prompt`: the chat template, or the sandbox template), the
way the run's policies are used.

Under N data-parallel processes (`instructrl eval` under torchrun) each process runs every N-th
batch and all get every result (`each_batch`): every process must make the same call.
"""

from __future__ import annotations

import inspect
from typing import Sequence

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from instructrl.distributed import runtime
from instructrl.modeling import position_ids_from_mask
from instructrl.rollout import cache_kwarg, output_cache, pad_left


def device_of(model) -> torch.device:
    return next(model.parameters()).device


def each_batch(fn, batches: list, desc: str | None = None) -> list:
    """[fn(batch) for batch in batches]. Under N data-parallel processes each runs every N-th
    batch and every process gets every result: the batches (and their seeds) are the ones one
    process makes, so figures and samples do not depend on N. `desc`: a progress bar, on the
    main process."""
    rt = runtime()
    return rt.map_shard(lambda mine: [fn(b) for b in tqdm(
        mine, desc=desc, unit="batch", disable=desc is None or not rt.is_main)], batches)


def eval_samples(model, tokenizer, texts: list[str], c, *, seed: int,
                 desc: str | None = None) -> list[str]:
    """One response per text as every evaluation samples them: `c` (an EvalConfig)'s prompt
    and response lengths and temperature, batches shared out under N processes
    (`generation.sample_texts(split=True)`: the texts one process would sample)."""
    from instructrl.generation import sample_texts
    return sample_texts(model, tokenizer, texts, max_prompt_tokens=c.max_prompt_tokens,
                        max_new_tokens=c.max_new_tokens, temperature=c.temperature, seed=seed,
                        desc=desc, split=True)


def _keeps_logits(model) -> bool:
    return "logits_to_keep" in inspect.signature(model.forward).parameters


def start_ids(tokenizer) -> list[int]:
    """The token a text is scored after: BOS when the model has one, else EOS (what lm-eval
    does for models without a BOS), so that the first word of a sentence is scored too."""
    tok = tokenizer.bos_token_id if tokenizer.bos_token_id is not None \
        else tokenizer.eos_token_id
    return [tok]


def common_prefix(seqs: Sequence[Sequence[int]]) -> int:
    """Length of the longest common prefix of token lists."""
    if not seqs:
        return 0
    n = min(len(s) for s in seqs)
    first = seqs[0]
    for i in range(n):
        t = first[i]
        if any(s[i] != t for s in seqs):
            return i
    return n


def _prefix_forward(model, prefix: list[int], rows: int, device):
    """KV cache of `prefix` (one row), repeated for `rows` rows; None for an empty prefix."""
    if not prefix:
        return None
    ids = torch.tensor([prefix], device=device)
    mask = torch.ones_like(ids)
    out = model(input_ids=ids, attention_mask=mask, position_ids=position_ids_from_mask(mask),
                use_cache=True, **({"logits_to_keep": 1} if _keeps_logits(model) else {}))
    cache = output_cache(out)
    if cache is None or not hasattr(cache, "batch_repeat_interleave"):
        return None
    if rows > 1:
        cache.batch_repeat_interleave(rows)
    return cache


def _split_shared(seqs: list[list[int]], keep: int = 1) -> tuple[list[int], list[list[int]]]:
    """(shared prefix, rests): every rest keeps at least `keep` tokens."""
    n = common_prefix(seqs)
    n = max(0, min(n, min(len(s) for s in seqs) - keep))
    return list(seqs[0][:n]), [list(s[n:]) for s in seqs]


@torch.no_grad()
def _forward_rows(model, prefix: list[int], rows: list[list[int]], keep_last: int, pad_id: int):
    """Logits (B, keep_last, V) at the last `keep_last` positions of each left-padded row,
    after `prefix` (run once and repeated). A model whose cache cannot be repeated gets the
    prefix in every row instead (same logits, more compute)."""
    device = device_of(model)
    cache = _prefix_forward(model, prefix, len(rows), device)
    if cache is None and prefix:
        rows = [prefix + r for r in rows]
        prefix = []
    ids, mask = pad_left(rows, pad_id)
    ids, mask = ids.to(device), mask.to(device)
    if cache is not None:
        full = torch.cat([torch.ones(len(rows), len(prefix), dtype=mask.dtype, device=device),
                          mask], 1)
        positions = position_ids_from_mask(full)[:, len(prefix):]
        kwargs = {cache_kwarg(model): cache, "use_cache": True}
    else:
        full, positions, kwargs = mask, position_ids_from_mask(mask), {"use_cache": False}
    if _keeps_logits(model):
        kwargs["logits_to_keep"] = keep_last
    out = model(input_ids=ids, attention_mask=full, position_ids=positions, **kwargs)
    return out.logits[:, -keep_last:, :].float()


@torch.no_grad()
def continuation_logprobs(model, tokenizer, contexts: Sequence[str], continuations: Sequence[str],
                          *, batch_size: int = 16, desc: str | None = None
                          ) -> list[tuple[float, int]]:
    """(sum of log p(continuation tokens | context), number of those tokens) per pair, on raw
    text. Tokenized the way lm-eval does: the whole text and the context are encoded and the
    continuation is what the whole has beyond the context (a leading space belongs to the
    continuation), after `start_ids`. Items are sorted by length so batches pad little, and
    each batch's common prefix (a shared few-shot primer) runs once."""
    model.eval()
    items = []
    for ctx, cont in zip(contexts, continuations):
        if ctx.endswith(" ") and cont and not cont.startswith(" "):
            ctx, cont = ctx[:-1], " " + cont
        whole = tokenizer(ctx + cont, add_special_tokens=False)["input_ids"]
        c = tokenizer(ctx, add_special_tokens=False)["input_ids"] if ctx else []
        if whole[:len(c)] != c:  # a merge across the boundary: encode the parts apart
            whole = c + tokenizer(cont, add_special_tokens=False)["input_ids"]
        cont_ids = whole[len(c):]
        if not cont_ids:
            raise ValueError(f"empty continuation after context {ctx[-40:]!r}")
        items.append((start_ids(tokenizer) + c, cont_ids))
    order = sorted(range(len(items)), key=lambda i: -(len(items[i][0]) + len(items[i][1])))
    chunks = [order[s:s + batch_size] for s in range(0, len(order), batch_size)]

    def score(idx: list[int]) -> list[tuple[float, int]]:
        seqs = [items[i][0] + items[i][1] for i in idx]
        # The shared prefix ends before each row's last context token: the logits that
        # predict the continuation must come from this forward, not from the cached prefix.
        n = min(common_prefix(seqs), min(len(items[i][0]) for i in idx) - 1)
        prefix, rests = seqs[0][:n], [s[n:] for s in seqs]
        keep = max(len(items[i][1]) for i in idx) + 1
        logp = F.log_softmax(_forward_rows(model, prefix, rests, keep, tokenizer.pad_token_id),
                             -1)  # (B, keep, V)
        got = []
        for row, i in enumerate(idx):
            cont = items[i][1]
            c = len(cont)
            # logits at position j predict token j+1: the last c+1 positions' first c.
            lp = logp[row, keep - c - 1:keep - 1, :]  # (c, V)
            tok = torch.tensor(cont, device=lp.device)
            got.append((float(lp.gather(1, tok[:, None]).sum()), c))
        return got

    out: list[tuple[float, int]] = [(0.0, 0)] * len(items)
    for idx, got in zip(chunks, each_batch(score, chunks, desc)):
        for i, g in zip(idx, got):
            out[i] = g
    return out


@torch.no_grad()
def text_logprobs(model, tokenizer, texts: Sequence[str], *, batch_size: int = 16,
                  desc: str | None = None) -> list[tuple[float, int]]:
    """(log-likelihood, tokens) of each whole text after `start_ids` (CrowS-Pairs,
    Winogender: which sentence of a set the model finds likelier)."""
    return continuation_logprobs(model, tokenizer, [""] * len(texts), list(texts),
                                 batch_size=batch_size, desc=desc)


@torch.no_grad()
def generate(model, tokenizer, prompt_ids: Sequence[Sequence[int]], *, max_new_tokens: int,
             temperature: float = 1.0, seed: int = 0, batch_size: int = 32,
             desc: str | None = None) -> list[str]:
    """One response per prompt (token ids, already formatted), with each batch's common
    prefix run once: N samples of one prompt, or a long shared instruction, cost one prefill.
    Plain sampling at `temperature` (0: greedy), stopping at EOS; deterministic given `seed`
    and the batch layout (each batch has its own seed, so N processes sample what one does).
    Returns the decoded responses, special tokens dropped, stripped."""
    device = device_of(model)
    model.eval()
    eos = torch.tensor(sorted(_eos_ids(model, tokenizer)), device=device)
    pad = tokenizer.pad_token_id

    def one(batch: tuple[int, int]) -> list[str]:
        b, start = batch
        seqs = [list(s) for s in prompt_ids[start:start + batch_size]]
        gen = torch.Generator(device=device).manual_seed(seed * 1_000_003 + b)
        prefix, rests = _split_shared(seqs)
        B = len(seqs)
        cache = _prefix_forward(model, prefix, B, device)
        if cache is None and prefix:
            rests, prefix = seqs, []
        ids, mask = (t.to(device) for t in pad_left(rests, pad))
        mask = torch.cat([torch.ones(B, len(prefix), dtype=mask.dtype, device=device), mask], 1)
        positions = position_ids_from_mask(mask)[:, len(prefix):]
        kw = {cache_kwarg(model): cache} if cache is not None else {}
        if _keeps_logits(model):
            kw["logits_to_keep"] = 1
        res = model(input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=True,
                    **kw)
        next_pos = positions[:, -1:] + 1
        done = torch.zeros(B, dtype=torch.bool, device=device)
        tokens = []
        for step in range(max_new_tokens):
            logits = res.logits[:, -1, :].float()
            if temperature == 0:
                tok = logits.argmax(-1)
            else:
                tok = torch.multinomial(F.softmax(logits / temperature, -1), 1,
                                        generator=gen).squeeze(1)
            tok = torch.where(done, torch.full_like(tok, pad), tok)
            tokens.append(torch.where(done, torch.full_like(tok, -1), tok))
            done = done | torch.isin(tok, eos)
            if bool(done.all()) or step == max_new_tokens - 1:
                break
            mask = torch.cat([mask, torch.ones_like(mask[:, :1])], 1)
            kw = {cache_kwarg(model): output_cache(res)}
            if _keeps_logits(model):
                kw["logits_to_keep"] = 1
            res = model(input_ids=tok[:, None], attention_mask=mask, position_ids=next_pos,
                        use_cache=True, **kw)
            next_pos = next_pos + 1
        rows = torch.stack(tokens, 1).tolist() if tokens else [[] for _ in range(B)]
        out = []
        for row in rows:
            keep = []
            for t in row:
                if t < 0 or t in eos.tolist():
                    break
                keep.append(t)
            out.append(tokenizer.decode(keep, skip_special_tokens=True).strip())
        return out

    batches = list(enumerate(range(0, len(prompt_ids), batch_size)))
    return [text for texts in each_batch(one, batches, desc) for text in texts]


def _eos_ids(model, tokenizer) -> set[int]:
    """EOS of the tokenizer plus the model's generation config's (chat models end a turn
    with their own token, e.g. <|im_end|>)."""
    ids = {tokenizer.eos_token_id}
    gc = getattr(model, "generation_config", None)
    extra = getattr(gc, "eos_token_id", None) if gc is not None else None
    if isinstance(extra, int):
        ids.add(extra)
    elif isinstance(extra, (list, tuple)):
        ids.update(int(x) for x in extra)
    return {i for i in ids if i is not None}


def prompt_ids(tokenizer, texts: Sequence[str], max_prompt_tokens: int) -> list[list[int]]:
    """Token ids of each text in the run's prompt format (`templates.encode_prompt`)."""
    from instructrl.templates import encode_prompt
    return [encode_prompt(tokenizer, t, max_prompt_tokens) for t in texts]
