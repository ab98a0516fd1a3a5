"""Evaluation (paper section 4) as a set of judges and benchmarks over a run (DESIGN.md
section 6), each figure naming its judge:

- `suite`: `instructrl eval`: which judges apply to a run, every policy through every
  benchmark, results.json; `cli`: the command (--to-label, --from-label, --compare);
- preference (section 4.1): `sandbox_eval` (the sandbox's held-out simulated labelers and
  program checks, sandbox runs only), `preference` (a held-out reward model), `people` (the
  labeling app's held-out labelers, blind pairwise comparisons);
- section 4.2: `truthfulqa`, `toxicity` (RealToxicityPrompts, pluggable scorers), `bias`
  (CrowS-Pairs, Winogender), `lm_tax` (lm-eval tasks, held-out LM loss: the alignment tax);
- `lm` (shared-prefix likelihoods and generation), `data` (local files or hub ids),
  `judges`, `stats`, `report` (self-contained HTML with plots);
- `instructrl reproduce`'s (sandbox runs): `agreement` (the RM on held-out labelers next to
  inter-labeler agreement), `overoptimisation` (RM score and win rate along PPO),
  `findings` (the paper's findings next to the sandbox's, from the results files).
"""
