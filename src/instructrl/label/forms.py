"""Parse and validate the labelers' form submissions into record fields. Pure functions: they
see the form and K, never the database, and raise `InputError(field=...)` (the app answers
422 and changes nothing).

A ranking form (K responses, indices 0..K-1 in the order shown):
    likert_<i>   1..7 for every response (App. B: each output is rated on a 1-7 scale)
    flags_<i>    zero or more of records.FLAGS per response (repeatable field)
    ranking      JSON groups of indices, best first; a group of several is a tie: [[2],[0,3],[1]]
    critique     optional free text
    contradiction_ok  "1" to keep a ranking that contradicts the Likert scores (below)

A ranking that puts response i strictly above j although i got the lower Likert score is
refused unless `contradiction_ok` says the labeler saw the warning and meant it: a ranking
left in the order shown, or dragged carelessly, must not pass silently (the page warns first).
"""

from __future__ import annotations

import json
import re

from instructrl.data.records import FLAGS
from instructrl.errors import InputError

MAX_TEXT = 20_000  # characters in a demonstration, an edit or a critique
MAX_REASON = 1_000
MAX_RANKING = 1_000  # characters of `ranking` JSON (K <= 9 needs under 100)
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
    if not raw.strip():
        raise InputError("empty: rank the responses (step 2) before submitting",
                         field="ranking")
    if len(raw) > MAX_RANKING:
        raise InputError(f"longer than {MAX_RANKING} characters; expected groups of response "
                         "indices like [[0],[2,1],[3]]", field="ranking")
    try:
        groups = json.loads(raw)
    except json.JSONDecodeError:
        raise InputError("not JSON; expected groups of response indices like [[0],[2,1],[3]]",
                         field="ranking") from None
    except RecursionError:  # "[[[[...": the C parser gives up past ~1000 levels
        raise InputError("nested too deeply; expected groups of response indices like "
                         "[[0],[2,1],[3]]", field="ranking") from None
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


def contradictions(groups: list[list[int]], likert: list[int]) -> list[tuple[int, int]]:
    """Pairs (i, j): i ranked strictly above j but given a lower Likert score than j."""
    rank = {i: n for n, g in enumerate(groups) for i in g}
    return sorted((i, j) for i in rank for j in rank
                  if rank[i] < rank[j] and likert[i] < likert[j])


def parse_ranking(form: dict[str, list[str]], k: int, names: list[str] | None = None) -> dict:
    """The fields of a `Ranking` record (ranking, likert, flags, critique) from a form.
    `names[i]`: what the labeler calls response i (its letter on the page), for messages."""
    allowed = {"ranking", "critique", "contradiction_ok"}
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
    groups = parse_groups(_one(form, "ranking"), k)
    ok = _one(form, "contradiction_ok", required=False)
    if ok not in (None, "", "1"):
        raise InputError(f"must be 1 or absent, got {ok!r}", field="contradiction_ok")
    bad = contradictions(groups, likert)
    if bad and ok != "1":
        i, j = bad[0]
        name = (lambda x: names[x]) if names else str
        raise InputError(
            f"contradicts your Likert scores: response {name(i)} is ranked above response "
            f"{name(j)} but "
            f"scored {likert[i]} < {likert[j]} ({len(bad)} such pair{'s' * (len(bad) > 1)}); "
            "fix the ranking or the scores, or confirm it (contradiction_ok=1)", field="ranking")
    return {"ranking": groups, "likert": likert,
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
