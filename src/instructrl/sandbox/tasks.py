"""Simulated users and the prompts they write (paper section 3.2, Table 1).

Each prompt is an `instructrl.data.records.Prompt` whose `meta` holds the task spec the
checkers need (entity, attribute, expected answer, explicit constraints...). Users have IDs,
their own category and style mixes, very different volumes (some write far more than the
paper's 200-per-user cap) and a habit of resubmitting near-duplicates, so `data prepare`'s
dedupe and cap have real work to do. A few prompts have unclear intent; labelers skip them.

`reference_answer` is the ideal response: what a careful labeler would write with time.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from instructrl.data.records import Prompt
from instructrl.sandbox import text as T
from instructrl.sandbox.corpus import review
from instructrl.sandbox.world import (ATTRIBUTES, INSULT_TEMPLATES, REFUSALS, TOXIC_ADJ,
                                      TOXIC_NOUN, World, number_word, rng_for)

# Paper Table 1 shares, reshaped so the checkable categories are well represented.
CATEGORY_WEIGHTS = {"generation": 0.24, "open_qa": 0.18, "brainstorming": 0.09, "chat": 0.08,
                    "rewrite": 0.07, "summarization": 0.06, "classification": 0.07,
                    "closed_qa": 0.08, "extract": 0.06, "harmful": 0.07}
STYLE_WEIGHTS = {"plain": 0.5, "few-shot": 0.25, "user-based": 0.25}
# Tasks that carry a text of their own are too long for another style's extra words.
PLAIN_ONLY = ("closed_qa", "summarization")
MAX_PROMPT_WORDS = 34  # ~48 tokens with the sandbox tokenizer (DESIGN.md section 5)
MAX_FEW_SHOT_WORDS = 28  # a few-shot prompt repeats the task: keep it short
UNCLEAR_RATE = 0.03
NEAR_DUP_SUFFIXES = (" please.", " thanks!", " thank you.", " ok?", " now.", " again.")


@dataclass(frozen=True)
class User:
    id: str
    volume: float  # relative number of prompts written
    categories: dict[str, float]
    styles: dict[str, float]
    dup_rate: float  # chance a prompt is a near-duplicate of one already written


def make_users(world: World, n_users: int, seed: int = 0) -> list[User]:
    rng = rng_for("users", world.seed, seed)
    users = []
    for i in range(n_users):
        # Zipf-like volumes: the top users write several hundred prompts (over the cap).
        volume = 1.0 / (i + 1) ** 1.1
        cats = {c: w * rng.gammavariate(1.0, 1.0) for c, w in CATEGORY_WEIGHTS.items()}
        styles = {s: w * rng.gammavariate(2.0, 1.0) for s, w in STYLE_WEIGHTS.items()}
        users.append(User(f"u{i:03d}", volume, cats, styles,
                          dup_rate=rng.choice((0.0, 0.05, 0.1, 0.3))))
    rng.shuffle(users)  # so volume does not follow the id order
    return users


def write_prompts(world: World, n_prompts: int, n_users: int, seed: int = 0) -> list[Prompt]:
    """`n_prompts` prompts by `n_users` users, split unset (that is `data prepare`'s job)."""
    users = make_users(world, n_users, seed)
    rng = rng_for("prompts", world.seed, seed)
    written: dict[str, list[Prompt]] = {}
    out: list[Prompt] = []
    vols = [u.volume for u in users]
    for i in range(n_prompts):
        u = rng.choices(users, vols)[0]
        pid = f"p{i:05d}"
        mine = written.setdefault(u.id, [])
        if mine and rng.random() < u.dup_rate:
            src = rng.choice(mine)
            p = Prompt(pid, u.id, src.text + rng.choice(NEAR_DUP_SUFFIXES), src.category,
                       src.style, meta=dict(src.meta))
        elif rng.random() < UNCLEAR_RATE:
            p = Prompt(pid, u.id, _fill_any(world, rng, rng.choice(T.UNCLEAR)), "other",
                       "plain", meta={"task": "unclear", "unclear": True})
        else:
            cat = rng.choices(list(u.categories), list(u.categories.values()))[0]
            style = rng.choices(list(u.styles), list(u.styles.values()))[0]
            text, meta, style = make_task(world, rng, cat, style)
            p = Prompt(pid, u.id, text, cat, style, meta=meta)
        mine.append(p)
        out.append(p)
    return out


def _fill_any(world: World, rng: random.Random, template: str) -> str:
    return template.format(e=rng.choice(world.creatures), p=rng.choice(world.places),
                           v=rng.choice(world.values["food"]))


# -- one task per category ---------------------------------------------------------------
def make_task(world: World, rng: random.Random, category: str, style: str
              ) -> tuple[str, dict, str]:
    """(prompt text, meta, style actually used). A few-shot prompt that would run past
    MAX_FEW_SHOT_WORDS, or a user-based one past MAX_PROMPT_WORDS, falls back to plain."""
    text, meta = _BUILDERS[category](world, rng)
    if category in PLAIN_ONLY:
        return text, meta, "plain"
    if style == "few-shot":
        ex_text, ex_meta = _BUILDERS[category](world, rng)
        shot = T.FEW_SHOT.format(x=ex_text, a=_reference(world, ex_meta, rng), q=text)
        if T.count_words(shot) <= MAX_FEW_SHOT_WORDS:
            return shot, meta, style
        style = "plain"
    if style == "user-based":
        e = meta.get("entity") if meta.get("entity") in world.facts else None
        # A "tell me what it eats" question needs an intro naming the creature.
        intros = [i for i in T.USER_INTRO if ("{e}" in i) == (e is not None)
                  or ("{e}" not in i and meta["task"] != "qa")]
        intro = rng.choice(intros).format(e=e)
        if meta["task"] == "qa":
            text = f"{intro} tell me {T.TELL_ME[meta['attribute']]}."
        else:
            text = f"{intro} {text}"
        if T.count_words(text) > MAX_PROMPT_WORDS:
            text, style = text[len(intro) + 1:], "plain"
    return text, meta, style


def _qa(world, rng):
    e, a = rng.choice(world.creatures), rng.choice(ATTRIBUTES)
    return (rng.choice(T.QUESTION[a]).format(e=e),
            {"task": "qa", "entity": e, "attribute": a, "answer": world.truth(e, a)})


def _closed_qa(world, rng):
    """A question over a given text about a creature the corpus never mentions: only the
    text can answer it (closed domain: anything else asserted is a hallucination)."""
    e = rng.choice(world.spare_names)
    # Two facts: a made-up name costs several tokens a mention, and prompts stay ~48 tokens.
    attrs = rng.sample(ATTRIBUTES, 2)
    ctx = {a: rng.choice(world.values[a]) for a in attrs}
    body = " ".join(rng.choice(T.FACT[a]).format(e=e, v=v) for a, v in ctx.items())
    a = rng.choice(attrs)
    q = rng.choice(T.QUESTION[a]).format(e=e)
    return (rng.choice(T.CLOSED_QA).format(x=body, q=q),
            {"task": "closed_qa", "entity": e, "attribute": a, "answer": ctx[a],
             "context": ctx})


def _generation(world, rng):
    e = rng.choice(world.creatures)
    kind = rng.choice(("exact_words", "max_words", "mention"))
    task = rng.choice(T.GEN_TASK).format(e=e)
    meta = {"task": "generation", "entity": e}
    if kind == "mention":
        x = rng.choice(world.places + tuple(c for c in world.creatures if c != e))
        meta["mention"] = x
        return f"{task} {T.GEN_CONSTRAINT['mention'].format(x=x)}.", meta
    n = rng.randint(6, 14) if kind == "exact_words" else rng.randint(8, 16)
    meta[kind] = n
    return f"{task} {T.GEN_CONSTRAINT[kind].format(n=number_word(n))}.", meta


def _brainstorming(world, rng):
    while True:
        a = rng.choice(("food", "color", "home", "size"))
        v = rng.choice(world.values[a])
        members = world.with_value(a, v)
        if len(members) >= 2:
            break
    n = rng.randint(2, min(4, len(members)))
    phrase = T.LIST_PHRASE[a].format(v=v)
    return (rng.choice(T.BRAIN_TASK).format(n=number_word(n), x=phrase),
            {"task": "brainstorm", "attribute": a, "value": v, "n_items": n,
             "answer": sorted(members)})


def _rewrite(world, rng):
    e, a = rng.choice(world.creatures), rng.choice(ATTRIBUTES)
    fact = rng.choice(T.FACT[a]).format(e=e, v=world.truth(e, a))
    if rng.random() < 0.5:
        insult = rng.choice(INSULT_TEMPLATES).format(t1=rng.choice(TOXIC_ADJ),
                                                     t2=rng.choice(TOXIC_NOUN),
                                                     t3=rng.choice(TOXIC_ADJ))
        src = f"{insult} {fact}" if rng.random() < 0.5 else f"{fact} {insult}"
        return (rng.choice(T.REWRITE_TASK["polite"]).format(x=src),
                {"task": "rewrite_polite", "entity": e, "attribute": a,
                 "answer": world.truth(e, a), "source": src, "keep": fact})
    return (rng.choice(T.REWRITE_TASK["question"]).format(x=fact),
            {"task": "rewrite_question", "entity": e, "attribute": a,
             "answer": world.truth(e, a), "source": fact})


def _classification(world, rng):
    if rng.random() < 0.6:
        x, label = review(world, rng)
        kind = "sentiment"
    else:
        kind = "toxic"
        if rng.random() < 0.5:
            x, label = rng.choice(INSULT_TEMPLATES).format(
                t1=rng.choice(TOXIC_ADJ), t2=rng.choice(TOXIC_NOUN), t3=rng.choice(TOXIC_ADJ)
            ), "rude"
        else:
            e = rng.choice(world.creatures)
            x, label = rng.choice(("thank you for the help with the {e}.",
                                   "i think the {e} is lovely, have a nice day.",
                                   "hello, how are you? i saw a {e} today.")).format(e=e), \
                "polite"
    return (rng.choice(T.CLASSIFY_TASK[kind]).format(x=x),
            {"task": "classify", "kind": kind, "answer": label, "labels": list(T.LABELS[kind])})


def _extract(world, rng):
    e, e2 = rng.sample(world.creatures, 2)
    p, p2 = rng.sample(world.places, 2)
    src = rng.choice(T.EXTRACT_TEXT).format(e=e, e2=e2, p=p, p2=p2)
    kind = rng.choice(("place", "creature"))
    items = [p, p2] if kind == "place" else [e, e2]
    return (rng.choice(T.EXTRACT_TASK[kind]).format(x=src),
            {"task": "extract", "kind": kind, "answer": items, "source": src})


def _summarization(world, rng):
    e = rng.choice(world.creatures)
    attrs = rng.sample(ATTRIBUTES, 3)
    src = " ".join(rng.choice(T.FACT[a]).format(e=e, v=world.truth(e, a)) for a in attrs)
    ctx = {a: world.truth(e, a) for a in attrs}
    if rng.random() < 0.6:
        n = rng.randint(7, 12)
        return (T.SUMMARY_TASK[0].format(n=number_word(n), x=src),
                {"task": "summarize", "entity": e, "context": ctx, "max_words": n,
                 "source": src})
    return (T.SUMMARY_TASK[1].format(x=src),
            {"task": "summarize", "entity": e, "context": ctx,
             "max_words": max(7, T.count_words(src) // 2), "source": src})


def _chat(world, rng):
    e = rng.choice(world.creatures)
    return rng.choice(T.CHAT_OPEN).format(e=e), {"task": "chat", "entity": e}


def _harmful(world, rng):
    return _fill_any(world, rng, rng.choice(T.HARMFUL)), {"task": "harmful"}


_BUILDERS = {"open_qa": _qa, "closed_qa": _closed_qa, "generation": _generation,
             "brainstorming": _brainstorming, "rewrite": _rewrite,
             "classification": _classification, "extract": _extract,
             "summarization": _summarization, "chat": _chat, "harmful": _harmful}


# -- the ideal response ------------------------------------------------------------------
def reference_answer(world: World, prompt: Prompt) -> str:
    """The ideal response to `prompt` (deterministic in the prompt text)."""
    return _reference(world, prompt.meta, rng_for("reference", world.seed, prompt.text))


def _reference(world: World, meta: dict, rng: random.Random) -> str:
    task = meta.get("task")
    if task in ("qa", "closed_qa", "rewrite_polite"):
        return T.ANSWER[meta["attribute"]][0].format(e=meta["entity"], v=meta["answer"])
    if task == "rewrite_question":
        return rewrite_as_question(meta["entity"], meta["attribute"], meta["answer"])
    if task == "generation":
        return generate_about(world, rng, meta["entity"], meta)
    if task == "brainstorm":
        return list_sentence(rng.sample(meta["answer"], meta["n_items"]),
                             meta["attribute"], meta["value"])
    if task == "classify":
        return meta["answer"] + "."
    if task == "extract":
        return " and ".join(meta["answer"]) + "."
    if task == "summarize":
        return summary_of(meta["entity"], meta["context"], meta["max_words"])
    if task == "chat":
        e = meta["entity"]
        a1, a2 = rng.sample(ATTRIBUTES, 2)
        return " ".join(x for x in (
            rng.choice(T.CHAT_REPLY_OPEN),
            T.ANSWER[a1][0].format(e=e, v=world.truth(e, a1)),
            T.ANSWER[a2][2].format(e=e, v=world.truth(e, a2))) if x)
    if task == "harmful":
        return rng.choice(REFUSALS)
    return rng.choice(T.CLARIFY)


def rewrite_as_question(e: str, attr: str, v: str) -> str:
    return {"food": f"does the {e} eat {v}?", "color": f"is the {e} {v}?",
            "home": f"does the {e} live in {v}?", "size": f"is the {e} {v}?"}[attr]


def list_sentence(items: list[str], attr: str, v: str) -> str:
    names = [f"the {c}" for c in items]
    head = ", ".join(names[:-1]) + " and " + names[-1] if len(names) > 1 else names[0]
    return f"{head} {T.LIST_PHRASE[attr].format(v=v)}."


def summary_of(e: str, ctx: dict, max_words: int) -> str:
    """The longest fact sentence about `e` from `ctx` that fits `max_words`."""
    parts = {"food": f"eats {ctx.get('food')}", "color": f"is {ctx.get('color')}",
             "home": f"lives in {ctx.get('home')}", "size": f"is {ctx.get('size')}"}
    # Short parts first so the most facts fit.
    kept = sorted((parts[a] for a in ATTRIBUTES if a in ctx), key=T.count_words)
    while kept:
        s = f"the {e} " + (", ".join(kept[:-1]) + " and " + kept[-1] if len(kept) > 1
                           else kept[0]) + "."
        if T.count_words(s) <= max_words:
            return s
        kept.pop()
    return f"the {e}."


def generate_about(world: World, rng: random.Random, e: str, meta: dict) -> str:
    """True text about `e` meeting the generation constraints: exactly / at most N words,
    mentioning X. Pieces are true facts, so the text is truthful by construction."""
    facts = world.facts[e]
    fmt = dict(e=e, v=facts["food"], p=facts["home"], c=facts["color"], s=facts["size"])
    first = [t.format(**fmt) for t in T.GEN_FIRST]
    more = [t.format(**fmt) for t in T.GEN_MORE]
    mention = None
    if "mention" in meta:
        x = meta["mention"]
        mention = rng.choice([t.format(x=x) for t in T.GEN_MENTION
                              if (x in world.places) == ("went" in t)])
    if "exact_words" in meta:
        targets = [meta["exact_words"]]
    elif "max_words" in meta:
        targets = list(range(max(6, meta["max_words"] - 4), meta["max_words"] + 1))
    else:
        targets = list(range(8, 15))
    rng.shuffle(targets)
    rng.shuffle(first)
    for target in targets:
        for head in first:
            pool = more[:]
            rng.shuffle(pool)
            left = target - T.count_words(head)
            if mention:  # the mention goes last: "it met a kroon." would make a later
                left -= T.count_words(mention)  # "it" the kroon
            chosen = _fit(pool, left)
            if chosen is not None:
                return " ".join([head] + chosen + ([mention] if mention else []))
    return first[0]


def _fit(pool: list[str], n: int) -> list[str] | None:
    """Some pieces of `pool` (in order) with exactly `n` words in all; None if impossible."""
    lens = [T.count_words(p) for p in pool]

    def go(i: int, left: int) -> list[int] | None:
        if left == 0:
            return []
        if i >= len(pool) or left < 0:
            return None
        take = go(i + 1, left - lens[i])
        return [i] + take if take is not None else go(i + 1, left)

    idx = go(0, n)
    return None if idx is None else [pool[i] for i in idx]
