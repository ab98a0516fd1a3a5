"""The sandbox's own judges, for sandbox runs only (a run whose prompts are the sandbox world's):

- win rate against the baseline (SFT), judged by the sandbox's HELD-OUT simulated labelers
  (never in training data) on prompts of HELD-OUT users (the test split), ties counted half,
  with a 95 % CI, overall and per category (paper section 4.1);
- Likert 1-7 and the metadata flags (fails to follow the instruction, hallucination,
  inappropriate, ...) from those labelers (section 4.1, Fig. 4);
- program checks: correct, follows the instruction and its constraints, truthful, repeats a
  popular falsehood, harmless (the sandbox's stand-ins for sections 4.2's benchmarks);
- the alignment tax in the sandbox: accuracy on the corpus's own "public NLP tasks" (few-shot
  QA and sentiment written as web text) never seen in training, and the LM loss on held-out
  corpus text (`lm_tax.lm_loss`);
- instructions added to the prompt (`instructed`, `sandbox/instructions.py`): truthfulness
  with and without an instruction to say only what is true (section 4.2, Fig. 6), toxicity
  with and without an instruction to be nice (Fig. 7); the checks per prompt category
  (`check`'s "by_category") give closed-domain hallucination (closed QA, summarization: Fig. 4).

On any other run these judges know nothing of the prompts (their checks and preferences are
the sandbox world's), so `is_sandbox_run` decides whether they may run at all.
"""

from __future__ import annotations

import torch

from instructrl.data.records import Prompt
from instructrl.evaluate.judges import judge
from instructrl.evaluate.lm import each_batch, eval_samples
from instructrl.evaluate.lm_tax import lm_loss  # noqa: F401  (the sandbox tax's LM loss)
from instructrl.evaluate.preference import win_section
from instructrl.evaluate.stats import figure, rate
from instructrl.rollout import pad_left, sample
from instructrl.rundir import RunDir
from instructrl.stages.common import batches

CHECKS = ("correct", "follows_instruction", "constraints_ok", "truthful", "hallucination",
          "repeats_falsehood", "harmless")


def test_prompts(run: RunDir, n: int, split: str = "test") -> list[Prompt]:
    """Held-out users' prompts with a clear intent (labelers skip the rest); split "ood":
    the prompts of categories and styles held out of training."""
    prompts = [p for p in run.prompts(split) if not p.meta.get("unclear")]
    return sorted(prompts, key=lambda p: p.id)[:n]


def is_sandbox_run(cfg, run: RunDir) -> tuple[bool, str]:
    """(True, "") when every test prompt of the run is a prompt of the sandbox world of
    `cfg.sandbox` (same id, user, text and task spec), else (False, why). Its judges and checks
    are only meaningful on the prompts its world wrote."""
    from instructrl.sandbox.generate import Sandbox
    from instructrl.sandbox.tasks import write_prompts

    prompts = run.prompts("test")
    if not prompts:
        return False, "the run has no test-split prompts"
    foreign = [p for p in prompts if "task" not in p.meta]
    if foreign:
        return False, (f"{len(foreign)} of its {len(prompts)} test prompts were not written by "
                       f"the sandbox (e.g. {foreign[0].id!r}: {foreign[0].text[:50]!r})")
    c = cfg.sandbox
    world = {p.id: p for p in write_prompts(Sandbox(c).world, c.n_prompts, c.n_users,
                                            seed=c.seed)}
    differ = [p for p in prompts if p.id not in world or
              (world[p.id].user_id, world[p.id].text, world[p.id].meta)
              != (p.user_id, p.text, p.meta)]
    if differ:
        return False, (f"{len(differ)} test prompts are not those of the sandbox world of "
                       f"sandbox.seed={c.seed} (e.g. {differ[0].id!r}); evaluate with the "
                       f"run's own config.yaml")
    return True, ""


@torch.no_grad()
def public_task_accuracy(model, tokenizer, items, batch_size: int = 32) -> float:
    """Greedy continuation of each few-shot item's raw text (no chat template: it is web
    text); correct when it starts with the answer."""
    device = next(model.parameters()).device
    model.eval()

    def hits(chunk) -> list[bool]:
        ids, mask = pad_left([tokenizer(it.prompt, add_special_tokens=False)["input_ids"]
                              for it in chunk], tokenizer.pad_token_id)
        out, out_mask = sample(model, ids.to(device), mask.to(device), max_new_tokens=4,
                               temperature=0, eos_token_id=tokenizer.eos_token_id,
                               pad_token_id=tokenizer.pad_token_id)
        return [tokenizer.decode(row[m.bool()].tolist(), skip_special_tokens=True).strip()
                .startswith(it.answer) for it, row, m in zip(chunk, out, out_mask)]

    return rate([h for got in each_batch(hits, batches(list(items), batch_size)) for h in got])


def _rates(checks: list) -> dict[str, float]:
    return {k: rate([bool(getattr(ch, k)) for ch in checks]) for k in CHECKS}


class SandboxJudges:
    """The sandbox world's held-out labelers, checkers and tax items for one config."""

    def __init__(self, cfg, n_tax: int = 200):
        from instructrl.sandbox.corpus import heldout_text, public_tasks
        from instructrl.sandbox.generate import Sandbox
        from instructrl.sandbox.instructions import RESPECTFUL, TRUTHFUL

        self.sb = Sandbox(cfg.sandbox)
        self.eval = cfg.eval
        self.tax_text = heldout_text(self.sb.world, n_tax, seed=cfg.eval.seed)
        self.tax_items = public_tasks(self.sb.world, n_tax, seed=cfg.eval.seed)
        ids = ", ".join(lab.id for lab in self.sb.heldout_labelers)
        self.labelers = judge("sandbox-labelers", "simulated-labelers",
                              f"the sandbox's held-out simulated labelers {ids}",
                              labelers=[lab.id for lab in self.sb.heldout_labelers])
        self.checks = judge("sandbox-checks", "program-checks",
                            "the sandbox's program checks against its world's facts and the "
                            "prompt's task spec")
        self.instructions = judge(
            "sandbox-instructions", "program-checks",
            "the sandbox's program checks of responses to its prompts without and with an "
            f"instruction before them: truthful and informative on open-QA prompts (with "
            f"{TRUTHFUL!r}), toxicity by share of sentences with a toxic word on harmful "
            f"prompts (with {RESPECTFUL!r})")

    def rate(self, name: str, prompts: list[Prompt], responses: list[str]) -> dict:
        """Likert and flags by held-out labelers (salted by policy, as before)."""
        likert, flags = [], []
        for p, r in zip(prompts, responses):
            _, lk, fl = self.sb.heldout_rate(p, r, salt=name)
            likert.append(lk)
            flags.append(fl)
        return {"likert": figure(likert),
                "flags": {f: rate([f in fl for fl in flags])
                          for f in sorted({f for fl in flags for f in fl})}}

    def check(self, prompts: list[Prompt], responses: list[str]) -> dict:
        """Share of responses passing each check, overall and per prompt category
        ("by_category": {category: {check: rate, ..., "n": responses}}; closed_qa's and
        summarization's "hallucination" is the paper's closed-domain hallucination, Fig. 4)."""
        checks = [self.sb.check(p, r) for p, r in zip(prompts, responses)]
        cats: dict[str, list] = {}
        for p, ch in zip(prompts, checks):
            cats.setdefault(p.category, []).append(ch)
        return {"checks": _rates(checks),
                "response_words": sum(ch.n_words for ch in checks) / max(len(checks), 1),
                "by_category": {c: {**_rates(chs), "n": len(chs)}
                                for c, chs in sorted(cats.items())}}

    def tax(self, model, tokenizer) -> dict:
        return {"heldout_lm_loss": lm_loss(model, tokenizer, self.tax_text),
                "public_task_accuracy": public_task_accuracy(model, tokenizer, self.tax_items)}

    def instructed(self, model, tokenizer, prompts: list[Prompt], name: str = "") -> dict:
        """The sandbox's Fig. 6 and Fig. 7 for one policy: responses to the same prompts
        without and with an instruction before them (`sandbox/instructions.py`).

        truthfulness: the open-QA prompts (a question with a checkable true answer), one
        sample each, plain and after `instructions.TRUTHFUL`: shares truthful, informative,
        both. toxicity: the "harmful" prompts, `eval.n_samples` samples each, plain and after
        `instructions.RESPECTFUL`: expected maximum toxicity and toxic rate by
        `instructions.toxicity`. A prompt that would not fit the sandbox's limits with its
        instruction is left out of both conditions. Sampled as the suite samples
        (`lm.eval_samples`, eval's seed); both conditions use the same per-batch seeds."""
        from instructrl.sandbox import instructions as I

        c = self.eval
        world = self.sb.world

        def draw(texts: list[str], what: str) -> list[str]:
            return eval_samples(model, tokenizer, texts, c, seed=c.seed,
                                desc=f"{name} {what}" if name else None)

        qa = I.fitting([p for p in prompts if p.meta.get("task") == "qa"], I.TRUTHFUL,
                       tokenizer, c.max_prompt_tokens)
        truth = {"n_prompts": len(qa)}
        for cond, texts in (("plain", [p.text for p in qa]),
                            ("instructed", [I.with_instruction(I.TRUTHFUL, p.text)
                                            for p in qa])):
            truth[cond] = I.truthfulness(world, qa, draw(texts, f"truthfulness {cond}"))

        harm = I.fitting([p for p in prompts if p.meta.get("task") == "harmful"],
                         I.RESPECTFUL, tokenizer, c.max_prompt_tokens)
        k = c.n_samples
        tox = {"n_prompts": len(harm), "n_samples": k}
        for cond, texts in (("plain", [p.text for p in harm]),
                            ("respectful", [I.with_instruction(I.RESPECTFUL, p.text)
                                            for p in harm])):
            got = draw([t for t in texts for _ in range(k)], f"toxicity {cond}")
            scores = [[I.toxicity(r) for r in got[i * k:(i + 1) * k]] for i in range(len(harm))]
            tox[cond] = I.toxicity_figures(scores)
        return {"truthfulness": truth, "toxicity": tox}

    def win(self, prompts: list[Prompt], samples: dict[str, list[str]], baseline: str,
            again: list[str]) -> dict[str, dict]:
        """Per policy: win section against the baseline's samples (its own: a second sample)."""
        out = {}
        for name, ours in samples.items():
            theirs = samples[baseline] if name != baseline else again
            outcomes = [self.sb.heldout_judge(p, a, b, salt=f"win:{name}").score
                        for p, a, b in zip(prompts, ours, theirs)]
            out[name] = win_section(prompts, outcomes)
        return out
