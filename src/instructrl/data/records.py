"""Record types that stages exchange through files (DESIGN.md section 2).

Every record carries ids so that nothing is anonymous. `from_dict` validates types and
cross-field rules and raises `InputError(field=...)`; `read_records` adds the file and line.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from instructrl.errors import InputError

# Paper Table 1 use-case categories; "harmful" marks requests a good assistant declines.
CATEGORIES = ("generation", "open_qa", "brainstorming", "chat", "rewrite", "summarization",
              "classification", "closed_qa", "extract", "harmful", "other")
STYLES = ("plain", "few-shot", "user-based")  # paper section 3.2
ROLES = ("system", "user", "assistant")  # chat turns, as chat templates name them
SPLITS = ("train", "valid", "test", "ood")
# "ood": prompts of a category or style kept out of every training set (data.heldout_categories,
# data.heldout_styles), evaluated for generalisation outside the RLHF distribution (section 4.4).
# Paper Table 3 / App. B metadata a labeler may attach to a response.
FLAGS = ("fails_instruction", "hallucination", "inappropriate", "sexual", "violent",
         "denigrates_protected_class", "harmful_advice", "moral_judgement", "bad_constraint")


def _get(d: dict, name: str, types, *, required: bool = True, default: Any = None):
    if name not in d or d[name] is None:
        if required:
            raise InputError("missing", field=name)
        return default
    value = d[name]
    # bool is an int in Python; never accept it where a number or string is wanted.
    if isinstance(value, bool) and bool not in (types if isinstance(types, tuple) else (types,)):
        raise InputError(f"expected {_tname(types)}, got {type(value).__name__}", field=name)
    if not isinstance(value, types):
        raise InputError(f"expected {_tname(types)}, got {type(value).__name__}", field=name)
    return value


def _tname(types) -> str:
    types = types if isinstance(types, tuple) else (types,)
    return " or ".join(t.__name__ for t in types)


def _nonempty(d: dict, name: str) -> str:
    value = _get(d, name, str)
    if not value.strip():
        raise InputError("must not be empty", field=name)
    return value


def _unknown(d: dict, known: set[str]) -> None:
    extra = sorted(set(d) - known)
    if extra:
        raise InputError(f"unknown field (known: {', '.join(sorted(known))})", field=extra[0])


def check_messages(value: Any, name: str = "messages") -> list[dict]:
    """A chat prompt: a list of {"role", "content"} turns, roles system / user / assistant, a
    system turn only first, ending with a non-empty user turn (the turn the model answers).
    Returns fresh {"role", "content"} dicts; InputError(field="messages[i].role") if not."""
    if not isinstance(value, list):
        raise InputError(f"expected a list of {{role, content}} turns, got "
                         f"{type(value).__name__}", field=name)
    if not value:
        raise InputError("must hold at least one user turn", field=name)
    out = []
    for i, turn in enumerate(value):
        where = f"{name}[{i}]"
        if not isinstance(turn, dict):
            raise InputError("expected an object {role, content}", field=where)
        extra = sorted(set(turn) - {"role", "content"})
        if extra:
            raise InputError("unknown field (known: content, role)", field=f"{where}.{extra[0]}")
        role, content = turn.get("role"), turn.get("content")
        if role not in ROLES:
            raise InputError(f"expected one of {', '.join(ROLES)}, got {role!r}",
                             field=f"{where}.role")
        if role == "system" and i > 0:
            raise InputError("a system turn may only come first", field=f"{where}.role")
        if not isinstance(content, str):
            raise InputError(f"expected str, got {type(content).__name__}",
                             field=f"{where}.content")
        out.append({"role": role, "content": content})
    if out[-1]["role"] != "user":
        raise InputError("the last turn must be the user's (the turn the model answers), got "
                         f"{out[-1]['role']!r}", field=f"{name}[{len(out) - 1}].role")
    if not out[-1]["content"].strip():
        raise InputError("must not be empty", field=f"{name}[{len(out) - 1}].content")
    return out


def messages_text(messages: list[dict]) -> str:
    """A readable rendering of chat turns ("User: ...\n\nAssistant: ..."), the `text` of a
    multi-turn prompt: for people and ids, never what a model sees (templates.py is)."""
    return "\n\n".join(f"{m['role'].capitalize()}: {m['content']}" for m in messages)


@dataclass(frozen=True)
class Prompt:
    id: str
    user_id: str
    text: str
    category: str = "other"
    style: str = "plain"
    split: str | None = None
    meta: dict = field(default_factory=dict)  # task spec for program checkers (sandbox)
    # Chat turns of a multi-turn prompt (or one with a system turn), ending with the user's;
    # None for a single user turn, which `text` holds. `text` stays a readable rendering.
    messages: list[dict] | None = None

    @property
    def chat(self) -> str | list[dict]:
        """What a model is prompted with (templates.format_prompt): the turns, else the text."""
        return self.messages if self.messages is not None else self.text

    @classmethod
    def from_dict(cls, d: dict) -> "Prompt":
        _unknown(d, {"id", "user_id", "text", "category", "style", "split", "meta", "messages"})
        category = _get(d, "category", str, required=False, default="other")
        if category not in CATEGORIES:
            raise InputError(f"unknown category {category!r} (one of {', '.join(CATEGORIES)})",
                             field="category")
        style = _get(d, "style", str, required=False, default="plain")
        if style not in STYLES:
            raise InputError(f"unknown style {style!r} (one of {', '.join(STYLES)})",
                             field="style")
        split = _get(d, "split", str, required=False)
        if split is not None and split not in SPLITS:
            raise InputError(f"unknown split {split!r} (one of {', '.join(SPLITS)})",
                             field="split")
        messages = d.get("messages")
        return cls(id=_nonempty(d, "id"), user_id=_nonempty(d, "user_id"),
                   text=_nonempty(d, "text"), category=category, style=style, split=split,
                   meta=_get(d, "meta", dict, required=False, default={}),
                   messages=None if messages is None else check_messages(messages))

    def to_dict(self) -> dict:
        d = asdict(self)
        if d["messages"] is None:  # single-turn prompts' lines stay as they were
            del d["messages"]
        return d


@dataclass(frozen=True)
class Demonstration:
    prompt_id: str
    labeler_id: str
    response: str

    @classmethod
    def from_dict(cls, d: dict) -> "Demonstration":
        _unknown(d, {"prompt_id", "labeler_id", "response"})
        return cls(prompt_id=_nonempty(d, "prompt_id"), labeler_id=_nonempty(d, "labeler_id"),
                   response=_get(d, "response", str))

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class Response:
    text: str
    policy: str  # which model (or "human") wrote it

    @classmethod
    def from_dict(cls, d: Any, i: int) -> "Response":
        if not isinstance(d, dict):
            raise InputError("expected an object {text, policy}", field=f"responses[{i}]")
        try:
            _unknown(d, {"text", "policy"})
            return cls(text=_get(d, "text", str), policy=_nonempty(d, "policy"))
        except InputError as e:
            raise InputError(e.message, field=f"responses[{i}].{e.field}") from None


@dataclass(frozen=True)
class Ranking:
    """K responses to one prompt, ranked by one labeler. `ranking` lists groups of response
    indices, best first; a group of several is a tie. Pairwise data is K = 2."""

    prompt_id: str
    labeler_id: str
    responses: list[Response]
    ranking: list[list[int]] = field(default_factory=list)
    likert: list[int] | None = None  # 1-7 per response (App. B)
    flags: list[list[str]] | None = None  # metadata flags per response
    critique: str | None = None
    skipped: str | None = None  # reason; a skipped ranking has an empty `ranking`

    @classmethod
    def from_dict(cls, d: dict) -> "Ranking":
        _unknown(d, {"prompt_id", "labeler_id", "responses", "ranking", "likert", "flags",
                     "critique", "skipped"})
        raw = _get(d, "responses", list)
        responses = [Response.from_dict(r, i) for i, r in enumerate(raw)]
        k = len(responses)
        skipped = _get(d, "skipped", str, required=False)
        ranking = _get(d, "ranking", list, required=skipped is None, default=[])
        if skipped is None:
            if k < 2:
                raise InputError(f"need at least 2 responses, got {k}", field="responses")
            groups = []
            for g in ranking:
                if not isinstance(g, list) or not g or not all(
                        isinstance(i, int) and not isinstance(i, bool) for i in g):
                    raise InputError("each group must be a non-empty list of response indices",
                                     field="ranking")
                groups.append(list(g))
            flat = sorted(i for g in groups for i in g)
            if flat != list(range(k)):
                raise InputError(f"must use each response index 0..{k - 1} exactly once, "
                                 f"got {ranking}", field="ranking")
            ranking = groups
        elif ranking:
            raise InputError("a skipped ranking has no ranking", field="ranking")
        likert = _get(d, "likert", list, required=False)
        if likert is not None:
            if len(likert) != k or not all(isinstance(x, int) and not isinstance(x, bool)
                                           and 1 <= x <= 7 for x in likert):
                raise InputError(f"must be {k} integers from 1 to 7", field="likert")
        flags = _get(d, "flags", list, required=False)
        if flags is not None:
            if len(flags) != k or not all(isinstance(f, list) for f in flags):
                raise InputError(f"must be {k} lists of flags", field="flags")
            for f in flags:
                for name in f:
                    if name not in FLAGS:
                        raise InputError(f"unknown flag {name!r} (one of {', '.join(FLAGS)})",
                                         field="flags")
        return cls(prompt_id=_nonempty(d, "prompt_id"), labeler_id=_nonempty(d, "labeler_id"),
                   responses=responses, ranking=ranking, likert=likert, flags=flags,
                   critique=_get(d, "critique", str, required=False), skipped=skipped)

    def to_dict(self) -> dict:
        d = asdict(self)
        return {k: v for k, v in d.items() if v is not None}

    def pairs(self) -> list[tuple[int, int]]:
        """(winner, loser) index pairs implied by the ranking; tied pairs are dropped."""
        out = []
        for a, better in enumerate(self.ranking):
            for worse in self.ranking[a + 1:]:
                out.extend((w, l) for w in better for l in worse)
        return out


@dataclass(frozen=True)
class Labeler:
    id: str
    heldout: bool = False  # held-out labelers only evaluate; their labels never train

    @classmethod
    def from_dict(cls, d: dict) -> "Labeler":
        _unknown(d, {"id", "heldout"})
        return cls(id=_nonempty(d, "id"), heldout=_get(d, "heldout", bool, required=False,
                                                       default=False))

    def to_dict(self) -> dict:
        return asdict(self)
