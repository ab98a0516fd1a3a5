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

from instructrl.data.jsonl import read_jsonl
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


def text_rows(text: str, source: str) -> list[tuple[int, dict]]:
    """(line number, object) for each non-blank line of an uploaded file's text."""
    rows = []
    for lineno, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            raise InputError(f"not valid JSON ({e.msg} at column {e.colno})", path=source,
                             line=lineno) from None
        if not isinstance(obj, dict):
            raise InputError("a line must be a JSON object", path=source, line=lineno)
        rows.append((lineno, obj))
    return rows


def file_rows(path: str | os.PathLike) -> list[tuple[int, dict]]:
    return read_jsonl(path)


def parse_rows(rows: list[tuple[int, dict]], source: str, parse) -> list[tuple[int, object]]:
    """(line number, record) for each row; errors name `source`, the line and the field."""
    out = []
    for lineno, obj in rows:
        try:
            out.append((lineno, parse(obj)))
        except InputError as e:
            raise InputError(e.message, path=source, line=lineno, field=e.field) from None
    return out
