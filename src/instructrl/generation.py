"""Text in, text out: sample responses to prompt texts, and score (prompt, response) texts
with a reward model. Used wherever whole texts move between stages (collect, SFT selection,
evaluation); PPO works on token tensors directly (`instructrl.rollout`)."""

from __future__ import annotations

import torch
from tqdm.auto import tqdm

from instructrl.modeling import gather_last, position_ids_from_mask
from instructrl.rollout import cache_kwarg, output_cache, pad_left, pad_right, sample
from instructrl.stages.common import batches, collate
from instructrl.templates import encode_example, encode_prompt


@torch.no_grad()
def sample_texts(model, tokenizer, prompt_texts: list[str], *, max_prompt_tokens: int,
                 max_new_tokens: int, temperature: float = 1.0, batch_size: int = 64,
                 seed: int = 0, desc: str | None = None, split: bool = False,
                 progress=None, model_key: str = "") -> list[str]:
    """One sampled response per prompt text (repeat a text to get several), deterministic
    given `seed` and the batch layout. `desc` shows a progress bar. With `split`, every
    process of a data-parallel run samples every N-th batch and all get every text: the
    texts one process would sample (each batch has its own seed). With `progress` (a
    folder), each finished batch is kept there and a rerun samples only the batches it does
    not hold for the same model (`model_key`), settings and texts (`instructrl.batchlog`);
    the caller deletes the folder once it has saved the result."""
    from instructrl.batchlog import BatchLog, sampling_key
    from instructrl.distributed import runtime
    rt = runtime()
    device = next(model.parameters()).device
    model.eval()
    log = None
    if progress is not None:
        log = BatchLog(progress, sampling_key(model_key, seed, batch_size, max_prompt_tokens,
                                              max_new_tokens, temperature, prompt_texts),
                       rank=rt.rank)
        rt.barrier()  # every process has read the same files before any writes to them

    def run(mine: list[tuple[int, int]]) -> list[list[str]]:
        out = []
        for b, start in tqdm(mine, desc=desc, unit="batch",
                             disable=desc is None or not rt.is_main):
            chunk = prompt_texts[start:start + batch_size]
            ids, mask = pad_left([encode_prompt(tokenizer, t, max_prompt_tokens) for t in chunk],
                                 tokenizer.pad_token_id)
            gen = torch.Generator(device=device).manual_seed(seed * 1_000_003 + b)
            responses, rmask = sample(model, ids.to(device), mask.to(device),
                                      max_new_tokens=max_new_tokens, temperature=temperature,
                                      eos_token_id=tokenizer.eos_token_id,
                                      pad_token_id=tokenizer.pad_token_id, generator=gen)
            out.append(decode_responses(tokenizer, responses, rmask))
            if log is not None:
                log.add(b, out[-1])
        return out

    starts = list(enumerate(range(0, len(prompt_texts), batch_size)))
    done = dict(log.done) if log is not None else {}
    if log is not None and log.other_keys and rt.is_main:
        print(f"{desc or 'sampling'}: {log.other_keys} file(s) in {progress} hold batches of "
              f"another model, settings or prompts: sampled again", flush=True)
    if done and rt.is_main:
        print(f"{desc or 'sampling'}: {len(done)} of {len(starts)} batches were sampled "
              f"before; sampling the other {len(starts) - len(done)}", flush=True)
    todo = [s for s in starts if s[0] not in done]
    try:
        fresh = rt.map_shard(run, todo) if split else run(todo)
    finally:
        if log is not None:
            log.close()
    done.update((b, texts) for (b, _), texts in zip(todo, fresh))
    return [text for b, _ in starts for text in done[b]]


def decode_responses(tokenizer, responses: torch.Tensor, response_mask: torch.Tensor
                     ) -> list[str]:
    """(B,R) response ids and mask -> B texts, special tokens dropped, whitespace stripped."""
    return [tokenizer.decode(row[m.bool()].tolist(), skip_special_tokens=True).strip()
            for row, m in zip(responses, response_mask)]


def score_sequences(model, seqs: list[tuple[list[int], list[int]]], pad_id: int
                    ) -> torch.Tensor:
    """Scalar-head score (N,) of each (query ids, response ids) pair, read at its last token
    (the response's EOS). Keeps autograd (the RM trains through this)."""
    device = next(model.parameters()).device
    ids, mask, _, last = (t.to(device) for t in collate(seqs, pad_id))
    return gather_last(model(input_ids=ids, attention_mask=mask), last)  # (N,)


def score_groups(model, groups: list[tuple[list[int], list[list[int]]]], pad_id: int
                 ) -> torch.Tensor:
    """Scalar-head scores (N,) of every response of every group (one prompt's ids, its
    responses' ids), in order. The prompt runs through the model once and its KV cache is
    repeated for each of its responses: the same scores (and gradients) as `score_sequences`
    on the (prompt, response) pairs, since the model is causal and positions come from the
    mask, at a fraction of the compute when prompts are longer than responses (the K-wise RM).
    Every response must be non-empty (it ends with EOS). Keeps autograd. A backbone whose
    cache cannot be re-indexed falls back to `score_sequences` (found on the first call and
    remembered on the model, so later calls skip the prompt pass)."""
    from instructrl.distributed import is_sharded
    # A sharded model's backward cannot follow the prompt's KV cache from one forward into
    # the next (FSDP hooks the outputs it can see): each sequence then runs whole.
    if getattr(model, "no_shared_prefix", False) or is_sharded(model):
        return score_sequences(model, [(q, r) for q, rs in groups for r in rs], pad_id)
    device = next(model.parameters()).device
    counts = [len(rs) for _, rs in groups]
    q_ids, q_mask = (t.to(device) for t in pad_left([q for q, _ in groups], pad_id))
    r_ids, r_mask = (t.to(device) for t in pad_right([r for _, rs in groups for r in rs],
                                                     pad_id))
    if min((len(r) for _, rs in groups for r in rs), default=1) < 1:
        raise ValueError("score_groups: an empty response (responses end with EOS)")
    prefix = model.backbone(input_ids=q_ids, attention_mask=q_mask,
                            position_ids=position_ids_from_mask(q_mask), use_cache=True)
    cache = output_cache(prefix)
    if cache is None or not hasattr(cache, "batch_select_indices"):
        model.no_shared_prefix = True
        return score_groups(model, groups, pad_id)
    owner = torch.repeat_interleave(torch.arange(len(groups), device=device),
                                    torch.tensor(counts, device=device))  # (N,)
    cache.batch_select_indices(owner)
    mask = torch.cat([q_mask[owner], r_mask], 1)  # (N, Q+R)
    positions = position_ids_from_mask(mask)[:, q_ids.shape[1]:]  # (N,R)
    hidden = model.backbone(input_ids=r_ids, attention_mask=mask, position_ids=positions,
                            use_cache=True, **{cache_kwarg(model.backbone): cache}
                            ).last_hidden_state  # (N,R,H)
    last = r_mask.sum(1) - 1  # (N,) each response's EOS
    h = hidden[torch.arange(len(owner), device=device), last]  # (N,H)
    return model.head(h.float()).squeeze(-1) + model.bias


@torch.no_grad()
def score_texts(rm, tokenizer, prompt_texts: list[str], responses: list[str], *,
                max_prompt_tokens: int, max_response_tokens: int, batch_size: int = 64,
                split: bool = False) -> torch.Tensor:
    """Reward-model score (N,) of each (prompt text, response text). With `split`, every
    process of a data-parallel run scores every N-th batch and all get every score."""
    from instructrl.distributed import runtime
    rm.eval()
    seqs = [encode_example(tokenizer, p, r, max_prompt_tokens, max_response_tokens)
            for p, r in zip(prompt_texts, responses)]
    if not seqs:
        return torch.zeros(0)
    chunks = list(batches(seqs, batch_size))

    def run(mine: list) -> list[torch.Tensor]:
        return [score_sequences(rm, c, tokenizer.pad_token_id).float().cpu() for c in mine]

    return torch.cat(runtime().map_shard(run, chunks) if split else run(chunks))
