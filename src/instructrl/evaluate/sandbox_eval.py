"""Evaluate policies in the sandbox the way the paper evaluated InstructGPT (section 4):

- win rate against the SFT baseline, judged by HELD-OUT labelers (never in training data) on
  prompts of HELD-OUT users (the test split), ties counted as half, with a 95 % CI;
- Likert 1-7 and the metadata flags (fails to follow the instruction, hallucination,
  inappropriate, ...) from those labelers;
- program checks: correct, follows the instruction and its constraints, truthful, repeats a
  popular falsehood, harmless;
- mean reward-model score of the samples;
- the alignment tax: LM loss on held-out pretraining text, and accuracy on the corpus's own
  "public NLP tasks" (few-shot QA and sentiment written as web text) never seen in training.
"""

from __future__ import annotations

from pathlib import Path

import torch
from tqdm.auto import tqdm

from instructrl.config import RunConfig
from instructrl.data.records import Prompt
from instructrl.evaluate.stats import mean_ci, rate
from instructrl.generation import sample_texts, score_texts
from instructrl.modeling import ScalarHeadModel, load_causal_lm, load_tokenizer
from instructrl.rollout import pad_left, sample
from instructrl.rundir import RunDir
from instructrl.stages.common import batches

CHECKS = ("correct", "follows_instruction", "constraints_ok", "truthful", "hallucination",
          "repeats_falsehood", "harmless")


def test_prompts(run: RunDir, n: int) -> list[Prompt]:
    """Held-out users' prompts with a clear intent (labelers skip the rest)."""
    prompts = [p for p in run.prompts("test") if not p.meta.get("unclear")]
    return sorted(prompts, key=lambda p: p.id)[:n]


@torch.no_grad()
def lm_loss(model, tokenizer, texts: list[str], max_tokens: int = 128, batch_size: int = 32
            ) -> float:
    """Mean next-token loss on `texts` (held-out pretraining text: the LM part of the tax):
    SFT's token-weighted evaluation loss with the whole text as the "response"."""
    from instructrl.stages.sft import eval_loss
    seqs = [([], tokenizer(t, add_special_tokens=False)["input_ids"][:max_tokens])
            for t in texts]
    return eval_loss(model, seqs, tokenizer.pad_token_id, batch_size,
                     next(model.parameters()).device)


@torch.no_grad()
def public_task_accuracy(model, tokenizer, items, batch_size: int = 32) -> float:
    """Greedy continuation of each few-shot item's raw text (no chat template: it is web
    text); correct when it starts with the answer."""
    device = next(model.parameters()).device
    model.eval()
    hits = []
    for chunk in batches(list(items), batch_size):
        ids, mask = pad_left([tokenizer(it.prompt, add_special_tokens=False)["input_ids"]
                              for it in chunk], tokenizer.pad_token_id)
        out, out_mask = sample(model, ids.to(device), mask.to(device), max_new_tokens=4,
                               temperature=0, eos_token_id=tokenizer.eos_token_id,
                               pad_token_id=tokenizer.pad_token_id)
        for it, row, m in zip(chunk, out, out_mask):
            text = tokenizer.decode(row[m.bool()].tolist(), skip_special_tokens=True).strip()
            hits.append(text.startswith(it.answer))
    return rate(hits)


def evaluate(cfg: RunConfig, run: RunDir, policies: dict[str, str | Path], rm_dir: str | Path,
             baseline: str = "sft", n_tax: int = 200) -> dict:
    from instructrl.sandbox.corpus import heldout_text, public_tasks
    from instructrl.sandbox.generate import Sandbox

    c = cfg.eval
    sb = Sandbox(cfg.sandbox)
    world = sb.world
    prompts = test_prompts(run, c.n_prompts)
    texts = [p.text for p in prompts]
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    rm = ScalarHeadModel.from_pretrained(rm_dir).to(device).eval()
    tax_text = heldout_text(world, n_tax, seed=c.seed)
    tax_items = public_tasks(world, n_tax, seed=c.seed)
    samples: dict[str, list[str]] = {}
    results: dict[str, dict] = {}
    for name, path in tqdm(list(policies.items()), desc="eval", unit="policy"):
        tok = load_tokenizer(path)
        model = load_causal_lm(path).to(device)
        samples[name] = sample_texts(model, tok, texts, max_prompt_tokens=c.max_prompt_tokens,
                                     max_new_tokens=c.max_new_tokens,
                                     temperature=c.temperature, seed=c.seed)
        scores = score_texts(rm, tok, texts, samples[name], max_prompt_tokens=c.max_prompt_tokens,
                             max_response_tokens=c.max_new_tokens)
        checks = [sb.check(p, r) for p, r in zip(prompts, samples[name])]
        likert, flags = [], []
        for p, r in zip(prompts, samples[name]):
            _, lk, fl = sb.heldout_rate(p, r, salt=name)
            likert.append(lk)
            flags.append(fl)
        results[name] = {
            "path": str(path),
            "rm_score": float(scores.mean()),
            "likert": sum(likert) / len(likert),
            "flags": {f: rate([f in fl for fl in flags])
                      for f in sorted({f for fl in flags for f in fl})},
            "checks": {k: rate([bool(getattr(ch, k)) for ch in checks]) for k in CHECKS},
            "response_words": sum(ch.n_words for ch in checks) / len(checks),
            "tax": {"heldout_lm_loss": lm_loss(model, tok, tax_text),
                    "public_task_accuracy": public_task_accuracy(model, tok, tax_items)},
        }
        del model
    # A second, independent SFT sample makes the baseline's own "win rate" an honest ~0.5.
    base_tok = load_tokenizer(policies[baseline])
    base_model = load_causal_lm(policies[baseline]).to(device)
    base_again = sample_texts(base_model, base_tok, texts, max_prompt_tokens=c.max_prompt_tokens,
                              max_new_tokens=c.max_new_tokens, temperature=c.temperature,
                              seed=c.seed + 1)
    for name in policies:
        ours = samples[name]
        theirs = samples[baseline] if name != baseline else base_again
        outcomes = [sb.heldout_judge(p, a, b, salt=f"win:{name}").score
                    for p, a, b in zip(prompts, ours, theirs)]
        m, lo, hi = mean_ci(outcomes)
        results[name]["win_rate"] = {"mean": m, "low": lo, "high": hi, "n": len(outcomes),
                                     "wins": outcomes.count(1.0), "ties": outcomes.count(0.5),
                                     "losses": outcomes.count(0.0)}
    return {"n_prompts": len(prompts), "baseline": baseline,
            "judges": [lab.id for lab in sb.heldout_labelers],
            "policies": results,
            "examples": [{"prompt": p.text, **{n: samples[n][i] for n in policies}}
                         for i, p in enumerate(prompts[:12])]}


def summary_table(results: dict) -> str:
    """The terminal summary: one row per policy."""
    head = (f"{'policy':<10} {'win vs SFT (95% CI)':<22} {'likert':>6} {'RM':>7} "
            f"{'correct':>7} {'truthful':>8} {'harmless':>8} {'LM loss':>7} {'tasks':>6}")
    lines = [head, "-" * len(head)]
    for name, r in results["policies"].items():
        w = r["win_rate"]
        ci = f"{w['mean']:.2f} [{w['low']:.2f}, {w['high']:.2f}]"
        lines.append(f"{name:<10} {ci:<22} {r['likert']:>6.2f} {r['rm_score']:>7.3f} "
                     f"{r['checks']['correct']:>7.2f} {r['checks']['truthful']:>8.2f} "
                     f"{r['checks']['harmless']:>8.2f} {r['tax']['heldout_lm_loss']:>7.3f} "
                     f"{r['tax']['public_task_accuracy']:>6.2f}")
    lines.append(f"({results['n_prompts']} held-out users' prompts; judges: held-out labelers "
                 f"{', '.join(results['judges'])}; 'tasks' = public NLP task accuracy)")
    return "\n".join(lines)
