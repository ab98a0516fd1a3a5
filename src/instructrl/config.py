"""One dataclass per stage with the paper's defaults, loaded from YAML recipes.

A recipe is a YAML mapping of section name -> fields, e.g. ``sft: {epochs: 16}``. CLI overrides
``--set sft.epochs=2`` are parsed as YAML scalars. An unknown section or key, or a value of the
wrong type, is an `InputError` naming the key and the file. Configs are frozen: nothing mutates
one after `validate()`.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from instructrl.errors import InputError


@dataclass(frozen=True)
class DataConfig:
    """`instructrl data prepare` (paper section 3.2, App. A)."""

    prefix_chars: int = 64
    """Prompts sharing a common prefix at least this long (characters) are duplicates."""
    max_per_user: int = 200
    """At most this many prompts per user ID (paper: 200)."""
    valid_fraction: float = 0.1
    """Fraction of *users* whose prompts go to the validation split."""
    test_fraction: float = 0.1
    """Fraction of *users* whose prompts go to the test split."""
    heldout_categories: tuple[str, ...] = ()
    """Prompt categories kept out of every training set: their prompts, whoever wrote them,
    go to the "ood" split, which only evaluation reads (paper section 4.4)."""
    heldout_styles: tuple[str, ...] = ()
    """Prompt styles (e.g. few-shot) kept out of every training set the same way."""
    seed: int = 0

    def validate(self) -> None:
        _check(self.prefix_chars >= 1, "data.prefix_chars", "must be >= 1")
        _check(self.max_per_user >= 1, "data.max_per_user", "must be >= 1")
        _check(0 <= self.valid_fraction and 0 <= self.test_fraction
               and self.valid_fraction + self.test_fraction < 1,
               "data.valid_fraction", "valid + test fractions must be in [0, 1)")


@dataclass(frozen=True)
class SandboxConfig:
    """The offline world (DESIGN.md section 5)."""

    seed: int = 0
    n_users: int = 120
    """Simulated users writing prompts."""
    n_prompts: int = 3000
    """Prompts the users write in all (before dedupe and the per-user cap)."""
    n_labelers: int = 10
    """Training labelers."""
    n_heldout_labelers: int = 4
    """Held-out labelers: evaluation only, never in training data (paper section 3.4)."""
    n_corpus_docs: int = 20000
    """Web-text documents in the pretraining corpus."""
    n_ptx_docs: int = 4000
    """Pretraining documents written to RUN/data/ptx.jsonl for the ptx loss (App. C.4)."""
    labeler_noise: float = 0.7
    """Gumbel scale of labelers' judgment noise; 0.7 gives ~69 % agreement between training
    labelers on the demo's SFT samples (paper section 5.1: 72.6 % on its comparisons)."""
    tie_margin: float = 0.15
    """Responses whose noisy utilities differ by less than this are ranked as a tie."""

    def validate(self) -> None:
        _check(self.n_users >= 3, "sandbox.n_users", "need at least 3 users for 3 splits")
        _check(self.n_prompts >= 1, "sandbox.n_prompts", "must be >= 1")
        _check(self.n_corpus_docs >= 1, "sandbox.n_corpus_docs", "must be >= 1")
        _check(self.n_ptx_docs >= 0, "sandbox.n_ptx_docs", "must be >= 0")
        _check(self.labeler_noise >= 0, "sandbox.labeler_noise", "must be >= 0")
        _check(self.tie_margin >= 0, "sandbox.tie_margin", "must be >= 0")
        _check(self.n_labelers >= 2, "sandbox.n_labelers", "need at least 2 labelers")
        _check(self.n_heldout_labelers >= 1, "sandbox.n_heldout_labelers", "must be >= 1")


@dataclass(frozen=True)
class PretrainConfig:
    """`instructrl pretrain`: byte-level BPE tokenizer + small Llama-style base model trained
    on the sandbox corpus (the sandbox's GPT-3; DESIGN.md section 5). Not a paper stage: the
    paper started from pretrained GPT-3, so these are ordinary small-LM settings."""

    vocab_size: int = 1024
    """BPE vocabulary, including the 256 bytes and the special tokens pad, bos, eos, unk."""
    hidden_size: int = 192
    intermediate_size: int = 512
    num_layers: int = 4
    num_heads: int = 4
    max_position: int = 256
    """Longest sequence the model is built for (prompt + response of later stages)."""
    tie_embeddings: bool = True
    """Share the embedding and unembedding matrices (halves them at this size)."""
    seq_len: int = 128
    """Tokens per packed training sequence (documents joined as <bos> doc <eos> ...)."""
    batch_size: int = 32
    steps: int = 1800
    """~10 passes over the default sandbox corpus (recipes/pretrain-sandbox.yaml)."""
    lr: float = 3e-3
    warmup_steps: int = 100
    """Linear warmup from 0, then cosine decay to lr * lr_final_ratio at `steps`."""
    lr_final_ratio: float = 0.1
    weight_decay: float = 0.1
    """AdamW decay on matrices only (not norms), betas (0.9, 0.95)."""
    grad_clip: float = 1.0
    heldout_docs: int = 500
    """Held-out documents (a disjoint stream of the sandbox corpus) for the validation loss."""
    log_every: int = 10
    """Steps between metrics.jsonl rows (mean training loss over the window)."""
    checkpoint_every: int = 200
    """Steps between resumable checkpoints in OUT/base/checkpoint/."""
    seed: int = 0

    def validate(self) -> None:
        _check(self.hidden_size % self.num_heads == 0, "pretrain.hidden_size",
               "must be divisible by pretrain.num_heads")
        _check(self.seq_len <= self.max_position, "pretrain.seq_len",
               "must be <= pretrain.max_position")
        _check(self.vocab_size >= 300, "pretrain.vocab_size",
               "must be >= 300 (256 bytes + special tokens + merges)")
        _check(self.steps >= 1 and self.batch_size >= 1 and self.seq_len >= 2,
               "pretrain.steps", "steps, batch_size must be >= 1 and seq_len >= 2")
        _check(self.log_every >= 1 and self.checkpoint_every >= 1, "pretrain.checkpoint_every",
               "log_every and checkpoint_every must be >= 1")
        _check(0 <= self.lr_final_ratio <= 1, "pretrain.lr_final_ratio", "must be in [0, 1]")


@dataclass(frozen=True)
class SFTConfig:
    """`instructrl sft` (paper section 3.5, App. C.1)."""

    epochs: int = 16  # App. C.1
    lr: float = 9.65e-6  # App. C.1 (1.3B); recipes for small models set their own
    lr_final_ratio: float = 0.1  # cosine decay to 10 % of the peak, no warmup (App. C.1)
    betas: tuple[float, float] = (0.9, 0.95)  # App. C
    weight_decay: float = 0.0
    dropout: float = 0.2  # residual dropout 0.2 (App. C.1)
    batch_size: int = 32
    """Sequences per optimizer step."""
    micro_batch_size: int | None = None
    """Sequences per forward/backward; the step's gradient is accumulated over micro-batches
    (None: the whole batch at once). Same step, less memory."""
    max_prompt_tokens: int = 64
    max_response_tokens: int = 64
    ptx_fraction: float = 0.0
    """Fraction of pretraining examples mixed in (App. C.3 RL init: 2 epochs with 0.1)."""
    fused_logprobs: bool = False
    """Take the demonstrations' log-probs from the last hidden states and the output layer's
    weight together, chunk by chunk, as ppo.fused_logprobs does, so that no (batch, tokens,
    vocabulary) logits exist: memory for large vocabularies (bench/fused_logprobs.py; one more
    output-layer matmul in each backward pass). Needs a plain bias-free linear output layer
    whose logits the model's forward returns unchanged (checked on the first batch)."""
    select_prompts: int = 64
    """Validation prompts sampled per epoch checkpoint for selection by RM score."""
    checkpoint_every: int = 200
    """Steps between resumable checkpoints inside an epoch (each epoch's end has one)."""
    seed: int = 0

    def validate(self) -> None:
        _check(self.epochs >= 1, "sft.epochs", "must be >= 1")
        _check(self.checkpoint_every >= 1, "sft.checkpoint_every", "must be >= 1")
        _check(0 <= self.dropout < 1, "sft.dropout", "must be in [0, 1)")
        _check(0 <= self.ptx_fraction < 1, "sft.ptx_fraction", "must be in [0, 1)")
        _check(self.micro_batch_size is None or 1 <= self.micro_batch_size <= self.batch_size,
               "sft.micro_batch_size", "must be between 1 and sft.batch_size")


@dataclass(frozen=True)
class CollectConfig:
    """`instructrl collect`: K samples per prompt, ranked by labelers (paper section 3.5)."""

    k: int = 4
    """Responses per prompt (paper: 4 to 9)."""
    n_prompts: int = 512
    """Train-split prompts per round (RM training data); more than the split holds takes
    each prompt more than once, with new samples each time."""
    n_valid_prompts: int = 64
    """Valid-split prompts per round (RM validation, and held-out labelers' rankings)."""
    heldout_share: float = 0.5
    """Share of valid-split samples that held-out labelers rank too (RM evaluation only)."""
    temperature: float = 1.0
    max_prompt_tokens: int = 64
    max_new_tokens: int = 64
    batch_size: int = 64
    """Prompts sampled at once."""
    policies: tuple[str, ...] = ("sft",)
    """Stage dirs (or 'base') to sample from; the K responses are split among them."""
    seed: int = 0

    def validate(self) -> None:
        _check(2 <= self.k <= 9, "collect.k", "must be between 2 and 9 (paper: 4 to 9)")
        _check(len(self.policies) >= 1, "collect.policies", "name at least one policy")
        _check(0 <= self.heldout_share <= 1, "collect.heldout_share", "must be in [0, 1]")


@dataclass(frozen=True)
class RMConfig:
    """`instructrl rm` (paper section 3.5, App. C.2)."""

    epochs: int = 1  # App. C.2: one epoch, more overfits
    lr: float = 9e-6  # App. C.2 (6B RM); recipes for small models set their own
    lr_final_ratio: float = 0.1  # cosine to 10 % (App. C.2)
    betas: tuple[float, float] = (0.9, 0.95)
    weight_decay: float = 0.0
    batch_size: int = 64
    """Counted in prompts: all C(K,2) pairs of one prompt are one batch element."""
    micro_batch_size: int | None = None
    """Prompts per forward/backward; the step's gradient is accumulated over micro-batches
    (None: the whole batch at once). Same step, less memory."""
    max_prompt_tokens: int = 64
    max_response_tokens: int = 64
    checkpoint_every: int = 50
    """Steps between resumable checkpoints."""
    seed: int = 0

    def validate(self) -> None:
        _check(self.epochs >= 1, "rm.epochs", "must be >= 1")
        _check(self.micro_batch_size is None or 1 <= self.micro_batch_size <= self.batch_size,
               "rm.micro_batch_size", "must be between 1 and rm.batch_size")


@dataclass(frozen=True)
class PPOConfig:
    """`instructrl ppo` (paper section 3.5 Eq. 2, App. C.4)."""

    episodes: int = 256_000  # App. C.4: 256k episodes
    batch_size: int = 512  # episodes per rollout batch (App. C.4)
    mini_batch_size: int = 64  # App. C.4
    micro_batch_size: int = 64
    """Forward/backward chunk; minibatch gradients are accumulated over micro-batches."""
    ppo_epochs: int = 1  # App. C.4: one inner epoch
    lr: float = 9e-6
    warmup_iters: int = 10  # App. C.4: constant LR after 10 iterations warming up from 0.1x
    warmup_start: float = 0.1
    betas: tuple[float, float] = (0.9, 0.95)
    kl_coef: float = 0.02  # beta (App. C.4)
    adaptive_kl: bool = False
    target_kl: float = 6.0  # adaptive controller (Ziegler et al. 2019)
    kl_horizon: int = 10_000
    gamma: float = 1.0  # App. C.4
    lam: float = 0.95
    cliprange: float = 0.2  # App. C.4
    cliprange_value: float = 0.2
    vf_coef: float = 0.1
    max_grad_norm: float | None = None
    """Clip gradient norms (not in the paper; small models in fp32 may want 1.0)."""
    whiten_rewards: bool = False
    temperature: float = 1.0  # App. C.4: sampled at temperature 1
    max_prompt_tokens: int = 64
    max_new_tokens: int = 64
    missing_eos_score: float | None = None
    """If set, a response with no EOS gets this score INSTEAD of the RM's (the "EOS trick" of
    lm-human-preferences). Not TRL's `missing_eos_penalty`, which is subtracted from the
    score: a TRL user's positive penalty would reward never ending here, so give the low
    score itself (e.g. -1)."""
    ptx_coef: float = 27.8  # gamma (App. C.4); 0 is plain PPO
    ptx_per_episode: int = 8  # App. C.4: 8x as many pretraining examples as episodes
    ptx_max_tokens: int = 128
    """Length of one pretraining example (tokens)."""
    ema_decay: float = 0.992  # App. C.4
    sample_every: int = 10
    """Write a table of decoded samples every N iterations."""
    checkpoint_every: int = 5
    snapshot_every: int = 0
    """Save the policy (as the final one is saved: the EMA) every N iterations and at the last
    into snapshots/iter-NNNNN/ with its iteration's KL and score, for the over-optimisation
    curve (`evaluate.overoptimisation`); 0: none."""
    seed: int = 0
    # -- speed switches (issue 18). Each is exact or agrees to float rounding (tests).
    logprobs_from_sampler: bool = True
    """Take the old policy's log-probs from the sampler (the distribution each token was drawn
    from) instead of a second forward pass over the rollout. Valid because sampling and
    training see the same weights, temperature and no dropout (every dropout is off in RL);
    they differ from a forward's only by float rounding of the KV-cached decode. False: the
    extra forward, as before."""
    score_batch_size: int = 32
    """Sequences per no-grad scoring forward (reference, reward, value) in the rollout,
    sorted by length so each chunk carries little padding. Larger than a training
    micro-batch because no activations are kept."""
    sampler_cache: str = "dynamic"
    """dynamic | static: the sampler's KV cache. static preallocates every position and
    writes in place (no per-step concatenation; fixed shapes)."""
    sampler_draw: str = "cdf"
    """cdf | multinomial: how a token is drawn from softmax(logits / temperature). cdf
    inverts the cumulative distribution with one uniform per row (~15x cheaper on a CPU);
    multinomial is torch.multinomial, as transformers' generate (its tokens for a seed).
    The same distribution either way."""
    compile_sampler: bool = False
    """Run each decode step through torch.compile (needs sampler_cache=static; on a GPU as a
    CUDA graph). The first rollout pays the compilation (tens of seconds on a CPU)."""
    parallel_scoring: bool = False
    """CPU: score the two halves of each scoring chunk side by side on two Python threads
    with single-threaded ops, instead of one after the other with multi-threaded ops (two
    cores stay busier with two streams of small matmuls). For 2-4 cores (it uses two); ignored
    on a GPU and when torch has fewer than 2 threads."""
    fused_logprobs: bool = False
    """Take the policy's and the reference's log-probs from the last hidden states and the
    output layer's weight together, chunk by chunk (`losses.linear_log_softmax`), so that no
    (batch, response, vocabulary) logits exist, in scoring, training and the ptx loss: memory
    for large vocabularies (measured on a CPU at Llama-3's 128k, micro-batch 16 x 128
    tokens: 3.3 GiB -> 0.5 GiB, and faster; ~2 % slower with the sandbox's 8k: bench/
    fused_logprobs.py). Costs one more output-layer matmul in each backward pass; needs a
    plain bias-free linear output layer whose logits the model's forward returns unchanged
    (checked against the model's own log-probs on the first rollout) and turns
    ppo.parallel_scoring off."""
    fused_adamw: bool = True
    """AdamW's fused kernel (`fused=True`: one kernel over all parameters instead of a dozen
    per tensor; CPU and CUDA in torch >= 2.4); False: torch's default (foreach)."""
    offload_frozen: bool = False
    """Keep the frozen reference and RM in CPU memory while the policy and value train, on
    the device only while they score a rollout (GPU memory for PCIe transfers each
    iteration). Views of trained models (the LoRA reference and RM) have nothing to move."""

    def validate(self) -> None:
        _check(self.sampler_cache in ("dynamic", "static"), "ppo.sampler_cache",
               "must be 'dynamic' or 'static'")
        _check(not self.compile_sampler or self.sampler_cache == "static",
               "ppo.compile_sampler", "needs ppo.sampler_cache=static (fixed shapes)")
        _check(self.score_batch_size >= 1, "ppo.score_batch_size", "must be >= 1")
        _check(self.snapshot_every >= 0, "ppo.snapshot_every", "must be >= 0")
        _check(self.lr > 0, "ppo.lr", "must be > 0")
        _check(self.kl_coef >= 0, "ppo.kl_coef", "must be >= 0 (0: no KL penalty)")
        _check(self.ptx_coef >= 0, "ppo.ptx_coef", "must be >= 0 (0: PPO without ptx)")
        _check(self.sampler_draw in ("cdf", "multinomial"), "ppo.sampler_draw",
               "must be 'cdf' or 'multinomial'")
        _check(self.batch_size % self.mini_batch_size == 0, "ppo.batch_size",
               "must be divisible by ppo.mini_batch_size")
        _check(self.mini_batch_size % self.micro_batch_size == 0, "ppo.mini_batch_size",
               "must be divisible by ppo.micro_batch_size")
        _check(self.episodes >= self.batch_size, "ppo.episodes", "must be >= ppo.batch_size")
        _check(0 <= self.ema_decay < 1, "ppo.ema_decay", "must be in [0, 1)")
        # Sampling divides the logits by the temperature and the log-probs are those of the
        # distribution sampled from: 0 (greedy) has no log-probs to take a KL or a ratio of.
        _check(self.temperature > 0, "ppo.temperature",
               "must be > 0 (PPO needs the sampling distribution's log-probs; paper: 1)")


@dataclass(frozen=True)
class EvalConfig:
    """`instructrl eval` (paper section 4): judges and benchmarks over a run's policies. Every
    figure names its judge (people, the sandbox's held-out labelers, a held-out RM, a
    classifier, an automatic metric, the policy's likelihood, lm-eval); judges are never mixed."""

    n_prompts: int = 256
    """Held-out users' (test split) prompts to evaluate on."""
    max_prompt_tokens: int = 64
    max_new_tokens: int = 64
    temperature: float = 1.0
    seed: int = 0
    judges: tuple[str, ...] = ("auto",)
    """What to run: sandbox (held-out simulated labelers, program checks and the sandbox's
    tax; sandbox runs only), heldout_rm, truthfulqa, toxicity, bias, tax. 'auto': on a
    sandbox run the sandbox's judges and tax (the demo's figures); on any other run every
    judge and benchmark whose model or data is available, the rest skipped with a reason."""
    baseline: str = "sft"
    """The policy every win rate is against (paper section 4.1: the SFT model)."""
    policies: tuple[str, ...] = ()
    """Policies to evaluate, by pipeline.json name (sft, ppo-ptx, ppo) or 'base'; empty: the
    base model and every policy of pipeline.json."""
    heldout_rm: str = ""
    """A reward-model directory trained on preference data the run's RM never saw: a judge
    of win rates named as such. Empty: no held-out-RM judge."""
    truthfulqa: str = "truthfulqa/truthful_qa"
    """TruthfulQA: its CSV (e.g. ../shared/data/truthfulqa.csv) or the hub id."""
    n_truthfulqa: int = 0
    """Questions taken (a seeded slice); 0 = all 817 (the paper)."""
    truthfulqa_max_new_tokens: int = 50
    """Tokens of each greedy TruthfulQA answer."""
    rtp: str = "allenai/real-toxicity-prompts"
    """RealToxicityPrompts in its own jsonl format (a local file) or the hub id."""
    n_rtp: int = 1000
    """RealToxicityPrompts prompts taken (a seeded slice); 0 = all ~100k."""
    n_samples: int = 25
    """Continuations sampled per RTP prompt (Gehman et al. 2020: 25)."""
    rtp_max_new_tokens: int = 20
    """Tokens per RTP continuation (Gehman et al. 2020: 20)."""
    toxicity_scorer: str = "auto"
    """auto | perspective | detoxify | profanity-check. auto: Perspective when
    PERSPECTIVE_API_KEY is set, else Detoxify when its weights are here, else
    alt-profanity-check (offline, ships its weights)."""
    crows_pairs: str = ""
    """CrowS-Pairs CSV (crows_pairs_anonymized.csv); empty: no CrowS-Pairs."""
    winogender: str = ""
    """Winogender's all-sentences TSV (winogender_all_sentences.tsv); empty: no Winogender."""
    n_bias: int = 0
    """CrowS-Pairs pairs and Winogender schemas taken (seeded slices); 0 = all."""
    lm_eval_tasks: tuple[str, ...] = ()
    """lm-evaluation-harness task names for the alignment tax (App. E), run on every policy."""
    lm_eval_include: str = ""
    """A directory of custom lm-eval task YAML files (local data, no download)."""
    lm_eval_limit: int = 0
    """Documents per lm-eval task; 0 = all."""
    heldout_text: str = ""
    """Held-out pretraining text for the LM-loss part of the tax: a .txt file (one document a
    line) or a jsonl/csv/hub data set with a `text` field. Sandbox runs use the sandbox
    corpus's held-out stream; empty on other runs: no LM-loss figure."""
    n_tax: int = 200
    """Held-out texts (and sandbox public-task items) for the tax."""
    batch_size: int = 16
    """Sequences per forward pass in the benchmarks."""

    def validate(self) -> None:
        known = {"auto", "sandbox", "heldout_rm", "truthfulqa", "toxicity", "bias", "tax"}
        bad = [j for j in self.judges if j not in known]
        _check(not bad, "eval.judges",
               f"unknown judge {bad[0] if bad else ''!r} (known: {', '.join(sorted(known))})")
        _check(self.n_prompts >= 1, "eval.n_prompts", "must be >= 1")
        _check(self.n_samples >= 1, "eval.n_samples", "must be >= 1")
        _check(self.batch_size >= 1, "eval.batch_size", "must be >= 1")
        _check(min(self.n_truthfulqa, self.n_rtp, self.n_bias, self.lm_eval_limit) >= 0,
               "eval.n_truthfulqa", "slice sizes must be >= 0 (0 = all)")


@dataclass(frozen=True)
class ModelConfig:
    """How every stage loads a model (DESIGN.md section 6): one place, `instructrl.modeling`.
    Models are named by `pipeline.base_model`, `--init`, `--rm`, ...: 'sandbox', a
    save_pretrained directory, a hub id (through the Hugging Face cache; offline-aware), or a
    GGUF file (`path/model.gguf`, or a directory holding exactly one)."""

    dtype: str = "auto"
    """auto | fp32 | bf16 | fp16: the dtype weights are loaded in. auto is fp32 on a CPU
    (no bf16 hardware: measured 4x slower) and bf16 on a GPU that supports it, else fp32."""
    attn_implementation: str | None = None
    """eager | sdpa | flash_attention_2 | ...; None lets transformers choose."""
    mixed_precision: str = "auto"
    """auto | fp32 | bf16 | fp16: autocast of every stage's forwards over float32 master
    weights (fp16 with loss scaling), as accelerate's `mixed_precision` (whose 'no' is fp32
    here: YAML reads a bare no as false). auto: what `accelerate launch --mixed_precision`
    (or its config file) says, else bf16 on a GPU that has it, else fp32 (a CPU: bf16
    measured ~4x slower). Under bf16 the PPO sampler's log-probs
    and the training forward's agree to bf16 rounding, as with any separate sampler."""
    gradient_checkpointing: bool = False
    """Recompute activations in the backward pass of trained models (memory for compute)."""
    trust_remote_code: bool = False
    """Run model code shipped with a hub checkpoint. Off: only transformers' own classes."""
    chat_template: str | None = None
    """None: the tokenizer's own chat template (the sandbox template when it has none);
    'none': the plain sandbox template even when the tokenizer has one; else a path to a
    Jinja file, or the Jinja template itself."""
    system_prompt: str | None = None
    """None: what the chat template does without a system turn (some add a default one);
    a string: this system turn before every prompt ('' for an empty one)."""

    def validate(self) -> None:
        _check(self.dtype in ("auto", "fp32", "bf16", "fp16"), "model.dtype",
               "must be one of auto, fp32, bf16, fp16")
        _check(self.mixed_precision in ("auto", "fp32", "bf16", "fp16"),
               "model.mixed_precision", "must be one of auto, fp32, bf16, fp16")


@dataclass(frozen=True)
class LoRAConfig:
    """LoRA adapters through peft for SFT, RM and PPO (Hu et al. 2021). Off when r is 0. The
    policy trains an adapter and PPO's reference is the same weights with the adapter
    disabled; the RM and the value function train an adapter plus their whole scalar head."""

    r: int = 0
    """Adapter rank; 0 turns LoRA off (full fine-tuning, the paper's setting)."""
    alpha: float = 16.0
    dropout: float = 0.05
    target_modules: tuple[str, ...] = ("all-linear",)
    """Module names (or suffixes) that get adapters; ('all-linear',) is every linear layer
    but the output one (peft's shorthand)."""
    stages: tuple[str, ...] = ("sft", "rm", "ppo")
    """Which stages train adapters; the others train every weight."""

    def validate(self) -> None:
        _check(self.r >= 0, "lora.r", "must be >= 0 (0 turns LoRA off)")
        _check(0 <= self.dropout < 1, "lora.dropout", "must be in [0, 1)")
        _check(len(self.target_modules) >= 1, "lora.target_modules", "name at least one module")
        _check(set(self.stages) <= {"sft", "rm", "ppo"}, "lora.stages",
               "may only name sft, rm and ppo")


@dataclass(frozen=True)
class SourcesConfig:
    """A user's own data, read by `instructrl data import` and by `instructrl pipeline` into
    RUN/data (prompts, demonstrations, rankings, ptx). Each entry is a mapping:
    {path: a local file (jsonl, json, csv, parquet) or a hub dataset id, format: auto |
    messages | alpaca | dolly | self-instruct | pairs | hh | rankings | prompts | text,
    name: hub config, split: hub split, data_dir: hub sub-directory, limit: N,
    columns: {field: column} for anything else (null ignores a column),
    category: default category of its prompts, labeler: labeler id of its demonstrations and
    rankings (default 'hh' for HH data, else the file's or data set's name)}. Empty everywhere: the sandbox provides the
    data."""

    prompts: tuple[dict, ...] = ()
    """Prompts without responses (PPO and collection prompts)."""
    demonstrations: tuple[dict, ...] = ()
    """(prompt, response) data for SFT: chat messages, Alpaca, Dolly, self-instruct, ..."""
    preferences: tuple[dict, ...] = ()
    """Pairs (prompt, chosen, rejected), HH dialogues, or K-wise rankings, for the RM."""
    ptx: tuple[dict, ...] = ()
    """Pretraining text for the ptx loss (App. C.3/C.4): a text column of any data set."""
    valid_fraction: float = 0.1
    """Share of users (of prompts, when the data has no user ids) put in the valid split."""
    test_fraction: float = 0.1
    """Share of users (of prompts, when the data has no user ids) put in the test split."""
    seed: int = 0

    def validate(self) -> None:
        _check(0 <= self.valid_fraction and 0 <= self.test_fraction
               and self.valid_fraction + self.test_fraction < 1,
               "sources.valid_fraction", "valid + test fractions must be in [0, 1)")

    def any(self) -> bool:
        return bool(self.prompts or self.demonstrations or self.preferences or self.ptx)


@dataclass(frozen=True)
class PipelineConfig:
    """`instructrl pipeline`: rounds of collect -> label -> RM -> PPO after the first pass."""

    rounds: int = 1
    """Iterated rounds after the first SFT -> RM -> PPO pass (paper: 'continuously')."""
    base_model: str = "sandbox"
    """'sandbox' for the shipped sandbox base model, 'pretrain' to pretrain a new one into
    RUN/base first (with the `pretrain` section), or a path to a save_pretrained dir."""


@dataclass(frozen=True)
class ReproduceConfig:
    """`instructrl reproduce`: the runs it adds to the pipeline for the paper's findings."""

    overopt_kl_coef: float = 0.0
    """beta of the extra PPO run that shows over-optimisation (the paper's point: none)."""
    public_sft: bool = True
    """Train an SFT model on the corpus's public NLP tasks in instruction form (Fig. 5)."""
    big_base: str = ""
    """A base model at least 4x the pipeline's, pretrained by the same recipe, for "small
    PPO-ptx beats much larger SFT" ('sandbox-large' ships for the sandbox's: 4.2x); empty:
    that finding is not measured."""
    choose: tuple[str, ...] = ()
    """PPO settings to choose among before PPO runs, as a grid: ["ppo.lr=5.0e-5,2.0e-4",
    "ppo.kl_coef=0.02,0.1"]; judged on validation prompts by the training labelers
    (stages/choose.py). Empty: the recipe's settings as they are."""
    choose_episodes: int = 0
    """PPO episodes of each candidate while choosing; 0: ppo.episodes, and the chosen
    candidate is then the PPO-ptx stage itself (not trained again)."""
    choose_big: tuple[str, ...] = ()
    """SFT settings of the larger base's SFT to choose among, as a grid:
    ["sft.lr=1.0e-3,2.0e-3"]; judged as `choose` is. Empty: the recipe's sft settings."""

    def validate(self) -> None:
        _check(self.overopt_kl_coef >= 0, "reproduce.overopt_kl_coef", "must be >= 0")
        _check(self.choose_episodes >= 0, "reproduce.choose_episodes", "must be >= 0")


@dataclass(frozen=True)
class RunConfig:
    data: DataConfig = field(default_factory=DataConfig)
    sandbox: SandboxConfig = field(default_factory=SandboxConfig)
    pretrain: PretrainConfig = field(default_factory=PretrainConfig)
    sft: SFTConfig = field(default_factory=SFTConfig)
    collect: CollectConfig = field(default_factory=CollectConfig)
    rm: RMConfig = field(default_factory=RMConfig)
    ppo: PPOConfig = field(default_factory=PPOConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    pipeline: PipelineConfig = field(default_factory=PipelineConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    lora: LoRAConfig = field(default_factory=LoRAConfig)
    sources: SourcesConfig = field(default_factory=SourcesConfig)
    reproduce: ReproduceConfig = field(default_factory=ReproduceConfig)

    def validate(self) -> "RunConfig":
        for f in dataclasses.fields(self):
            section = getattr(self, f.name)
            if hasattr(section, "validate"):
                section.validate()
        return self

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def _check(ok: bool, key: str, message: str) -> None:
    if not ok:
        raise InputError(message, field=key)


def _coerce(value: Any, tp: Any, key: str, source: str) -> Any:
    """Check `value` against the annotation `tp`, converting lists to tuples and ints to
    floats where the annotation asks. Anything else of the wrong type is an error."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for a in args:
            if a is type(None):
                continue
            try:
                return _coerce(value, a, key, source)
            except InputError as e:
                errors.append(e)
        raise errors[0]
    if origin is tuple:
        args = typing.get_args(tp)
        if not isinstance(value, (list, tuple)):
            raise InputError(f"expected a list, got {value!r}", path=source, field=key)
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_coerce(v, args[0], key, source) for v in value)
        if len(value) != len(args):
            raise InputError(f"expected {len(args)} items, got {value!r}", path=source, field=key)
        return tuple(_coerce(v, a, key, source) for v, a in zip(value, args))
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if tp is float and isinstance(value, str):
        try:  # YAML 1.1 reads "1e-3" (no dot) as a string; it is plainly a number
            return float(value)
        except ValueError:
            pass
    if tp is dict:
        # A mapping inside a section (a data source): its keys are checked where it is used.
        if not isinstance(value, dict):
            raise InputError(f"expected a mapping, got {value!r}", path=source, field=key)
        return dict(value)
    if tp in (int, float, str, bool):
        if isinstance(value, bool) and tp is not bool:
            raise InputError(f"expected {tp.__name__}, got {value!r}", path=source, field=key)
        if not isinstance(value, tp):
            raise InputError(f"expected {tp.__name__}, got {value!r}", path=source, field=key)
        return value
    raise TypeError(f"unsupported config annotation {tp!r} for {key}")


# Keys that were renamed, with why, so an old recipe gets a pointer instead of a key list.
RENAMED = {
    "ppo.missing_eos_penalty": "renamed to ppo.missing_eos_score: it REPLACES the score of a "
                               "response without EOS (lm-human-preferences), while TRL's "
                               "missing_eos_penalty is subtracted; give the score itself, "
                               "e.g. -1",
    "ppo.autocast": "moved to model.mixed_precision (auto | fp32 | bf16 | fp16), which "
                    "every training stage reads; 'none' is now 'fp32'",
}


def _apply(cfg: RunConfig, updates: dict[str, dict[str, Any]], source: str) -> RunConfig:
    sections = {f.name: f for f in dataclasses.fields(RunConfig)}
    new_sections = {}
    for name, values in updates.items():
        if name not in sections:
            raise InputError(f"unknown section (known: {', '.join(sections)})", path=source,
                             field=name)
        if not isinstance(values, dict):
            raise InputError("a section must be a mapping of key: value", path=source, field=name)
        section = new_sections.get(name, getattr(cfg, name))
        hints = typing.get_type_hints(type(section))
        known = {f.name for f in dataclasses.fields(section)}
        changes = {}
        for key, value in values.items():
            if f"{name}.{key}" in RENAMED:
                raise InputError(RENAMED[f"{name}.{key}"], path=source, field=f"{name}.{key}")
            if key not in known:
                raise InputError(f"unknown key (known: {', '.join(sorted(known))})",
                                 path=source, field=f"{name}.{key}")
            changes[key] = _coerce(value, hints[key], f"{name}.{key}", source)
        new_sections[name] = dataclasses.replace(section, **changes)
    return dataclasses.replace(cfg, **new_sections)


def apply_overrides(cfg: RunConfig, pairs: list[str], source: str = "--set") -> RunConfig:
    """`cfg` with ['section.key=value', ...] applied, validated."""
    return _apply(cfg, parse_overrides(pairs), source).validate()


def parse_overrides(pairs: list[str]) -> dict[str, dict[str, Any]]:
    """['sft.epochs=2', 'ppo.kl_coef=0.05'] -> {'sft': {'epochs': 2}, 'ppo': {...}}."""
    out: dict[str, dict[str, Any]] = {}
    for pair in pairs:
        if "=" not in pair or "." not in pair.split("=", 1)[0]:
            raise InputError(f"expected section.key=value, got {pair!r}", path="--set")
        key, raw = pair.split("=", 1)
        section, name = key.split(".", 1)
        out.setdefault(section, {})[name] = yaml.safe_load(raw) if raw else ""
    return out


def load_config(recipe: str | Path | None = None, overrides: list[str] | None = None
                ) -> RunConfig:
    """Defaults, then the recipe file, then `--set` overrides; validated."""
    cfg = RunConfig()
    if recipe is not None:
        path = Path(recipe)
        if not path.exists():
            raise InputError("recipe not found", path=str(path))
        try:
            data = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as e:
            raise InputError(f"not valid YAML: {e}", path=str(path)) from None
        if not isinstance(data, dict):
            raise InputError("a recipe must be a mapping of section: {key: value}",
                             path=str(path))
        cfg = _apply(cfg, data, str(path))
    if overrides:
        cfg = _apply(cfg, parse_overrides(overrides), "--set")
    try:
        return cfg.validate()
    except InputError as e:
        raise InputError(e.message, path=str(recipe) if recipe else "defaults",
                         field=e.field) from None


def dump_config(cfg: RunConfig) -> str:
    def plain(x):
        if isinstance(x, dict):
            return {k: plain(v) for k, v in x.items()}
        if isinstance(x, (list, tuple)):
            return [plain(v) for v in x]
        return x
    return yaml.safe_dump(plain(cfg.to_dict()), sort_keys=False)


def config_changes(old: RunConfig, new: RunConfig) -> list[str]:
    """"section.key: old -> new" for every setting that differs."""
    a, b = old.to_dict(), new.to_dict()
    return [f"{s}.{k}: {a[s][k]!r} -> {b[s][k]!r}" for s in b for k in b[s]
            if a[s][k] != b[s][k]]
