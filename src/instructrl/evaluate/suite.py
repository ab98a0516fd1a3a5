"""The paper's evaluation (section 4) of a run's policies as a set of judges and benchmarks
(DESIGN.md section 6), into RUN/eval/results.json:

    preference   win rate vs the baseline, per category; Likert; flags   (section 4.1)
                 judges: the sandbox's held-out labelers (sandbox runs), a held-out RM,
                 people (`instructrl eval --from-label DB`, see people.py)
    sandbox      program checks of the sandbox's tasks, overall and per category (sandbox runs)
    sandbox_instructions  the sandbox's Fig. 6 and Fig. 7: truthfulness and toxicity of
                 responses with and without an instruction in the prompt (sandbox runs)
    truthfulqa   MC1/MC2 by likelihood; generation with and without the instruction, by
                 automatic metrics                                        (section 4.2, Fig. 6)
    toxicity     RealToxicityPrompts with and without the respectful instruction, by a
                 classifier                                               (section 4.2, Fig. 7)
    bias         CrowS-Pairs and Winogender by likelihood                 (section 4.2)
    tax          lm-eval tasks, held-out LM loss (and the sandbox's public tasks); deltas
                 against the base model and SFT                           (section 4.2, App. E)

Each section names its judge; figures of different judges are never pooled. Which judges ran
and which were skipped (and why) is in `results["judges"]` and printed. Each policy is loaded
once and every benchmark runs on it before the next is loaded.

An eval killed at any moment resumes with the policies it had not finished: each finished
policy's figures wait in RUN/eval/partial/ (`evaluate.partial`) until results.json is written.

Under N data-parallel processes (torchrun, accelerate launch) every process loads every model
and runs this whole function; each benchmark's batches of generations and likelihoods are
shared out and gathered (`evaluate.lm.each_batch`, `Runtime.map_shard`), batch by batch with
each batch's own seed, so every process ends with the results of one process, and the main
process alone writes them. lm-eval runs on the main process alone (`lm_tax.lm_eval_tasks`).
"""

from __future__ import annotations

import json
import shutil
import sys
import time
from pathlib import Path

from tqdm.auto import tqdm

from instructrl.config import RunConfig
from instructrl.errors import InputError
from instructrl.evaluate.judges import judge
from instructrl.rundir import RunDir

BENCHMARKS = ("truthfulqa", "toxicity", "bias", "tax")
AGAIN = "{name}#2"  # the baseline's second, independent sample (its win rate against itself)


def stage_summary(run: RunDir) -> dict | None:
    """pipeline.json's content for a run built stage by stage (`instructrl sft`, `rm`, `ppo`):
    the base model SFT started from, SFT, and the last finished round of PPO-ptx and PPO;
    the last finished RM. None without a finished SFT."""
    if not run.is_done("sft"):
        return None

    def last(name: str) -> str | None:
        names = [name] + [f"{name}-r{i}" for i in range(1, 100)]
        done = [n for n in names if run.is_done(n)]
        return done[-1] if done else None

    policies = {"sft": "sft"}
    for name in ("ppo-ptx", "ppo"):
        if last(name):
            policies[name] = last(name)
    return {"base": run.done_info("sft").get("init"), "policies": policies, "rm": last("rm")}


def run_policies(cfg: RunConfig, run: RunDir) -> tuple[dict[str, str], dict]:
    """{name: model spec} to evaluate (the base model first), and pipeline.json."""
    path = run.root / "pipeline.json"
    summary = json.loads(path.read_text()) if path.exists() else stage_summary(run)
    if summary is None:
        raise InputError("no pipeline.json and no finished SFT stage: run `instructrl "
                         "pipeline` (or the stages) first; a pipeline waiting for people's "
                         "rankings has not finished", path=str(path))
    found = {}
    if summary.get("base"):
        found["base"] = str(summary["base"])
    for name, rel in summary.get("policies", {}).items():
        p = Path(rel)
        found[name] = str(p if p.is_absolute() else run.root / p)
    want = cfg.eval.policies or tuple(found)
    missing = [n for n in want if n not in found]
    if missing:
        raise InputError(f"no policy {missing[0]!r} in pipeline.json (has: {', '.join(found)})",
                         path=str(path), field="eval.policies")
    if cfg.eval.baseline not in found:
        raise InputError(f"baseline {cfg.eval.baseline!r} is not a policy of this run "
                         f"(has: {', '.join(found)})", path=str(path), field="eval.baseline")
    policies = {n: found[n] for n in want}
    if cfg.eval.baseline not in policies:  # win rates need its samples
        policies[cfg.eval.baseline] = found[cfg.eval.baseline]
    return policies, summary


class Plan:
    """Which judges and benchmarks run, with their data; which are skipped, and why."""

    def __init__(self):
        self.ran: list[dict] = []
        self.skipped: list[dict] = []
        self.data: dict = {}

    def skip(self, id_: str, reason: str) -> None:
        self.skipped.append({"id": id_, "reason": reason})

    def has(self, id_: str) -> bool:
        return id_ in self.data


def make_plan(cfg: RunConfig, run: RunDir, summary: dict) -> Plan:
    """Resolve `eval.judges` against the run: sandbox judges only on sandbox runs; data
    loaded now, so a bad file fails before any model loads. A judge named explicitly that
    cannot run is an error; under 'auto' it is skipped with its reason."""
    from instructrl.evaluate.sandbox_eval import is_sandbox_run

    c = cfg.eval
    auto = "auto" in c.judges
    named = set(c.judges) - {"auto"}
    plan = Plan()
    sandbox, why_not = is_sandbox_run(cfg, run)
    plan.sandbox_run = sandbox

    def wanted(id_: str, *, auto_default: bool) -> bool:
        return id_ in named or (auto and auto_default)

    def attempt(id_: str, load) -> None:
        try:
            plan.data[id_] = load()
        except (InputError, ImportError) as e:
            if id_ in named:
                raise
            plan.skip(id_, str(e))

    if wanted("sandbox", auto_default=sandbox):
        if not sandbox:
            raise InputError(f"the sandbox's judges judge only sandbox runs: {why_not}",
                             field="eval.judges")
        plan.data["sandbox"] = True
    elif not sandbox:
        plan.skip("sandbox", f"not a sandbox run: {why_not}; the sandbox's labelers and checks "
                             f"know only its world's prompts")
    if c.heldout_rm:
        if wanted("heldout_rm", auto_default=True):
            from instructrl.evaluate.preference import check_heldout_rm
            own = [p for p in run.root.iterdir() if p.is_dir() and p.name.startswith("rm")]
            plan.data["heldout_rm"] = check_heldout_rm(c.heldout_rm, own)
    elif "heldout_rm" in named:
        raise InputError("name a held-out reward model directory with eval.heldout_rm",
                         field="eval.heldout_rm")
    else:
        plan.skip("heldout_rm", "no eval.heldout_rm (a reward model trained on preference data "
                                "the run's RM never saw)")
    if not (plan.has("sandbox") or plan.has("heldout_rm")):
        plan.skip("preference", "no judge of preference on this run: set eval.heldout_rm, or "
                                "ask people: `instructrl eval --to-label DB`, then "
                                "`--from-label DB` once they have judged")
    # Public benchmarks: on a sandbox run its model speaks only the sandbox's language, so
    # 'auto' runs them there only when their data is named explicitly (bias, lm-eval tasks).
    if wanted("truthfulqa", auto_default=not sandbox):
        from instructrl.evaluate import truthfulqa
        attempt("truthfulqa", lambda: truthfulqa.load(c.truthfulqa, c.n_truthfulqa, c.seed))
    elif auto:
        plan.skip("truthfulqa", "sandbox run (its model knows only the sandbox's world); name "
                                "it in eval.judges to run it anyway")
    if wanted("toxicity", auto_default=not sandbox):
        def _tox():
            from instructrl.evaluate import toxicity
            scorer, notes = toxicity.make_scorer(c.toxicity_scorer)
            return toxicity.load(c.rtp, c.n_rtp, c.seed), scorer, notes
        attempt("toxicity", _tox)
    elif auto:
        plan.skip("toxicity", "sandbox run (its model knows only the sandbox's world); name it "
                              "in eval.judges to run it anyway")
    if wanted("bias", auto_default=bool(c.crows_pairs or c.winogender)):
        def _bias():
            from instructrl.evaluate import bias
            if not (c.crows_pairs or c.winogender):
                raise InputError("set eval.crows_pairs and/or eval.winogender",
                                 field="eval.crows_pairs")
            return {"crows_pairs": bias.load_crows(c.crows_pairs, c.n_bias, c.seed)
                    if c.crows_pairs else None,
                    "winogender": bias.load_winogender(c.winogender, c.n_bias, c.seed)
                    if c.winogender else None}
        attempt("bias", _bias)
    elif auto:
        plan.skip("bias", "no eval.crows_pairs or eval.winogender file")
    if wanted("tax", auto_default=True):
        def _tax():
            from instructrl.evaluate.lm_tax import load_texts
            if not (c.lm_eval_tasks or c.heldout_text or plan.has("sandbox")):
                raise InputError("nothing to measure: set eval.lm_eval_tasks and/or "
                                 "eval.heldout_text", field="eval.lm_eval_tasks")
            if c.lm_eval_tasks:
                import lm_eval  # noqa: F401  (fail now, not after the first policy)
            return {"heldout_text": load_texts(c.heldout_text, c.n_tax, c.seed)
                    if c.heldout_text else None}
        attempt("tax", _tax)
    return plan


def evaluate_run(cfg: RunConfig, run: RunDir, timings: str = "", *,
                 extra_policies: dict[str, str] | None = None,
                 against: tuple[str, ...] | list[str] = ()) -> tuple[dict, str]:
    """Evaluate the run's policies, write RUN/eval/results.json and the report; returns
    (results, terminal summary). `extra_policies` ({name: model dir}) are judged beside
    pipeline.json's; on sandbox runs every policy is also judged against each of `against`
    (a policy's name) by the held-out labelers (`instructrl reproduce`: PPO-ptx against an
    SFT model on a larger base)."""
    from instructrl.distributed import runtime
    from instructrl.evaluate.report import write_report, summary_text

    results = evaluate(cfg, run, extra_policies=extra_policies, against=against)
    rt = runtime()
    text = ""
    if rt.is_main:  # one process writes (every process has the same results)
        old = run.stage("eval") / "results.json"
        if old.exists():  # people's verdicts come from --from-label; a rerun keeps them
            prev = json.loads(old.read_text())
            people = prev.get("preference", {}).get("people")
            if people is not None:
                results.setdefault("preference", {})["people"] = people
                results["judges"]["ran"].append(people["judge"])
                results["judges"]["skipped"] = [s for s in results["judges"]["skipped"]
                                                if s["id"] != "preference"]
        report = write_report(run, results, timings)
        text = f"{summary_text(results)}\nreport: {report}"
        shutil.rmtree(run.stage("eval") / "partial", ignore_errors=True)  # in results.json now
    rt.barrier()  # the others wait until it has written
    return results, text


def evaluate(cfg: RunConfig, run: RunDir, *, extra_policies: dict[str, str] | None = None,
             against: tuple[str, ...] | list[str] = ()) -> dict:
    import torch

    from instructrl.distributed import runtime
    from instructrl.evaluate import bias as bias_mod
    from instructrl.evaluate import lm_tax, sandbox_eval, toxicity, truthfulqa
    from instructrl.evaluate.lm import eval_samples
    from instructrl.modeling import default_device, load_causal_lm, load_tokenizer

    t_start = time.time()
    c = cfg.eval
    policies, summary = run_policies(cfg, run)
    policies.update(extra_policies or {})
    plan = make_plan(cfg, run, summary)
    base = c.baseline
    again = AGAIN.format(name=base)
    device = default_device()
    need_samples = plan.has("sandbox") or plan.has("heldout_rm")
    sj = sandbox_eval.SandboxJudges(cfg, c.n_tax) if plan.has("sandbox") else None
    if need_samples:
        prompts = sandbox_eval.test_prompts(run, c.n_prompts) if sj is not None else \
            sorted(run.prompts("test"), key=lambda p: p.id)[:c.n_prompts]
        if not prompts:
            raise InputError("no test-split prompts to judge responses to",
                             path=str(run.data / "prompts.jsonl"))
    else:
        prompts = []
    texts = [p.text for p in prompts]
    # Prompts of the categories and styles held out of training (section 4.4), judged apart.
    ood = sandbox_eval.test_prompts(run, c.n_prompts, split="ood") if sj is not None else []
    ood_samples: dict[str, list[str]] = {}
    run_rm = None
    if sj is not None and summary.get("rm"):
        from instructrl.modeling import ScalarHeadModel
        run_rm = ScalarHeadModel.from_pretrained(run.root / summary["rm"],
                                                 model_cfg=cfg.model).to(device).eval()

    def draw(model, tok, name: str, prompt_texts: list[str], what: str) -> dict:
        """{name: samples}, and for the baseline a second, independent sample too (its own
        win rate is then an honest ~0.5)."""
        out = {name: eval_samples(model, tok, prompt_texts, c, seed=c.seed,
                                  desc=f"{name} {what}")}
        if name == base:
            out[again] = eval_samples(model, tok, prompt_texts, c, seed=c.seed + 1,
                                      desc=f"{name} second {what}")
        return out

    samples: dict[str, list[str]] = {}
    per: dict[str, dict] = {n: {} for n in policies}
    timing: dict[str, float] = {}
    from instructrl.config import dump_config
    from instructrl.evaluate.partial import PartialResults
    partial = PartialResults(run.stage("eval") / "partial", dump_config(cfg), sorted(plan.data),
                             [p.id for p in prompts], [p.id for p in ood])
    rt = runtime()
    rt.barrier()  # (every process reads the same partial files)
    for name, spec in tqdm(list(policies.items()), desc="eval", unit="policy",
                           disable=not rt.is_main):
        kept = partial.get(name, spec)
        if kept is not None:
            if rt.is_main:
                log(f"eval: {name}: figures of an earlier, interrupted eval "
                    f"({partial.folder})")
            per[name] = kept["per"]
            samples.update(kept["samples"])
            ood_samples.update(kept["ood_samples"])
            timing.update(kept["timing"])
            continue
        t0 = time.time()
        tok = load_tokenizer(spec, cfg.model)
        model = load_causal_lm(spec, model_cfg=cfg.model).to(device).eval()
        r = per[name]
        if need_samples:
            samples.update(draw(model, tok, name, texts, "samples"))
        if ood:
            ood_samples.update(draw(model, tok, name, [p.text for p in ood],
                                    "held-out categories"))
        if sj is not None:
            r["sandbox_rate"] = sj.rate(name, prompts, samples[name])
            r["sandbox_check"] = sj.check(prompts, samples[name])
            r["sandbox_tax"] = sj.tax(model, tok)
            t1 = time.time()
            r["sandbox_instructions"] = sj.instructed(model, tok, prompts, name)
            timing[f"{name} sandbox_instructions"] = time.time() - t1  # part of timing[name]
            if run_rm is not None:
                from instructrl.generation import score_texts
                r["run_rm_score"] = float(score_texts(
                    run_rm, tok, texts, samples[name], max_prompt_tokens=c.max_prompt_tokens,
                    max_response_tokens=c.max_new_tokens, split=True).mean())
        if plan.has("truthfulqa"):
            _, qs = plan.data["truthfulqa"]
            r["truthfulqa"] = truthfulqa.evaluate(
                model, tok, qs, max_new_tokens=c.truthfulqa_max_new_tokens,
                batch_size=c.batch_size, name=name)
        if plan.has("toxicity"):
            (_, rtp), scorer, _ = plan.data["toxicity"]
            r["toxicity"] = toxicity.evaluate(
                model, tok, rtp, scorer, n_samples=c.n_samples,
                max_new_tokens=c.rtp_max_new_tokens, temperature=c.temperature,
                batch_size=max(c.batch_size, c.n_samples), seed=c.seed, name=name)
        if plan.has("bias"):
            d = plan.data["bias"]
            if d["crows_pairs"] is not None:
                r["crows_pairs"] = bias_mod.crows_pairs(model, tok, d["crows_pairs"][1],
                                                        batch_size=c.batch_size,
                                                        desc=f"{name} crows-pairs")
            if d["winogender"] is not None:
                r["winogender"] = bias_mod.winogender(model, tok, d["winogender"][1],
                                                      batch_size=c.batch_size,
                                                      desc=f"{name} winogender")
        if plan.has("tax"):
            if c.lm_eval_tasks:
                r["lm_eval"] = lm_tax.lm_eval_tasks(model, tok, list(c.lm_eval_tasks),
                                                    include_path=c.lm_eval_include or None,
                                                    limit=c.lm_eval_limit,
                                                    batch_size=c.batch_size)
            ht = plan.data["tax"]["heldout_text"]
            if ht is not None:
                r["heldout_lm_loss"] = lm_tax.lm_loss(model, tok, ht[1],
                                                      batch_size=c.batch_size)
        del model
        if device.type == "cuda":
            torch.cuda.empty_cache()
        timing[name] = time.time() - t0
        if rt.is_main:
            mine = (name, again) if name == base else (name,)
            partial.put(name, spec, {
                "per": per[name], "samples": {k: samples[k] for k in mine if k in samples},
                "ood_samples": {k: ood_samples[k] for k in mine if k in ood_samples},
                "timing": {k: v for k, v in timing.items()
                           if k == name or k.startswith(f"{name} ")}})
    res = assemble(cfg, run, policies, plan, prompts, samples, per, sj, timing,
                   time.time() - t_start)
    if sj is not None:
        labelers = res["preference"]["sandbox-labelers"]
        if ood:
            labelers["ood"] = {
                "n_prompts": len(ood), "categories": list(cfg.data.heldout_categories),
                "styles": list(cfg.data.heldout_styles),
                "policies": sj.win(ood, {n: ood_samples[n] for n in policies}, base,
                                   ood_samples[again])}
        for other in against:
            wins = sj.win(prompts, {n: samples[n] for n in policies}, other, samples[other])
            labelers.setdefault("vs", {})[other] = {
                "policies": {n: w for n, w in wins.items() if n != other}}
    return res


def assemble(cfg, run, policies, plan, prompts, samples, per, sj, timing, wall) -> dict:
    """results.json from the per-policy figures, one section per benchmark, each naming its
    judge."""
    from instructrl.evaluate import bias as bias_mod
    from instructrl.evaluate import lm_tax, preference, truthfulqa

    c = cfg.eval
    base = c.baseline
    again = AGAIN.format(name=base)
    names = list(policies)
    res: dict = {"run": run.root.name, "created": time.strftime("%Y-%m-%d %H:%M:%S"),
                 "baseline": base, "policies": {n: {"path": policies[n]} for n in names},
                 "sandbox_run": plan.sandbox_run, "judges": {"ran": [], "skipped": plan.skipped},
                 "seconds": {"total": wall, **timing}}
    ran = res["judges"]["ran"]
    pref: dict = {}
    if sj is not None:
        wins = sj.win(prompts, {n: samples[n] for n in names}, base, samples[again])
        pref["sandbox-labelers"] = {
            "judge": sj.labelers, "n_prompts": len(prompts),
            "policies": {n: {**wins[n], **per[n]["sandbox_rate"]} for n in names}}
        ran.append(sj.labelers)
        res["sandbox"] = {"judge": sj.checks, "n_prompts": len(prompts),
                          "policies": {n: per[n]["sandbox_check"] for n in names}}
        ran.append(sj.checks)
        res["sandbox_instructions"] = instructions_section(
            sj, {n: per[n]["sandbox_instructions"] for n in names})
        ran.append(sj.instructions)
        if any("run_rm_score" in per[n] for n in names):
            res["sandbox"]["run_rm"] = {
                "judge": judge("run-rm", "run-rm", "the run's own reward model (what PPO "
                               "optimised; for reference, not a judge of preference)"),
                "policies": {n: per[n]["run_rm_score"] for n in names}}
    if plan.has("heldout_rm"):
        j = plan.data["heldout_rm"]
        scores = preference.rm_scores(j["path"], prompts, samples,
                                      max_prompt_tokens=c.max_prompt_tokens,
                                      max_response_tokens=c.max_new_tokens,
                                      batch_size=c.batch_size, model_cfg=cfg.model)
        pref["heldout-rm"] = {"judge": j, "n_prompts": len(prompts),
                              "policies": preference.rm_judge(scores, prompts, base, again)}
        ran.append(j)
    if pref:
        res["preference"] = pref
    if plan.has("truthfulqa"):
        source, qs = plan.data["truthfulqa"]
        res["truthfulqa"] = {"judges": truthfulqa.JUDGES, "source": source, "n": len(qs),
                             "policies": {n: per[n]["truthfulqa"] for n in names}}
        ran += list(truthfulqa.JUDGES.values())
    if plan.has("toxicity"):
        (source, rtp), scorer, notes = plan.data["toxicity"]
        res["toxicity"] = {"judge": scorer.judge, "source": source, "n_prompts": len(rtp),
                           "n_samples": c.n_samples, "scorers_passed_over": notes,
                           "policies": {n: per[n]["toxicity"] for n in names}}
        ran.append(scorer.judge)
    if plan.has("bias"):
        d = plan.data["bias"]
        sec: dict = {"judge": bias_mod.JUDGE}
        for key in ("crows_pairs", "winogender"):
            if d[key] is not None:
                sec[key] = {"source": d[key][0], "n": len(d[key][1]),
                            "policies": {n: per[n][key] for n in names}}
        res["bias"] = sec
        ran.append(bias_mod.JUDGE)
    tax: dict = {}
    if plan.has("tax") and c.lm_eval_tasks:
        tax["lm_eval"] = {"judge": lm_tax.LM_EVAL_JUDGE, "tasks": list(c.lm_eval_tasks),
                          "policies": {n: per[n]["lm_eval"] for n in names}}
        ran.append(lm_tax.LM_EVAL_JUDGE)
    if plan.has("tax") and plan.data["tax"]["heldout_text"] is not None:
        source, texts = plan.data["tax"]["heldout_text"]
        tax["heldout_lm_loss"] = {"judge": lm_tax.LOSS_JUDGE, "source": source, "n": len(texts),
                                  "policies": {n: per[n]["heldout_lm_loss"] for n in names}}
        ran.append(lm_tax.LOSS_JUDGE)
    if sj is not None:
        tax.setdefault("heldout_lm_loss", {
            "judge": lm_tax.LOSS_JUDGE, "source": "the sandbox corpus's held-out stream",
            "n": len(sj.tax_text),
            "policies": {n: per[n]["sandbox_tax"]["heldout_lm_loss"] for n in names}})
        tax["sandbox_public_tasks"] = {
            "judge": judge("sandbox-public-tasks", "program-checks",
                           "accuracy on the sandbox corpus's few-shot 'public NLP tasks' "
                           "(greedy answer checked by program)"),
            "n": len(sj.tax_items),
            "policies": {n: per[n]["sandbox_tax"]["public_task_accuracy"] for n in names}}
    if tax:
        flat = {n: tax_values(tax, n) for n in names}
        tax["deltas"] = {"vs_base": lm_tax.deltas(flat, "base"),
                         "vs_sft": lm_tax.deltas(flat, "sft")}
        res["tax"] = tax
    if samples:
        res["examples"] = [{"prompt": p.text, "category": p.category,
                            **{n: samples[n][i] for n in names}}
                           for i, p in enumerate(prompts[:12])]
    return res


def instructions_section(sj, per: dict[str, dict]) -> dict:
    """The sandbox's Fig. 6 and Fig. 7 section from each policy's `SandboxJudges.instructed`
    figures. Its n_prompts are the first policy's (every policy of a sandbox run has the same
    tokenizer, so the same prompts fit; a policy that differs says so in its own n_prompts)."""
    from instructrl.sandbox.instructions import RESPECTFUL, TRUTHFUL

    first = next(iter(per.values()))
    sec = {"judge": sj.instructions,
           "truthfulness": {"n_prompts": first["truthfulness"]["n_prompts"],
                            "instruction": TRUTHFUL, "policies": {}},
           "toxicity": {"n_prompts": first["toxicity"]["n_prompts"],
                        "n_samples": first["toxicity"]["n_samples"],
                        "instruction": RESPECTFUL, "policies": {}}}
    for part, conds in (("truthfulness", ("plain", "instructed")),
                        ("toxicity", ("plain", "respectful"))):
        for n, r in per.items():
            fig = {c: r[part][c] for c in conds}
            if r[part]["n_prompts"] != sec[part]["n_prompts"]:
                fig["n_prompts"] = r[part]["n_prompts"]
            sec[part]["policies"][n] = fig
    return sec


def tax_values(tax: dict, name: str) -> dict[str, float]:
    """{figure: value} of one policy's tax figures (for deltas and the plot)."""
    out = {}
    if "heldout_lm_loss" in tax:
        out["held-out LM loss"] = tax["heldout_lm_loss"]["policies"][name]
    if "sandbox_public_tasks" in tax:
        out["sandbox public tasks acc."] = tax["sandbox_public_tasks"]["policies"][name]
    for task, metrics in tax.get("lm_eval", {}).get("policies", {}).get(name, {}).items():
        for metric, fig in metrics.items():
            out[f"{task} {metric}"] = fig["mean"]
    return out


def sandbox_view(results: dict) -> dict:
    """The sandbox-only results of earlier versions ({n_prompts, judges, policies: {name:
    {win_rate, likert, rm_score, flags, checks, response_words, tax}}}) from results.json, for
    scripts that read that shape (bench/sandbox_quality.py). Sandbox runs only."""
    pref = results.get("preference", {}).get("sandbox-labelers")
    if pref is None:
        raise InputError("no sandbox-labelers figures in these results (not a sandbox run)")
    tax = results.get("tax", {})
    out = {"n_prompts": pref["n_prompts"], "baseline": results["baseline"],
           "judges": pref["judge"].get("labelers", []), "policies": {},
           "examples": results.get("examples", [])}
    for n, r in pref["policies"].items():
        out["policies"][n] = {
            "path": results["policies"][n]["path"], "win_rate": r["win_rate"],
            "likert": r["likert"]["mean"], "flags": r["flags"],
            "rm_score": results["sandbox"].get("run_rm", {}).get("policies", {}).get(n),
            **results["sandbox"]["policies"][n],
            "tax": {"heldout_lm_loss": tax["heldout_lm_loss"]["policies"][n],
                    "public_task_accuracy": tax["sandbox_public_tasks"]["policies"][n]}}
    return out


def say_plan(results: dict) -> str:
    ran = ", ".join(f"{j['id']} ({j['kind']})" for j in results["judges"]["ran"]) or "none"
    lines = [f"judges that ran: {ran}"]
    for s in results["judges"]["skipped"]:
        lines.append(f"skipped {s['id']}: {s['reason']}")
    return "\n".join(lines)


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)
