"""The alignment tax (paper section 4.2, App. E): how much RLHF costs on public NLP tasks and on
the pretraining distribution, measured on every policy and reported as deltas against the base
model and SFT (PPO regresses them; PPO-ptx should recover most of it, Fig. 29-34).

- any lm-evaluation-harness task by name, through lm-eval's Hugging Face model interface
  (`HFLM(pretrained=model, tokenizer=tokenizer)`), scored by the task's own metric; custom
  tasks (YAML + a local data file) from a directory (`include_path`), so nothing downloads;
- the LM loss (mean next-token negative log-likelihood) on held-out pretraining text.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

from instructrl.errors import InputError
from instructrl.evaluate.judges import judge


def lm_loss(model, tokenizer, texts: list[str], max_tokens: int = 128, batch_size: int = 32
            ) -> float:
    """Mean next-token loss on `texts` (held-out pretraining text: the LM part of the tax):
    SFT's token-weighted evaluation loss with the whole text as the "response" (under N
    processes each takes its shard of the texts and the sums are added up)."""
    import torch

    from instructrl.stages.sft import eval_loss
    seqs = [([], tokenizer(t, add_special_tokens=False)["input_ids"][:max_tokens])
            for t in texts]
    seqs = [s for s in seqs if len(s[1]) >= 2]
    if not seqs:
        return float("nan")
    with torch.no_grad():
        return eval_loss(model, seqs, tokenizer.pad_token_id, batch_size,
                         next(model.parameters()).device)


def load_texts(spec: str, n: int = 0, seed: int = 0) -> tuple[str, list[str]]:
    """Held-out text: a .txt file (one document a line) or a jsonl/json/csv/hub data set with
    a `text` field."""
    from instructrl.evaluate.data import need, read_rows, take

    path = Path(spec)
    if path.suffix == ".txt":
        if not path.exists():
            raise InputError("file not found", path=spec)
        texts = [line for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
        source = spec
    else:
        source, rows = read_rows(spec)
        texts = [need(row, "text", source, line) for line, row in rows]
    if not texts:
        raise InputError("no texts", path=source)
    return source, take(texts, n, seed)


def _task_manager(tasks: list[str], include_path: str | None):
    from lm_eval.tasks import TaskManager

    if include_path:
        if not Path(include_path).is_dir():
            raise InputError("not a directory of lm-eval task YAML files",
                             path=include_path, field="eval.lm_eval_include")
        tm = TaskManager(include_path=str(include_path), include_defaults=False)
        if all(t in tm.all_tasks for t in tasks):
            return tm  # indexing lm-eval's thousands of built-in tasks takes seconds
        return TaskManager(include_path=str(include_path))
    return TaskManager()


def lm_eval_tasks(model, tokenizer, tasks: list[str], *, include_path: str | None = None,
                  limit: int = 0, batch_size: int = 16) -> dict[str, dict[str, dict]]:
    """{task: {metric: {mean, low, high, n, stderr}}} from lm-eval's `simple_evaluate` on the
    model in memory. An unknown task is an InputError naming it.

    Under N processes the main process runs the tasks alone and the others wait for its
    figures: HFLM given a model in memory runs as one process (its own data parallelism needs
    lm-eval to load the model under `accelerate launch`)."""
    from instructrl.distributed import runtime
    rt = runtime()
    got = None
    if rt.is_main:
        try:
            got = _lm_eval_tasks(model, tokenizer, tasks, include_path, limit, batch_size)
        except InputError as e:  # every process stops with it, not the main one alone
            got = e
    got = rt.gather_objects(got)[0]
    if isinstance(got, InputError):
        raise got
    return got


def _lm_eval_tasks(model, tokenizer, tasks, include_path, limit, batch_size):
    import lm_eval
    from lm_eval.models.huggingface import HFLM

    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    tm = _task_manager(tasks, include_path)
    unknown = [t for t in tasks if t not in tm.all_tasks]
    if unknown:
        raise InputError(f"unknown lm-eval task {unknown[0]!r}" + (
            f" (not in {include_path} nor lm-eval's own tasks)" if include_path else ""),
            field="eval.lm_eval_tasks")
    lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size)
    res = lm_eval.simple_evaluate(model=lm, tasks=list(tasks), task_manager=tm,
                                  limit=limit or None, log_samples=False, verbosity="ERROR")
    out: dict[str, dict[str, dict]] = {}
    for task, metrics in res["results"].items():
        n = (res.get("n-samples", {}).get(task) or {}).get("effective")
        row = {}
        for key, value in metrics.items():
            if "," not in key or "_stderr" in key or not isinstance(value, (int, float)):
                continue
            name, filt = key.split(",", 1)
            se = metrics.get(f"{name}_stderr,{filt}")
            se = float(se) if isinstance(se, (int, float)) else float("nan")
            label = name if filt == "none" else f"{name} ({filt})"
            row[label] = {"mean": float(value), "stderr": se,
                          "low": float(value) - 1.96 * se if math.isfinite(se) else float("nan"),
                          "high": float(value) + 1.96 * se if math.isfinite(se) else float("nan"),
                          "n": n}
        out[task] = row
    return out


def deltas(per_policy: dict[str, dict[str, float]], against: str) -> dict[str, dict[str, float]]:
    """{policy: {figure: value - value of `against`}} for the figures both have."""
    if against not in per_policy:
        return {}
    ref = per_policy[against]
    return {p: {k: v - ref[k] for k, v in figs.items() if k in ref}
            for p, figs in per_policy.items() if p != against}


LM_EVAL_JUDGE = judge("lm-eval", "lm-eval",
                      "lm-evaluation-harness tasks, each scored by its own metric")
LOSS_JUDGE = judge("heldout-lm-loss", "likelihood",
                   "the policy's next-token loss on held-out pretraining text (lower is better)")
