"""Users' data formats -> the project's records (DESIGN.md section 6: records at the edge).

One function per format maps one row (a dict: a JSON line, a csv row, a hub dataset row) to
records: `Prompt`s (ids set, split not yet), `Demonstration`s, K-wise `Ranking`s, or ptx
texts. Reading files is `sources.py`'s job; splitting and writing too.

- ``messages``: messages: [{role, content}, ...] (or ShareGPT ``conversations`` of
  {from, value}). A demonstration is the last assistant reply, its prompt the turns before;
  in a prompts source the prompt is the turns up to the user's last.
- ``alpaca``: instruction, input (optional), output. Prompt instruction + "\\n\\n" + input.
- ``dolly``: instruction, context (optional), response, category (Dolly's, mapped to the
  paper's). Prompt instruction + "\\n\\n" + context.
- ``self-instruct``: instruction, instances: [{input, output}], is_classification. One
  prompt (instruction + input) and demonstration per instance.
- ``pairs``: prompt, chosen, rejected as strings; or chosen / rejected as message lists
  (UltraFeedback-binarized), whose turns before the last reply are the prompt. K = 2.
- ``hh``: chosen, rejected: "\\n\\nHuman: ...\\n\\nAssistant: ..." dialogues (HH-RLHF). K = 2.
- ``rankings``: prompt (a string or messages) and a Ranking record's fields (records.py):
  responses ([{text, policy}], or strings), ranking, labeler_id, likert, flags, critique,
  skipped. K-wise.
- ``prompts``: prompt (a string or messages; a Prompt record's ``text`` counts), response
  (optional: a demonstration), meta.
- ``text``: text. A ptx text (App. C.3/C.4); blank ones are skipped.

Every format also reads, when the row has them, `user_id` (the split is by user), `category`,
`style` and `labeler_id`. A `columns: {field: column}` mapping renames a data set's columns to
these fields (`{category: null}` ignores a column); `detect` picks a format from the columns.

Prompt ids are content hashes ("p-" + 16 hex digits of the SHA-256 of the text, or of the
turns for a multi-turn prompt; HH prompts keep import-pairs' "hh-" + hash of the dialogue), so
the same prompt from two sources or two imports has one id. A prompt without a user id is its
own user, ``"user-" + id``: split by user is then split by prompt.

A prompt that is one user turn is stored as `text` alone; a multi-turn prompt (or one with a
system turn) also keeps its `messages`, which chat templates render as turns (templates.py).
Preference pairs become rankings as HH-RLHF's do (pairs.py): the two responses in a seeded
random order, `ranking` putting the chosen one first, identical responses skipped.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import re
from dataclasses import dataclass, field
from typing import Any, Callable

from instructrl.data.records import (CATEGORIES, STYLES, Demonstration, Prompt, Ranking,
                                     Response, check_messages, messages_text)
from instructrl.errors import InputError

FORMATS = ("messages", "alpaca", "dolly", "self-instruct", "pairs", "hh", "rankings", "prompts",
           "text")
KINDS = ("prompts", "demonstrations", "preferences", "ptx")
# What each kind of source may hold, in the order `detect` tries them (the more specific first:
# UltraFeedback-binarized rows have `messages` as well as `chosen`/`rejected`).
KIND_FORMATS = {
    "prompts": ("rankings", "pairs", "hh", "messages", "self-instruct", "dolly", "alpaca",
                "prompts"),
    # Preference pairs as demonstrations: the chosen reply is one (a preferred sample, not a
    # written ideal; e.g. HH-RLHF's chosen responses for SFT, as in the real-model recipe).
    "demonstrations": ("messages", "self-instruct", "dolly", "alpaca", "prompts", "pairs", "hh"),
    "preferences": ("rankings", "pairs", "hh"),
    "ptx": ("text",),
}
# Databricks Dolly 15k's categories -> the paper's (Table 1).
DOLLY_CATEGORIES = {"open_qa": "open_qa", "general_qa": "open_qa", "closed_qa": "closed_qa",
                    "classification": "classification", "brainstorming": "brainstorming",
                    "information_extraction": "extract", "summarization": "summarization",
                    "creative_writing": "generation"}
# ShareGPT-style turns ({"from": "human", "value": ...}) and their role names.
ROLE_ALIASES = {"human": "user", "gpt": "assistant", "user": "user", "assistant": "assistant",
                "system": "system"}
HH_ASSISTANT = "\n\nAssistant:"
HH_TURN = re.compile(r"\n\n(Human|Assistant):")


@dataclass(frozen=True)
class SourceInfo:
    """What a row's mapping needs to know about its source."""

    kind: str  # prompts | demonstrations | preferences | ptx
    name: str  # labeler id where a row has none; rankings' policies are "<name>-chosen" etc.
    category: str = "other"  # category of prompts whose row has none
    seed: int = 0  # seeds the order of a pair's two responses


@dataclass
class Mapped:
    """The records one row gives (prompts with `split` None), or why it gives none."""

    prompts: list[Prompt] = field(default_factory=list)
    demonstrations: list[Demonstration] = field(default_factory=list)
    rankings: list[Ranking] = field(default_factory=list)
    texts: list[str] = field(default_factory=list)
    skipped: str | None = None


# -- ids and prompts -------------------------------------------------------------------------
def content_id(prefix: str, content: str) -> str:
    return f"{prefix}-" + hashlib.sha256(content.encode("utf-8")).hexdigest()[:16]


def hh_prompt_id(text: str) -> str:
    """import-pairs' id of an HH dialogue prompt (kept, so earlier imports agree)."""
    return content_id("hh", text)


def own_user(prompt_id: str) -> str:
    """The user id of a prompt whose data has none: the prompt is its own user."""
    return f"user-{prompt_id}"


def _json_list(value: Any) -> Any:
    """A csv cell holding a JSON list of objects, as the list (csv has no nested values);
    anything else as it is, so a prompt that merely starts with "[" stays text."""
    if isinstance(value, str) and value.lstrip().startswith("["):
        try:
            parsed = json.loads(value)
        except json.JSONDecodeError:
            return value
        if isinstance(parsed, list) and all(isinstance(x, dict) for x in parsed):
            return parsed
    return value


def _optional(row: dict, name: str) -> Any:
    """An optional field; an empty csv cell counts as absent."""
    value = row.get(name)
    return None if isinstance(value, str) and not value.strip() else value


def _str(row: dict, name: str, *, required: bool = True, empty: bool = False) -> str | None:
    value = row.get(name)
    if value is None:
        if required:
            raise InputError("missing", field=name)
        return None
    if not isinstance(value, str):
        raise InputError(f"expected str, got {type(value).__name__}", field=name)
    if not empty and not value.strip():
        raise InputError("must not be empty", field=name)
    return value


def _list(row: dict, name: str) -> list:
    """A list field; a csv cell holding a JSON list counts (csv has no nested values)."""
    value = row.get(name)
    if value is None:
        raise InputError("missing", field=name)
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError as e:
            raise InputError(f"expected a list, got a string that is not JSON ({e.msg})",
                             field=name) from None
    if not isinstance(value, list):
        raise InputError(f"expected a list, got {type(value).__name__}", field=name)
    return value


def turns(value: Any, name: str) -> list[dict]:
    """Chat turns from {role, content} or ShareGPT {from, value} objects, roles normalised;
    InputError(field="messages[2].role") for anything else. Order rules are checked later
    (`records.check_messages`) on the part that becomes the prompt."""
    if value is None:
        raise InputError("missing", field=name)
    value = _json_list(value)
    if not isinstance(value, list):
        raise InputError(f"expected a list of {{role, content}} turns, got "
                         f"{type(value).__name__}", field=name)
    out = []
    for i, t in enumerate(value):
        where = f"{name}[{i}]"
        if not isinstance(t, dict):
            raise InputError("expected an object {role, content}", field=where)
        role_key, content_key = ("from", "value") if "from" in t else ("role", "content")
        role = t.get(role_key)
        if role not in ROLE_ALIASES:
            raise InputError(f"expected one of system, user, assistant, got {role!r}",
                             field=f"{where}.{role_key}")
        content = t.get(content_key)
        if not isinstance(content, str):
            raise InputError(f"expected str, got {type(content).__name__}",
                             field=f"{where}.{content_key}")
        out.append({"role": ROLE_ALIASES[role], "content": content})
    return out


def chat_prompt(value: Any, name: str) -> str | list[dict]:
    """A prompt field: a string (one user turn) or chat turns ending with the user's."""
    value = _json_list(value)
    if isinstance(value, str):
        if not value.strip():
            raise InputError("must not be empty", field=name)
        return value
    return check_messages(turns(value, name), name)


def make_prompt(chat: str | list[dict], row: dict, src: SourceInfo, *,
                category: str | None = None, text: str | None = None,
                id_: str | None = None, meta: Any = None) -> Prompt:
    """A Prompt (split None) for `chat` with the row's user_id / category / style. One user
    turn is stored as text alone, so "Hi" from Alpaca and [{user: "Hi"}] from a chat data set
    are one prompt, unless `text` is given (HH's verbatim dialogue, which is not the turn)."""
    if isinstance(chat, list) and len(chat) == 1 and text is None:
        chat = chat[0]["content"]
    if isinstance(chat, str):
        messages, text = None, chat if text is None else text
        pid = id_ or content_id("p", chat)
    else:
        messages, text = chat, messages_text(chat) if text is None else text
        pid = id_ or content_id("p", json.dumps(chat, ensure_ascii=False, sort_keys=True))
    user = _optional(row, "user_id")
    if user is None:
        user = own_user(pid)
    elif isinstance(user, int) and not isinstance(user, bool):
        user = str(user)  # numeric ids in csv / parquet columns
    elif not isinstance(user, str) or not user.strip():
        raise InputError("expected a non-empty string", field="user_id")
    category = _optional(row, "category") if category is None else category
    if category is None:
        category = src.category
    if category not in CATEGORIES:
        raise InputError(f"unknown category {category!r} (one of {', '.join(CATEGORIES)}; "
                         f"columns: {{category: null}} ignores the column)", field="category")
    style = _optional(row, "style") or "plain"
    if style not in STYLES:
        raise InputError(f"unknown style {style!r} (one of {', '.join(STYLES)})", field="style")
    meta = meta or {}
    if not isinstance(meta, dict):
        raise InputError(f"expected an object, got {type(meta).__name__}", field="meta")
    return Prompt(id=pid, user_id=user, text=text, category=category, style=style, meta=meta,
                  messages=messages)


def _labeler(row: dict, src: SourceInfo) -> str:
    lab = _optional(row, "labeler_id")
    if lab is None:
        return src.name
    if not isinstance(lab, str) or not lab.strip():
        raise InputError("expected a non-empty string", field="labeler_id")
    return lab


def _join(first: str, second: str | None) -> str:
    return first if not second or not second.strip() else f"{first}\n\n{second}"


def _demonstration(out: Mapped, prompt: Prompt, response: str | None, row: dict,
                   src: SourceInfo, field_: str) -> Mapped:
    """Add the prompt, and its response as a demonstration (required in a demonstrations
    source, ignored in a prompts source)."""
    out.prompts.append(prompt)
    if src.kind == "demonstrations":
        if response is None:
            raise InputError("missing", field=field_)
        out.demonstrations.append(Demonstration(prompt.id, _labeler(row, src), response))
    return out


# -- formats ---------------------------------------------------------------------------------
def map_messages(row: dict, src: SourceInfo, index: int) -> Mapped:
    msgs = turns(row.get("messages"), "messages")
    if src.kind == "demonstrations":
        if not msgs or msgs[-1]["role"] != "assistant":
            raise InputError("the last turn must be the assistant's reply (the demonstration)",
                             field=f"messages[{max(len(msgs) - 1, 0)}].role")
        prompt_turns, response = msgs[:-1], msgs[-1]["content"]
    else:  # a prompt: the turns up to the user's last; a reply after it is not the prompt
        last_user = max((i for i, m in enumerate(msgs) if m["role"] == "user"), default=-1)
        if last_user < 0:
            raise InputError("no user turn", field="messages")
        prompt_turns, response = msgs[:last_user + 1], None
    prompt = make_prompt(check_messages(prompt_turns, "messages"), row, src)
    return _demonstration(Mapped(), prompt, response, row, src, "messages")


def map_alpaca(row: dict, src: SourceInfo, index: int) -> Mapped:
    text = _join(_str(row, "instruction"), _str(row, "input", required=False, empty=True))
    response = _str(row, "output", required=src.kind == "demonstrations", empty=True)
    return _demonstration(Mapped(), make_prompt(text, row, src), response, row, src, "output")


def map_dolly(row: dict, src: SourceInfo, index: int) -> Mapped:
    text = _join(_str(row, "instruction"), _str(row, "context", required=False, empty=True))
    category = _optional(row, "category")
    if category is not None:
        if category not in DOLLY_CATEGORIES and category not in CATEGORIES:
            raise InputError(f"unknown category {category!r} (Dolly's: "
                             f"{', '.join(DOLLY_CATEGORIES)})", field="category")
        category = DOLLY_CATEGORIES.get(category, category)
    response = _str(row, "response", required=src.kind == "demonstrations", empty=True)
    return _demonstration(Mapped(), make_prompt(text, row, src, category=category), response,
                          row, src, "response")


def map_self_instruct(row: dict, src: SourceInfo, index: int) -> Mapped:
    """One prompt (instruction + the instance's input) and demonstration per instance."""
    instruction = _str(row, "instruction")
    instances = _list(row, "instances")
    if not instances:
        raise InputError("no instances", field="instances")
    is_cls = row.get("is_classification")
    if isinstance(is_cls, str):  # csv
        is_cls = is_cls.strip().lower() in ("true", "1", "yes")
    category = "classification" if is_cls else None
    out = Mapped()
    for i, inst in enumerate(instances):
        if not isinstance(inst, dict):
            raise InputError("expected an object {input, output}", field=f"instances[{i}]")
        try:
            text = _join(instruction, _str(inst, "input", required=False, empty=True))
            response = _str(inst, "output", required=src.kind == "demonstrations", empty=True)
        except InputError as e:
            raise InputError(e.message, field=f"instances[{i}].{e.field}") from None
        _demonstration(out, make_prompt(text, row, src, category=category), response, row,
                       src, f"instances[{i}].output")
    return out


def pair_ranking(prompt_id: str, chosen: str, rejected: str, labeler: str, policy: str,
                 seed: int, index: int) -> Ranking:
    """A K = 2 ranking: the two responses in a seeded random order (so position says nothing
    about preference; `index` tells pairs on one prompt apart), the chosen one ranked first."""
    c, r = Response(chosen, f"{policy}-chosen"), Response(rejected, f"{policy}-rejected")
    if random.Random(f"{seed}:{prompt_id}:{index}").random() < 0.5:
        return Ranking(prompt_id, labeler, [r, c], [[1], [0]])
    return Ranking(prompt_id, labeler, [c, r], [[0], [1]])


def _ranking_out(prompt: Prompt, chosen: str, rejected: str, row: dict, src: SourceInfo,
                 index: int) -> Mapped:
    out = Mapped(prompts=[prompt])
    if src.kind == "demonstrations":
        return _demonstration(Mapped(), prompt, chosen, row, src, "chosen")
    if src.kind != "preferences":
        return out
    if chosen == rejected:
        return Mapped(skipped="identical responses")
    out.rankings.append(pair_ranking(prompt.id, chosen, rejected, _labeler(row, src),
                                     src.name, src.seed, index))
    return out


def map_pairs(row: dict, src: SourceInfo, index: int) -> Mapped:
    chosen = _json_list(row.get("chosen"))
    if chosen is None:
        raise InputError("missing", field="chosen")
    if not isinstance(chosen, list):
        if row.get("prompt") is None:
            raise InputError("missing (chosen and rejected are strings: the prompt is a "
                             "column of its own)", field="prompt")
        prompt = chat_prompt(row["prompt"], "prompt")
        chosen, rejected = _str(row, "chosen", empty=True), _str(row, "rejected", empty=True)
    else:  # message lists: the turns before the last reply are the prompt
        replies, shared = {}, {}
        for name in ("chosen", "rejected"):
            msgs = turns(row.get(name), name)
            if not msgs or msgs[-1]["role"] != "assistant":
                raise InputError("the last turn must be the assistant's reply",
                                 field=f"{name}[{max(len(msgs) - 1, 0)}].role")
            shared[name], replies[name] = msgs[:-1], msgs[-1]["content"]
        if shared["chosen"] != shared["rejected"]:
            raise InputError("chosen and rejected must share the turns before their last "
                             "reply (the prompt)", field="rejected")
        prompt = check_messages(shared["chosen"], "chosen")
        chosen, rejected = replies["chosen"], replies["rejected"]
    return _ranking_out(make_prompt(prompt, row, src), chosen, rejected, row, src, index)


@dataclass(frozen=True)
class Pair:
    """One HH chosen/rejected row: the shared prompt and the two final assistant turns."""

    prompt: str
    chosen: str
    rejected: str


def split_pair(chosen: str, rejected: str) -> Pair:
    """Split two HH dialogues into the prompt they share and their final assistant turns.

    The cut is the last ``"\\n\\nAssistant:"`` inside the longest common prefix of the two
    dialogues: everything up to and including it is the prompt (so a reply that itself holds
    "Human:" or "Assistant:" does not move it). Raises InputError(field=...) when the two
    share no assistant turn."""
    common = os.path.commonprefix([chosen, rejected])
    cut = common.rfind(HH_ASSISTANT)
    if cut < 0:
        field_ = "chosen" if HH_ASSISTANT not in chosen else "rejected"
        raise InputError(f"chosen and rejected share no {HH_ASSISTANT.strip()!r} turn: "
                         f"expected one dialogue '\\n\\nHuman: ...\\n\\nAssistant: ...' with "
                         f"two different final assistant replies", field=field_)
    end = cut + len(HH_ASSISTANT)
    prompt = chosen[:end]
    if not prompt[:cut].strip():
        raise InputError("the dialogue has no human turn before the assistant's reply",
                         field="chosen")
    return Pair(prompt, chosen[end:].strip(), rejected[end:].strip())


def hh_turns(prompt: str) -> list[dict] | None:
    """An HH prompt ("\\n\\nHuman: a\\n\\nAssistant: b\\n\\nHuman: c\\n\\nAssistant:") as chat
    turns ([user a, assistant b, user c]); consecutive turns of one speaker (HH has a few) are
    joined. None when it is not such a dialogue ending with the human's turn: the text is
    then one user turn, as before."""
    parts = HH_TURN.split(prompt)
    if parts[0].strip() or len(parts) < 5 or parts[-2] != "Assistant" or parts[-1].strip():
        return None
    out: list[dict] = []
    for speaker, content in zip(parts[1:-2:2], parts[2:-2:2]):
        role = "user" if speaker == "Human" else "assistant"
        content = content.strip()
        if out and out[-1]["role"] == role:
            out[-1]["content"] += "\n\n" + content
        else:
            out.append({"role": role, "content": content})
    if out[-1]["role"] != "user" or not out[-1]["content"]:
        return None
    return out


def map_hh(row: dict, src: SourceInfo, index: int) -> Mapped:
    pair = split_pair(_str(row, "chosen", empty=True), _str(row, "rejected", empty=True))
    msgs = hh_turns(pair.prompt)
    # The verbatim dialogue stays the text and the id (import-pairs' ids); the turns are
    # what chat templates render, so a dialogue is no longer one user message.
    prompt = make_prompt(pair.prompt if msgs is None else msgs, row, src, text=pair.prompt,
                         id_=hh_prompt_id(pair.prompt))
    return _ranking_out(prompt, pair.chosen, pair.rejected, row, src, index)


RANKING_FIELDS = ("responses", "ranking", "likert", "flags", "critique", "skipped")


def map_rankings(row: dict, src: SourceInfo, index: int) -> Mapped:
    """The project's Ranking record with `prompt` (string or turns) in place of prompt_id."""
    prompt = make_prompt(chat_prompt(row.get("prompt"), "prompt"), row, src)
    out = Mapped(prompts=[prompt])
    if src.kind != "preferences":
        return out
    d = {k: row[k] for k in RANKING_FIELDS if row.get(k) is not None}
    for k in ("responses", "ranking", "likert", "flags"):
        if isinstance(d.get(k), str):  # csv cells
            d[k] = _list(d, k)
    if isinstance(d.get("responses"), list):  # plain strings: written by the source's policy
        d["responses"] = [{"text": r, "policy": src.name} if isinstance(r, str) else r
                          for r in d["responses"]]
    out.rankings.append(Ranking.from_dict({**d, "prompt_id": prompt.id,
                                           "labeler_id": _labeler(row, src)}))
    return out


def map_prompts(row: dict, src: SourceInfo, index: int) -> Mapped:
    prompt = make_prompt(chat_prompt(row.get("prompt"), "prompt"), row, src,
                         meta=row.get("meta"))
    response = _str(row, "response", required=src.kind == "demonstrations", empty=True)
    return _demonstration(Mapped(), prompt, response, row, src, "response")


def map_text(row: dict, src: SourceInfo, index: int) -> Mapped:
    text = _str(row, "text", empty=True)
    if not text.strip():  # e.g. wikitext's blank lines: nothing to learn from
        return Mapped(skipped="empty text")
    return Mapped(texts=[text])


MAPPERS: dict[str, Callable[[dict, SourceInfo, int], Mapped]] = {
    "messages": map_messages, "alpaca": map_alpaca, "dolly": map_dolly,
    "self-instruct": map_self_instruct, "pairs": map_pairs, "hh": map_hh,
    "rankings": map_rankings, "prompts": map_prompts, "text": map_text}


# -- columns and detection ---------------------------------------------------------------------
def apply_columns(row: dict, columns: dict[str, str | None]) -> dict:
    """The row as the format's fields: field <- row[column] for each `columns` entry (a field
    mapped to None is dropped). Columns not mapped keep their names."""
    if not columns:
        return row
    out = dict(row)
    for name, col in columns.items():
        out.pop(name, None)
        if col is not None and col in row:
            out[name] = row[col]
    return out


def column_of(field_: str | None, columns: dict[str, str | None]) -> str | None:
    """A field path in the format's names ("messages[2].role") in the data's column names
    ("conversations[2].role"), so an error names what the user sees in their file."""
    if field_ is None or not columns:
        return field_
    head = re.match(r"[^\[.]*", field_).group(0)
    col = columns.get(head)
    return field_ if col is None else col + field_[len(head):]


def detect(kind: str, row: dict) -> tuple[str, dict[str, str]]:
    """(format, implicit columns) for a source of `kind` from the fields of its first row
    (after the user's column mapping). InputError when no format fits."""
    cols = set(k for k, v in row.items() if v is not None)
    allowed = KIND_FORMATS[kind]

    def fits(fmt: str) -> dict[str, str] | None:
        if fmt == "rankings":
            return {} if {"prompt", "responses", "ranking"} <= cols else None
        if fmt == "pairs":
            lists = isinstance(row.get("chosen"), list)
            return {} if {"chosen", "rejected"} <= cols and ("prompt" in cols or lists) \
                else None
        if fmt == "hh":
            return {} if {"chosen", "rejected"} <= cols else None
        if fmt == "messages":
            if "messages" in cols:
                return {}
            return {"messages": "conversations"} if "conversations" in cols else None
        if fmt == "self-instruct":
            return {} if {"instruction", "instances"} <= cols else None
        if fmt == "dolly":
            return {} if "instruction" in cols and ({"context", "response"} & cols) else None
        if fmt == "alpaca":
            need = {"instruction", "output"} if kind == "demonstrations" else {"instruction"}
            return {} if need <= cols else None
        if fmt == "prompts":
            if "prompt" in cols:
                return {}
            return {"prompt": "text"} if "text" in cols else None  # Prompt records
        if fmt == "text":
            return {} if "text" in cols else None
        raise AssertionError(fmt)

    for fmt in allowed:
        implicit = fits(fmt)
        if implicit is not None:
            return fmt, implicit
    raise InputError(f"cannot tell the format from the columns ({', '.join(sorted(cols))}): "
                     f"set format (one of {', '.join(allowed)}) and, for other column names, "
                     f"columns: {{field: column}}", field="format")
