"""The HTML report: summary table, win rates with CIs, PPO curves, RM accuracy, SFT epoch
selection, and example responses. Plots are PNG files under eval/plots/."""

from __future__ import annotations

import html
import json
from pathlib import Path

from instructrl.data.jsonl import atomic_write_text
from instructrl.rundir import RunDir
from instructrl.stages.common import read_metrics


def _plots(run: RunDir, results: dict, out: Path) -> list[str]:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out.mkdir(parents=True, exist_ok=True)
    made = []
    names = list(results["policies"])
    w = [results["policies"][n]["win_rate"] for n in names]
    fig, ax = plt.subplots(figsize=(5, 3))
    ax.bar(names, [x["mean"] for x in w],
           yerr=[[x["mean"] - x["low"] for x in w], [x["high"] - x["mean"] for x in w]],
           capsize=4, color=["#999", "#4a7", "#47a", "#a74"][:len(names)])
    ax.axhline(0.5, color="k", lw=0.8, ls="--")
    ax.set_ylim(0, 1)
    ax.set_ylabel("win rate vs SFT (held-out labelers)")
    fig.tight_layout()
    fig.savefig(out / "win_rate.png", dpi=100)
    plt.close(fig)
    made.append("win_rate.png")
    stages = sorted(p.name for p in run.root.iterdir()
                    if p.name.startswith("ppo") and (p / "metrics.jsonl").exists())
    if stages:
        fig, axes = plt.subplots(1, 2, figsize=(9, 3))
        for stage in stages:
            rows = read_metrics(run.stage(stage) / "metrics.jsonl")
            x = [r["iteration"] for r in rows]
            axes[0].plot(x, [r["objective/scores"] for r in rows], label=stage)
            axes[1].plot(x, [r["objective/kl"] for r in rows], label=stage)
        axes[0].set_title("objective/scores (RM)")
        axes[1].set_title("objective/kl (vs SFT)")
        for a in axes:
            a.set_xlabel("iteration")
            a.legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(out / "ppo_curves.png", dpi=100)
        plt.close(fig)
        made.append("ppo_curves.png")
    return made


def _table(rows: list[list], head: list[str]) -> str:
    th = "".join(f"<th>{html.escape(str(h))}</th>" for h in head)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in r) + "</tr>"
                   for r in rows)
    return f"<table><tr>{th}</tr>{body}</table>"


def write_report(run: RunDir, results: dict, timings: str = "") -> Path:
    out = run.stage("eval")
    atomic_write_text(out / "results.json", json.dumps(results, indent=1) + "\n")
    plots = _plots(run, results, out / "plots")
    pol = results["policies"]
    summary = _table(
        [[n, f"{r['win_rate']['mean']:.3f} [{r['win_rate']['low']:.3f}, "
             f"{r['win_rate']['high']:.3f}]", f"{r['likert']:.2f}", f"{r['rm_score']:.3f}",
          *(f"{r['checks'][k]:.2f}" for k in ("correct", "follows_instruction", "truthful",
                                              "repeats_falsehood", "harmless")),
          f"{r['tax']['heldout_lm_loss']:.3f}", f"{r['tax']['public_task_accuracy']:.2f}"]
         for n, r in pol.items()],
        ["policy", "win rate vs SFT [95% CI]", "Likert", "RM score", "correct",
         "follows instr.", "truthful", "repeats falsehood", "harmless",
         "held-out LM loss", "public tasks acc."])
    flags = sorted({f for r in pol.values() for f in r["flags"]})
    flag_table = _table([[n] + [f"{r['flags'].get(f, 0.0):.2f}" for f in flags]
                         for n, r in pol.items()], ["policy"] + flags)
    sections = [f"<h2>Summary</h2><p>{results['n_prompts']} prompts from held-out users "
                f"(test split), judged by held-out labelers {', '.join(results['judges'])}; "
                f"ties count half.</p>{summary}",
                f"<h2>Metadata flags (rate)</h2>{flag_table}"]
    sections += [f'<img src="plots/{p}">' for p in plots]
    for stage in sorted(p.name for p in run.root.iterdir() if p.name.startswith("rm")):
        ev = run.stage(stage) / "eval.json"
        if ev.exists():
            e = json.loads(ev.read_text())
            rows = [[split, k, f"{v['accuracy']:.3f}", v["pairs"]]
                    for split in ("valid", "heldout_labelers") for k, v in e[split].items()]
            sections.append(f"<h2>Reward model {stage}: pairwise accuracy</h2>"
                            + _table(rows, ["rankings", "category", "accuracy", "pairs"]))
    sel = run.stage("sft") / "selection.json"
    if sel.exists():
        s = json.loads(sel.read_text())
        head = list(s["table"][0]) if s["table"] else []
        sections.append(f"<h2>SFT epoch selection</h2><p>selected epoch {s['epoch']} by "
                        f"{html.escape(s['selected_by'])}</p>"
                        + _table([[r[h] for h in head] for r in s["table"]], head))
    names = list(pol)
    sections.append("<h2>Examples</h2>" + _table(
        [[e["prompt"]] + [e[n] for n in names] for e in results["examples"]],
        ["prompt"] + names))
    if timings:
        sections.append(f"<h2>Wall time</h2><pre>{html.escape(timings)}</pre>")
    page = ("<!doctype html><html><head><meta charset='utf-8'><title>instructrl report</title>"
            "<style>body{font-family:sans-serif;max-width:1100px;margin:2em auto}"
            "table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;"
            "padding:3px 6px;font-size:13px;vertical-align:top}</style></head><body>"
            f"<h1>instructrl report: {html.escape(run.root.name)}</h1>"
            + "\n".join(sections) + "</body></html>")
    path = out / "report.html"
    atomic_write_text(path, page)
    return path
