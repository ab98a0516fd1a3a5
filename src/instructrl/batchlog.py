"""Sampled batches kept on disk as each one finishes, so that a long sampling (a collect round:
K responses to thousands of prompts) killed at any moment resumes with the batches it had
not sampled yet, under any number of processes.

Each batch of `generation.sample_texts` has its own seed, so a batch sampled before a kill is
the batch an uninterrupted run samples: the resumed result is the same. A folder holds one
append-only JSON-lines file per process and invocation (no two writers share a file): a first
line with the key of the sampling (model, settings and prompts: files of another key are left
unread), then one line per batch. A kill can cut the last line of a file short; reading stops
there. Written with a flush per batch (enough for a killed process, whose writes the OS keeps;
not for a lost machine). The caller deletes the folder once the result is saved."""

from __future__ import annotations

import hashlib
import json
import os
import time
from pathlib import Path


def sampling_key(*parts) -> str:
    """A digest of everything that decides a sampling's texts (JSON-serialisable parts)."""
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode("utf-8")).hexdigest()


class BatchLog:
    """The batches of a sampling already on disk in `folder` (`done`: batch index -> texts),
    and `add` for each new one."""

    def __init__(self, folder: str | os.PathLike, key: str, rank: int = 0):
        self.folder, self.key, self.rank = Path(folder), key, rank
        self.done: dict[int, list[str]] = {}
        self.other_keys = 0  # files left by a sampling with other settings
        self._file = None
        for path in sorted(self.folder.glob("*.jsonl")) if self.folder.is_dir() else []:
            self._read(path)

    def _read(self, path: Path) -> None:
        with path.open(encoding="utf-8") as f:
            lines = f.read().split("\n")
        try:
            if json.loads(lines[0]).get("key") != self.key:
                self.other_keys += 1
                return
        except (json.JSONDecodeError, AttributeError):
            return  # killed before its first line was whole
        for line in lines[1:]:
            try:
                rec = json.loads(line)
                self.done[int(rec["batch"])] = list(rec["texts"])
            except (json.JSONDecodeError, KeyError, TypeError, ValueError):
                break  # the line a kill cut short (or the empty string after the last "\n")

    def add(self, batch: int, texts: list[str]) -> None:
        if self._file is None:
            self.folder.mkdir(parents=True, exist_ok=True)
            name = f"rank{self.rank}-{os.getpid()}-{time.time_ns()}.jsonl"
            self._file = (self.folder / name).open("a", encoding="utf-8")
            self._file.write(json.dumps({"key": self.key}) + "\n")
        self._file.write(json.dumps({"batch": batch, "texts": texts}, ensure_ascii=False) + "\n")
        self._file.flush()
        self.done[batch] = texts

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
