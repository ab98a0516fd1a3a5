"""Benchmark data the way users have it: a local file (csv, tsv, jsonl, json; .gz too) or a
Hugging Face hub id loaded with `datasets` (through its cache; offline it finds what is
cached). Rows come back as (line, dict) so that a bad row is an `InputError` naming the file,
the line and the field."""

from __future__ import annotations

import csv
import gzip
import io
import json
from pathlib import Path

from instructrl.errors import InputError

LOCAL_SUFFIXES = (".csv", ".tsv", ".jsonl", ".json")


def is_local(spec: str) -> bool:
    p = Path(spec)
    return p.exists() or spec.endswith(LOCAL_SUFFIXES) or \
        spec.endswith(tuple(s + ".gz" for s in LOCAL_SUFFIXES)) or spec.startswith((".", "/"))


def _open_text(path: Path) -> str:
    raw = path.read_bytes()
    if path.suffix == ".gz":
        raw = gzip.decompress(raw)
    return raw.decode("utf-8")


def read_rows(spec: str, *, hub_config: str | None = None, hub_split: str | None = None
              ) -> tuple[str, list[tuple[int, dict]]]:
    """(source name, [(line, row), ...]) from a local file or a hub id."""
    if is_local(spec):
        path = Path(spec)
        if not path.exists():
            raise InputError("file not found", path=spec)
        name = path.name[:-3] if path.name.endswith(".gz") else path.name
        text = _open_text(path)
        if name.endswith((".csv", ".tsv")):
            reader = csv.DictReader(io.StringIO(text),
                                    delimiter="\t" if name.endswith(".tsv") else ",")
            rows = []
            for row in reader:
                rows.append((reader.line_num, row))
            if reader.fieldnames is None:
                raise InputError("empty file (no header row)", path=spec, line=1)
            return spec, rows
        if name.endswith(".json") and text.lstrip().startswith("["):
            data = json.loads(text)
            return spec, [(i + 1, r) for i, r in enumerate(data)]
        rows = []
        for lineno, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                raise InputError(f"not valid JSON ({e.msg} at column {e.colno})", path=spec,
                                 line=lineno) from None
            if not isinstance(obj, dict):
                raise InputError("a line must be a JSON object", path=spec, line=lineno)
            rows.append((lineno, obj))
        return spec, rows
    return _hub_rows(spec, hub_config, hub_split)


def _hub_rows(spec: str, config: str | None, split: str | None):
    import datasets

    try:
        ds = datasets.load_dataset(spec, config) if config else datasets.load_dataset(spec)
    except Exception as e:  # offline, unknown id, no cache: say what to do instead
        raise InputError(f"could not load the hub data set {spec!r} ({type(e).__name__}: "
                         f"{str(e).splitlines()[0][:200] if str(e) else ''}); give a local "
                         "file instead", path=spec) from None
    if split is None:
        split = next(iter(ds.keys()))
    if split not in ds:
        raise InputError(f"no split {split!r} (has: {', '.join(ds.keys())})", path=spec)
    return f"{spec}[{split}]", [(i + 1, dict(r)) for i, r in enumerate(ds[split])]


def need(row: dict, field: str, source: str, line: int, *, allow_empty: bool = False) -> str:
    """row[field] as a stripped string; missing or empty is an InputError at file:line."""
    value = row.get(field)
    if value is None or not isinstance(value, str):
        raise InputError("missing" if value is None else f"expected text, got {value!r}",
                         path=source, line=line, field=field)
    value = value.strip()
    if not value and not allow_empty:
        raise InputError("must not be empty", path=source, line=line, field=field)
    return value


def take(items: list, n: int, seed: int = 0) -> list:
    """The first `n` items of a fixed seeded shuffle (all when n <= 0 or n >= len): a slice
    that mixes the data set's sections (TruthfulQA's categories come in blocks)."""
    import random

    if n <= 0 or n >= len(items):
        return list(items)
    idx = list(range(len(items)))
    random.Random(seed).shuffle(idx)
    return [items[i] for i in sorted(idx[:n])]
