"""The run directory (DESIGN.md section 2): where stages find their inputs and leave outputs.

    runs/<name>/config.yaml            resolved config of every stage that ran
    runs/<name>/data/*.jsonl           prompts, demonstrations, rankings, ptx, labelers
    runs/<name>/{base,sft,rm,ppo}/     save_pretrained dirs + metrics.jsonl, samples.jsonl,
                                       checkpoint/ (resume state), done.json (finished)
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

from instructrl.config import RunConfig, config_changes, dump_config, load_config
from instructrl.data.jsonl import atomic_write_text, read_jsonl, read_records
from instructrl.data.records import Demonstration, Labeler, Prompt, Ranking
from instructrl.errors import InputError


class RunDir:
    def __init__(self, root: str | Path):
        self.root = Path(root)
        self.data = self.root / "data"

    def stage(self, name: str) -> Path:
        return self.root / name

    # --- inputs ------------------------------------------------------------------------
    def prompts(self, split: str | None = None) -> list[Prompt]:
        prompts = read_records(self.data / "prompts.jsonl", Prompt.from_dict)
        return [p for p in prompts if split is None or p.split == split]

    def prompts_by_id(self) -> dict[str, Prompt]:
        return {p.id: p for p in self.prompts()}

    def demonstrations(self) -> list[Demonstration]:
        return read_records(self.data / "demonstrations.jsonl", Demonstration.from_dict)

    def rankings(self) -> list[Ranking]:
        path = self.data / "rankings.jsonl"
        return read_records(path, Ranking.from_dict) if path.exists() else []

    def labelers(self) -> list[Labeler]:
        path = self.data / "labelers.jsonl"
        return read_records(path, Labeler.from_dict) if path.exists() else []

    def heldout_labelers(self) -> set[str]:
        return {lab.id for lab in self.labelers() if lab.heldout}

    def ptx_texts(self, why: str = "the pretraining mix") -> list[str]:
        """Pretraining text for the ptx loss: RUN/data/ptx.jsonl lines of {"text": ...}."""
        path = self.data / "ptx.jsonl"
        if not path.exists():
            raise InputError(f"no pretraining text, needed for {why}: write JSON lines "
                             f'{{"text": "..."}} here, or import a text data set with '
                             f"`instructrl data import --out {self.root} --ptx SRC`",
                             path=str(path))
        out = []
        for lineno, obj in read_jsonl(path):
            if not isinstance(obj.get("text"), str):
                raise InputError("expected a string", path=str(path), line=lineno, field="text")
            out.append(obj["text"])
        return out

    # --- stage bookkeeping ------------------------------------------------------------------
    def is_done(self, stage: str) -> bool:
        return (self.stage(stage) / "done.json").exists()

    def mark_done(self, stage: str, **info: Any) -> None:
        info.setdefault("finished", time.strftime("%Y-%m-%d %H:%M:%S"))
        atomic_write_text(self.stage(stage) / "done.json", json.dumps(info, indent=1) + "\n")

    def done_info(self, stage: str) -> dict:
        return json.loads((self.stage(stage) / "done.json").read_text())


def join_prompts(rows, prompts: dict[str, Prompt], path: str) -> list[tuple[Prompt, Any]]:
    """Pair each record that has a `prompt_id` with its prompt; an unknown id is an error."""
    out = []
    for i, r in enumerate(rows, 1):
        if r.prompt_id not in prompts:
            raise InputError(f"unknown prompt_id {r.prompt_id!r} (not in prompts.jsonl)",
                             path=path, line=i, field="prompt_id")
        out.append((prompts[r.prompt_id], r))
    return out


def write_run_config(run: RunDir, cfg: RunConfig, who: str) -> None:
    """Record `cfg` as the run's config.yaml, first saying on stderr which settings differ
    from the one already there: stages already done are kept as they were made (resuming
    skips them), so a run continued with other settings mixes both."""
    own = run.root / "config.yaml"
    changes = config_changes(load_config(own), cfg) if own.exists() else []
    if changes:
        print(f"{who}: {run.root} was run with other settings: {'; '.join(changes)}. "
              f"Stages already done there are kept as they were made; use a new --out to "
              f"run everything with these settings.", file=sys.stderr)
    atomic_write_text(own, dump_config(cfg))
