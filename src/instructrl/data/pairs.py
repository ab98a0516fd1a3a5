"""Pairwise preference data (Anthropic HH-RLHF chosen/rejected dialogues) as K = 2 rankings.

    instructrl data import-pairs --in SRC --out RUN [--valid-fraction 0.2] [--category other]
                                 [--limit N] [--seed 0] [--split train] [--hub-data-dir DIR]

SRC is a local ``.jsonl`` / ``.jsonl.gz`` file of ``{"chosen": dialogue, "rejected": dialogue}``
lines, or, when it is not an existing path, a Hugging Face hub id read with
``datasets.load_dataset(SRC, data_dir=..., split=...)`` (e.g. ``Anthropic/hh-rlhf`` with
``--hub-data-dir harmless-base``). A dialogue is ``"\\n\\nHuman: ...\\n\\nAssistant: ..."``.

How a pair becomes records (DESIGN.md section 2: "pairwise data is a ranking with K = 2"):

- **Prompt**: chosen and rejected share the conversation up to the final assistant turn; the
  prompt is that shared dialogue up to and including its last ``"\\n\\nAssistant:"`` (taken
  from the longest common prefix of the two, so a response that itself contains
  ``"Assistant:"`` or ``"Human:"`` does not move the cut). The text is kept verbatim.
  ``id`` is ``"hh-"`` + the first 16 hex digits of the SHA-256 of the text, so re-imports and
  other files agree on ids.
- **user_id**: HH-RLHF has no user ids. Each distinct prompt is its own user
  (``user_id = "user-" + id``), so `data prepare`'s split by user is a split by prompt and its
  per-user cap (paper: 200) never binds.
- **Duplicates**: pairs whose prompt text is identical are all kept, as several rankings of
  one prompt (one Prompt record, one Ranking per pair): each is a separate comparison a person
  made, and one prompt id keeps them in the same split so validation never sees a training
  prompt.
- **split**: a fraction ``--valid-fraction`` of distinct prompts goes to ``valid``, the rest to
  ``train``; which ones is fixed by the seed and the prompt ids (not the file order), so a
  prompt stays in its split when ``--limit`` or the order of lines changes.
- **Ranking**: responses = the two final assistant turns (white space stripped), policies
  ``"hh-chosen"`` / ``"hh-rejected"``, written in a seeded random order (so the position
  says nothing) with ``ranking`` putting the chosen one first; ``labeler_id`` ``"hh"``.
  A pair whose two responses are identical has nothing to learn: it is skipped and counted.
- **Demonstrations** (a stand-in): HH-RLHF has no demonstrations, but the RM's bias
  normalisation (section 3.5: labeler demonstrations score mean 0) and SFT need some. The
  chosen response of the first pair of each *train* prompt stands in for a labeler's
  demonstration (``labeler_id`` ``"hh"``). It is a preferred sample, not a written ideal,
  so the RM's mean 0 is "the typical chosen response scores 0".

Every line is validated before anything is written; a bad line is an `InputError` naming the
file, line and field. The three files are written to temporary names first and renamed
together at the end.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import random
import tempfile
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Iterator

from instructrl.data.records import (CATEGORIES, Demonstration, Prompt, Ranking, Response)
from instructrl.errors import InputError

ASSISTANT = "\n\nAssistant:"
LABELER = "hh"
CHOSEN, REJECTED = "hh-chosen", "hh-rejected"
OUTPUT_FILES = ("prompts.jsonl", "rankings.jsonl", "demonstrations.jsonl")


@dataclass(frozen=True)
class Pair:
    """One parsed chosen/rejected row: the shared prompt and the two final assistant turns."""

    prompt: str
    chosen: str
    rejected: str


def split_pair(chosen: str, rejected: str) -> Pair:
    """Split two dialogues into the prompt they share and their final assistant turns.

    The cut is the last ``"\\n\\nAssistant:"`` inside the longest common prefix of the two
    dialogues: everything up to and including it is the prompt. Raises InputError(field=...)
    when the two share no assistant turn."""
    common = os.path.commonprefix([chosen, rejected])
    cut = common.rfind(ASSISTANT)
    if cut < 0:
        field = "chosen" if ASSISTANT not in chosen else "rejected"
        raise InputError(f"chosen and rejected share no {ASSISTANT.strip()!r} turn: expected "
                         f"one dialogue '\\n\\nHuman: ...\\n\\nAssistant: ...' with two "
                         f"different final assistant replies", field=field)
    end = cut + len(ASSISTANT)
    prompt = chosen[:end]
    if not prompt[:cut].strip():
        raise InputError("the dialogue has no human turn before the assistant's reply",
                         field="chosen")
    return Pair(prompt, chosen[end:].strip(), rejected[end:].strip())


def parse_row(obj: Any) -> Pair:
    """A {"chosen": str, "rejected": str} row -> Pair; InputError(field=...) if malformed."""
    if not isinstance(obj, dict):
        raise InputError("a line must be a JSON object {\"chosen\": ..., \"rejected\": ...}")
    for name in ("chosen", "rejected"):
        if name not in obj or obj[name] is None:
            raise InputError("missing", field=name)
        if not isinstance(obj[name], str):
            raise InputError(f"expected str, got {type(obj[name]).__name__}", field=name)
    return split_pair(obj["chosen"], obj["rejected"])


def prompt_id(text: str) -> str:
    return "hh-" + hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def _key(seed: int, pid: str) -> str:
    return hashlib.sha256(f"{seed}:{pid}".encode()).hexdigest()


def valid_ids(ids: Iterable[str], valid_fraction: float, seed: int) -> set[str]:
    """round(valid_fraction * n) of the distinct ids, chosen by a seeded hash of each id (so
    the choice does not depend on the order they came in)."""
    ids = sorted(set(ids), key=lambda i: _key(seed, i))
    return set(ids[:round(valid_fraction * len(ids))])


@dataclass(frozen=True)
class Imported:
    prompts: list[Prompt]
    rankings: list[Ranking]
    demonstrations: list[Demonstration]
    rows: int
    identical: int  # pairs skipped because chosen == rejected

    def lines(self) -> list[str]:
        split = Counter(p.split for p in self.prompts)
        by_id = {p.id: p.split for p in self.prompts}
        rsplit = Counter(by_id[r.prompt_id] for r in self.rankings)
        dup = len(self.rankings) - len(self.prompts)
        return [f"pairs read: {self.rows}; skipped (identical responses): {self.identical}; "
                f"rankings (K = 2): {len(self.rankings)} on {len(self.prompts)} distinct "
                f"prompts ({dup} extra pairs on repeated prompts)",
                f"{'':<16}{'train':>8}{'valid':>8}",
                f"{'prompts':<16}{split.get('train', 0):>8}{split.get('valid', 0):>8}",
                f"{'rankings':<16}{rsplit.get('train', 0):>8}{rsplit.get('valid', 0):>8}",
                f"demonstrations (chosen responses of train prompts, a stand-in): "
                f"{len(self.demonstrations)}"]


def build(rows: Iterable[tuple[int, Any]], *, source: str, valid_fraction: float = 0.2,
          category: str = "other", seed: int = 0, limit: int | None = None) -> Imported:
    """(line number, JSON object) rows -> prompts, K = 2 rankings and stand-in demonstrations.
    Pure: reads nothing, writes nothing. Errors name `source`, the line and the field."""
    if category not in CATEGORIES:
        raise InputError(f"unknown category {category!r} (one of {', '.join(CATEGORIES)})",
                         field="--category")
    if not 0 <= valid_fraction < 1:
        raise InputError("must be in [0, 1)", field="--valid-fraction")
    texts: dict[str, str] = {}  # prompt id -> text, first-seen order
    pairs: list[tuple[str, Pair]] = []
    n = identical = 0
    for lineno, obj in rows:
        if limit is not None and n >= limit:
            break
        n += 1
        try:
            pair = parse_row(obj)
        except InputError as e:
            raise InputError(e.message, path=source, line=lineno, field=e.field) from None
        if pair.chosen == pair.rejected:
            identical += 1
            continue
        pid = prompt_id(pair.prompt)
        texts.setdefault(pid, pair.prompt)
        pairs.append((pid, pair))
    valid = valid_ids(texts, valid_fraction, seed)
    prompts = [Prompt(id=pid, user_id=f"user-{pid}", text=text, category=category,
                      style="plain", split="valid" if pid in valid else "train")
               for pid, text in texts.items()]
    rankings, demos, seen = [], [], set()
    for i, (pid, pair) in enumerate(pairs):
        # Random order per pair (seeded), so a model cannot learn "the first one wins".
        flip = random.Random(f"{seed}:{pid}:{i}").random() < 0.5
        chosen, rejected = Response(pair.chosen, CHOSEN), Response(pair.rejected, REJECTED)
        if flip:
            rankings.append(Ranking(pid, LABELER, [rejected, chosen], [[1], [0]]))
        else:
            rankings.append(Ranking(pid, LABELER, [chosen, rejected], [[0], [1]]))
        if pid not in valid and pid not in seen:
            seen.add(pid)
            demos.append(Demonstration(pid, LABELER, pair.chosen))
    return Imported(prompts, rankings, demos, n, identical)


# -- reading -------------------------------------------------------------------------------
def _looks_like_file(src: str) -> bool:
    return src.endswith((".jsonl", ".jsonl.gz", ".json", ".gz")) or src.startswith((".", "~"))


def read_local(path: Path) -> Iterator[tuple[int, Any]]:
    """(line number, parsed JSON) for each non-blank line of a .jsonl or .jsonl.gz file."""
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rt", encoding="utf-8") as f:
            for lineno, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    yield lineno, json.loads(line)
                except json.JSONDecodeError as e:
                    raise InputError(f"not valid JSON ({e.msg} at column {e.colno})",
                                     path=str(path), line=lineno) from None
    except (OSError, EOFError, UnicodeDecodeError) as e:  # a bad gzip stream, bad bytes
        raise InputError(f"cannot read: {e}", path=str(path)) from None


def read_hub(name: str, split: str, data_dir: str | None) -> Iterator[tuple[int, Any]]:
    """Rows of a Hugging Face hub dataset (needs the internet, or the `datasets` cache)."""
    import datasets

    ds = datasets.load_dataset(name, data_dir=data_dir, split=split)
    for i, row in enumerate(ds, 1):
        yield i, dict(row)


def read_source(src: str, split: str = "train", data_dir: str | None = None
                ) -> tuple[str, Iterator[tuple[int, Any]]]:
    """(name for error messages, rows) for a local file or, if `src` is not a path, a hub id."""
    path = Path(src).expanduser()
    if path.is_file():
        return str(path), read_local(path)
    if path.exists() or _looks_like_file(src):
        raise InputError("file not found (expected a .jsonl or .jsonl.gz file, or a "
                         "Hugging Face dataset id)", path=src)
    return f"{src}[{split}]", read_hub(src, split, data_dir)


# -- writing -------------------------------------------------------------------------------
def write_run_data(data_dir: Path, imported: Imported) -> dict[str, int]:
    """Write prompts, rankings and demonstrations .jsonl into `data_dir`: all three to
    temporary files first, then renamed, so a failure leaves no new file half-written."""
    data_dir.mkdir(parents=True, exist_ok=True)
    content = {"prompts.jsonl": imported.prompts, "rankings.jsonl": imported.rankings,
               "demonstrations.jsonl": imported.demonstrations}
    tmps: dict[str, str] = {}
    try:
        for name, records in content.items():
            fd, tmp = tempfile.mkstemp(prefix=f".{name}.", suffix=".tmp", dir=data_dir)
            tmps[name] = tmp
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                for r in records:
                    f.write(json.dumps(r.to_dict(), ensure_ascii=False) + "\n")
                f.flush()
                os.fsync(f.fileno())
        for name, tmp in tmps.items():
            os.replace(tmp, data_dir / name)
    finally:
        for tmp in tmps.values():
            Path(tmp).unlink(missing_ok=True)
    return {name: len(records) for name, records in content.items()}


def import_pairs(src: str, run_dir: str | Path, *, valid_fraction: float = 0.2,
                 category: str = "other", seed: int = 0, limit: int | None = None,
                 split: str = "train", hub_data_dir: str | None = None,
                 force: bool = False) -> Imported:
    """Read pairs from `src` and write RUN/data/{prompts,rankings,demonstrations}.jsonl."""
    data_dir = Path(run_dir) / "data"
    existing = [n for n in OUTPUT_FILES if (data_dir / n).exists()]
    if existing and not force:
        raise InputError(f"{', '.join(existing)} already exist(s); use another run directory "
                         f"or --force to replace", path=str(data_dir))
    source, rows = read_source(src, split, hub_data_dir)
    imported = build(rows, source=source, valid_fraction=valid_fraction, category=category,
                     seed=seed, limit=limit)
    if not imported.rankings:
        raise InputError("no usable pairs", path=source)
    write_run_data(data_dir, imported)
    return imported
