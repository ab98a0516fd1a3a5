"""Each policy's finished evaluation kept in RUN/eval/partial/ until results.json is written,
so an `instructrl eval` killed at any moment (hours, for a large model with lm-eval tasks)
resumes with the policies it had not finished.

A policy's file holds what `suite.evaluate` gathered for it (its figures, its samples, its
timings) under a key of everything that decides them: the whole run configuration, the
policy's model (its path, and the names, sizes and modification times of its files), the
judges that run and the prompts. A file of another key is evaluated again. Written atomically
by the main process; the caller removes the folder once results.json is written."""

from __future__ import annotations

import json
from pathlib import Path

from instructrl.batchlog import sampling_key
from instructrl.data.jsonl import atomic_write_text


def model_stamp(spec: str) -> list:
    """What identifies a model's weights without reading them: for a directory, its files'
    names, sizes and modification times; otherwise the spec itself (a hub id, a GGUF spec)."""
    path = Path(spec)
    if not path.is_dir():
        return [spec]
    return [spec] + sorted([f.name, f.stat().st_size, f.stat().st_mtime_ns]
                           for f in path.iterdir() if f.is_file())


class PartialResults:
    def __init__(self, folder: Path, *key_parts):
        self.folder = Path(folder)
        self.key_parts = key_parts

    def _path(self, name: str) -> Path:
        return self.folder / f"{name.replace('/', '_')}.json"

    def _key(self, name: str, spec: str) -> str:
        return sampling_key(name, model_stamp(spec), *self.key_parts)

    def get(self, name: str, spec: str) -> dict | None:
        """What `put` kept for this policy under the same key; None otherwise."""
        path = self._path(name)
        if not path.exists():
            return None
        try:
            saved = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError:
            return None
        return saved["value"] if saved.get("key") == self._key(name, spec) else None

    def put(self, name: str, spec: str, value: dict) -> None:
        atomic_write_text(self._path(name), json.dumps(
            {"key": self._key(name, spec), "value": value}, ensure_ascii=False) + "\n")
