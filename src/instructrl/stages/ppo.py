"""Stage 3: PPO with a per-token KL penalty and the pretraining mix (paper section 3.5 Eq. 2,
App. C.4).

    instructrl ppo --out RUN [--init RUN/sft] [--rm RUN/rm] [--stage ppo-ptx]

objective(phi) = E_(x,y)~pi_phi [ r(x,y) - beta log(pi_phi(y|x) / pi_sft(y|x)) ]
                 + gamma E_x~D_pretrain [ log pi_phi(x) ]

Four models: the policy (trained, from the selected SFT model), the reference (a frozen copy
of that initialisation), the reward model (frozen, bias-normalised, read at the EOS), and the
value function (trained, a separate network initialised from the RM). One iteration:

1. rollout: sample a batch of responses at temperature 1 with the KV cache, keeping the
   sampler's log-probs as the old policy's; score them (reference, value, reward forwards);
2. per-token rewards: -beta (log pi - log pi_ref) on every token, plus the RM score on the last;
3. GAE (gamma = 1, lambda = 0.95) and whitened advantages;
4. `ppo_epochs` passes over the batch in minibatches; each minibatch accumulates the PPO
   gradients of its micro-batches, then the ptx gradients of its pretraining examples
   (App. C.4: "accumulated in consecutive steps"), then takes one optimizer step per model;
5. the EMA of the policy weights (decay 0.992) is updated; it is what is evaluated and saved.

With LoRA (`lora.r` > 0 and "ppo" in `lora.stages`) the policy trains an adapter on the SFT
weights and the reference IS those weights with the adapter disabled (one copy in memory);
the value function trains an adapter plus its scalar head on the RM's weights, and the RM is
that backbone with the adapter disabled and its own head. Every dropout is off in RL, LoRA's
included.

Under N processes (torchrun / accelerate launch; instructrl.distributed) each samples and
scores its block of the batch, the scored blocks are gathered so that advantages are the
whole batch's, and each minibatch is split again; gradients are summed over processes, so
the run is the one-process run with the same batch.

Every `checkpoint_every` iterations the whole state is saved; a killed run resumes from there
and, on CPU with the same seed, ends with the same metrics as an uninterrupted one (each
iteration's randomness is seeded from (seed, iteration)).

With `snapshot_every` > 0 the policy is also saved along the way, as the final one is (the
EMA), into snapshots/iter-NNNNN/ with a snapshot.json of that iteration's KL and score: the
points of the over-optimisation curve (`evaluate.overoptimisation`). Saving reads the weights
and changes nothing of the training.

Metrics (metrics.jsonl, TensorBoard) use lm-human-preferences / TRL names; where a definition
differs from TRL's, it is said here so curves are compared knowingly:
- `objective/kl`: mean over the batch of the summed per-token log(pi/pi_ref) of each response
  (TRL: the same);
- `objective/entropy`: the exact entropy of each predicted token distribution, averaged over
  real response tokens, during the training forward (TRL 0.29: the mean over the whole
  (B,R) grid of the rollout's per-token entropy, padding included);
- `policy/approxkl`: 0.5 * mean over real response tokens of (log ratio)^2 (TRL: the same
  estimator, averaged per minibatch over all positions);
- `time/generation`, `time/scoring`, `time/training`: the iteration's phases in seconds.

Speed (issue 18; bench/ppo_throughput.py measures it against TRL): only the work PPO needs
(no policy forward over the rollout, logits for response positions only, entropy without
gradients, scoring in large length-sorted chunks, sampling and scoring without autograd
bookkeeping, an inverse-CDF token draw), fused AdamW and a multi-tensor EMA, bf16 autocast on
a GPU (`model.mixed_precision`, as every stage); optionally a static KV cache with a compiled
decode step, and on a CPU scoring on two threads. Each behind a switch, each tested against
the path it replaces.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import math
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from tqdm.auto import tqdm

from instructrl.cli import add_common, run_config
from instructrl.config import PPOConfig, RunConfig
from instructrl.data.jsonl import atomic_write_text
from instructrl.data.records import Prompt
from instructrl.distributed import (Precision, gather_like, local, precision, runtime,
                                    shard_like)
from instructrl.generation import decode_responses
from instructrl.losses import (AdaptiveKLController, FixedKLController, gae, masked_mean,
                               masked_var, masked_whiten, per_token_rewards, ppo_policy_loss,
                               ptx_loss, value_loss)
from instructrl.modeling import (AdapterDisabled, ScalarHeadModel, add_lora, load_causal_lm,
                                 load_tokenizer, lora_enabled, prepare_for_training,
                                 resolve_model_path, save_pretrained_atomic, weights_dtype)
from instructrl.rollout import (Rollout, check_fused, lm_loss_inputs, pad_left,
                                response_logprobs, response_scores, response_values, sample)
from instructrl.rundir import RunDir
from instructrl.stages.common import (Checkpoint, MetricsLog, chunks, collate,
                                      pretraining_examples, trainable)
from instructrl.templates import encode_prompt


class NonFiniteError(RuntimeError):
    pass


# A reward computed from text instead of the reward model: (prompts, response texts) -> (B,)
# scores. For rule-based rewards, and for bench/sandbox_ceiling.py's oracle runs.
RewardFn = Callable[[list[Prompt], list[str]], torch.Tensor]


@dataclass
class Models:
    policy: torch.nn.Module  # trained
    ref: torch.nn.Module  # frozen: the policy's initialisation (a view of it under LoRA)
    rm: ScalarHeadModel  # frozen
    value: ScalarHeadModel  # trained, initialised from the RM


def frozen_copies(m: Models) -> list[torch.nn.Module]:
    """The frozen models that hold weights of their own (not views of a trained model):
    what `ppo.offload_frozen` moves to CPU memory between scorings."""
    def view(x) -> bool:
        return isinstance(x, AdapterDisabled) or isinstance(getattr(x, "backbone", None),
                                                            AdapterDisabled)
    return [x for x in (m.ref, m.rm) if not view(x)]


def _same(a: str | Path, b: str | Path) -> bool:
    return Path(a).resolve() == Path(b).resolve()


def value_function(cfg: RunConfig, value: str | Path) -> ScalarHeadModel:
    """The value function PPO trains, from `value` (an RM): every weight in float32, or with
    LoRA an adapter on its backbone (no dropout) and its whole head."""
    if not lora_enabled(cfg.lora, "ppo"):
        return ScalarHeadModel.from_pretrained(value, model_cfg=cfg.model, trained=True)
    return ScalarHeadModel.from_pretrained(value, model_cfg=cfg.model).with_lora(
        cfg.lora, dropout=0.0)


def load_models(cfg: RunConfig, init: str | Path, ref: str | Path, rm: str | Path,
                value: str | Path, device) -> Models:
    """Dropout is off in every model during RL (policy and value train in train mode with
    p = 0, so nothing random happens outside sampling).

    With LoRA, a frozen model that is the same weights as a trained one's start is a view of
    it with the adapter disabled: the reference when the policy starts from it (the first
    PPO run after SFT), the RM when the value function starts from it. An iterated round
    whose policy starts from an earlier PPO policy keeps its SFT reference as a separate
    frozen copy."""
    mc = cfg.model
    if not lora_enabled(cfg.lora, "ppo"):
        policy = prepare_for_training(load_causal_lm(init, model_cfg=mc, trained=True), mc)
        ref_model = load_causal_lm(ref, model_cfg=mc).eval().requires_grad_(False)
        rm_model = ScalarHeadModel.from_pretrained(rm, model_cfg=mc).eval().requires_grad_(False)
        value_model = prepare_for_training(value_function(cfg, value), mc)
        return Models(policy.to(device), ref_model.to(device), rm_model.to(device),
                      value_model.to(device))
    policy = add_lora(load_causal_lm(init, model_cfg=mc), cfg.lora, dropout=0.0)
    policy = prepare_for_training(policy, mc).to(device)
    if _same(init, ref):
        ref_model = AdapterDisabled(policy)
    else:
        ref_model = load_causal_lm(ref, model_cfg=mc).eval().requires_grad_(False).to(device)
    value_model = prepare_for_training(value_function(cfg, value), mc).to(device)
    if _same(rm, value):
        rm_model = value_model.frozen_view().eval()
    else:
        rm_model = ScalarHeadModel.from_pretrained(rm, model_cfg=mc).eval().requires_grad_(False)
    return Models(policy, ref_model, rm_model.to(device), value_model)


# --------------------------------------------------------------------------- rollout
@torch.no_grad()
def generate(m: Models, tokenizer, prompts: list[Prompt], c: PPOConfig, seed: int,
             device, rows: slice | None = None) -> Rollout:
    """Sample one response per prompt at temperature `c.temperature` with the KV cache. With
    `c.logprobs_from_sampler` the rollout's old log-probs are those of the distributions the
    tokens were drawn from: the policy in eval mode IS the policy PPO trains (same weights,
    same temperature, no dropout anywhere in RL), so the forward pass that would recompute
    them is skipped (TRL takes them from its generation logits the same way).

    `rows`: this process's block of the batch `prompts` (the rest are other processes'). The
    queries are padded as the whole batch's and, with the "cdf" draw, the block takes its
    part of the whole batch's random draws, so the split changes no token (a multinomial
    draw cannot be split: each process then draws from its own seed)."""
    queries, query_mask = pad_left([encode_prompt(tokenizer, p.chat, c.max_prompt_tokens)
                                    for p in prompts], tokenizer.pad_token_id)
    batch_rows = None
    if rows is not None:
        queries, query_mask = queries[rows], query_mask[rows]
        if c.sampler_draw == "cdf":
            batch_rows = (rows.start, len(prompts))
        else:
            seed = seed * 7919 + rows.start
    queries, query_mask = queries.to(device), query_mask.to(device)
    gen = torch.Generator(device=device).manual_seed(seed)
    m.policy.eval()
    out = sample(m.policy, queries, query_mask, max_new_tokens=c.max_new_tokens,
                 temperature=c.temperature, eos_token_id=tokenizer.eos_token_id,
                 pad_token_id=tokenizer.pad_token_id, generator=gen,
                 return_logprobs=c.logprobs_from_sampler, cache=c.sampler_cache,
                 compile_step=c.compile_sampler, draw=c.sampler_draw, batch_rows=batch_rows)
    responses, response_mask = out[:2]
    return Rollout(queries=queries, query_mask=query_mask, responses=responses,
                   response_mask=response_mask,
                   logprobs=out[2] if c.logprobs_from_sampler else None)


def score(m: Models, tokenizer, prompts: list[Prompt], r: Rollout, c: PPOConfig, device,
          reward_fn: RewardFn | None = None) -> Rollout:
    """The rollout's reference log-probs, values and scores (and the policy's log-probs when
    the sampler did not give them): forwards in chunks of `c.score_batch_size` sequences of
    similar length, so that each is trimmed to little padding (rollout.trim_padding);
    `unsort` puts the rows back in prompt order. In inference mode (no autograd bookkeeping);
    training reads the results, so they leave it as ordinary tensors."""
    B = r.queries.shape[0]
    order = torch.argsort(r.query_mask.sum(1) + r.response_mask.sum(1))  # (B,)
    unsort = torch.argsort(order)
    # Two single-threaded streams only where the process was given 2+ threads (never more
    # CPU than torch.set_num_threads / OMP_NUM_THREADS allow).
    # Not sharded: a sharded model's forwards are collectives, which two threads would
    # interleave differently on each process.
    # (Nor with fused log-probs: they stand in for the output layer's forward for the time
    # of one call, which two threads on one model would overlap.)
    parallel = (c.parallel_scoring and r.queries.device.type == "cpu"
                and torch.get_num_threads() >= 2 and not runtime().fsdp
                and not c.fused_logprobs)

    # (FSDP gathers weights into buffers it later writes in place: inference tensors are
    # read-only, so sharded models score under no_grad.)
    no_autograd = torch.no_grad if runtime().fsdp else torch.inference_mode

    def score_rows(rows):
        with no_autograd():
            args = (r.queries[rows], r.query_mask[rows], r.responses[rows],
                    r.response_mask[rows])
            return (None if r.logprobs is not None
                    else response_logprobs(m.policy, *args, c.temperature,
                                           fused=c.fused_logprobs),
                    response_logprobs(m.ref, *args, c.temperature, fused=c.fused_logprobs),
                    response_values(m.value, *args),
                    None if reward_fn is not None else response_scores(m.rm, *args))

    parts = []
    for s in chunks(B, c.score_batch_size):
        rows = order[s]
        if parallel and len(rows) > 1:
            half = (len(rows) + 1) // 2  # two halves side by side, kept in row order
            parts += _run_parts([lambda: score_rows(rows[:half]),
                                 lambda: score_rows(rows[half:])], True)
        else:
            parts.append(score_rows(rows))
    logprobs, ref_logprobs, values, scores = zip(*parts)
    # (torch.cat outside inference mode returns ordinary tensors)
    if reward_fn is None:
        score = torch.cat(scores)[unsort]
    else:
        texts = decode_responses(tokenizer, r.responses, r.response_mask)
        score = torch.as_tensor(reward_fn(prompts, texts), dtype=torch.float32, device=device)
    if c.missing_eos_score is not None:
        # The "EOS trick": a response that never ended gets a fixed low score instead.
        ended = ((r.responses == tokenizer.eos_token_id) & r.response_mask.bool()).any(1)
        score = torch.where(ended, score, torch.full_like(score, c.missing_eos_score))
    return dataclasses.replace(
        r, logprobs=r.logprobs if r.logprobs is not None else torch.cat(logprobs)[unsort],
        ref_logprobs=torch.cat(ref_logprobs)[unsort], values=torch.cat(values)[unsort],
        scores=score)


def gather_rollout(r: Rollout, pad_id: int) -> Rollout:
    """Every process's block of a scored rollout, concatenated in rank order: the whole batch,
    on every process (responses right-padded to the longest block's length)."""
    rt = runtime()
    if not rt.distributed:
        return r
    return dataclasses.replace(
        r, queries=rt.gather_rows(r.queries, pad_id), query_mask=rt.gather_rows(r.query_mask),
        responses=rt.gather_rows(r.responses, pad_id),
        response_mask=rt.gather_rows(r.response_mask), logprobs=rt.gather_rows(r.logprobs),
        ref_logprobs=rt.gather_rows(r.ref_logprobs), values=rt.gather_rows(r.values),
        scores=rt.gather_rows(r.scores))


def make_rollout(m: Models, tokenizer, prompts: list[Prompt], c: PPOConfig, seed: int,
                 device, reward_fn: RewardFn | None = None) -> Rollout:
    """A scored batch: `generate`, then `score`."""
    r = generate(m, tokenizer, prompts, c, seed, device)
    return score(m, tokenizer, prompts, r, c, device, reward_fn)


# --------------------------------------------------------------------------- one update
def train_minibatch(m: Models, r: Rollout, adv, returns, idx, c: PPOConfig, ptx_seqs, pad_id,
                    prec: Precision) -> dict[str, float]:
    """Accumulate the minibatch's PPO gradients (micro-batches weighted by their token share,
    so the sum equals the whole minibatch's token-mean loss), then its ptx gradients. Under
    N processes each takes its shard of the minibatch's rows and of `ptx_seqs`, weighted by
    shares of the whole minibatch; the gradients and stats are summed over processes here.
    A non-finite loss raises NonFiniteError on every process, before any step."""
    rt = runtime()
    stats: dict[str, float] = {"nonfinite": 0.0}
    n_tok = float(r.response_mask[idx].sum())
    # Micro-batches of similar length carry less padding; the accumulated gradient does not
    # depend on which rows share a micro-batch.
    idx = rt.shard(idx[torch.argsort(r.query_mask[idx].sum(1) + r.response_mask[idx].sum(1))])

    def add(d, w):
        for k, v in d.items():
            stats[k] = stats.get(k, 0.0) + float(v) * w

    for s in chunks(len(idx), c.micro_batch_size):
        mi = idx[s]
        mask = r.response_mask[mi]
        w = float(mask.sum()) / n_tok
        args = (r.queries[mi], r.query_mask[mi], r.responses[mi], mask)
        with prec.autocast():
            logp, entropy = response_logprobs(m.policy, *args, c.temperature,
                                              return_entropy=True, fused=c.fused_logprobs)
            pg, pstats = ppo_policy_loss(logp, r.logprobs[mi], adv[mi], mask, c.cliprange)
            v = response_values(m.value, *args)
            vf, vstats = value_loss(v, r.values[mi], returns[mi], mask, c.cliprange_value)
        # Not a mean, so not accumulated: a micro-batch's own variance ratio depends on the
        # micro-batch size (0/0 for one 1-token response); `train` reports the batch's.
        vstats.pop("val/var_explained")
        loss = pg + c.vf_coef * vf
        if not torch.isfinite(loss):
            stats["nonfinite"] = 1.0  # "PPO loss"; raised below, once every process knows
            break
        prec.backward(loss * w)
        # (The policy's and the value's parts side by side on two threads were slower,
        # measured: the policy's is ~1.3x the value's and they contend for the GIL. Only
        # scoring runs so, ppo.parallel_scoring.)
        add({**pstats, **vstats, "objective/entropy": masked_mean(entropy, mask)}, w)
    if ptx_seqs and not stats["nonfinite"]:
        n_ptx = float(sum(max(len(t) - 1, 0) for _, t in ptx_seqs))  # targets: all but the 1st
        ptx_seqs = rt.shard(ptx_seqs)
        ids, mask, tgt, _ = collate(ptx_seqs, pad_id) if ptx_seqs else (None,) * 4
        for s in chunks(len(ptx_seqs), c.micro_batch_size):
            dev = r.queries.device
            b_ids, b_mask, b_tgt = ids[s].to(dev), mask[s].to(dev), tgt[s].to(dev)
            with prec.autocast():
                loss, pstats = ptx_loss(labels=b_ids, mask=b_tgt, **lm_loss_inputs(
                    m.policy, b_ids, b_mask, b_tgt, c.fused_logprobs))
            if not torch.isfinite(loss):
                stats["nonfinite"] = 2.0  # "ptx loss"
                break
            w = float(b_tgt[:, 1:].sum()) / n_ptx
            prec.backward(c.ptx_coef * loss * w)
            tokens = float(pstats.pop("ptx/tokens"))
            add(pstats, w)
            stats["ptx/tokens"] = stats.get("ptx/tokens", 0.0) + tokens  # the minibatch's
    # Every process learns of a non-finite loss on any (and then the keys may differ).
    mine = stats.pop("nonfinite")
    if rt.sum_stats({"nonfinite": mine})["nonfinite"]:
        raise NonFiniteError({1.0: "PPO loss", 2.0: "ptx loss"}.get(
            mine, "the loss of another process"))
    rt.sync_gradients(trainable(m.policy) + trainable(m.value))
    return rt.sum_stats(stats)


class EMA:
    """Exponential moving average of the policy's trained weights (App. C.4: decay 0.992):
    every parameter, or LoRA's adapters (the frozen base does not move). Of a sharded policy
    (FSDP), each process averages its own shard; `state` gathers the whole."""

    def __init__(self, model: torch.nn.Module, decay: float):
        self.decay = decay
        self.shadow = {k: local(v).detach().clone() for k, v in model.named_parameters()
                       if v.requires_grad}

    @torch.no_grad()
    def update(self, model: torch.nn.Module) -> None:
        # One multi-tensor kernel over all parameters, not one lerp per tensor (what the
        # foreach optimizers do): a step of a small model is mostly per-op overhead.
        params = dict(model.named_parameters())
        keys = list(self.shadow)
        torch._foreach_lerp_([self.shadow[k] for k in keys],
                             [local(params[k]).detach() for k in keys], 1 - self.decay)

    def state(self, model: torch.nn.Module) -> dict[str, torch.Tensor]:
        """The whole shadow by name (gathered from the shards: every process calls it)."""
        params = dict(model.named_parameters())
        return {k: gather_like(params[k], v) for k, v in self.shadow.items()}

    def load(self, shadow: dict[str, torch.Tensor], model: torch.nn.Module) -> None:
        """A checkpoint's shadow (whole, loaded on the CPU), as each parameter is laid out."""
        params = dict(model.named_parameters())
        self.shadow = {k: shard_like(params[k], v) for k, v in shadow.items()}

    @torch.no_grad()
    def apply(self, model: torch.nn.Module) -> None:
        """The shadow into the model's weights (the saved policy is the average)."""
        params = dict(model.named_parameters())
        for k, v in self.shadow.items():
            local(params[k]).copy_(v)

    @contextlib.contextmanager
    def applied(self, model: torch.nn.Module):
        """Within: the shadow in the model's weights; after: the trained weights again,
        bit for bit (a snapshot mid-run)."""
        params = dict(model.named_parameters())
        kept = {k: local(params[k]).detach().clone() for k in self.shadow}
        self.apply(model)
        try:
            yield model
        finally:
            with torch.no_grad():
                for k, v in kept.items():
                    local(params[k]).copy_(v)


def prompts_for_iteration(prompts: list[Prompt], it: int, batch_size: int, seed: int
                          ) -> list[Prompt]:
    """The iteration's prompts: epochs over the prompt set, each in a seeded shuffle."""
    out = []
    start = it * batch_size
    while len(out) < batch_size:
        epoch, offset = divmod(start + len(out), len(prompts))
        order = list(range(len(prompts)))
        random.Random(f"{seed}:{epoch}").shuffle(order)
        out += [prompts[i] for i in order[offset:offset + batch_size - len(out)]]
    return out


# --------------------------------------------------------------------------- the stage
def train(cfg: RunConfig, run: RunDir, *, init: str | Path, ref: str | Path, rm: str | Path,
          value: str | Path, stage: str, ptx_coef: float | None = None,
          max_iterations: int | None = None, reward_fn: RewardFn | None = None) -> Path:
    """Train the policy and value function into RUN/`stage`. `reward_fn`, when given, scores
    the decoded responses in place of the reward model (the value function still starts
    from `value`)."""
    c = cfg.ppo if ptx_coef is None else dataclasses.replace(cfg.ppo, ptx_coef=ptx_coef)
    out = run.stage(stage)
    rt = runtime()
    if c.mini_batch_size % rt.world:  # (and so the batch, a multiple of the minibatch)
        raise SystemExit(f"ppo: ppo.mini_batch_size={c.mini_batch_size} must be a multiple of "
                         f"the number of processes ({rt.world}): each takes an equal part")
    device = rt.device
    torch.manual_seed(c.seed)
    trust = cfg.model.trust_remote_code
    init, ref = (resolve_model_path(x, trust_remote_code=trust) for x in (init, ref))
    tokenizer = load_tokenizer(init, cfg.model)
    m = load_models(cfg, init, ref, rm, value, device)
    rt.broadcast_parameters(m.policy)
    rt.broadcast_parameters(m.value)
    # Sharded (FSDP): the trained models; the frozen ones stay whole on every process.
    m.policy, m.value = rt.wrap(m.policy), rt.wrap(m.value)
    prompts = run.prompts("train")
    if not prompts:
        raise SystemExit(f"ppo: no train prompts in {run.data / 'prompts.jsonl'}")
    ptx_texts = run.ptx_texts(why="ppo.ptx_coef > 0 (PPO-ptx, App. C.4); "
                              "`--set ppo.ptx_coef=0` trains plain PPO without it"
                              ) if c.ptx_coef > 0 else []
    n_iters = c.episodes // c.batch_size
    prec = precision(cfg.model, device)
    opt_p = _adamw(trainable(m.policy), c)
    opt_v = _adamw(trainable(m.value), c)
    # App. C.4: constant LR after a warmup of `warmup_iters` iterations from 0.1x.
    steps_per_iter = c.ppo_epochs * (c.batch_size // c.mini_batch_size)
    warm = c.warmup_iters * steps_per_iter

    def lr_at(step: int) -> float:
        return 1.0 if step >= warm else c.warmup_start + (1 - c.warmup_start) * step / warm

    sched_p = torch.optim.lr_scheduler.LambdaLR(opt_p, lr_at)
    sched_v = torch.optim.lr_scheduler.LambdaLR(opt_v, lr_at)
    kl_ctl = (AdaptiveKLController(c.kl_coef, c.target_kl, c.kl_horizon) if c.adaptive_kl
              else FixedKLController(c.kl_coef))
    ema = EMA(m.policy, c.ema_decay)
    offload = frozen_copies(m) if c.offload_frozen else []
    for x in offload:
        x.to("cpu")
    ckpt = Checkpoint(out)
    start = 0
    state = ckpt.load()
    if state is not None:
        rt.load_trainable_state(m.policy, state["policy"])
        rt.load_trainable_state(m.value, state["value"])
        ema.load(state["ema"], m.policy)
        rt.load_optimizer_state(m.policy, opt_p, state["opt_p"])
        rt.load_optimizer_state(m.value, opt_v, state["opt_v"])
        for obj, key in ((sched_p, "sched_p"), (sched_v, "sched_v"), (kl_ctl, "kl_ctl")):
            obj.load_state_dict(state[key])
        prec.load_state_dict(state.get("scaler"))
        start = state["iteration"]
        if rt.is_main:
            print(f"{stage}: resuming after iteration {start} from {ckpt.path}")
    log = MetricsLog(out / "metrics.jsonl", resume_step=start, key="iteration",
                     enabled=rt.is_main)
    samples_log = MetricsLog(out / "samples.jsonl", resume_step=start, key="iteration",
                             enabled=rt.is_main)
    tb = _tensorboard(out / "tb" if rt.is_main else None)
    end = n_iters if max_iterations is None else min(n_iters, max_iterations)
    bar = tqdm(total=n_iters, initial=start, desc=stage, unit="it", disable=not rt.is_main)
    block = slice(rt.rank * c.batch_size // rt.world, (rt.rank + 1) * c.batch_size // rt.world)
    for it in range(start, end):
        t0 = _now(device)
        seed = c.seed * 1_000_003 + it
        batch_prompts = prompts_for_iteration(prompts, it, c.batch_size, c.seed)
        # Each process samples and scores its block of the batch; then all hold all of it.
        with rt.unsharded(m.policy), prec.autocast():  # (sampling needs no collective)
            r = generate(m, tokenizer, batch_prompts, c, seed, device,
                         rows=block if rt.distributed else None)
        t_generation = _now(device) - t0
        for x in offload:
            x.to(device)
        with prec.autocast():
            r = score(m, tokenizer, batch_prompts[block], r, c, device, reward_fn)
            if c.fused_logprobs and it == start:  # once: does this model allow it?
                k = min(len(r.queries), c.micro_batch_size)
                check_fused(m.policy, r.queries[:k], r.query_mask[:k], r.responses[:k],
                            r.response_mask[:k], c.temperature, half=prec.half(m.policy))
        for x in offload:
            x.to("cpu")
        r = gather_rollout(r, tokenizer.pad_token_id)
        t_rollout = _now(device) - t0
        rewards, stats = per_token_rewards(r.scores, r.logprobs, r.ref_logprobs,
                                           r.response_mask, kl_ctl.value)
        if c.whiten_rewards:
            rewards = masked_whiten(rewards, r.response_mask, shift_mean=False)
        adv, returns = gae(rewards, r.values, r.response_mask, c.gamma, c.lam)
        adv = masked_whiten(adv, r.response_mask)
        # Explained variance of the rollout's values over the whole batch (baselines'
        # explained_variance), independent of how the batch is split into micro-batches.
        stats["val/var_explained"] = 1 - (
            masked_var(returns - r.values, r.response_mask, unbiased=False)
            / masked_var(returns, r.response_mask, unbiased=False).clamp(min=1e-8))
        _check_finite(stats, stage, it, ckpt)
        m.policy.train()
        m.value.train()
        gen = torch.Generator().manual_seed(seed)
        train_stats: dict[str, list[float]] = {}
        n_mb = 0
        for _ in range(c.ppo_epochs):
            perm = torch.randperm(c.batch_size, generator=gen).to(device)
            for mb in chunks(c.batch_size, c.mini_batch_size):
                idx = perm[mb]
                ptx = (pretraining_examples(ptx_texts, tokenizer, c.ptx_per_episode * len(idx),
                                 c.ptx_max_tokens, seed * 31 + n_mb) if ptx_texts else [])
                opt_p.zero_grad(set_to_none=True)
                opt_v.zero_grad(set_to_none=True)
                try:
                    s = train_minibatch(m, r, adv, returns, idx, c, ptx,
                                        tokenizer.pad_token_id, prec)
                except NonFiniteError as e:
                    _stop(stage, it, str(e), ckpt)
                prec.step(opt_p, trainable(m.policy), c.max_grad_norm)
                prec.step(opt_v, trainable(m.value), c.max_grad_norm)
                if prec.update():
                    sched_p.step()
                    sched_v.step()
                ema.update(m.policy)
                n_mb += 1
                for k, v in s.items():
                    train_stats.setdefault(k, []).append(v)
        kl_ctl.update(float(stats["objective/kl"]), c.batch_size)
        row = {"iteration": it + 1, "episodes": (it + 1) * c.batch_size,
               **{k: float(v) for k, v in stats.items()},
               **{k: sum(v) / len(v) for k, v in train_stats.items()},
               "objective/kl_coef": kl_ctl.value, "lr": sched_p.get_last_lr()[0],
               "objective/response_length": float(r.response_mask.sum(1).float().mean()),
               "time/generation": t_generation, "time/scoring": t_rollout - t_generation,
               "time/training": _now(device) - t0 - t_rollout,
               "time/rollout": t_rollout, "time/iteration": _now(device) - t0}
        _check_finite(row, stage, it, ckpt)
        log.write(row)
        for k, v in row.items():
            tb.add_scalar(k, v, it + 1)
        if (it + 1) % c.sample_every == 0 or it == 0:
            _write_samples(samples_log, tokenizer, batch_prompts, r, it + 1)
        bar.update(1)
        bar.set_postfix(score=f"{row['objective/scores']:.3f}", kl=f"{row['objective/kl']:.3f}")
        if c.snapshot_every and ((it + 1) % c.snapshot_every == 0 or it + 1 == n_iters):
            # Before the checkpoint: a run killed between the two redoes this iteration when
            # it resumes, so no snapshot is skipped; one already written is kept.
            _snapshot(m.policy, ema, tokenizer, out / "snapshots" / f"iter-{it + 1:05d}",
                      weights_dtype(cfg.model), row)
        if (it + 1) % c.checkpoint_every == 0 or it + 1 == end:
            # (whole states, gathered from the shards under FSDP: every process takes part)
            state = {"policy": rt.trainable_state(m.policy),
                     "value": rt.trainable_state(m.value), "ema": ema.state(m.policy),
                     "opt_p": rt.optimizer_state(m.policy, opt_p),
                     "opt_v": rt.optimizer_state(m.value, opt_v),
                     "sched_p": sched_p.state_dict(), "sched_v": sched_v.state_dict(),
                     "kl_ctl": kl_ctl.state_dict(), "scaler": prec.state_dict(),
                     "iteration": it + 1}
            if rt.is_main:
                ckpt.save(state)
            rt.barrier()  # no process runs ahead of the main one's checkpoint
    bar.close()
    tb.close()
    if end < n_iters:  # stopped early on request (tests): the checkpoint holds the state
        rt.barrier()
        return out
    # The saved policy is the EMA of the weights (App. C.4); the value model is kept beside it
    # so that an iterated round can continue from both. Gathered whole on the main process
    # (under FSDP: a collective), which writes them while the others wait.
    ema.apply(m.policy)
    policy_state, value_state = rt.full_state(m.policy), rt.full_state(m.value)
    if not rt.is_main:
        rt.barrier()
        return out
    dtype = weights_dtype(cfg.model)
    save_pretrained_atomic(m.policy, tokenizer, out, dtype=dtype, state=policy_state)
    value_model = m.value
    if rt.fsdp:  # a plain copy to save (a sharded model's own save would write its shards)
        value_model = value_function(cfg, value)
        value_model.load_state_dict(value_state)
    value_model.save_pretrained(out / "value", tokenizer, dtype=dtype)
    run.mark_done(stage, iterations=n_iters, init=str(init), ref=str(ref),
                  rm=str(rm) if reward_fn is None else "reward_fn",
                  ptx_coef=c.ptx_coef, kl_coef=c.kl_coef, adaptive_kl=c.adaptive_kl,
                  lora=lora_enabled(cfg.lora, "ppo"))
    ckpt.remove()
    rt.barrier()
    return out


def _snapshot(policy, ema: EMA, tokenizer, path: Path, dtype, row: dict) -> None:
    """The policy as the end of the stage saves it (the EMA, gathered whole: under FSDP every
    process takes part, the main one writes) into `path`, then snapshot.json, written last:
    a directory without it is incomplete and is saved again. One written already (before a
    kill) is kept. Every process meets the barrier, whichever found it written."""
    rt = runtime()
    if not (path / "snapshot.json").exists():
        with ema.applied(policy):
            state = rt.full_state(policy)
            if rt.is_main:
                save_pretrained_atomic(policy, tokenizer, path, dtype=dtype, state=state)
                info = {"iteration": row["iteration"], "episodes": row["episodes"],
                        "kl": row["objective/kl"], "rm_score": row["objective/scores"]}
                atomic_write_text(path / "snapshot.json", json.dumps(info, indent=1) + "\n")
    rt.barrier()


_pool = None


def _run_parts(parts: list[Callable], parallel: bool) -> list:
    """Run independent closures one after the other, or (`ppo.parallel_scoring`, CPU) each on
    its own Python thread with single-threaded ops. On a few cores, two single-threaded
    streams of matmuls keep the cores busier than one stream split across them (OpenMP's
    fork/join on 256-wide matrices; bench/ppo_throughput.py: scoring 1.92 -> 1.54 s on 2
    cores); ops release the GIL while they run. Grad mode, inference mode and autocast are
    per thread: the closures set what they need."""
    global _pool
    if not parallel:
        return [f() for f in parts]
    if _pool is None:
        from concurrent.futures import ThreadPoolExecutor
        _pool = ThreadPoolExecutor(2, thread_name_prefix="ppo-part")

    def single_threaded(f):
        torch.set_num_threads(1)  # this thread's OpenMP team, and MKL's (process-wide)
        return f()

    main_threads = torch.get_num_threads()
    try:
        futures = [_pool.submit(single_threaded, f) for f in parts]
        return [f.result() for f in futures]
    finally:
        torch.set_num_threads(main_threads)


def _now(device) -> float:
    """Wall time once the device's queued work is done (phase times on a GPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.time()


def _adamw(params: list[torch.nn.Parameter], c: PPOConfig) -> torch.optim.AdamW:
    """AdamW with App. C.4's betas, no weight decay; fused into one kernel when asked
    (`ppo.fused_adamw`) and the parameters' device has it, else torch's default."""
    fused = c.fused_adamw and bool(params) and params[0].device.type in ("cpu", "cuda")
    return torch.optim.AdamW(params, lr=c.lr, betas=c.betas, weight_decay=0.0,
                             fused=fused or None)


def _check_finite(stats: dict, stage: str, it: int, ckpt: Checkpoint) -> None:
    for k, v in stats.items():
        if isinstance(v, (float, int, torch.Tensor)) and not math.isfinite(float(v)):
            _stop(stage, it, k, ckpt)


def _stop(stage: str, it: int, what: str, ckpt: Checkpoint):
    where = (f"the last good checkpoint is {ckpt.path}" if ckpt.path.exists()
             else "no checkpoint was written yet")
    raise SystemExit(f"{stage}: {what} became NaN/inf at iteration {it + 1}; stopping. {where}")


def _write_samples(log: MetricsLog, tokenizer, prompts, r: Rollout, it: int, n: int = 4) -> None:
    kl = ((r.logprobs - r.ref_logprobs) * r.response_mask).sum(1)
    for i in range(min(n, len(prompts))):
        ids = r.responses[i][r.response_mask[i].bool()].tolist()
        log.write({"iteration": it, "prompt": prompts[i].text,
                   "response": tokenizer.decode(ids, skip_special_tokens=True),
                   "score": float(r.scores[i]), "kl": float(kl[i])})


class _NullWriter:
    def add_scalar(self, *a, **k):
        pass

    def close(self):
        pass


def _tensorboard(path: Path | None):
    """A TensorBoard writer at `path`; one that writes nothing for None or without
    tensorboard installed (metrics.jsonl still has everything)."""
    if path is None:
        return _NullWriter()
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        return _NullWriter()
    return SummaryWriter(str(path))


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_common(p)
    p.add_argument("--init", default=None, help="policy initialisation (default: RUN/sft)")
    p.add_argument("--ref", default=None, help="reference policy (default: the --init model)")
    p.add_argument("--rm", default=None, help="reward model (default: RUN/rm)")
    p.add_argument("--value", default=None, help="value initialisation (default: the --rm)")
    p.add_argument("--stage", default=None,
                   help="stage dir name (default: ppo-ptx, or ppo when ppo.ptx_coef is 0)")


def run(args: argparse.Namespace) -> int:
    cfg = run_config(args, record="ppo")
    rd = RunDir(args.out)
    init = args.init or rd.stage("sft")
    rm = args.rm or rd.stage("rm")
    stage = args.stage or ("ppo-ptx" if cfg.ppo.ptx_coef > 0 else "ppo")
    t0 = time.time()
    train(cfg, rd, init=init, ref=args.ref or init, rm=rm, value=args.value or rm, stage=stage)
    if runtime().is_main:
        print(f"{stage}: {time.time() - t0:.1f}s")
    return 0
