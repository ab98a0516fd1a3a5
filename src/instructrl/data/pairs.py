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
  other files agree on ids. ``messages`` holds the dialogue as chat turns (user, assistant,
  ..., user), which is what a model is prompted with (`Prompt.chat`, templates.py), so a
  chat template renders the turns rather than one user message holding "Human:" lines.
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

The row mapping is the `hh` format of `instructrl data import` (formats.py), the reading and
the stand-in demonstrations are sources.py's: this module is the command's own choices
(valid split only, one category, its report).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Iterable, Iterator

from instructrl.data import formats
from instructrl.data.formats import Pair, SourceInfo, split_pair  # noqa: F401 (API)
from instructrl.data.jsonl import write_record_files
from instructrl.data.prompts import split_keys
from instructrl.data.records import CATEGORIES, Demonstration, Prompt, Ranking
from instructrl.data.sources import Source, check_existing, open_rows, stand_in_demonstrations
from instructrl.errors import InputError

LABELER = "hh"
CHOSEN, REJECTED = "hh-chosen", "hh-rejected"
OUTPUT_FILES = ("prompts.jsonl", "rankings.jsonl", "demonstrations.jsonl")
prompt_id = formats.hh_prompt_id


def valid_ids(ids: Iterable[str], valid_fraction: float, seed: int) -> set[str]:
    """The distinct ids put in the valid split, chosen by a seeded hash of each id (so the
    choice does not depend on the order they came in)."""
    return {i for i, s in split_keys(ids, valid_fraction, 0.0, seed).items() if s == "valid"}


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
    info = SourceInfo(kind="preferences", name=LABELER, category=category, seed=seed)
    prompts: dict[str, Prompt] = {}  # first-seen order
    rankings: list[Ranking] = []
    n = identical = 0
    for lineno, obj in rows:
        if limit is not None and n >= limit:
            break
        n += 1
        try:
            if not isinstance(obj, dict):
                raise InputError('a line must be a JSON object {"chosen": ..., "rejected": ...}')
            mapped = formats.map_hh(obj, info, len(rankings))
        except InputError as e:
            raise InputError(e.message, path=source, line=lineno, field=e.field) from None
        if mapped.skipped:
            identical += 1
            continue
        for p in mapped.prompts:
            prompts.setdefault(p.id, p)
        rankings += mapped.rankings
    valid = valid_ids(prompts, valid_fraction, seed)
    out = [replace(p, split="valid" if p.id in valid else "train") for p in prompts.values()]
    return Imported(out, rankings, stand_in_demonstrations(out, rankings), n, identical)


# -- reading and writing -----------------------------------------------------------------------
def read_source(src: str, split: str = "train", data_dir: str | None = None
                ) -> tuple[str, Iterator[tuple[int, Any]]]:
    """(name for error messages, rows) for a local file or, if `src` is not a path, a hub id
    (sources.py; offline, an uncached id is one error line saying how to fetch it)."""
    name, _, rows = open_rows(Source(kind="preferences", path=src, format="hh", split=split,
                                     data_dir=data_dir))
    return name, rows


def write_run_data(data_dir: Path, imported: Imported) -> dict[str, int]:
    """Write prompts, rankings and demonstrations .jsonl into `data_dir` together (temporary
    files renamed at the end: a failure leaves no new file half-written)."""
    return write_record_files(data_dir, {"prompts.jsonl": imported.prompts,
                                         "rankings.jsonl": imported.rankings,
                                         "demonstrations.jsonl": imported.demonstrations})


def import_pairs(src: str, run_dir: str | Path, *, valid_fraction: float = 0.2,
                 category: str = "other", seed: int = 0, limit: int | None = None,
                 split: str = "train", hub_data_dir: str | None = None,
                 force: bool = False) -> Imported:
    """Read pairs from `src` and write RUN/data/{prompts,rankings,demonstrations}.jsonl."""
    data_dir = Path(run_dir) / "data"
    check_existing(data_dir, OUTPUT_FILES, force)
    source, rows = read_source(src, split, hub_data_dir)
    imported = build(rows, source=source, valid_fraction=valid_fraction, category=category,
                     seed=seed, limit=limit)
    if not imported.rankings:
        raise InputError("no usable pairs", path=source)
    write_run_data(data_dir, imported)
    return imported
