"""A user's own data (config section `sources`) -> RUN/data/{prompts,demonstrations,rankings,
ptx}.jsonl: `instructrl data import`.

A source is a mapping (SourcesConfig's docstring):

    {path: FILE or hub id, format: auto | messages | alpaca | ... (formats.py), name: hub
     config, split: hub split (default train), data_dir: hub sub-directory, limit: N rows,
     columns: {field: column}, category: default category of its prompts, labeler: labeler
     id of its demonstrations and rankings (default: "hh" for HH data, else the file's or
     data set's name)}

FILE is ``.jsonl`` / ``.jsonl.gz``, ``.json`` (an array of objects, or JSON lines),
``.csv`` / ``.tsv`` or ``.parquet``; a directory written by ``Dataset.save_to_disk`` is read
with ``datasets.load_from_disk``; any other directory, and anything that is not a path, is
handed to ``datasets.load_dataset`` (a folder of data files, or a hub id through the Hugging
Face cache; offline, an id not in the cache is one error line saying how to fetch it). Errors name the file, the row
(the line of a jsonl or csv file, the 1-based row of the others) and the field.

What `import_sources` does:

- Reads every source and maps every row (formats.py) before writing anything: one bad row
  is an error and nothing is written.
- A prompt is one record whatever number of sources and rows hold it (ids are content
  hashes); the first source to give it sets its user, category and style. Prompts from
  `prompts` and `preferences` sources are prompts too: PPO samples the train prompts.
- Split (paper section 3.2: by user ID): users with ids are assigned whole to train / valid
  / test (`sources.valid_fraction`, `test_fraction`, `seed`); a prompt without a user id is
  its own user, so such data is split by prompt. The assignment is a seeded hash of each
  user (prompt) id, so it does not depend on the order of the rows or on `limit`.
- Demonstrations of every split are kept (SFT trains on train prompts' and selects its
  epoch on valid prompts); so are rankings (the RM trains on train, validates on valid).
- Without any demonstrations source, the preferred response of the first ranking of each
  train prompt stands in for a demonstration (as `import-pairs` does: SFT and the RM's bias
  normalisation need some); the report says so.
- Files: an import with prompt, demonstration or preference sources writes prompts.jsonl,
  demonstrations.jsonl and rankings.jsonl together (they refer to each other by prompt id;
  a kind with no data is an empty file); one with ptx sources writes ptx.jsonl. A file it
  does not write is left as it is (`--ptx` alone adds pretraining text to a run). A file it
  would write that exists already is an error unless `force`; all are written to temporary
  names and renamed at the end.
"""

from __future__ import annotations

import csv
import gzip
import json
import os
import re
import sys
from collections import Counter
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Iterator

from instructrl.data import formats
from instructrl.data.formats import KIND_FORMATS, KINDS, SourceInfo
from instructrl.data.jsonl import parse_lines, write_record_files
from instructrl.data.prompts import split_keys
from instructrl.data.records import CATEGORIES, Demonstration, Prompt, Ranking
from instructrl.errors import InputError

ENTRY_KEYS = ("path", "format", "name", "split", "data_dir", "limit", "columns", "category",
              "labeler")
LOCAL_SUFFIXES = (".jsonl", ".jsonl.gz", ".ndjson", ".json", ".json.gz", ".csv", ".csv.gz",
                  ".tsv", ".tsv.gz", ".parquet")
FETCH_HINT = ("on a machine with network run `hf download {id} --repo-type dataset "
              "--local-dir DIR` and give DIR (or one of its data files) as the path")


@dataclass(frozen=True)
class Source:
    """One validated entry of `sources.<kind>`."""

    kind: str
    path: str
    format: str = "auto"
    name: str | None = None  # hub config
    split: str = "train"  # hub split
    data_dir: str | None = None
    limit: int | None = None
    columns: dict = field(default_factory=dict)  # field -> column (None: ignore the field)
    category: str = "other"
    labeler: str | None = None
    where: str = "sources"  # the entry's place in the config, for error messages

    @classmethod
    def from_entry(cls, kind: str, entry: Any, where: str) -> "Source":
        if not isinstance(entry, dict):
            raise InputError(f"expected a mapping {{path: ..., format: ...}}, got "
                             f"{type(entry).__name__}", field=where)
        extra = sorted(set(entry) - set(ENTRY_KEYS))
        if extra:
            raise InputError(f"unknown key (known: {', '.join(ENTRY_KEYS)})",
                             field=f"{where}.{extra[0]}")

        def get(key, types, default=None):
            value = entry.get(key, default)
            if value is not None and (not isinstance(value, types) or isinstance(value, bool)):
                raise InputError(f"expected {getattr(types, '__name__', types)}, got "
                                 f"{type(value).__name__}", field=f"{where}.{key}")
            return value

        path = get("path", str)
        if not path or not path.strip():
            raise InputError("missing: a file or a hub dataset id", field=f"{where}.path")
        fmt = get("format", str, "auto")
        allowed = KIND_FORMATS[kind]
        if fmt != "auto" and fmt not in allowed:
            raise InputError(f"{fmt!r} is not a format of {kind} (auto, {', '.join(allowed)})",
                             field=f"{where}.format")
        limit = get("limit", int)
        if limit is not None and limit < 1:
            raise InputError("must be >= 1", field=f"{where}.limit")
        columns = get("columns", dict, {}) or {}
        for k, v in columns.items():
            if not isinstance(k, str) or not (v is None or isinstance(v, str)):
                raise InputError("expected {field: column name or null}",
                                 field=f"{where}.columns.{k}")
        category = get("category", str, "other")
        if category not in CATEGORIES:
            raise InputError(f"unknown category {category!r} (one of {', '.join(CATEGORIES)})",
                             field=f"{where}.category")
        return cls(kind=kind, path=path, format=fmt, name=get("name", str),
                   split=get("split", str, "train"), data_dir=get("data_dir", str),
                   limit=limit, columns=dict(columns), category=category,
                   labeler=get("labeler", str), where=where)

    def default_labeler(self, fmt: str) -> str:
        """"hh" for HH dialogues (import-pairs' id), else the file's or data set's name."""
        if self.labeler:
            return self.labeler
        if fmt == "hh":
            return "hh"
        base = Path(self.path.rstrip("/")).name
        for suffix in LOCAL_SUFFIXES:
            if base.endswith(suffix):
                base = base[:-len(suffix)]
                break
        return re.sub(r"[^A-Za-z0-9_.-]+", "-", base).strip("-") or self.kind


def sources_of(cfg) -> list[Source]:
    """Every entry of a SourcesConfig, validated (no data read yet)."""
    return [Source.from_entry(kind, entry, f"sources.{kind}[{i}]")
            for kind in KINDS for i, entry in enumerate(getattr(cfg, kind))]


# -- reading ---------------------------------------------------------------------------------
def _open_text(path: Path):
    opener = gzip.open if path.suffix == ".gz" else open
    return opener(path, "rt", encoding="utf-8", newline="")


def _read_jsonl(path: Path) -> Iterator[tuple[int, dict]]:
    with _open_text(path) as f:
        yield from parse_lines(f, str(path))


def _read_json(path: Path) -> Iterator[tuple[int, dict]]:
    """An array of objects (Alpaca's alpaca_data.json) or, as many .json files are, JSON
    lines (one object is one row)."""
    with _open_text(path) as f:
        text = f.read()
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        if e.msg == "Extra data":  # more than one value: JSON lines
            yield from _read_jsonl(path)
            return
        raise InputError(f"not valid JSON ({e.msg} at line {e.lineno} column {e.colno})",
                         path=str(path)) from None
    if isinstance(data, dict):
        data = [data]
    if not isinstance(data, list):
        raise InputError("expected an array of objects", path=str(path))
    for i, obj in enumerate(data, 1):
        if not isinstance(obj, dict):
            raise InputError("a row must be a JSON object", path=str(path), line=i)
        yield i, obj


def _read_csv(path: Path) -> Iterator[tuple[int, dict]]:
    delimiter = "\t" if ".tsv" in path.suffixes else ","
    with _open_text(path) as f:
        reader = csv.DictReader(f, delimiter=delimiter)
        for row in reader:
            # line_num is the file line where the row ends (a quoted cell may span lines)
            if None in row:  # DictReader's key for cells past the header's
                raise InputError(f"{len(row[None])} more cells than the header's "
                                 f"{len(reader.fieldnames)}", path=str(path),
                                 line=reader.line_num)
            yield reader.line_num, row


def _read_parquet(path: Path) -> Iterator[tuple[int, dict]]:
    import pyarrow.parquet as pq

    i = 0
    for batch in pq.ParquetFile(path).iter_batches(batch_size=1024):
        for row in batch.to_pylist():
            i += 1
            yield i, row


def _parquet_rows(path: Path) -> int | None:
    import pyarrow.parquet as pq
    return pq.ParquetFile(path).metadata.num_rows


READERS = {".jsonl": _read_jsonl, ".ndjson": _read_jsonl, ".json": _read_json,
           ".csv": _read_csv, ".tsv": _read_csv, ".parquet": _read_parquet}


def _suffix(path: Path) -> str:
    suffixes = [s for s in path.suffixes if s != ".gz"]
    return suffixes[-1].lower() if suffixes else ""


def _looks_like_file(src: str) -> bool:
    return src.lower().endswith(LOCAL_SUFFIXES + (".gz",)) or src.startswith((".", "~", "/"))


def _is_offline() -> bool:
    return any(os.environ.get(v, "").strip().lower() in ("1", "true", "yes", "on")
               for v in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE"))


def _network_error(e: BaseException) -> bool:
    """Whether `e` (or what caused it) says the hub could not be reached."""
    seen = set()
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        name = type(e).__name__
        if isinstance(e, (ConnectionError, TimeoutError)) or name in (
                "OfflineModeIsEnabled", "LocalEntryNotFoundError", "ConnectError",
                "ConnectTimeout", "ReadTimeout", "ProxyError"):
            return True
        e = e.__cause__ or e.__context__
    return False


def load_hub(source: Source):
    """`datasets.load_dataset` for a hub id (or a local data directory), its failures as one
    InputError line: offline with the id not cached says how to fetch it."""
    import datasets

    local = Path(source.path).expanduser()
    if (local / "state.json").is_file() or (local / "dataset_dict.json").is_file():
        ds = datasets.load_from_disk(str(local))  # a `save_to_disk` directory
        if isinstance(ds, datasets.DatasetDict):
            if source.split not in ds:
                raise InputError(f"no split {source.split!r} (splits: {', '.join(ds)})",
                                 path=str(local))
            ds = ds[source.split]
        return ds
    kwargs: dict[str, Any] = {"data_dir": source.data_dir, "split": source.split}
    if source.name is not None:
        kwargs["name"] = source.name
    try:
        ds = datasets.load_dataset(source.path, **kwargs)
    except Exception as e:  # noqa: BLE001 - every failure here is about the user's input
        if _network_error(e) or (_is_offline() and isinstance(e, OSError)):
            why = ("offline (HF_HUB_OFFLINE is set)" if _is_offline() else
                   "the hub cannot be reached (HF_HUB_OFFLINE=1 skips the retries)")
            raise InputError(f"hub dataset {source.path!r} is not in the local cache and "
                             f"{why}: {FETCH_HINT.format(id=source.path)}") from None
        first = (str(e).strip().splitlines() or [""])[0]
        raise InputError(f"cannot load hub dataset {source.path!r} (config {source.name}, "
                         f"split {source.split}, data_dir {source.data_dir}): "
                         f"{type(e).__name__}: {first}") from None
    return ds


def open_rows(source: Source) -> tuple[str, int | None, Iterator[tuple[int, dict]]]:
    """(name for error messages, number of rows if known, (row number, row) pairs)."""
    path = Path(source.path).expanduser()
    if path.is_file():
        reader = READERS.get(_suffix(path))
        if reader is None:
            raise InputError(f"unknown file type (expected one of {', '.join(LOCAL_SUFFIXES)})",
                             path=str(path))
        total = _parquet_rows(path) if reader is _read_parquet else None
        return str(path), total, _guard(reader(path), str(path))
    if not path.is_dir() and _looks_like_file(source.path):
        raise InputError("file not found (expected a .jsonl, .json, .csv, .tsv or .parquet "
                         "file, or a Hugging Face dataset id)", path=source.path)
    ds = load_hub(source)
    name = f"{source.path}[{source.split}]"
    return name, len(ds), ((i, dict(row)) for i, row in enumerate(ds, 1))


def _guard(rows: Iterator[tuple[int, dict]], name: str) -> Iterator[tuple[int, dict]]:
    """Bad bytes or a broken gzip stream as an InputError naming the file."""
    try:
        yield from rows
    except (OSError, EOFError, UnicodeDecodeError, csv.Error) as e:
        raise InputError(f"cannot read: {e}", path=name) from None


def _progress(rows, total: int | None, desc: str):
    """A tqdm bar on stderr for interactive runs (silent when stderr is not a terminal)."""
    from tqdm import tqdm
    return tqdm(rows, total=total, desc=desc, unit=" rows", file=sys.stderr, disable=None,
                leave=False)


# -- one source ------------------------------------------------------------------------------
@dataclass
class Read:
    """Everything one source gave, in row order."""

    source: Source
    name: str  # file or hub id, as errors name it
    format: str
    rows: int = 0
    prompts: list[Prompt] = field(default_factory=list)
    demonstrations: list[Demonstration] = field(default_factory=list)
    rankings: list[Ranking] = field(default_factory=list)
    texts: list[str] = field(default_factory=list)
    skipped: Counter = field(default_factory=Counter)

    def line(self) -> str:
        gave = ([f"{len(self.texts)} texts"] if self.source.kind == "ptx" else
                [f"{len({p.id for p in self.prompts})} prompts"]
                + ([f"{len(self.demonstrations)} demonstrations"]
                   if self.source.kind == "demonstrations" else [])
                + ([f"{len(self.rankings)} rankings"]
                   if self.source.kind == "preferences" else []))
        skipped = "".join(f"; skipped {n} ({why})" for why, n in sorted(self.skipped.items()))
        return (f"{self.source.kind} {self.name} ({self.format}): {self.rows} rows -> "
                f"{', '.join(gave)}{skipped}")


def read_source(source: Source, *, seed: int = 0, progress: bool = True) -> Read:
    """Read and map every row of one source; InputError naming file, row and field."""
    name, total, rows = open_rows(source)
    if source.limit is not None:
        total = min(total, source.limit) if total is not None else source.limit
    if progress:
        rows = _progress(rows, total, f"{source.kind} {Path(name).name}")
    fmt, info, columns, out = source.format, None, dict(source.columns), None
    for lineno, raw in rows:
        if source.limit is not None and out is not None and out.rows >= source.limit:
            break
        row = formats.apply_columns(raw, columns)
        if out is None:  # the first row settles the format and the columns
            missing = [c for c in columns.values() if c is not None and c not in raw]
            if missing:
                raise InputError(f"column {missing[0]!r} not in the data (its columns: "
                                 f"{', '.join(map(str, raw))})", path=name, line=lineno,
                                 field=f"{source.where}.columns")
            if fmt == "auto":
                try:
                    fmt, implicit = formats.detect(source.kind, row)
                except InputError as e:
                    raise InputError(e.message, path=name, line=lineno,
                                     field=f"{source.where}.format") from None
                columns = {**implicit, **columns}
                row = formats.apply_columns(raw, columns)
            info = SourceInfo(kind=source.kind, name=source.default_labeler(fmt),
                              category=source.category, seed=seed)
            out = Read(source, name, fmt)
        out.rows += 1
        try:
            mapped = formats.MAPPERS[fmt](row, info, len(out.rankings))
        except InputError as e:
            raise InputError(e.message, path=name, line=lineno,
                             field=formats.column_of(e.field, columns)) from None
        if mapped.skipped:
            out.skipped[mapped.skipped] += 1
        out.prompts += mapped.prompts
        out.demonstrations += mapped.demonstrations
        out.rankings += mapped.rankings
        out.texts += mapped.texts
    if out is None:
        raise InputError("no rows", path=name)
    return out


# -- the import ------------------------------------------------------------------------------
def split_unit(p: Prompt) -> str:
    """What the split assigns whole: the user, or the prompt itself when it has no user."""
    return p.id if p.user_id == formats.own_user(p.id) else p.user_id


def assign_splits(prompts: list[Prompt], valid_fraction: float, test_fraction: float,
                  seed: int) -> list[Prompt]:
    split = split_keys([split_unit(p) for p in prompts], valid_fraction, test_fraction, seed)
    return [replace(p, split=split[split_unit(p)]) for p in prompts]


def stand_in_demonstrations(prompts: list[Prompt], rankings: list[Ranking]
                            ) -> list[Demonstration]:
    """The preferred response of the first ranking of each train prompt, as its labeler's
    demonstration: preference data has no demonstrations, and SFT and the RM's bias
    normalisation (section 3.5: demonstrations score mean 0) need some. A preferred sample,
    not a written ideal."""
    train = {p.id for p in prompts if p.split == "train"}
    out, seen = [], set()
    for r in rankings:
        if r.prompt_id in train and r.prompt_id not in seen and r.ranking:
            seen.add(r.prompt_id)
            out.append(Demonstration(r.prompt_id, r.labeler_id,
                                     r.responses[r.ranking[0][0]].text))
    return out


@dataclass
class Collected:
    """What an import writes, before it is written."""

    reads: list[Read]
    prompts: list[Prompt]
    demonstrations: list[Demonstration]
    rankings: list[Ranking]
    texts: list[str]
    stand_ins: bool  # demonstrations are preferred responses (no demonstrations source)

    def files(self) -> dict[str, list]:
        out: dict[str, list] = {}
        if any(r.source.kind != "ptx" for r in self.reads):
            out.update({"prompts.jsonl": self.prompts,
                        "demonstrations.jsonl": self.demonstrations,
                        "rankings.jsonl": self.rankings})
        if any(r.source.kind == "ptx" for r in self.reads):
            out["ptx.jsonl"] = [{"text": t} for t in self.texts]
        return out

    def lines(self) -> list[str]:
        out = [r.line() for r in self.reads]
        if any(r.source.kind != "ptx" for r in self.reads):
            split = {p.id: p.split for p in self.prompts}
            users = {split_unit(p) for p in self.prompts if split_unit(p) != p.id}
            own = sum(split_unit(p) == p.id for p in self.prompts)
            how = []
            if users:
                how.append(f"{len(users)} users split by user")
            if own:
                how.append(f"{own} prompts without a user id split by prompt")
            out.append(f"prompts: {len(self.prompts)} distinct ({'; '.join(how) or 'none'})")
            rows = [("prompts", Counter(p.split for p in self.prompts)),
                    ("demonstrations", Counter(split[d.prompt_id]
                                               for d in self.demonstrations)),
                    ("rankings", Counter(split[r.prompt_id] for r in self.rankings))]
            out.append(f"{'':<16}" + "".join(f"{s:>8}" for s in ("train", "valid", "test")))
            for label, c in rows:
                out.append(f"{label:<16}" + "".join(f"{c.get(s, 0):>8}"
                                                   for s in ("train", "valid", "test")))
            if self.stand_ins:
                out.append("demonstrations: no demonstrations source; the preferred response "
                           "of each train prompt's first ranking stands in")
        if any(r.source.kind == "ptx" for r in self.reads):
            out.append(f"ptx texts: {len(self.texts)}")
        return out


def collect(sources: list[Source], *, valid_fraction: float, test_fraction: float,
            seed: int, progress: bool = True) -> Collected:
    """Read every source and build the records; reads files, writes nothing."""
    reads = [read_source(s, seed=seed, progress=progress) for s in sources]
    prompts: dict[str, Prompt] = {}
    for r in reads:
        for p in r.prompts:
            prompts.setdefault(p.id, p)
        if r.source.kind == "demonstrations" and not r.demonstrations:
            raise InputError("no demonstrations", path=r.name)
        if r.source.kind == "preferences" and not r.rankings:
            raise InputError("no usable rankings"
                             + "".join(f"; skipped {n} ({why})" for why, n in r.skipped.items()),
                             path=r.name)
        if r.source.kind == "ptx" and not r.texts:
            raise InputError("no text", path=r.name)
    split = assign_splits(list(prompts.values()), valid_fraction, test_fraction, seed)
    demos = [d for r in reads for d in r.demonstrations]
    rankings = [x for r in reads for x in r.rankings]
    stand_ins = bool(rankings) and not any(r.source.kind == "demonstrations" for r in reads)
    if stand_ins:
        demos = stand_in_demonstrations(split, rankings)
    return Collected(reads, split, demos, rankings, [t for r in reads for t in r.texts],
                    stand_ins)


def check_existing(data_dir: Path, names, force: bool) -> None:
    existing = [n for n in names if (data_dir / n).exists()]
    if existing and not force:
        raise InputError(f"{', '.join(existing)} already exist(s); use another run directory "
                         f"or --force to replace", path=str(data_dir))


def import_sources(cfg, run, *, force: bool = False, progress: bool = True) -> list[str]:
    """Read every entry of `cfg.sources` and write RUN/data (module docstring). Nothing is
    written if any row of any source is bad, or if a file it would write exists and not
    `force`. Returns the report's lines."""
    sc = cfg.sources
    sc.validate()
    sources = sources_of(sc)
    if not sources:
        raise InputError("no sources: name files or hub ids in the recipe's `sources` section "
                         "(or --demonstrations/--preferences/--prompts/--ptx)", field="sources")
    kinds = {s.kind for s in sources}
    names = (["prompts.jsonl", "demonstrations.jsonl", "rankings.jsonl"]
             if kinds - {"ptx"} else []) + (["ptx.jsonl"] if "ptx" in kinds else [])
    check_existing(run.data, names, force)  # before reading: fail fast
    imported = collect(sources, valid_fraction=sc.valid_fraction,
                       test_fraction=sc.test_fraction, seed=sc.seed, progress=progress)
    files = imported.files()
    write_record_files(run.data, files)
    return imported.lines() + [f"wrote {run.data}/{{{','.join(n[:-6] for n in files)}}}.jsonl"]
