"""PPO throughput: instructrl's PPO next to TRL 0.29's `PPOTrainer`, same shape, same machine.

    .venv/bin/python bench/ppo_throughput.py --config cpu-tiny            # 2 threads, ~15 min
    .venv/bin/python bench/ppo_throughput.py --config gpu-160m --runs 2   # on a GPU machine
    .venv/bin/python bench/ppo_throughput.py --config cpu-tiny --sides ours --profile

The shapes are those of ../shared/BENCH.md: random-init Llama models (policy and value
trained, reference and reward frozen), generation forced to the full response length, one
PPO epoch, no pretraining mix (TRL has none). Both sides start from the same saved models
(`runs/bench-ppo/<config>/models`, built once): our policy directory and reward-model
directory (a scalar head on the backbone; TRL loads it as LlamaForSequenceClassification).
Full length without EOS: the tokenizer's EOS (also its pad) is id `vocab` of a model whose
vocabulary is ids 0..vocab-1, so no model can ever sample it, on either side, and prompts are
exactly `query` tokens long (no padding anywhere).

Ours runs `instructrl.stages.ppo.train` on a run directory written on the fly; TRL runs in its
own virtual environment (`runs/trl-venv`: torch==2.13.0 (the CPU wheel on a CPU machine) first,
then trl==0.29.0 and transformers==5.24.0, the version ours uses), installed by this script
when missing. Each run is a fresh process of `--iters` iterations; runs alternate ours, TRL,
ours, TRL, ... (`--runs` pairs); the first iteration of every run is dropped (warm-up,
compilation) and the medians of the rest are printed, with the load average before each run.

Geometry, and the one difference kept on purpose: TRL's batch = per_device_train_batch_size
(= micro) x gradient_accumulation_steps (= batch / micro), its minibatch = batch /
num_mini_batches. Its inner loop wraps every micro-batch in `accelerator.accumulate`, so it
takes ONE optimizer step per `gradient_accumulation_steps` micro-batches: one per iteration on
cpu-tiny. Ours takes one per minibatch (batch / minibatch = 4 on cpu-tiny), as the paper's
minibatches ask (App. C.4). The output says so.

Shares: ours from the stage's own `time/generation|scoring|training`; TRL's from hooks:
generation = its `batch_generation`, scoring = from there to its first training forward,
training = the rest of the iteration. An iteration is the time between consecutive metrics
rows on both sides. Peak memory: the worker's peak RSS on a CPU (models included), peak
allocated GPU memory on a GPU.

The gpu-160m and gpu-1b shapes are written to run on a GPU machine (bf16 weights for the
frozen models on our side as `model.dtype: auto` does; TRL with `bf16=True`), but were not run
here: this machine has no GPU.

Figures: ../shared/BENCH.md's target for cpu-tiny is ours/TRL >= 2; it is NOT reached (1.28
with the defaults, 1.50 with the two CPU switches, on the loaded machine below; 1.40 with the
defaults on an idle one, 2026-12-06 at 1c4d199, `--sides ours,trl --runs 3`: ours 12.65
samples/s, 2.53 s/it, peak RSS 1.09 GiB; TRL 9.05, 3.54 s/it, 1.25 GiB; CPU s/it TRL/ours
1.31. `--sides ours,fused` the same day: 12.91 and 12.61, ppo.fused_logprobs costing ~2 % at
this 8k vocabulary, bench/fused_logprobs.py). This machine is 2 shared cores (AMD EPYC,
AVX2) on which other people's jobs run most of the time; with 2 threads a run that shares a
core is slowed 3-10x (OpenMP threads wait on each other), so every run is printed with the
load and the other processes' CPU share just before it, and `--wait` holds each run until
the machine is idle.

  .venv/bin/python bench/ppo_throughput.py --config cpu-tiny --runs 3 --iters 4 \
      --sides ours,trl,parallel,both,base --baseline-src /tmp/base/src --wait 1800
  (base = `git archive b403e42 src | tar -x -C /tmp/base`, the code before issue 18; at commit
  899d759; 2 threads, idle: other processes' CPU 0-1 % before every run, load 1.5-1.7 = our
  own run; medians of 9 steady iterations per side)
              samples/s   s/it  CPU s/it  1st it s  gen %  score %  train %  gen tok/s  RSS GiB
  ours           4.63     6.91    13.68     13.6     28      27       45      1,082     1.02
  trl            3.61     8.87    16.62      9.4     31      25       43        767     1.25
  parallel       4.86     6.58    12.93     13.8     30      22       48      1,055     1.19
  both           5.40     5.93    11.65     20.7     27      24       50      1,276     1.26
  base           3.95     8.10    16.04     13.4     29      27       45        893     1.00
  samples/s vs TRL: ours 1.28, parallel (ppo.parallel_scoring) 1.35, both (parallel and the
  static cache + compiled decode step; its 1st iteration pays the compilation) 1.50, base
  1.10 (the issue measured 1.00). ours vs base 1.17x, both vs base 1.37x. Optimizer steps per
  iteration: ours 4, TRL 1 (see above). Between rounds TRL itself ran at 8.2-10.9 s/it, so
  read ratios within one round; ../shared/BENCH.md's 4.08 s/it for TRL came from a faster
  machine than today's.

  The same with --threads 1 on the loaded machine (load 4.2-6.6), sides ours,trl,base,compiled:
  ours / TRL 1.24, compiled / TRL 1.40, base / TRL 1.02.

Why not 2x: after the changes both sides do nearly the same arithmetic. Per sample, in
matmul FLOPs: generation 1.07 G (both), scoring 2.70 G ours (reference with response-only
logits, value, reward) vs 2.96 G TRL (full logits), training 5.67 G ours vs 6.46 G TRL
(policy and value forward + backward; full logits in TRL's): 9.4 G against 10.5 G, 1.11x
fewer (the old ours: 11.9 G, a policy forward more). `aten::mm` is 56 % of our iteration
and ran at ~30 GFLOP/s per core on the loaded machine (the MKL sgemm of these 256-wide
layers); what remains of the rest (decode-loop overhead, sampling,
attention, elementwise ops) is what the changes removed. 2x would take matmuls twice as
fast or half as many: neither is in the PPO algorithm's gift on one CPU.

Profile (`--sides base,ours --profile --threads 1`, 3rd iteration, self CPU, loaded machine
so shares, not seconds, compare). Before (b403e42): aten::mm 58 %, Python/profiler step 6 %,
SDPA attention 5.5 % (+2.1 % backward), aten::cat 4.7 % (KV-cache appends, RoPE),
aten::exponential_ 4.0 % (torch.multinomial), aten::mul 3.3 %, copy_ 1.7 %, _log_softmax
1.4 % (+0.4 % backward; the full (B,T,V) log-softmax of two policy forwards). After
(f779ba7, dynamic cache, defaults): aten::mm 56 %, cat 6.3 %, SDPA 5.9 % (+2.9 %), mul 5.1 %, the
reference's response-only unembedding (a bmm) 2.9 %, copy_ 1.6 %, add 1.5 %, silu 1.3 %,
_fused_adamw_ 0.8 % (four steps), no exponential_ (inverse-CDF draw), no policy forward in
scoring. With `compiled` the decode step's cat/mul/add/silu are fused by inductor.

The demo (`instructrl demo`, recipes/sandbox.yaml, idle 2-core machine, one after the other):
before the speed work (b403e42) 758 s, after (7ea994d) 736 s; its four PPO stages 381 s ->
358 s (-6 %), the rest unchanged (SFT, collect and the RM are most of the demo). At the
demo's model size the saved time buys about two more PPO iterations per stage (of 30).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

SHAPES = {
    "cpu-tiny": dict(llama=dict(vocab_size=8192, hidden_size=256, intermediate_size=688,
                                num_hidden_layers=4, num_attention_heads=4,
                                num_key_value_heads=4),
                     query=64, response=64, batch=32, minibatch=8, micro=8, dtype="fp32",
                     threads=2, iters=4, runs=3),
    "gpu-160m": dict(llama=dict(vocab_size=32000, hidden_size=768, intermediate_size=2048,
                                num_hidden_layers=12, num_attention_heads=12,
                                num_key_value_heads=12),
                     query=128, response=128, batch=256, minibatch=64, micro=32,
                     dtype="bf16", threads=None, iters=4, runs=2),
    "gpu-1b": dict(llama=dict(vocab_size=128256, hidden_size=2048, intermediate_size=8192,
                              num_hidden_layers=16, num_attention_heads=32,
                              num_key_value_heads=8, tie_word_embeddings=True,
                              rope_theta=500000.0),
                   query=128, response=128, batch=256, minibatch=64, micro=16, dtype="bf16",
                   threads=None, iters=3, runs=2),
}
PROMPTS = 256  # prompt records written for each side (> batch: iterations see new prompts)


def load_average() -> float:
    return float(Path("/proc/loadavg").read_text().split()[0])


def cpu_busy(seconds: float = 2.0) -> float:
    """Busy share of all CPUs over the next `seconds` (from /proc/stat), taken while this
    driver sleeps between runs: what other processes use. The load average lags by a minute
    and counts our own previous run; this does not."""
    def sample():
        f = [int(x) for x in Path("/proc/stat").read_text().split("\n")[0].split()[1:]]
        return f[3] + f[4], sum(f)  # idle + iowait, total
    i0, t0 = sample()
    time.sleep(seconds)
    i1, t1 = sample()
    return 1 - (i1 - i0) / max(1, t1 - t0)


def wait_for_idle(args, deadline: float) -> float:
    """Wait (until `deadline`) for other processes to use at most --max-busy of the CPUs;
    returns their last measured share."""
    busy = cpu_busy()
    while busy > args.max_busy and time.time() < deadline:
        time.sleep(10)
        busy = cpu_busy()
    return busy


# --------------------------------------------------------------------------- the shape
def build_shape(name: str, where: Path) -> Path:
    """Tokenizer, policy and reward model of the shape in `where` (once), and the prompt
    token ids both sides use. Runs in instructrl's environment."""
    if (where / "done.json").exists():
        return where
    import torch
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    from instructrl.modeling import ScalarHeadModel

    shape = SHAPES[name]
    V = shape["llama"]["vocab_size"]
    # Word-level tokenizer: "w<i>" is id i (id 0 is <unk>), and <eos> = <pad> is id V, one
    # past the model's vocabulary: never sampled, so every response runs to full length.
    vocab = {"<unk>": 0, **{f"w{i}": i for i in range(1, V)}, "<eos>": V}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", eos_token="<eos>",
                                   pad_token="<eos>")
    cfg = LlamaConfig(**shape["llama"], max_position_embeddings=shape["query"] + shape["response"],
                      pad_token_id=None, bos_token_id=None, eos_token_id=None)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    torch.manual_seed(0)
    with torch.device(device):  # BENCH.md: random init of 1B models on a CPU takes minutes
        policy = LlamaForCausalLM(cfg)
        rm = ScalarHeadModel(LlamaForCausalLM(cfg).model)
    where.mkdir(parents=True, exist_ok=True)
    policy.save_pretrained(where / "policy")
    fast.save_pretrained(where / "policy")
    rm.save_pretrained(where / "rm", fast)
    # Prompts of exactly `query` tokens: the sandbox template ("user: {text}\nassistant:\n",
    # no chat template here) adds "user:" and "assistant:", one <unk> each.
    rng = random.Random(0)
    words = [[rng.randrange(1, V) for _ in range(shape["query"] - 2)] for _ in range(PROMPTS)]
    (where / "prompts.json").write_text(json.dumps(words))
    (where / "done.json").write_text(json.dumps({"shape": name}))
    return where


# --------------------------------------------------------------------------- our worker
def worker_ours(args) -> dict:
    import resource

    import torch

    from instructrl.config import load_config
    from instructrl.rundir import RunDir
    from instructrl.stages import ppo, common

    shape = SHAPES[args.config]
    if shape["threads"]:
        torch.set_num_threads(shape["threads"])
    models = Path(args.models)
    run = Path(args.workdir)
    (run / "data").mkdir(parents=True, exist_ok=True)
    words = json.loads((models / "prompts.json").read_text())
    with open(run / "data" / "prompts.jsonl", "w") as f:
        for i, w in enumerate(words):
            f.write(json.dumps({"id": f"p{i}", "user_id": f"u{i % 17}", "split": "train",
                                "text": " ".join(f"w{t}" for t in w)}) + "\n")
    overrides = [f"ppo.episodes={shape['batch'] * args.iters}",
                 f"ppo.batch_size={shape['batch']}", f"ppo.mini_batch_size={shape['minibatch']}",
                 f"ppo.micro_batch_size={shape['micro']}", "ppo.ppo_epochs=1",
                 "ppo.ptx_coef=0", f"ppo.max_prompt_tokens={shape['query']}",
                 f"ppo.max_new_tokens={shape['response']}", "ppo.sample_every=1000000",
                 "ppo.checkpoint_every=1000000", "ppo.lr=1e-5", "ppo.warmup_iters=0",
                 f"model.dtype={'auto' if shape['dtype'] == 'bf16' else 'fp32'}",
                 *args.set]
    cfg = load_config(None, overrides)
    stamps: list[float] = []
    cpu: list[float] = []  # process CPU seconds (all threads) at the same moments

    class TimedLog(common.MetricsLog):
        """Stamps each metrics row: an iteration is the time between two rows (as for TRL)."""

        def write(self, row):
            if "time/iteration" in row:
                stamps.append(time.perf_counter())
                cpu.append(time.process_time())
                if prof is not None:
                    prof.step()
            return super().write(row)

    ppo.MetricsLog = TimedLog
    # Generation time from the sampler itself where the stage does not report it (an older
    # checkout, `--ours-src`: the baseline).
    gen_times: list[float] = []
    real_sample = ppo.sample

    def timed_sample(*a, **k):
        t = time.perf_counter()
        out = real_sample(*a, **k)
        gen_times.append(time.perf_counter() - t)
        return out

    ppo.sample = timed_sample
    prof = None
    if args.profile:
        from torch.profiler import ProfilerActivity, profile, schedule
        acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA]
                                         if torch.cuda.is_available() else [])
        # iteration 1 is warm-up; profile iteration 3 (rows step the schedule)
        prof = profile(activities=acts, schedule=schedule(wait=1, warmup=1, active=1, repeat=1))
        prof.start()
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    stamps.append(time.perf_counter())
    cpu.append(time.process_time())
    ppo.train(cfg, RunDir(run), init=models / "policy", ref=models / "policy",
              rm=models / "rm", value=models / "rm", stage="ppo")
    rows = common.read_metrics(run / "ppo" / "metrics.jsonl")
    gen = [r.get("time/generation", g) for r, g in zip(rows, gen_times)]
    out = {"iteration": [b - a for a, b in zip(stamps, stamps[1:])],
           "cpu": [b - a for a, b in zip(cpu, cpu[1:])],
           "generation": gen,
           "scoring": [r["time/rollout"] - g for r, g in zip(rows, gen)],
           "training": [r["time/iteration"] - r["time/rollout"] for r in rows],
           "response_length": [r["objective/response_length"] for r in rows],
           "optimizer_steps": shape["batch"] // shape["minibatch"],
           "source": str(Path(ppo.__file__).parents[2]),
           "peak_rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20}
    if torch.cuda.is_available():
        out["peak_gpu_gib"] = torch.cuda.max_memory_allocated() / 2**30
    if prof is not None:
        prof.stop()
        key = "self_cuda_time_total" if torch.cuda.is_available() else "self_cpu_time_total"
        out["profile"] = prof.key_averages().table(sort_by=key, row_limit=25)
    return out


# --------------------------------------------------------------------------- TRL's worker
def worker_trl(args) -> dict:
    """Runs in the TRL venv: imports nothing of instructrl."""
    import resource

    import torch
    from datasets import Dataset
    from transformers import (AutoModelForCausalLM, AutoModelForSequenceClassification,
                              AutoTokenizer, TrainerCallback)
    from trl.experimental.ppo import PPOConfig, PPOTrainer
    from trl.experimental.ppo import ppo_trainer as trl_ppo

    shape = SHAPES[args.config]
    if shape["threads"]:
        torch.set_num_threads(shape["threads"])
    models = Path(args.models)
    bf16 = shape["dtype"] == "bf16"
    device = "cuda" if torch.cuda.is_available() else "cpu"
    tok = AutoTokenizer.from_pretrained(models / "policy")
    words = json.loads((models / "prompts.json").read_text())
    unk = tok.unk_token_id
    ids = [[unk] + w + [unk] for w in words]  # the same ids our template gives
    data = Dataset.from_dict({"input_ids": ids})
    frozen = torch.bfloat16 if bf16 else torch.float32
    policy = AutoModelForCausalLM.from_pretrained(models / "policy", dtype=torch.float32)
    ref = AutoModelForCausalLM.from_pretrained(models / "policy", dtype=frozen)
    # Our RM directory is the backbone (LlamaModel) + scalar_head.safetensors: TRL's reward
    # and value models are LlamaForSequenceClassification on that backbone, head copied.
    from safetensors.torch import load_file
    head = load_file(str(models / "rm" / "scalar_head.safetensors"))

    def scalar(dtype):
        mdl = AutoModelForSequenceClassification.from_pretrained(models / "rm", num_labels=1,
                                                                 dtype=dtype)
        with torch.no_grad():
            mdl.score.weight.copy_(head["weight"].to(dtype))
        mdl.config.pad_token_id = tok.pad_token_id
        return mdl

    reward, value = scalar(frozen), scalar(torch.float32)
    for mdl in (policy, ref):
        mdl.generation_config.eos_token_id = None
        mdl.generation_config.pad_token_id = tok.pad_token_id
    B, mb, micro = shape["batch"], shape["minibatch"], shape["micro"]
    config = PPOConfig(
        output_dir=str(Path(args.workdir) / "trl"), per_device_train_batch_size=micro,
        gradient_accumulation_steps=B // micro, num_mini_batches=B // mb, num_ppo_epochs=1,
        total_episodes=B * args.iters, response_length=shape["response"], temperature=1.0,
        kl_coef=0.02, learning_rate=1e-5, stop_token=None, missing_eos_penalty=None,
        num_sample_generations=0, report_to=[], save_strategy="no", logging_steps=1,
        bf16=bf16, use_cpu=device == "cpu", seed=0, disable_tqdm=True,
        local_rollout_forward_batch_size=64)
    marks: dict[str, list[float]] = {"gen0": [], "gen1": [], "train0": [], "end": [], "cpu": []}
    real_generation, real_forward = trl_ppo.batch_generation, trl_ppo.forward

    def sync():
        if device == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter()

    def batch_generation(*a, **k):
        marks["gen0"].append(sync())
        out = real_generation(*a, **k)
        marks["gen1"].append(sync())
        return out

    def forward(model, *a, **k):
        if isinstance(model, trl_ppo.PolicyAndValueWrapper) or hasattr(model, "value_model"):
            if len(marks["train0"]) < len(marks["gen1"]):
                marks["train0"].append(sync())
        return real_forward(model, *a, **k)

    trl_ppo.batch_generation, trl_ppo.forward = batch_generation, forward

    class Stamp(TrainerCallback):
        def on_train_begin(self, *a, **k):
            marks["end"].append(sync())
            marks["cpu"].append(time.process_time())

        def on_step_end(self, *a, **k):
            marks["end"].append(sync())
            marks["cpu"].append(time.process_time())

    trainer = PPOTrainer(args=config, processing_class=tok, model=policy, ref_model=ref,
                         reward_model=reward, value_model=value, train_dataset=data,
                         eval_dataset=data, callbacks=[Stamp()])
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    trainer.train()
    e, g0, g1, t0 = marks["end"], marks["gen0"], marks["gen1"], marks["train0"]
    out = {"iteration": [b - a for a, b in zip(e, e[1:])],
           "cpu": [b - a for a, b in zip(marks["cpu"], marks["cpu"][1:])],
           "generation": [b - a for a, b in zip(g0, g1)],
           "scoring": [b - a for a, b in zip(g1, t0)],
           "training": [end - t for t, end in zip(t0, e[1:])],
           "optimizer_steps": 1,  # see the module docstring
           "peak_rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20}
    if device == "cuda":
        out["peak_gpu_gib"] = torch.cuda.max_memory_allocated() / 2**30
    return out


# --------------------------------------------------------------------------- driver
def trl_python(venv: Path) -> Path:
    """The TRL venv's python, made when missing: pinned torch first (on a CPU machine the
    CPU wheel; never an unpinned torch, which pulls gigabytes of CUDA), then trl 0.29.0 and
    the transformers version ours runs."""
    py = venv / "bin" / "python"
    ok = py.exists() and subprocess.run(
        [str(py), "-c", "import trl, torch; assert trl.__version__ == '0.29.0'"],
        capture_output=True).returncode == 0
    if ok:
        return py
    import torch
    import transformers
    print(f"installing TRL 0.29.0 into {venv} (once)", flush=True)
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    pip = [str(py), "-m", "pip", "install", "-q"]
    # The exact version ours runs (2.13.0 here: the CPU wheel this machine's pip finds).
    subprocess.run(pip + [f"torch=={torch.__version__.split('+')[0]}"], check=True)
    subprocess.run(pip + ["trl==0.29.0", f"transformers=={transformers.__version__}"],
                   check=True)
    return py


# A side: (worker kind, instructrl source tree or None, extra --set overrides).
COMPILED = ["ppo.sampler_cache=static", "ppo.compile_sampler=true"]
PARALLEL = ["ppo.parallel_scoring=true"]
FUSED = ["ppo.fused_logprobs=true"]


def sides_of(args) -> dict[str, tuple[str, str | None, list[str]]]:
    """ours: this checkout with --set; base: another checkout (--baseline-src), defaults;
    compiled: ours with the static cache and compiled decode step; parallel: ours with
    ppo.parallel_scoring; both: compiled and parallel; fused: ours with ppo.fused_logprobs;
    trl: TRL 0.29."""
    table = {"ours": ("ours", args.ours_src, list(args.set)),
             "base": ("ours", args.baseline_src, []),
             "compiled": ("ours", args.ours_src, list(args.set) + COMPILED),
             "parallel": ("ours", args.ours_src, list(args.set) + PARALLEL),
             "both": ("ours", args.ours_src, list(args.set) + COMPILED + PARALLEL),
             "fused": ("ours", args.ours_src, list(args.set) + FUSED),
             "trl": ("trl", None, [])}
    names = args.sides.split(",")
    unknown = [n for n in names if n not in table]
    if unknown or ("base" in names and not args.baseline_src):
        raise SystemExit(f"--sides: {unknown or 'base'}: one of {', '.join(table)} "
                         "(base needs --baseline-src)")
    return {n: table[n] for n in names}


def run_worker(side: str, spec, python: Path, args, models: Path, k: int,
               deadline: float) -> tuple[dict, float, float]:
    kind, src, overrides = spec
    workdir = ROOT / "runs" / "bench-ppo" / args.config / f"{side}-{k}"
    if workdir.exists():
        import shutil
        shutil.rmtree(workdir)
    workdir.mkdir(parents=True)
    result = workdir / "result.json"
    cmd = [str(python), str(Path(__file__).resolve()), "--worker", kind, "--config", args.config,
           "--models", str(models), "--workdir", str(workdir), "--iters", str(args.iters),
           "--result", str(result)] + [x for s in overrides for x in ("--set", s)]
    if args.threads:
        cmd += ["--threads", str(args.threads)]
    if args.profile and kind == "ours":
        cmd.append("--profile")
    env = dict(os.environ)
    threads = SHAPES[args.config]["threads"]
    if threads:
        env["OMP_NUM_THREADS"] = env["MKL_NUM_THREADS"] = str(threads)
    # this side's source tree first; a PYTHONPATH given to the driver (carried wheels, say)
    # after it
    env["PYTHONPATH"] = os.pathsep.join(x for x in (src, os.environ.get("PYTHONPATH")) if x)
    env["TOKENIZERS_PARALLELISM"] = "false"
    busy = wait_for_idle(args, deadline)
    load = load_average()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        sys.stderr.write(proc.stdout[-4000:] + proc.stderr[-8000:])
        raise SystemExit(f"{side} worker failed (exit {proc.returncode})")
    return json.loads(result.read_text()), load, busy


def median(xs):
    return statistics.median(xs) if xs else float("nan")


def summarise(results: list[dict], shape: dict) -> dict:
    """Medians over every run's iterations after its first."""
    it = [x for r in results for x in r["iteration"][1:]]
    parts = {k: [x for r in results for x in r[k][1:]] for k in ("generation", "scoring",
                                                                  "training")}
    s = median(it)
    out = {"s_per_iteration": s, "samples_per_s": shape["batch"] / s,
           "generation_s": median(parts["generation"]),
           "first_iteration_s": median([r["iteration"][0] for r in results]),
           "cpu_s_per_iteration": median([x for r in results for x in r["cpu"][1:]]),
           "generated_tok_per_s": shape["batch"] * shape["response"] / median(parts["generation"]),
           "optimizer_steps": results[0]["optimizer_steps"],
           "peak_rss_gib": max(r["peak_rss_gib"] for r in results)}
    total = sum(median(v) for v in parts.values())
    for k, v in parts.items():
        out[f"{k}_share"] = median(v) / total
    if "peak_gpu_gib" in results[0]:
        out["peak_gpu_gib"] = max(r["peak_gpu_gib"] for r in results)
    return out


def copy_bandwidth() -> float:
    """The GPU's device-to-device copy bandwidth in bytes/s, counting bytes read and written
    (the bandwidth ../shared/BENCH.md's generation floor is computed from)."""
    import torch
    x = torch.empty(2**30, dtype=torch.uint8, device="cuda")
    y = torch.empty_like(x)
    for _ in range(3):
        y.copy_(x)
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(10):
        y.copy_(x)
    torch.cuda.synchronize()
    return 2 * x.numel() * 10 / (time.perf_counter() - t0)


def generation_floor(shape: dict, bandwidth: float) -> float:
    """Seconds a rollout's decoding takes at least (../shared/BENCH.md): each of the
    `response` steps reads every weight of the policy once, in bf16, and the KV cache of the
    batch written so far, at `bandwidth` (bytes/s). 0.173 s for gpu-1b at 3.0 TB/s."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(**shape["llama"])
    with torch.device("meta"):
        n = sum(p.numel() for p in LlamaForCausalLM(cfg).parameters())
    head_dim = cfg.hidden_size // cfg.num_attention_heads
    kv_per_token = 2 * cfg.num_hidden_layers * cfg.num_key_value_heads * head_dim * 2
    batch, query = shape["batch"], shape["query"]
    total = sum(2 * n + kv_per_token * batch * (query + t) for t in range(shape["response"]))
    return total / bandwidth


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--config", choices=sorted(SHAPES), default="cpu-tiny")
    p.add_argument("--runs", type=int, default=None, help="pairs of runs (ours, TRL)")
    p.add_argument("--iters", type=int, default=None, help="iterations per run (first dropped)")
    p.add_argument("--sides", default="ours,trl",
                   help="comma-separated, run interleaved in this order: ours, trl, compiled "
                        "(ours + static cache + compiled decode step), parallel (ours + "
                        "ppo.parallel_scoring), both, base (--baseline-src)")
    p.add_argument("--baseline-src", default=None,
                   help="another checkout's src/ for the 'base' side (`git archive COMMIT src "
                        "| tar -x -C /tmp/base`, then /tmp/base/src)")
    p.add_argument("--threads", type=int, default=None,
                   help="torch threads (default: the shape's; BENCH.md's cpu-tiny is 2)")
    p.add_argument("--set", action="append", default=[],
                   help="override of our config, e.g. --set ppo.compile_sampler=true")
    p.add_argument("--profile", action="store_true",
                   help="print a profile of the 3rd iteration of each of our sides")
    p.add_argument("--max-busy", type=float, default=0.1,
                   help="before each run, wait (within --wait s in all) until other processes "
                        "use at most this share of the CPUs (measured over 2 s)")
    p.add_argument("--wait", type=float, default=0,
                   help="seconds the whole bench may spend waiting for an idle machine")
    p.add_argument("--trl-venv", default=str(ROOT / "runs" / "trl-venv"))
    p.add_argument("--trl-python", default=None,
                   help="a Python that already imports trl 0.29.0 (a machine without pip "
                        "access, such as bench/gpu_checks.sh's): used instead of --trl-venv")
    p.add_argument("--ours-src", default=str(ROOT / "src"),
                   help="the instructrl source tree the ours/compiled sides import")
    # worker mode (internal)
    p.add_argument("--worker", choices=["ours", "trl"])
    p.add_argument("--models")
    p.add_argument("--workdir")
    p.add_argument("--result")
    args = p.parse_args()
    shape = SHAPES[args.config]
    if args.threads:
        shape["threads"] = args.threads
    args.iters = args.iters or shape["iters"]
    if args.worker:
        out = (worker_ours if args.worker == "ours" else worker_trl)(args)
        Path(args.result).write_text(json.dumps(out))
        return 0

    args.runs = args.runs or shape["runs"]
    specs = sides_of(args)
    sides = list(specs)
    models = build_shape(args.config, ROOT / "runs" / "bench-ppo" / args.config / "models")
    pythons = {"ours": Path(sys.executable)}
    if "trl" in sides:
        pythons["trl"] = (Path(args.trl_python) if args.trl_python
                          else trl_python(Path(args.trl_venv)))
    pythons.update({s: pythons["ours"] for s in sides if s != "trl"})
    deadline = time.time() + args.wait
    results: dict[str, list[dict]] = {s: [] for s in sides}
    loads: dict[str, list[float]] = {s: [] for s in sides}
    others: dict[str, list[float]] = {s: [] for s in sides}
    for k in range(args.runs):
        for side in sides:  # interleaved: ours, TRL, ours, TRL, ...
            res, load, busy = run_worker(side, specs[side], pythons[side], args, models, k,
                                         deadline)
            results[side].append(res)
            loads[side].append(load)
            others[side].append(busy)
            print(f"run {k + 1}/{args.runs} {side}: "
                  + " ".join(f"{x:.2f}" for x in res["iteration"])
                  + f" s/it (load {load:.2f}, other processes' CPU {100 * busy:.0f} %)",
                  flush=True)
    cmd = " ".join(["bench/ppo_throughput.py"] + sys.argv[1:])
    print(f"\n{args.config}: {json.dumps(shape['llama'])}, query {shape['query']} / response "
          f"{shape['response']}, batch {shape['batch']} / minibatch {shape['minibatch']} / micro "
          f"{shape['micro']}, {shape['dtype']}, threads {shape['threads'] or 'default'}; "
          f"{args.runs} run(s) x {args.iters} iterations per side, first dropped, medians")
    print(f"command: {cmd}")
    for s in sides:
        kind, src, overrides = specs[s]
        if kind == "ours":
            print(f"  {s}: {src}, overrides: {' '.join(overrides) or 'none'}")
    summary = {s: summarise(results[s], shape) for s in sides}
    cols = ["samples/s", "s/it", "CPU s/it", "1st it s", "gen %", "score %", "train %", "gen tok/s",
            "opt steps/it", "peak RSS GiB"] + (["peak GPU GiB"] if "peak_gpu_gib" in
                                              summary[sides[0]] else []) + ["load avg",
                                                                            "others' CPU %"]
    print(f"{'':6}" + "".join(f"{c:>14}" for c in cols))
    for s in sides:
        x = summary[s]
        vals = [f"{x['samples_per_s']:.2f}", f"{x['s_per_iteration']:.3f}",
                f"{x['cpu_s_per_iteration']:.2f}",
                f"{x['first_iteration_s']:.2f}", f"{100 * x['generation_share']:.0f}",
                f"{100 * x['scoring_share']:.0f}", f"{100 * x['training_share']:.0f}",
                f"{x['generated_tok_per_s']:,.0f}", f"{x['optimizer_steps']}",
                f"{x['peak_rss_gib']:.2f}"]
        if "peak_gpu_gib" in x:
            vals.append(f"{x['peak_gpu_gib']:.1f}")
        vals.append(f"{min(loads[s]):.2f}-{max(loads[s]):.2f}")
        vals.append(f"{100 * min(others[s]):.0f}-{100 * max(others[s]):.0f}")
        print(f"{s:6}" + "".join(f"{v:>14}" for v in vals))
    if "trl" in sides:
        t = summary["trl"]
        for s in sides:
            if s != "trl":
                x = summary[s]
                print(f"ratio of median samples/s, {s} / TRL: "
                      f"{x['samples_per_s'] / t['samples_per_s']:.2f}   (CPU seconds per "
                      f"iteration, TRL / {s}: "
                      f"{t['cpu_s_per_iteration'] / x['cpu_s_per_iteration']:.2f})")
        ours = next((summary[s] for s in sides if s != "trl"), None)
        if ours is not None:
            print(f"optimizer steps per iteration: ours {ours['optimizer_steps']} (one per "
                  f"minibatch, App. C.4), TRL {t['optimizer_steps']} (its accelerator."
                  "accumulate over gradient_accumulation_steps = batch / micro)")
    if "peak_gpu_gib" in summary[sides[0]]:
        bw = copy_bandwidth()
        floor = generation_floor(shape, bw)
        print(f"generation floor at batch {shape['batch']}: {floor:.3f} s (copy bandwidth "
              f"{bw / 1e12:.2f} TB/s, read + written); rollout generation per iteration: "
              + ", ".join(f"{s} {summary[s]['generation_s']:.2f} s = "
                          f"{summary[s]['generation_s'] / floor:.1f}x the floor" for s in sides))
    for s in sides:
        prof = results[s][0].get("profile")
        if prof:
            print(f"\nprofile of {s}'s 3rd iteration (run 1):\n" + prof)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
