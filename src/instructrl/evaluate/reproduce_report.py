"""RUN/reproduce.html: `instructrl reproduce`'s table with its plots, self-contained like
RUN/eval/report.html (whose plotting and page it reuses): the win rates behind the findings
rows and the over-optimisation curves (RM score and held-out-labeler win rate along PPO, with
and without the KL penalty). Figures come from the same sources as the table
(`findings.load_sources`, pooled over seeds)."""

from __future__ import annotations

import html
from pathlib import Path

from instructrl.data.jsonl import atomic_write_text
from instructrl.evaluate.findings import verdict
from instructrl.evaluate.report import COLORS, Plots, _table, page


def _wins(src: dict) -> tuple[list[str], list[dict]]:
    """(labels, win figures) of the win rates the table's rows rest on, where present."""
    labelers = src.get("results", {}).get("preference", {}).get("sandbox-labelers", {})
    found = []
    for label, sec, name in (("PPO-ptx vs SFT", labelers, "ppo-ptx"),
                             ("PPO vs SFT", labelers, "ppo"),
                             ("public-task SFT vs SFT", labelers, "sft-public"),
                             ("PPO-ptx vs SFT, held-out categories", labelers.get("ood", {}),
                              "ppo-ptx"),
                             ("PPO-ptx vs larger SFT",
                              labelers.get("vs", {}).get("sft-big", {}), "ppo-ptx")):
        fig = sec.get("policies", {}).get(name, {}).get("win_rate")
        if fig is not None:
            found.append((label, fig))
    return [f[0] for f in found], [f[1] for f in found]


def overoptimisation_plot(P: Plots, curves: dict) -> str:
    """RM score (left) and win rate vs SFT (right) against PPO iterations, one line per
    beta."""
    plt = P.plt
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(9, 3.2))
    for i, (key, t) in enumerate(sorted(curves.items())):
        pts = t["points"]
        its = [p["iteration"] for p in pts]
        color = COLORS[i % len(COLORS)]
        label = f"beta = {t['kl_coef']:g} ({t['stage']})"
        a1.plot(its, [p["eval_rm_score"] for p in pts], "o-", color=color, label=label)
        w = [p["win_rate"]["win_rate"] for p in pts]
        a2.errorbar(its, [x["mean"] for x in w],
                    yerr=[[x["mean"] - x["low"] for x in w], [x["high"] - x["mean"] for x in w]],
                    fmt="o-", color=color, capsize=3, label=label)
    a1.set_xlabel("PPO iteration", fontsize=8)
    a1.set_ylabel("RM score of test samples", fontsize=8)
    a2.set_xlabel("PPO iteration", fontsize=8)
    a2.set_ylabel("win rate vs SFT (held-out labelers)", fontsize=8)
    a2.axhline(0.5, color="k", lw=0.8, ls="--")
    a1.legend(fontsize=7)
    return P.save(fig, "overoptimisation", "The reward can be over-optimised: the run's RM "
                  "score and the held-out labelers' win rate against SFT along PPO, with the "
                  "KL penalty off and at the recipe's beta (95 % CIs).")


def write_page(root: Path, rows: list[dict], src: dict, footer: str) -> Path:
    P = Plots(root / "reproduce-plots")
    body = ["<h2>The paper's findings in the sandbox</h2>",
            _table([[f"{r['finding']} ({r['where']})", r["paper"], r["measured"],
                     verdict(r["reproduced"])] for r in rows],
                   ["finding (paper)", "paper's figure", "sandbox", "reproduced?"]),
            f"<p>{html.escape(footer)}</p>"]
    labels, figs = _wins(src)
    if figs:
        body.append(P.bars("findings_win_rates", "Win rates behind the table, judged by the "
                           "sandbox's held-out labelers on held-out users' prompts (95 % CI).",
                           labels, {"win rate": figs}, ylabel="win rate", ref=0.5,
                           ylim=(0, 1), width=8))
    curves = src.get("overoptimisation", {})
    if curves and all(t.get("points") for t in curves.values()):
        body.append(overoptimisation_plot(P, curves))
    path = root / "reproduce.html"
    atomic_write_text(path, page(f"instructrl reproduce: {root.name}", body))
    return path
