"""Preference against a baseline (paper section 4.1, Fig. 1, 3, 4): how often each policy's
response to a held-out user's prompt is preferred to the baseline's (SFT), ties counted half,
with a 95 % CI, overall and per prompt category; Likert scores and metadata flags where the
judge gives them. The judges: people (the labeling app's held-out pool, `people.py`), the
sandbox's held-out labelers (`sandbox_eval.py`) and a held-out reward model (here).

The baseline judged against itself uses a second, independent sample of the baseline, so its
own "win rate" is an honest ~0.5, not a comparison of identical texts.
"""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path

from instructrl.data.records import Prompt
from instructrl.errors import InputError
from instructrl.evaluate.judges import judge
from instructrl.evaluate.stats import figure, win_figure

TIE = 1e-6  # RM scores closer than this are a tie


def win_section(prompts: list[Prompt], outcomes: list[float]) -> dict:
    """{"win_rate": figure, "by_category": {category: figure}} from per-prompt outcomes."""
    by: dict[str, list[float]] = defaultdict(list)
    for p, o in zip(prompts, outcomes):
        by[p.category].append(o)
    return {"win_rate": win_figure(outcomes),
            "by_category": {c: win_figure(v) for c, v in sorted(by.items())}}


def outcome(a: float, b: float) -> float:
    return 0.5 if abs(a - b) < TIE else (1.0 if a > b else 0.0)


def _rankings_file(rm_dir: Path) -> Path | None:
    done = rm_dir / "done.json"
    if not done.exists():
        return None
    path = json.loads(done.read_text()).get("rankings")
    return Path(path) if path else None


def _ranking_keys(path: Path) -> set[str]:
    from instructrl.data.jsonl import read_jsonl
    return {json.dumps(sorted(r.get("text", "") for r in obj.get("responses", [])))
            for _, obj in read_jsonl(path)}


def check_heldout_rm(rm_dir: str | Path, run_rms: list[Path]) -> dict:
    """The held-out RM judge's description. Refused when it is one of the run's own RMs (the
    RM PPO optimised would be judging its own policies); when both name their rankings file
    (done.json), the number of response sets they share is measured and stated."""
    rm_dir = Path(rm_dir)
    if not rm_dir.exists():
        raise InputError("held-out reward model not found", path=str(rm_dir),
                         field="eval.heldout_rm")
    for own in run_rms:
        if own.exists() and own.resolve() == rm_dir.resolve():
            raise InputError("this is the run's own reward model (what PPO optimised): it "
                             "cannot judge its own policies; train one on preference data the "
                             "run's RM never saw", path=str(rm_dir), field="eval.heldout_rm")
    info = {"path": str(rm_dir)}
    mine = _rankings_file(rm_dir)
    theirs = [f for f in (_rankings_file(r) for r in run_rms if r.exists()) if f is not None]
    if mine is not None and mine.exists() and theirs:
        if any(t.exists() and t.resolve() == mine.resolve() for t in theirs):
            raise InputError(f"trained on {mine}, the same rankings as the run's RM: not a "
                             "held-out judge", path=str(rm_dir), field="eval.heldout_rm")
        keys = _ranking_keys(mine)
        shared = set().union(*(_ranking_keys(t) for t in theirs if t.exists())) & keys
        info.update(rankings=str(mine), shared_with_run_rm=len(shared))
    return judge("heldout-rm", "heldout-rm",
                 f"held-out reward model {rm_dir.name} (trained on preference data the run's "
                 f"RM never saw)", **info)


def rm_scores(rm_dir: str | Path, prompts: list[Prompt], samples: dict[str, list[str]], *,
              max_prompt_tokens: int, max_response_tokens: int, batch_size: int = 16,
              model_cfg=None) -> dict[str, list[float]]:
    """The held-out RM's score of every policy's response to every prompt."""
    import torch
    from tqdm.auto import tqdm

    from instructrl.distributed import runtime
    from instructrl.generation import score_texts
    from instructrl.modeling import ScalarHeadModel, default_device, load_tokenizer

    device = default_device()
    rm = ScalarHeadModel.from_pretrained(rm_dir, model_cfg=model_cfg).to(device).eval()
    tok = load_tokenizer(rm_dir, model_cfg)
    texts = [p.text for p in prompts]
    out = {}
    for name, responses in tqdm(list(samples.items()), desc="held-out RM", unit="policy",
                                disable=not runtime().is_main):
        with torch.no_grad():
            out[name] = score_texts(rm, tok, texts, responses,
                                    max_prompt_tokens=max_prompt_tokens,
                                    max_response_tokens=max_response_tokens,
                                    batch_size=batch_size, split=True).tolist()
    del rm
    return out


def rm_judge(scores: dict[str, list[float]], prompts: list[Prompt], baseline: str,
             again: str) -> dict[str, dict]:
    """Per policy: win section against the baseline by the held-out RM, and its mean score.
    `again` names the baseline's second sample in `scores`."""
    out = {}
    for name, s in scores.items():
        if name == again:
            continue
        theirs = scores[again] if name == baseline else scores[baseline]
        sec = win_section(prompts, [outcome(a, b) for a, b in zip(s, theirs)])
        sec["score"] = figure(s)
        out[name] = sec
    return out
