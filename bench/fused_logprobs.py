"""Log-probs fused with the output layer (`ppo.fused_logprobs`, issue 18): peak memory and time
of PPO's policy forward + backward over the responses, fused and not, on a CPU.

    python bench/fused_logprobs.py [--vocab 128256] [--batch 16] [--response 128] [--reps 3]

The shape that matters is the vocabulary: Llama-3's 128,256 entries at gpu-1b's micro-batch
(16) and response length (128, plus the one position that predicts the first token) make the
logits 16 x 129 x 128,256 floats, 1.06 GB in float32 (0.53 GB in bf16), and their gradient as
much again. The rest of the model is kept tiny (hidden 64, 2 layers) so that those tensors are
what the measurement sees. Each mode runs in its own process (peak RSS is per process); the
figure is its peak RSS less that of a process that only builds the model and the batch.

Measured (2026-12-06, idle 2-core CPU, float32), peak over the model / forward + backward:
  the defaults (vocab 128,256, batch 16, response 128): logits 3.31 GiB / 5.19 s, fused
  0.46 GiB / 2.20 s (the unfused path also writes and reads the logits and their gradient);
  `--vocab 8192 --batch 8 --response 64 --reps 5` (cpu-tiny's shape): logits 0.16 GiB / 0.03 s,
  fused 0.11 GiB / 0.04 s.
Whole PPO iterations on cpu-tiny (`python bench/ppo_throughput.py --config cpu-tiny --sides
ours,fused --runs 3`): 12.91 samples/s plain, 12.61 fused (peak RSS 1.08 / 1.00 GiB): with an
8k vocabulary the logits are small and the extra matmul costs ~2 %, so the switch stays off by
default. On a GPU the same comparison is a step of bench/gpu_checks.sh (peak GPU memory of the
gpu-1b bench with the switch on), not yet run.

Prints figures; asserts nothing.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time


def worker(mode: str, vocab: int, batch: int, response: int, reps: int) -> dict:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from instructrl.rollout import response_logprobs

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=vocab, hidden_size=64, intermediate_size=128,
                      num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=2,
                      max_position_embeddings=512, tie_word_embeddings=True)
    model = LlamaForCausalLM(cfg).train()
    queries = torch.randint(0, vocab, (batch, 8))
    responses = torch.randint(0, vocab, (batch, response))
    qmask, rmask = torch.ones_like(queries), torch.ones_like(responses)
    times = []
    for _ in range(reps if mode != "none" else 0):
        t0 = time.perf_counter()
        lp, ent = response_logprobs(model, queries, qmask, responses, rmask, 1.0,
                                    return_entropy=True, fused=mode == "fused")
        lp.sum().backward()
        model.zero_grad(set_to_none=True)
        times.append(time.perf_counter() - t0)
    return {"peak_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
            "seconds": statistics.median(times) if times else 0.0}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--vocab", type=int, default=128256)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--response", type=int, default=128)
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.worker:
        print(json.dumps(worker(a.worker, a.vocab, a.batch, a.response, a.reps)))
        return 0
    logits_gb = a.batch * (a.response + 1) * a.vocab * 4 / 1e9
    print(f"vocab {a.vocab}, batch {a.batch}, response {a.response}: float32 logits "
          f"{logits_gb:.2f} GB")
    res = {}
    for mode in ("none", "logits", "fused"):
        out = subprocess.run([sys.executable, __file__, "--worker", mode, "--vocab",
                              str(a.vocab), "--batch", str(a.batch), "--response",
                              str(a.response), "--reps", str(a.reps)],
                             capture_output=True, text=True, check=True)
        res[mode] = json.loads(out.stdout.strip().splitlines()[-1])
    base = res["none"]["peak_gib"]
    print(f"{'mode':<8} {'peak over the model (GiB)':>26} {'fwd+bwd (s)':>12}")
    for mode in ("logits", "fused"):
        r = res[mode]
        print(f"{mode:<8} {r['peak_gib'] - base:>26.2f} {r['seconds']:>12.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
