"""Parse and validate the labelers' form submissions into record fields. Pure functions: they
see the form and K, never the database, and raise `InputError(field=...)` (the app answers
422 and changes nothing).

A ranking form (K responses, indices 0..K-1 in the order shown):
    likert_<i>   1..7 for every response (App. B: each output is rated on a 1-7 scale)
    flags_<i>    zero or more of records.FLAGS per response (repeatable field)
    ranking      JSON groups of indices, best first; a group of several is a tie: [[2],[0,3],[1]]
    critique     optional free text
"""

from __future__ import annotations

import json
import re

from instructrl.data.records import FLAGS
from instructrl.errors import InputError

MAX_TEXT = 20_000  # characters in a demonstration, an edit or a critique
MAX_REASON = 1_000
_PER_RESPONSE = re.compile(r"^(likert|flags)_(.+)$")
_ALWAYS = {"csrf_token"}


def _index(raw: str | None, k: int) -> int | None:
    """An ASCII response index below k, else None."""
    if raw is None or not re.fullmatch(r"[0-9]{1,3}", raw):
        return None
    return int(raw) if int(raw) < k else None


def _one(form: dict[str, list[str]], name: str, *, required: bool = True) -> str | None:
    values = form.get(name, [])
    if len(values) > 1:
        raise InputError("given more than once", field=name)
    if not values:
        if required:
            raise InputError("missing", field=name)
        return None
    return values[0]


def _check_fields(form: dict[str, list[str]], allowed: set[str]) -> None:
    extra = sorted(set(form) - allowed - _ALWAYS)
    if extra:
        raise InputError("unknown field", field=extra[0])


def _text(form, name: str, *, required: bool, limit: int = MAX_TEXT) -> str | None:
    value = _one(form, name, required=required)
    if value is None or not value.strip():
        if required:
            raise InputError("must not be empty", field=name)
        return None
    if len(value) > limit:
        raise InputError(f"longer than {limit} characters", field=name)
    # Browsers send CRLF in textareas; records use \n.
    return value.replace("\r\n", "\n")


def parse_groups(raw: str, k: int) -> list[list[int]]:
    """`ranking` JSON -> groups; each response index 0..k-1 exactly once."""
    try:
        groups = json.loads(raw)
    except json.JSONDecodeError:
        raise InputError("not JSON; expected groups of response indices like [[0],[2,1],[3]]",
                         field="ranking") from None
    if not isinstance(groups, list) or not groups or not all(
            isinstance(g, list) and g and all(isinstance(i, int) and not isinstance(i, bool)
                                              for i in g) for g in groups):
        raise InputError("expected a non-empty list of non-empty lists of response indices",
                         field="ranking")
    flat = [i for g in groups for i in g]
    unknown = sorted({i for i in flat if not 0 <= i < k})
    if unknown:
        raise InputError(f"unknown response {unknown[0]} (this task has responses 0..{k - 1})",
                         field="ranking")
    if sorted(flat) != list(range(k)):
        dup = sorted({i for i in flat if flat.count(i) > 1})
        missing = sorted(set(range(k)) - set(flat))
        raise InputError("not a permutation of the responses: "
                         + (f"repeated {dup}" if dup else "") + (", " if dup and missing else "")
                         + (f"missing {missing}" if missing else ""), field="ranking")
    return groups


def parse_ranking(form: dict[str, list[str]], k: int) -> dict:
    """The fields of a `Ranking` record (ranking, likert, flags, critique) from a form."""
    allowed = {"ranking", "critique"}
    for name in form:
        m = _PER_RESPONSE.match(name)
        if m:
            idx = m.group(2)
            if _index(idx, k) is None:
                raise InputError(f"unknown response {idx!r} (this task has responses "
                                 f"0..{k - 1})", field=name)
            allowed.add(name)
    _check_fields(form, allowed)
    likert = []
    for i in range(k):
        raw = _one(form, f"likert_{i}")
        if not re.fullmatch(r"[1-7]", raw.strip()):
            raise InputError(f"must be an integer from 1 to 7, got {raw!r}", field=f"likert_{i}")
        likert.append(int(raw))
    flags = []
    for i in range(k):
        given = form.get(f"flags_{i}", [])
        for f in given:
            if f not in FLAGS:
                raise InputError(f"unknown flag {f!r} (one of {', '.join(FLAGS)})",
                                 field=f"flags_{i}")
        flags.append([f for f in FLAGS if f in given])  # canonical order, no repeats
    return {"ranking": parse_groups(_one(form, "ranking"), k), "likert": likert,
            "flags": flags, "critique": _text(form, "critique", required=False)}


def parse_demonstration(form: dict[str, list[str]]) -> str:
    _check_fields(form, {"response"})
    return _text(form, "response", required=True)


def parse_edit(form: dict[str, list[str]], originals: list[str]) -> tuple[int, str]:
    """(index of the edited response, edited text); the edit must change something."""
    _check_fields(form, {"base", "text"})
    raw = _one(form, "base")
    base = _index(raw, len(originals))
    if base is None:
        raise InputError(f"unknown response {raw!r} (this task has responses "
                         f"0..{len(originals) - 1})", field="base")
    text = _text(form, "text", required=True)
    if text.strip() == originals[base].strip():
        raise InputError("the edit is identical to the original response", field="text")
    return base, text


def parse_skip(form: dict[str, list[str]]) -> str:
    _check_fields(form, {"reason"})
    return _text(form, "reason", required=True, limit=MAX_REASON).strip()
