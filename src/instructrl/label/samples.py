"""The files the labeling app imports.

Prompts: the project's prompt records (`Prompt`, one JSON object a line), e.g. RUN/data/prompts.jsonl.

Samples: K model responses to one prompt, to be ranked (or edited) together; one JSON object
a line, exactly these fields (`instructrl collect` writes them to RUN/collect-<round>/samples.jsonl):

    {"prompt_id": "p17", "responses": [{"text": "...", "policy": "sft"},
                                       {"text": "...", "policy": "ppo"}, ...]}

- `prompt_id` names a prompt that is already imported or is in the same import;
- `responses` holds 2 to 9 objects (paper section 3.5: K = 4 to 9; pairwise data is K = 2),
  each exactly {text, policy}: the response text (may be empty) and the name of the model
  that wrote it.
The order of `responses` is kept: rankings and Likert scores index into it. Unknown fields are
errors (a typo must not silently drop data). Importing the same line twice is a no-op: a
response set is identified by a hash of its prompt id and responses.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

from instructrl.data.jsonl import parse_lines
from instructrl.data.records import Response
from instructrl.errors import InputError

MIN_K, MAX_K = 2, 9


@dataclass(frozen=True)
class SampleSet:
    prompt_id: str
    responses: list[Response]

    @classmethod
    def from_dict(cls, d: dict) -> "SampleSet":
        extra = sorted(set(d) - {"prompt_id", "responses"})
        if extra:
            raise InputError("unknown field (a samples line has exactly prompt_id and responses)",
                             field=extra[0])
        pid = d.get("prompt_id")
        if not isinstance(pid, str) or not pid.strip():
            raise InputError("missing or not a non-empty string", field="prompt_id")
        raw = d.get("responses")
        if not isinstance(raw, list):
            raise InputError("missing or not a list of {text, policy}", field="responses")
        if not MIN_K <= len(raw) <= MAX_K:
            raise InputError(f"need {MIN_K} to {MAX_K} responses, got {len(raw)}",
                             field="responses")
        # An empty text is allowed: a policy can answer with EOS at once, and labelers should
        # see (and rank) that.
        responses = [Response.from_dict(r, i) for i, r in enumerate(raw)]
        return cls(prompt_id=pid, responses=responses)

    def key(self) -> str:
        blob = json.dumps([self.prompt_id, [[r.text, r.policy] for r in self.responses]],
                          ensure_ascii=False)
        return hashlib.sha256(blob.encode()).hexdigest()

    def to_dict(self) -> dict:
        return {"prompt_id": self.prompt_id,
                "responses": [{"text": r.text, "policy": r.policy} for r in self.responses]}


MAX_DEPTH = 100  # nesting of lists and objects in one line


def _check_values(obj) -> None:
    """Refuse what a database cannot store or a line should not hold: strings with NUL
    (PostgreSQL's text cannot hold U+0000) or unpaired surrogates (not UTF-8), and nesting
    deeper than MAX_DEPTH. Iterative, so a deep value cannot exhaust the stack."""
    stack = [(obj, 0, None)]
    while stack:
        value, depth, field = stack.pop()
        if isinstance(value, str):
            for text in (value, field or ""):
                if "\x00" in text:
                    raise InputError("contains a NUL character (U+0000), which the database "
                                     "cannot store", field=field)
                try:
                    text.encode("utf-8")
                except UnicodeEncodeError:
                    raise InputError("contains an unpaired surrogate (not valid Unicode)",
                                     field=field) from None
        elif isinstance(value, (list, dict)):
            if depth >= MAX_DEPTH:
                raise InputError(f"nested deeper than {MAX_DEPTH} levels", field=field)
            items = value.items() if isinstance(value, dict) else enumerate(value)
            for key, v in items:
                name = key if field is None else f"{field}.{key}" if isinstance(key, str) \
                    else f"{field}[{key}]"
                if isinstance(key, str):
                    stack.append((key, depth + 1, name))
                stack.append((v, depth + 1, str(name)))


def text_rows(text: str, source: str) -> list[tuple[int, dict]]:
    """(line number, object) for each non-blank line of a file's text, its values checked.
    Lines end at "\n" only: a JSON string may hold U+2028 and other characters that
    str.splitlines() splits at."""
    rows = []
    for lineno, obj in parse_lines(text.split("\n"), source):
        try:
            _check_values(obj)
        except InputError as e:
            raise InputError(e.message, path=source, line=lineno, field=e.field) from None
        rows.append((lineno, obj))
    return rows


def file_rows(path: str | os.PathLike) -> list[tuple[int, dict]]:
    """text_rows of a file, which must be UTF-8."""
    path = Path(path)
    if not path.is_file():
        raise InputError("file not found", path=str(path))
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as e:
        raise InputError(f"not UTF-8 text (byte {e.start})", path=str(path)) from None
    return text_rows(text, str(path))


def parse_rows(rows: list[tuple[int, dict]], source: str, parse) -> list[tuple[int, object]]:
    """(line number, record) for each row; errors name `source`, the line and the field."""
    out = []
    for lineno, obj in rows:
        try:
            out.append((lineno, parse(obj)))
        except InputError as e:
            raise InputError(e.message, path=source, line=lineno, field=e.field) from None
    return out
