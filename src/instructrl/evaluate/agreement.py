"""How well the reward model predicts people it never trained on, next to how well people
predict each other (paper section 4.1 and App. E.2). Sandbox runs only: it needs the
sandbox's labelers to rank the run's responses again.

- `labeler_agreement`: inter-labeler agreement on the very responses of a run's rankings:
  training vs training labelers (each training ranking's K responses ranked again by a
  second training labeler), held-out vs training labelers (collect has held-out labelers
  rank a share of the valid-split samples the training labelers ranked too), and each
  held-out labeler against its own noise-free utility (a ceiling no model of that labeler
  can beat on average). Agreement counts the pairs both rankings order strictly.
- `rm_generalisation`: the RM's pairwise accuracy on the held-out labelers' rankings
  (RUN/<rm>/eval.json, written by `stages/reward.py`: pairs the labeler ordered strictly)
  beside the held-out vs training agreement (what the paper compares it with), and the gap
  between them in points.

The paper: training labelers agree with each other on 72.6 +- 1.5 % of pairs (held-out
labelers among themselves 77.3 +- 1.3 %), and its RMs predict held-out labelers' pairs at
69.6 +- 0.9 % (72.4 +- 0.4 % on their training labelers'): about 3 points under the
agreement. The agreement is no hard ceiling: an RM averages its labelers' noise away, so it
can predict a labeler better than a single other labeler does.

The agreement is counted on the run's rankings as they are now; an RM of an earlier round
was evaluated on the rankings of its time. Pairs of one ranking are not independent: the
interval on the RM's accuracy takes rankings as the draws (`stats.clustered_ratio_ci`); an
RM evaluated before per-ranking counts were kept gets the narrower interval with pairs as
draws, and says so ("ci_draws").
"""

from __future__ import annotations

import json
from collections import defaultdict

from instructrl.errors import InputError
from instructrl.evaluate.stats import clustered_ratio_ci, mean_ci


def rate(agree: int, total: int) -> float | None:
    return agree / total if total else None


def labeler_agreement(cfg, run) -> dict:
    """Inter-labeler agreement on the very responses of RUN's rankings (see module doc):
    {"train_vs_train", "heldout_vs_train", "heldout_vs_own_utility": (rate or None, pairs),
    "heldout_items": held-out rankings counted}."""
    from instructrl.data.records import Ranking
    from instructrl.sandbox.generate import Sandbox
    from instructrl.sandbox.labelers import pairwise_agreement
    from instructrl.sandbox.world import stable_hash

    sb = Sandbox(cfg.sandbox)
    prompts = run.prompts_by_id()
    held_ids = {lab.id for lab in sb.heldout_labelers}
    by_item: dict[tuple, dict[str, list[Ranking]]] = defaultdict(lambda: defaultdict(list))
    for r in run.rankings():
        if r.skipped is None:
            key = (r.prompt_id, tuple(x.text for x in r.responses))
            by_item[key]["held" if r.labeler_id in held_ids else "train"].append(r)
    tt, ht, hh_self = [0, 0], [0, 0], [0, 0]
    items = 0
    for (pid, _), groups in by_item.items():
        p = prompts[pid]
        for r in groups["train"]:
            # A second training labeler ranks the same K responses.
            others = [lab for lab in sb.train_labelers if lab.id != r.labeler_id]
            lab = others[stable_hash('second', pid, r.labeler_id) % len(others)] \
                if others else None
            if lab is not None:
                r2 = lab.rank(p, r.responses, salt="bench-second-opinion")
                if r2.skipped is None:
                    a, n = pairwise_agreement(r, r2)
                    tt[0], tt[1] = tt[0] + a, tt[1] + n
            for h in groups["held"]:
                a, n = pairwise_agreement(h, r)
                ht[0], ht[1] = ht[0] + a, ht[1] + n
        for h in groups["held"]:
            items += 1
            lab = sb.labeler(h.labeler_id)
            u = [lab.utility(sb.check(p, x.text)) for x in h.responses]
            # Equal utilities form one group (a tie), so they are not counted.
            levels = sorted(set(u), reverse=True)
            noise_free = Ranking(h.prompt_id, "oracle", h.responses,
                                 [[i for i in range(len(u)) if u[i] == v] for v in levels])
            a, n = pairwise_agreement(h, noise_free)
            hh_self[0], hh_self[1] = hh_self[0] + a, hh_self[1] + n
    return {"train_vs_train": (rate(*tt), tt[1]), "heldout_vs_train": (rate(*ht), ht[1]),
            "heldout_vs_own_utility": (rate(*hh_self), hh_self[1]),
            "heldout_items": items}


def rm_generalisation(cfg, run, rm_stage: str = "rm") -> dict:
    """The RM of RUN/<rm_stage> on held-out labelers vs the inter-labeler agreement:
    {"rm", "rm_heldout_accuracy", "rm_heldout_pairs", "agreement" (held-out vs training
    labelers), "agreement_pairs", "train_vs_train", "gap_points" (100 * (agreement - RM
    accuracy)), "ci" (95 % interval on the RM accuracy), "ci_draws" (rankings or pairs)}.
    InputError when the run has no held-out labelers' rankings to measure either on."""
    path = run.stage(rm_stage) / "eval.json"
    if not path.exists():
        raise InputError(f"no evaluation of reward model {rm_stage!r}: train it first "
                         f"(`instructrl rm --out {run.root}`)", path=str(path))
    held = (json.loads(path.read_text()).get("heldout_labelers") or {}).get("all")
    if not held or not held.get("pairs"):
        raise InputError("no pairs of held-out labelers' rankings: the RM was evaluated on "
                         "none (sandbox runs only, with collect.heldout_share > 0)",
                         path=str(path), field="heldout_labelers")
    agree = labeler_agreement(cfg, run)
    ceiling, n_agree = agree["heldout_vs_train"]
    if not n_agree:
        raise InputError("no response set ranked by both a held-out and a training sandbox "
                         "labeler, so no inter-labeler agreement to compare the RM with "
                         "(sandbox runs only, with collect.heldout_share > 0)",
                         path=str(run.data / "rankings.jsonl"))
    acc, n = float(held["accuracy"]), int(held["pairs"])
    if held.get("rankings"):
        ci, draws = clustered_ratio_ci(held["rankings"]), "rankings"
    else:
        right = round(acc * n)
        ci, draws = list(mean_ci([1.0] * right + [0.0] * (n - right))[1:]), "pairs"
    return {"rm": rm_stage, "rm_heldout_accuracy": acc, "rm_heldout_pairs": n,
            "agreement": ceiling, "agreement_pairs": n_agree,
            "train_vs_train": agree["train_vs_train"][0],
            "gap_points": 100 * (ceiling - acc), "ci": ci, "ci_draws": draws}


def generalisation_line(g: dict, scale: str = "this run's") -> str:
    """One plain sentence on `rm_generalisation`'s figures and what they mean at `scale`."""
    gap = g["gap_points"]
    head = (f"reward model {g['rm']}: {100 * g['rm_heldout_accuracy']:.1f} % on held-out "
            f"labelers (95 % CI {100 * g['ci'][0]:.1f}-{100 * g['ci'][1]:.1f}, "
            f"{g['rm_heldout_pairs']} pairs) vs {100 * g['agreement']:.1f} % inter-labeler "
            f"agreement")
    if gap > 5:
        return (f"{head} (gap {gap:.1f} points): at {scale} scale the RM, not PPO, limits what "
                f"RLHF can show")
    if gap >= -5:
        return (f"{head} (gap {gap:.1f} points, within 5): the RM predicts people it never "
                f"trained on about as well as they agree, as in the paper (69.6 vs 72.6 %)")
    return (f"{head}: the RM is {-gap:.1f} points above it, predicting these labelers better "
            f"than a single other labeler does (it averages its labelers' noise away)")
