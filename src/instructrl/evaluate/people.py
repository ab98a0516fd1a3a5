"""People as the judge (paper section 4.1): blind pairwise comparisons by the labeling app's
HELD-OUT labelers, the paper's final evaluation ("labelers who did not produce any training
data"), turned into win rates, Likert scores and metadata flags.

`to_label`: each policy's response and the baseline's response to a held-out user's prompt
(test split) become one K = 2 response set, in random order (seeded per prompt and policy),
imported into the app with the run's test prompts; ranking tasks are assigned to the held-out
pool only. The app shows responses in its own shuffled order and never shows the policy.
Response sets carry the policy as `eval:NAME` (the baseline's second, independent sample as
`eval:NAME#2`, its honest self-comparison) and are written to RUN/eval/label/samples.jsonl.

`from_label`: the held-out labelers' rankings of exactly those response sets (matched by
prompt, texts and policies) -> outcomes (preferred 1, tie 0.5, not preferred 0) per verdict,
Likert 1-7 and flags per policy; skipped comparisons are counted, not scored. The figures
become the `people` judge of results.json, beside (never pooled with) any other judge.

Uses the labeling app's public functions only (`label.store`, `label.db`, `label.samples`).
"""

from __future__ import annotations

import json
import random
from collections import defaultdict

from instructrl.data.jsonl import write_records
from instructrl.data.records import Response
from instructrl.errors import InputError
from instructrl.evaluate.judges import judge
from instructrl.evaluate.preference import win_section
from instructrl.evaluate.stats import figure, rate
from instructrl.rundir import RunDir

PREFIX = "eval:"


def _prompts(cfg, run: RunDir):
    from instructrl.evaluate.sandbox_eval import is_sandbox_run, test_prompts

    if is_sandbox_run(cfg, run)[0]:
        return test_prompts(run, cfg.eval.n_prompts)
    return sorted(run.prompts("test"), key=lambda p: p.id)[:cfg.eval.n_prompts]


def samples_path(run: RunDir):
    return run.stage("eval") / "label" / "samples.jsonl"


def comparison_sets(prompts, samples: dict[str, list[str]], baseline: str, again: str,
                    seed: int) -> list[dict]:
    """One K = 2 set per (prompt, policy): the policy's response and the baseline's (for the
    baseline itself its second sample), in a random order seeded per (prompt, policy)."""
    from instructrl.label.samples import SampleSet

    out = []
    for name in samples:
        if name == again:
            continue
        theirs = again if name == baseline else baseline
        for i, p in enumerate(prompts):
            pair = [Response(samples[name][i], PREFIX + name),
                    Response(samples[theirs][i], PREFIX + theirs)]
            random.Random(f"{seed}:{p.id}:{name}").shuffle(pair)
            out.append(SampleSet(p.id, pair).to_dict())
    return out


def to_label(cfg, run: RunDir, db: str, *, overlap: int = 1) -> str:
    """Sample, write RUN/eval/label/samples.jsonl, import into the app and assign ranking
    tasks to its held-out labelers. Returns what it did, for the terminal."""
    from tqdm.auto import tqdm

    from instructrl.evaluate.suite import AGAIN, run_policies
    from instructrl.evaluate.lm import eval_samples
    from instructrl.label import store
    from instructrl.label.db import make_engine
    from instructrl.label.samples import SampleSet
    from instructrl.modeling import default_device, load_causal_lm, load_tokenizer

    c = cfg.eval
    engine = make_engine(db)
    held = [u["name"] for u in store.users(engine)
            if u["role"] == "labeler" and u["heldout"] and u["active"]]
    if len(held) < overlap:
        raise InputError(f"the labeling app has {len(held)} active held-out labelers, "
                         f"{overlap} needed (`instructrl label create-labeler NAME --heldout "
                         f"--db {db}`)", field="--to-label")
    policies, _ = run_policies(cfg, run)
    prompts = _prompts(cfg, run)
    if not prompts:
        raise InputError("no test-split prompts to compare responses on",
                         path=str(run.data / "prompts.jsonl"))
    texts = [p.text for p in prompts]
    again = AGAIN.format(name=c.baseline)
    samples: dict[str, list[str]] = {}
    device = default_device()
    for name, spec in tqdm(list(policies.items()), desc="samples for people", unit="policy"):
        tok = load_tokenizer(spec, cfg.model)
        model = load_causal_lm(spec, model_cfg=cfg.model).to(device).eval()
        samples[name] = eval_samples(model, tok, texts, c, seed=c.seed)
        if name == c.baseline:
            samples[again] = eval_samples(model, tok, texts, c, seed=c.seed + 1)
        del model
    sets = comparison_sets(prompts, samples, c.baseline, again, c.seed)
    path = samples_path(run)
    write_records(path, sets)
    report = store.import_records(
        engine, [(str(run.data / "prompts.jsonl"), i + 1, p) for i, p in enumerate(prompts)],
        [(str(path), i + 1, SampleSet.from_dict(s)) for i, s in enumerate(sets)])
    n = store.assign(engine, "rank", pool="heldout", overlap=overlap, split="test")
    return (f"{len(sets)} blind comparisons against {c.baseline} ({len(policies)} policies x "
            f"{len(prompts)} held-out users' prompts) -> {path}\n"
            f"labeling app: {report}; {n} new ranking tasks for the held-out labelers "
            f"{', '.join(held)}\n"
            f"when they are done: instructrl eval --out {run.root} --from-label {db}")


def verdicts(engine, sets: list[dict]) -> tuple[list[dict], int]:
    """The held-out labelers' rankings of exactly these response sets, and how many of those
    they skipped."""
    from instructrl.label import store

    wanted = {_key(s["prompt_id"], s["responses"]) for s in sets}
    out, skipped = [], 0
    for r in store.export_records(engine)["heldout"]["rankings"]:
        if _key(r["prompt_id"], r["responses"]) not in wanted:
            continue
        if r.get("skipped"):
            skipped += 1
        else:
            out.append(r)
    return out, skipped


def _key(pid: str, responses: list[dict]) -> str:
    return json.dumps([pid, [[x["text"], x["policy"]] for x in responses]], ensure_ascii=False)


def figures_from(rankings: list[dict], prompts: dict, baseline: str) -> dict[str, dict]:
    """Per policy: win section (one outcome per verdict), Likert and flags of its responses."""
    outcomes: dict[str, list[tuple]] = defaultdict(list)
    likert: dict[str, list[int]] = defaultdict(list)
    flags: dict[str, list[list[str]]] = defaultdict(list)
    again = f"{baseline}#2"
    for r in rankings:
        pols = [x["policy"][len(PREFIX):] for x in r["responses"]]
        # The compared policy is the one that is not the baseline (the baseline's own set:
        # its first sample against its second).
        mine = pols.index(baseline) if again in pols else \
            next(i for i, p in enumerate(pols) if p != baseline)
        first = r["ranking"][0]
        score = 0.5 if len(first) > 1 else (1.0 if first == [mine] else 0.0)
        outcomes[pols[mine]].append((prompts[r["prompt_id"]], score))
        for i, p in enumerate(pols):
            owner = p.split("#")[0]
            if r.get("likert"):
                likert[owner].append(r["likert"][i])
            if r.get("flags") is not None:
                flags[owner].append(r["flags"][i])
    out = {}
    for name, pairs in outcomes.items():
        sec = win_section([p for p, _ in pairs], [s for _, s in pairs])
        if likert.get(name):
            sec["likert"] = figure(likert[name])
        names = sorted({f for fl in flags.get(name, []) for f in fl})
        sec["flags"] = {f: rate([f in fl for fl in flags[name]]) for f in names}
        out[name] = sec
    return out


def from_label(cfg, run: RunDir, db: str) -> str:
    """Read the verdicts into results.json (the `people` judge) and rewrite the report."""
    from instructrl.data.jsonl import read_jsonl
    from instructrl.evaluate.report import summary_text, write_report
    from instructrl.evaluate.suite import run_policies
    from instructrl.label import store
    from instructrl.label.db import make_engine

    path = samples_path(run)
    if not path.exists():
        raise InputError("no comparisons were put to people for this run: run "
                         "`instructrl eval --out RUN --to-label DB` first", path=str(path))
    sets = [obj for _, obj in read_jsonl(path)]
    engine = make_engine(db)
    rankings, skipped = verdicts(engine, sets)
    if not rankings:
        raise InputError(f"no held-out labeler has judged this run's comparisons yet "
                         f"({skipped} skipped)", path=db)
    prompts = run.prompts_by_id()
    base = cfg.eval.baseline
    pols = figures_from(rankings, prompts, base)
    held = sorted({r["labeler_id"] for r in rankings})
    pending = sum(r["pending"] for r in store.progress(engine)
                  if r["heldout"] and r["kind"] == "rank")
    j = judge("people", "people", f"held-out labelers of the labeling app ({', '.join(held)}), "
              f"blind pairwise comparisons", labelers=held, database=_safe(db))
    section = {"judge": j, "n_prompts": len({r["prompt_id"] for r in rankings}),
               "verdicts": len(rankings), "skipped": skipped, "pending_tasks": pending,
               "policies": pols}
    out = run.stage("eval") / "results.json"
    if out.exists():
        results = json.loads(out.read_text())
    else:
        policies, _ = run_policies(cfg, run)
        results = {"run": run.root.name, "baseline": base,
                   "policies": {n: {"path": p} for n, p in policies.items()},
                   "judges": {"ran": [], "skipped": []}}
    results.setdefault("preference", {})["people"] = section
    results["judges"]["ran"] = [x for x in results["judges"]["ran"] if x["id"] != "people"] + [j]
    results["judges"]["skipped"] = [s for s in results["judges"]["skipped"]
                                    if s["id"] != "preference"]
    report = write_report(run, results)
    return (f"{len(rankings)} verdicts by {len(held)} held-out labelers ({skipped} skipped, "
            f"{pending} tasks still pending)\n{summary_text(results)}\nreport: {report}")


def _safe(url: str) -> str:
    from sqlalchemy.engine import make_url
    return make_url(url).render_as_string(hide_password=True)
