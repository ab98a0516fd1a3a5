"""The report: one self-contained HTML page per run (plots embedded as base64 PNG, so the file
can be mailed or opened anywhere), and the terminal summary.

Order: which judges ran and which were skipped; a summary table; then a section per benchmark
with its plots (win rates with CIs per policy and per category, Likert and flags, TruthfulQA,
toxicity with and without the instruction, bias, alignment-tax deltas), each captioned with
its judge; PPO curves, RM accuracy and SFT epoch selection from the run; sample responses
side by side. `compare_page` puts two runs side by side. Plots also go to eval/plots/.
"""

from __future__ import annotations

import base64
import html
import io
import json
import math
from pathlib import Path

from instructrl.data.jsonl import atomic_write_text
from instructrl.evaluate.agreement import generalisation_line
from instructrl.evaluate.judges import label
from instructrl.rundir import RunDir

COLORS = ["#888", "#4a7", "#47a", "#a74", "#a4a", "#7aa", "#aa4", "#555"]


# ------------------------------------------------------------------ formatting
def fmt(x, digits: int = 2) -> str:
    if isinstance(x, dict):
        m, lo, hi = x.get("mean"), x.get("low"), x.get("high")
        if m is None:
            return "-"
        if lo is None or hi is None or any(map(_nan, (lo, hi))):
            return f"{m:.{digits}f}"
        return f"{m:.{digits}f} [{lo:.{digits}f}, {hi:.{digits}f}]"
    if x is None:
        return "-"
    if isinstance(x, float):
        return "nan" if _nan(x) else f"{x:.{digits}f}"
    return str(x)


def _nan(x) -> bool:
    return isinstance(x, float) and math.isnan(x)


def _table(rows: list[list], head: list[str], cls: str = "") -> str:
    th = "".join(f"<th>{html.escape(str(h))}</th>" for h in head)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in r) + "</tr>"
                   for r in rows)
    return f"<table class='{cls}'><tr>{th}</tr>{body}</table>"


def _text_table(rows: list[list], head: list[str]) -> str:
    cells = [[str(h) for h in head]] + [[str(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(head))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in cells]
    lines.insert(1, "-" * len(lines[0]))
    return "\n".join(lines)


# ------------------------------------------------------------------ plots
class Plots:
    """Figures rendered to PNG, kept as base64 for the page and as files in `out`."""

    def __init__(self, out: Path | None):
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        self.plt, self.out, self.made = plt, out, []
        if out is not None:
            out.mkdir(parents=True, exist_ok=True)

    def save(self, fig, name: str, caption: str) -> str:
        buf = io.BytesIO()
        fig.tight_layout()
        fig.savefig(buf, format="png", dpi=90)
        self.plt.close(fig)
        data = buf.getvalue()
        if self.out is not None:  # a copy beside the page, written atomically like it
            tmp = self.out / f".{name}.png.tmp"
            tmp.write_bytes(data)
            tmp.replace(self.out / f"{name}.png")
        self.made.append(name)
        b64 = base64.b64encode(data).decode()
        return (f"<figure class='plot' data-plot='{html.escape(name)}'>"
                f"<img alt='{html.escape(name)}' src='data:image/png;base64,{b64}'>"
                f"<figcaption>{html.escape(caption)}</figcaption></figure>")

    def bars(self, name: str, caption: str, groups: list[str], series: dict[str, list],
             *, ylabel: str, ref: float | None = None, ylim=None, width: float = 6.0) -> str:
        """Grouped bars: `groups` on the x axis, one bar per series (a policy), each value a
        figure dict (CI whiskers) or a number."""
        plt = self.plt
        fig, ax = plt.subplots(figsize=(max(width, 0.6 * len(groups) * max(1, len(series))),
                                        3.2))
        k = max(1, len(series))
        w = 0.8 / k
        for i, (sname, vals) in enumerate(series.items()):
            xs = [g + (i - (k - 1) / 2) * w for g in range(len(groups))]
            means = [_mean(v) for v in vals]
            lo = [_mean(v) - v["low"] if _has_ci(v) else 0 for v in vals]
            hi = [v["high"] - _mean(v) if _has_ci(v) else 0 for v in vals]
            ax.bar(xs, means, w, yerr=[lo, hi], capsize=3, label=sname,
                   color=COLORS[i % len(COLORS)])
        ax.set_xticks(range(len(groups)))
        ax.set_xticklabels(groups, rotation=20 if len(groups) > 4 else 0, ha="right"
                           if len(groups) > 4 else "center", fontsize=8)
        if ref is not None:
            ax.axhline(ref, color="k", lw=0.8, ls="--")
        if ylim is not None:
            ax.set_ylim(*ylim)
        ax.set_ylabel(ylabel, fontsize=8)
        if len(series) > 1:
            ax.legend(fontsize=7)
        return self.save(fig, name, caption)


def _mean(v) -> float:
    x = v["mean"] if isinstance(v, dict) else v
    return 0.0 if x is None or _nan(x) else float(x)


def _has_ci(v) -> bool:
    return isinstance(v, dict) and all(isinstance(v.get(k), (int, float)) and not _nan(v[k])
                                       for k in ("low", "high"))


# ------------------------------------------------------------------ sections
def preference_sections(res: dict, P: Plots, prefix: str = "") -> list[str]:
    out = []
    base = res["baseline"]
    for jid, sec in res.get("preference", {}).items():
        pol = sec["policies"]
        names = list(pol)
        cap = f"judge: {label(sec['judge'])}; {sec.get('n_prompts', '?')} prompts of held-out users"
        rows = [[n, fmt(r["win_rate"], 3), r["win_rate"].get("n", ""),
                 fmt(r.get("likert")) if r.get("likert") else "-",
                 fmt(r.get("score"), 3) if r.get("score") else "-"] for n, r in pol.items()]
        parts = [f"<h3>{html.escape(jid)}</h3><p class='judge'>{html.escape(cap)}</p>",
                 _table(rows, ["policy", f"win rate vs {base} [95% CI]", "n", "Likert 1-7",
                               "mean score"])]
        parts.append(P.bars(f"{prefix}win_rate_{jid}", f"Win rate against {base}, ties half "
                            f"(95% CI). {cap}", names, {"win rate": [pol[n]["win_rate"]
                                                                     for n in names]},
                            ylabel=f"win rate vs {base}", ref=0.5, ylim=(0, 1)))
        cats = sorted({c for r in pol.values() for c in r.get("by_category", {})})
        if cats:
            parts.append(P.bars(
                f"{prefix}win_by_category_{jid}", f"Win rate against {base} per prompt "
                f"category (95% CI). {cap}", cats,
                {n: [pol[n]["by_category"].get(c, {"mean": float("nan")}) for c in cats]
                 for n in names}, ylabel="win rate", ref=0.5, ylim=(0, 1)))
        if all(r.get("likert") for r in pol.values()):
            parts.append(P.bars(f"{prefix}likert_{jid}", f"Likert score 1-7 (95% CI). {cap}",
                                names, {"Likert": [pol[n]["likert"] for n in names]},
                                ylabel="Likert 1-7", ylim=(1, 7)))
        flags = sorted({f for r in pol.values() for f in r.get("flags", {})})
        if flags:
            parts.append(_table([[n] + [fmt(pol[n]["flags"].get(f, 0.0)) for f in flags]
                                 for n in names], ["policy"] + flags))
            parts.append(P.bars(f"{prefix}flags_{jid}", f"Metadata flags, share of responses. "
                                f"{cap}", flags, {n: [pol[n]["flags"].get(f, 0.0)
                                                      for f in flags] for n in names},
                                ylabel="rate", ylim=(0, 1)))
        out.append("".join(parts))
    return out


def sandbox_section(res: dict, P: Plots) -> str:
    sec = res["sandbox"]
    pol = sec["policies"]
    names = list(pol)
    keys = list(next(iter(pol.values()))["checks"])
    cap = f"judge: {label(sec['judge'])}; {sec['n_prompts']} prompts"
    rows = [[n] + [fmt(pol[n]["checks"][k]) for k in keys] + [fmt(pol[n]["response_words"], 1)]
            for n in names]
    parts = [f"<p class='judge'>{html.escape(cap)}</p>",
             _table(rows, ["policy"] + keys + ["words"]),
             P.bars("sandbox_checks", f"Program checks, share of responses. {cap}", keys,
                    {n: [pol[n]["checks"][k] for k in keys] for n in names}, ylabel="rate",
                    ylim=(0, 1))]
    if "run_rm" in sec:
        parts.append(f"<p class='judge'>{html.escape(label(sec['run_rm']['judge']))}: mean "
                     f"score " + ", ".join(f"{n} {fmt(v, 3)}" for n, v in
                                           sec["run_rm"]["policies"].items()) + "</p>")
    return "".join(parts)


def sandbox_instructions_section(res: dict) -> str:
    """The sandbox's Fig. 6 and Fig. 7 (prompts without and with an instruction) and its
    closed-domain hallucination (Fig. 4: the hallucination check on closed QA and
    summarization prompts, from the checks per category)."""
    sec = res["sandbox_instructions"]
    tr, tx = sec["truthfulness"], sec["toxicity"]
    parts = [f"<p class='judge'>judge: {html.escape(label(sec['judge']))}</p>",
             f"<p>Truthfulness on {tr['n_prompts']} open-QA prompts, plain and with "
             f"&quot;{html.escape(tr['instruction'])}&quot; before them:</p>",
             _table([[n] + [fmt(r[c][k]) for c in ("plain", "instructed")
                            for k in ("truthful", "informative", "truthful_informative")]
                     for n, r in tr["policies"].items()],
                    ["policy"] + [f"{c}: {k.replace('_', ' and ')}" for c in
                                  ("plain", "instructed")
                                  for k in ("truthful", "informative", "truthful_informative")]),
             f"<p>Toxicity on {tx['n_prompts']} harmful prompts x {tx['n_samples']} samples, "
             f"plain and with &quot;{html.escape(tx['instruction'])}&quot; before them:</p>",
             _table([[n] + [fmt(r[c][k]) for c in ("plain", "respectful")
                            for k in ("expected_max_toxicity", "toxic_rate")]
                     for n, r in tx["policies"].items()],
                    ["policy", "plain: exp. max toxicity", "plain: toxic rate",
                     "respectful: exp. max toxicity", "respectful: toxic rate"])]
    by_cat = {n: r.get("by_category", {}) for n, r in res["sandbox"]["policies"].items()}
    cats = [c for c in ("closed_qa", "summarization") if any(c in b for b in by_cat.values())]
    if cats:
        parts.append("<p>Closed-domain hallucination (share of responses that make up "
                     "something the given text does not say):</p>" + _table(
                         [[n] + [fmt(b.get(c, {}).get("hallucination")) for c in cats]
                          for n, b in by_cat.items()], ["policy"] + cats))
    return "".join(parts)


def truthfulqa_section(res: dict, P: Plots) -> str:
    sec = res["truthfulqa"]
    pol = sec["policies"]
    names = list(pol)
    j = sec["judges"]
    rows = []
    for n, r in pol.items():
        row = [n, fmt(r["mc1"]), fmt(r["mc2"])]
        for kind in ("qa", "instruction_qa"):
            g = r.get(kind)
            row += [fmt(g["rouge1_acc"]), fmt(g["bleu_acc"]), fmt(g["no_comment"])] if g \
                else ["-", "-", "-"]
        rows.append(row)
    parts = [f"<p class='judge'>{html.escape(sec['source'])}, {sec['n']} questions. MC: "
             f"{html.escape(label(j['mc']))}. Generation: {html.escape(label(j['generation']))}"
             f" (greedy; QA = the six-question primer, Instruction+QA = the paper's Fig. 17 "
             f"instruction before it). For orientation: GPT-3-class models score MC1 about "
             f"0.2-0.3.</p>",
             _table(rows, ["policy", "MC1", "MC2", "QA ROUGE-1 acc", "QA BLEU acc",
                           "QA no-comment", "Instr+QA ROUGE-1 acc", "Instr+QA BLEU acc",
                           "Instr+QA no-comment"]),
             P.bars("truthfulqa_mc", f"TruthfulQA MC1 and MC2 (95% CI). judge: "
                    f"{label(j['mc'])}", ["MC1", "MC2"],
                    {n: [pol[n]["mc1"], pol[n]["mc2"]] for n in names}, ylabel="score",
                    ylim=(0, 1))]
    if all("qa" in r for r in pol.values()):
        groups = ["QA: ROUGE-1 acc", "QA: no comment", "Instr+QA: ROUGE-1 acc",
                  "Instr+QA: no comment"]
        parts.append(P.bars(
            "truthfulqa_generation", f"TruthfulQA generation, with and without the instruction "
            f"(95% CI). judge: {label(j['generation'])}", groups,
            {n: [pol[n]["qa"]["rouge1_acc"], pol[n]["qa"]["no_comment"],
                 pol[n]["instruction_qa"]["rouge1_acc"],
                 pol[n]["instruction_qa"]["no_comment"]] for n in names},
            ylabel="share of questions", ylim=(0, 1)))
        ex = next(iter(pol.values()))["examples"]
        erows = [[e["question"], e["best"]] + [pol[n]["examples"][i].get("instruction_qa", "")
                                               for n in names] for i, e in enumerate(ex)]
        parts.append("<details><summary>answers (Instruction+QA)</summary>"
                     + _table(erows, ["question", "best answer"] + names, "examples")
                     + "</details>")
    return "".join(parts)


def toxicity_section(res: dict, P: Plots) -> str:
    sec = res["toxicity"]
    pol = sec["policies"]
    names = list(pol)
    cap = (f"judge: {label(sec['judge'])}; {sec['source']}, {sec['n_prompts']} prompts x "
           f"{sec['n_samples']} samples")
    rows = [[n] + [fmt(pol[n][c][k]) for c in ("plain", "respectful")
                   for k in ("expected_max_toxicity", "toxicity_probability")] for n in names]
    parts = [f"<p class='judge'>{html.escape(cap)}. Scores of different classifiers are not "
             f"comparable.</p>",
             _table(rows, ["policy", "plain: exp. max toxicity", "plain: toxicity prob.",
                           "respectful: exp. max toxicity", "respectful: toxicity prob."]),
             P.bars("toxicity", f"RealToxicityPrompts: expected maximum toxicity and toxicity "
                    f"probability, without and with the respectful instruction (95% bootstrap "
                    f"CI). {cap}",
                    ["plain: exp. max", "respectful: exp. max", "plain: prob.",
                     "respectful: prob."],
                    {n: [pol[n]["plain"]["expected_max_toxicity"],
                         pol[n]["respectful"]["expected_max_toxicity"],
                         pol[n]["plain"]["toxicity_probability"],
                         pol[n]["respectful"]["toxicity_probability"]] for n in names},
                    ylabel="toxicity", ylim=(0, 1))]
    return "".join(parts)


def bias_section(res: dict, P: Plots) -> str:
    sec = res["bias"]
    parts = [f"<p class='judge'>judge: {html.escape(label(sec['judge']))}. The paper found no "
             f"significant improvement over GPT-3 here.</p>"]
    cp = sec.get("crows_pairs")
    if cp:
        pol = cp["policies"]
        names = list(pol)
        types = sorted({t for r in pol.values() for t in r["by_type"]})
        parts.append(_table([[n, fmt(pol[n]["all"])] for n in names],
                            ["policy", f"CrowS-Pairs: prefers the stereotype ({cp['n']} pairs; "
                                       f"0.5 = none)"]))
        parts.append(P.bars("crows_pairs", f"CrowS-Pairs: share of pairs where the more "
                            f"stereotyping sentence is likelier, per bias type (95% CI; 0.5 = "
                            f"no preference). {cp['source']}. judge: {label(sec['judge'])}", ["all"] + types,
                            {n: [pol[n]["all"]] + [pol[n]["by_type"].get(t, {"mean": float(
                                "nan")}) for t in types] for n in names},
                            ylabel="stereotype preferred", ref=0.5, ylim=(0, 1)))
    wg = sec.get("winogender")
    if wg:
        pol = wg["policies"]
        names = list(pol)
        parts.append(_table([[n, fmt(pol[n]["entropy"]), fmt(pol[n]["p_male"]),
                              fmt(pol[n]["p_female"]), fmt(pol[n]["p_neutral"])]
                             for n in names],
                            ["policy", f"Winogender normalised entropy ({wg['n']} schemas; "
                                       f"1 = no preference)", "p(he)", "p(she)", "p(they)"]))
        parts.append(P.bars("winogender", f"Winogender: normalised entropy of the pronoun "
                            f"choice (95% CI; higher = less biased). {wg['source']}. judge: "
                            f"{label(sec['judge'])}",
                            ["entropy", "p(he)", "p(she)", "p(they)"],
                            {n: [pol[n]["entropy"], pol[n]["p_male"], pol[n]["p_female"],
                                 pol[n]["p_neutral"]] for n in names},
                            ylabel="", ylim=(0, 1)))
    return "".join(parts)


def tax_section(res: dict, P: Plots) -> str:
    from instructrl.evaluate.suite import tax_values

    tax = res["tax"]
    names = list(res["policies"])
    vals = {n: tax_values(tax, n) for n in names}
    keys = list(next(iter(vals.values())))
    judges = [label(tax[k]["judge"]) for k in ("lm_eval", "heldout_lm_loss",
                                                "sandbox_public_tasks") if k in tax]
    parts = [f"<p class='judge'>judges: {html.escape('; '.join(judges))}</p>",
             _table([[n] + [fmt(vals[n][k], 3) for k in keys] for n in names],
                    ["policy"] + keys)]
    for ref in ("base", "sft"):
        d = tax["deltas"][f"vs_{ref}"]
        if not d:
            continue
        parts.append(_table([[n] + [fmt(d[n].get(k), 3) for k in keys] for n in d],
                            [f"delta vs {ref}"] + keys))
        parts.append(P.bars(f"tax_vs_{ref}", f"Alignment tax: change against {ref} (loss: "
                            f"positive = worse; accuracy: negative = worse). judges: "
                            f"{'; '.join(judges)}", keys,
                            {n: [d[n].get(k, float("nan")) for k in keys] for n in d},
                            ylabel=f"delta vs {ref}", ref=0.0))
    return "".join(parts)


def summary_rows(res: dict) -> tuple[list[str], list[list]]:
    """One row per policy, one column per headline figure, each column named with its
    judge (so figures of different judges stand apart)."""
    names = list(res["policies"])
    cols: list[tuple[str, dict]] = []
    for jid, sec in res.get("preference", {}).items():
        cols.append((f"win vs {res['baseline']} [{jid}]",
                     {n: fmt(r["win_rate"]) for n, r in sec["policies"].items()}))
        if all(r.get("likert") for r in sec["policies"].values()):
            cols.append((f"Likert [{jid}]", {n: fmt(r["likert"]["mean"])
                                             for n, r in sec["policies"].items()}))
    if "sandbox" in res:
        for k in ("correct", "truthful", "harmless"):
            cols.append((f"{k} [sandbox-checks]", {n: fmt(r["checks"][k]) for n, r in
                                                   res["sandbox"]["policies"].items()}))
    if "truthfulqa" in res:
        tq = res["truthfulqa"]["policies"]
        cols.append(("TruthfulQA MC1 [likelihood]", {n: fmt(r["mc1"]["mean"]) for n, r in tq.items()}))
        if all("instruction_qa" in r for r in tq.values()):
            cols.append(("TQA Instr+QA ROUGE-1 acc [metric]",
                         {n: fmt(r["instruction_qa"]["rouge1_acc"]["mean"]) for n, r in tq.items()}))
    if "toxicity" in res:
        tx = res["toxicity"]["policies"]
        jid = res["toxicity"]["judge"]["id"]
        for c in ("plain", "respectful"):
            cols.append((f"exp. max toxicity {c} [{jid}]",
                         {n: fmt(r[c]["expected_max_toxicity"]["mean"]) for n, r in tx.items()}))
    if "bias" in res:
        b = res["bias"]
        if "crows_pairs" in b:
            cols.append(("CrowS stereotype [likelihood]",
                         {n: fmt(r["all"]["mean"]) for n, r in b["crows_pairs"]["policies"].items()}))
        if "winogender" in b:
            cols.append(("Winogender entropy [likelihood]",
                         {n: fmt(r["entropy"]["mean"]) for n, r in b["winogender"]["policies"].items()}))
    if "tax" in res:
        from instructrl.evaluate.suite import tax_values
        for k in tax_values(res["tax"], names[0]):
            cols.append((f"{k} [tax]", {n: fmt(tax_values(res["tax"], n)[k], 3) for n in names}))
    head = ["policy"] + [c for c, _ in cols]
    rows = [[n] + [col.get(n, "-") for _, col in cols] for n in names]
    return head, rows


def _judges_html(res: dict) -> str:
    ran = "".join(f"<li><b>{html.escape(j['id'])}</b> ({html.escape(j['kind'])}): "
                  f"{html.escape(j['what'])}</li>" for j in res["judges"]["ran"])
    skipped = "".join(f"<li><b>{html.escape(s['id'])}</b>: {html.escape(s['reason'])}</li>"
                      for s in res["judges"]["skipped"])
    return (f"<h2>Judges</h2><p>Ran:</p><ul class='judges-ran'>{ran}</ul>"
            + (f"<p>Skipped:</p><ul class='judges-skipped'>{skipped}</ul>" if skipped else ""))


def run_sections(run: RunDir, P: Plots) -> list[str]:
    """PPO curves, RM accuracy and SFT epoch selection, read from the run directory."""
    from instructrl.stages.common import read_metrics

    out = []
    stages = sorted(p.name for p in run.root.iterdir()
                    if p.name.startswith("ppo") and (p / "metrics.jsonl").exists())
    if stages:
        plt = P.plt
        fig, axes = plt.subplots(1, 2, figsize=(9, 3))
        for stage in stages:
            rows = read_metrics(run.stage(stage) / "metrics.jsonl")
            x = [r["iteration"] for r in rows]
            axes[0].plot(x, [r["objective/scores"] for r in rows], label=stage)
            axes[1].plot(x, [r["objective/kl"] for r in rows], label=stage)
        axes[0].set_title("objective/scores (the run's RM)", fontsize=9)
        axes[1].set_title("objective/kl (vs SFT)", fontsize=9)
        for a in axes:
            a.set_xlabel("iteration")
            a.legend(fontsize=7)
        out.append("<h2>PPO training</h2>" + P.save(
            fig, "ppo_curves", "PPO training curves. judge: the run's own RM (what PPO "
                               "optimised; not a judge of the result) and the KL to SFT"))
    for stage in sorted(p.name for p in run.root.iterdir() if p.name.startswith("rm")):
        ev = run.stage(stage) / "eval.json"
        if ev.exists():
            e = json.loads(ev.read_text())
            rows = [[split, k, f"{v['accuracy']:.3f}", v["pairs"]]
                    for split in ("valid", "heldout_labelers") for k, v in e.get(split, {}).items()]
            out.append(f"<h2>Reward model {html.escape(stage)}: pairwise accuracy</h2>"
                       + _table(rows, ["rankings", "category", "accuracy", "pairs"]))
    sel = run.stage("sft") / "selection.json"
    if sel.exists():
        s = json.loads(sel.read_text())
        head = list(s["table"][0]) if s.get("table") else []
        out.append(f"<h2>SFT epoch selection</h2><p>selected epoch {s['epoch']} by "
                   f"{html.escape(str(s['selected_by']))}</p>"
                   + _table([[r[h] for h in head] for r in s["table"]], head))
    return out


STYLE = ("body{font-family:sans-serif;max-width:1200px;margin:2em auto;padding:0 1em}"
         "table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;"
         "padding:3px 6px;font-size:13px;vertical-align:top}table.examples td{max-width:360px;"
         "white-space:pre-wrap}figure.plot{display:inline-block;margin:.5em;max-width:100%}"
         "figure.plot img{max-width:100%}figcaption{font-size:12px;color:#444;max-width:640px}"
         "p.judge{color:#335;font-size:13px}.cols{display:flex;gap:2em}.cols>div{flex:1}")


def page(title: str, body: list[str]) -> str:
    return ("<!doctype html><html><head><meta charset='utf-8'>"
            f"<title>{html.escape(title)}</title><style>{STYLE}</style></head><body>"
            f"<h1>{html.escape(title)}</h1>" + "\n".join(body) + "</body></html>")


def rm_generalisation_html(res: dict) -> str:
    """The run's RM on held-out labelers vs the inter-labeler agreement, when results.json
    holds it (`instructrl demo` adds it: `evaluate.agreement.rm_generalisation`)."""
    g = res.get("rm_generalisation")
    if not g:
        return ""
    return f"<p class='rm-generalisation'>{html.escape(generalisation_line(g))}</p>"


def result_sections(res: dict, P: Plots) -> list[str]:
    head, rows = summary_rows(res)
    body = [_judges_html(res), "<h2>Summary</h2><p>Each column names its judge in brackets; "
            "figures of different judges are never pooled.</p>" + _table(rows, head)
            + rm_generalisation_html(res)]
    if res.get("preference"):
        body.append("<h2>Preference against the baseline (paper section 4.1)</h2>"
                    + "".join(preference_sections(res, P)))
    if "sandbox" in res:
        body.append("<h2>Sandbox program checks</h2>" + sandbox_section(res, P))
    if "sandbox_instructions" in res:
        body.append("<h2>Sandbox: instructions in the prompt, closed-domain hallucination "
                    "(section 4.2, Figs. 4, 6, 7)</h2>" + sandbox_instructions_section(res))
    if "truthfulqa" in res:
        body.append("<h2>Truthfulness: TruthfulQA (section 4.2, Fig. 6)</h2>"
                    + truthfulqa_section(res, P))
    if "toxicity" in res:
        body.append("<h2>Toxicity: RealToxicityPrompts (section 4.2, Fig. 7)</h2>"
                    + toxicity_section(res, P))
    if "bias" in res:
        body.append("<h2>Bias: CrowS-Pairs and Winogender (section 4.2)</h2>"
                    + bias_section(res, P))
    if "tax" in res:
        body.append("<h2>Alignment tax (section 4.2, App. E)</h2>" + tax_section(res, P))
    return body


def examples_section(res: dict) -> str:
    ex = res.get("examples") or []
    if not ex:
        return ""
    names = list(res["policies"])
    return ("<h2>Sample responses, side by side</h2>"
            + _table([[e["prompt"], e.get("category", "")] + [e.get(n, "") for n in names]
                      for e in ex], ["prompt", "category"] + names, "examples"))


def write_report(run: RunDir, results: dict, timings: str = "") -> Path:
    """RUN/eval/results.json and RUN/eval/report.html (self-contained), atomically."""
    out = run.stage("eval")
    atomic_write_text(out / "results.json", json.dumps(results, indent=1) + "\n")
    P = Plots(out / "plots")
    body = result_sections(results, P)
    body += run_sections(run, P)
    body.append(examples_section(results))
    if timings:
        body.append(f"<h2>Wall time</h2><pre>{html.escape(timings)}</pre>")
    path = out / "report.html"
    atomic_write_text(path, page(f"instructrl report: {run.root.name}", body))
    return path


def summary_text(results: dict) -> str:
    """The terminal summary: the judges, then one table per section."""
    from instructrl.evaluate.suite import say_plan

    lines = [say_plan(results)]
    if "sandbox" in results and "sandbox-labelers" in results.get("preference", {}):
        lines.append(sandbox_table(results))
    head, rows = summary_rows(results)
    lines.append(_text_table(rows, head) if len(head) > 1 else "(no figures)")
    return "\n\n".join(lines)


def sandbox_table(results: dict) -> str:
    """The sandbox table of earlier versions (same columns and figures)."""
    from instructrl.evaluate.suite import sandbox_view

    v = sandbox_view(results)
    head = (f"{'policy':<10} {'win vs SFT (95% CI)':<22} {'likert':>6} {'RM':>7} "
            f"{'correct':>7} {'truthful':>8} {'harmless':>8} {'LM loss':>7} {'tasks':>6}")
    lines = [head, "-" * len(head)]
    for name, r in v["policies"].items():
        w = r["win_rate"]
        ci = f"{w['mean']:.2f} [{w['low']:.2f}, {w['high']:.2f}]"
        rm = f"{r['rm_score']:>7.3f}" if r.get("rm_score") is not None else f"{'-':>7}"
        lines.append(f"{name:<10} {ci:<22} {r['likert']:>6.2f} {rm} "
                     f"{r['checks']['correct']:>7.2f} {r['checks']['truthful']:>8.2f} "
                     f"{r['checks']['harmless']:>8.2f} {r['tax']['heldout_lm_loss']:>7.3f} "
                     f"{r['tax']['public_task_accuracy']:>6.2f}")
    lines.append(f"({v['n_prompts']} held-out users' prompts; judges: the sandbox's held-out "
                 f"labelers {', '.join(v['judges'])}; 'RM' = the run's own RM, not a judge; "
                 f"'tasks' = public NLP task accuracy)")
    return "\n".join(lines)


def compare_page(a: Path, b: Path, out: Path) -> Path:
    """Two runs' results side by side: their summary tables and, per section, each run's
    plots in two columns (figures of different judges stay in their own plots)."""
    ra = json.loads((a / "eval" / "results.json").read_text())
    rb = json.loads((b / "eval" / "results.json").read_text())
    cols = []
    for root, res in ((a, ra), (b, rb)):
        secs = result_sections(res, Plots(None))
        cols.append(f"<div><h2>{html.escape(str(root))}</h2>" + "".join(secs) + "</div>")
    body = ["<p>Each column is one run's evaluation; compare figures only where the judge "
            "(in brackets) is the same.</p>", "<div class='cols'>" + "".join(cols) + "</div>"]
    atomic_write_text(out, page(f"instructrl: {a.name} vs {b.name}", body))
    return out


def compare_text(a: Path, b: Path) -> str:
    lines = []
    for root in (a, b):
        res = json.loads((root / "eval" / "results.json").read_text())
        head, rows = summary_rows(res)
        lines += [f"== {root}", _text_table(rows, head) if len(head) > 1 else "(no figures)"]
    return "\n".join(lines)
