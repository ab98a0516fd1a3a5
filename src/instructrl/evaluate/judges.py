"""Who or what produced a figure. Every section of results.json carries one of these, the report
prints it beside every table and plot, and figures of different judges are never pooled.

Kinds (DESIGN.md section 6: evaluation is a set of judges over a run):
- `people`: labelers of the labeling app's held-out pool, judging blind (paper section 4.1);
- `simulated-labelers`: the sandbox's held-out labelers (sandbox runs only);
- `program-checks`: the sandbox's checkers (correct, truthful, harmless, ...; sandbox only);
- `heldout-rm`: a reward model trained on preference data the run's RM never saw;
- `run-rm`: the run's own reward model (what PPO optimised): shown for reference, never a
  judge of preference;
- `classifier`: a toxicity classifier (alt-profanity-check, Detoxify, Perspective);
- `automatic-metric`: BLEU / ROUGE against reference answers (TruthfulQA's automatic metrics);
- `likelihood`: the policy's own log-probabilities (MC1/MC2, CrowS-Pairs, Winogender, LM loss);
- `lm-eval`: an lm-evaluation-harness task, scored by its own metric.
"""

from __future__ import annotations

KINDS = ("people", "simulated-labelers", "program-checks", "heldout-rm", "run-rm", "classifier",
         "automatic-metric", "likelihood", "lm-eval")


def judge(id: str, kind: str, what: str, **detail) -> dict:
    """{"id", "kind", "what", ...}: `id` names the judge in results.json and the report,
    `what` says in words who or what judged."""
    if kind not in KINDS:
        raise ValueError(f"unknown judge kind {kind!r}")
    return {"id": id, "kind": kind, "what": what, **detail}


def label(j: dict) -> str:
    """'what (kind)' for a table caption or a plot title."""
    return f"{j['what']} [{j['kind']}]"
