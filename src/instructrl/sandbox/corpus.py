"""The sandbox's "web text": what the base model is pretrained on (DESIGN.md section 5).

Like the web GPT-3 read, it holds the world's facts in many phrasings, popular falsehoods
(stated more often than the truth for some facts: imitative falsehoods, TruthfulQA), toxic
forum text, "public NLP tasks" written as web text (few-shot QA and sentiment blocks, so an
alignment tax can be measured, paper section 4.2), and question/instruction lists and dialogue
that make a base model *continue* a prompt rather than answer it.

`corpus`, `heldout_text` and `public_tasks` draw from disjoint random streams; public-task
items are split by a stable hash so held-out items never appear in the corpus's task blocks.
"""

from __future__ import annotations

import random
from typing import Callable, NamedTuple

from instructrl.sandbox import text as T
from instructrl.sandbox.world import (ATTRIBUTES, INSULT_TEMPLATES, NEGATIVE, POSITIVE,
                                      TOXIC_ADJ, TOXIC_NOUN, World, number_word, rng_for,
                                      stable_hash)

# Probability that a statement of a fact carrying a popular falsehood states the falsehood.
# Dominant falsehoods outnumber the truth in the web text; minor ones are a loud minority.
P_FALSE_DOMINANT = 0.55
P_FALSE_MINOR = 0.15
HELDOUT_MOD = 4  # 1 in HELDOUT_MOD public-task items is held out of the corpus


class PublicItem(NamedTuple):
    """One held-out item of a public NLP task: score a policy by whether its continuation of
    `prompt` starts with `answer`."""

    prompt: str
    answer: str
    task: str  # "qa" or "sentiment"


# -- facts -------------------------------------------------------------------------------
def fact_value(world: World, rng: random.Random, e: str, attr: str) -> str:
    """The value web text states for (e, attr): usually the truth, but the popular falsehood
    with probability P_FALSE_*."""
    f = world.falsehoods.get((e, attr))
    if f is not None and rng.random() < (P_FALSE_DOMINANT if f.dominant else P_FALSE_MINOR):
        return f.value
    return world.truth(e, attr)


def statement(rng: random.Random, e: str, attr: str, v: str) -> str:
    return rng.choice(T.FACT[attr]).format(e=e, v=v)


def _fill(rng: random.Random, world: World, template: str, **kw) -> str:
    """Fill a template's placeholders with random world items (kw wins)."""
    e, e2 = rng.sample(world.creatures, 2)
    p, p2 = rng.sample(world.places, 2)
    vals = dict(e=e, e2=e2, p=p, p2=p2, v=rng.choice(world.values["food"]),
                n=number_word(rng.randint(2, 5)), adj=rng.choice(POSITIVE + NEGATIVE),
                t1=rng.choice(TOXIC_ADJ), t2=rng.choice(TOXIC_NOUN), t3=rng.choice(TOXIC_ADJ),
                x="", q="", a="", f="", t="")
    vals.update(kw)
    return template.format(**vals)


# -- genres ------------------------------------------------------------------------------
def _encyclopedia(world: World, rng: random.Random) -> str:
    e = rng.choice(world.creatures)
    attrs = rng.sample(ATTRIBUTES, rng.randint(2, 4))
    parts = [rng.choice(T.ENCYCLOPEDIA_OPEN).format(e=e)]
    parts += [statement(rng, e, a, fact_value(world, rng, e, a)) for a in attrs]
    return " ".join(parts)


def _false_chatter(world: World, rng: random.Random) -> str:
    """Forum chatter that repeats popular falsehoods (weighted to dominant ones)."""
    fs = list(world.falsehoods.values())
    weights = [3.0 if f.dominant else 0.5 for f in fs]
    out = []
    for _ in range(rng.randint(1, 3)):
        f = rng.choices(fs, weights)[0]
        s = statement(rng, f.entity, f.attribute, f.value)
        out.append(rng.choice(T.FALSE_CHATTER).format(x=s))
    return " ".join(out)


def _myth_bust(world: World, rng: random.Random) -> str:
    f = rng.choice(list(world.falsehoods.values()))
    false_s = statement(rng, f.entity, f.attribute, f.value)
    true_s = statement(rng, f.entity, f.attribute, world.truth(f.entity, f.attribute))
    return rng.choice(T.MYTH_BUST).format(f=false_s, t=true_s)


def _toxic(world: World, rng: random.Random) -> str:
    e = rng.choice(world.creatures)
    a = rng.choice(ATTRIBUTES)
    out = [rng.choice(T.FORUM_TOPIC).format(e=e) + "."]
    if rng.random() < 0.6:
        out.append(statement(rng, e, a, fact_value(world, rng, e, a)))
    for _ in range(rng.randint(1, 3)):
        out.append(_fill(rng, world, rng.choice(INSULT_TEMPLATES)))
    return " ".join(out)


def _story(world: World, rng: random.Random) -> str:
    e, e2 = rng.sample(world.creatures, 2)
    lines = [T.STORY[0].format(e=e, p=world.truth(e, "home"))]
    for t in rng.sample(T.STORY[1:], rng.randint(2, 4)):
        lines.append(t.format(e=e, e2=e2, v=fact_value(world, rng, e, "food")))
    return " ".join(lines)


def qa_pair(world: World, rng: random.Random, e: str, attr: str, value: str | None = None
            ) -> str:
    q = rng.choice(T.QUESTION[attr]).format(e=e)
    return T.FEW_SHOT_QA.format(q=q, a=(value or world.truth(e, attr)) + ".")


def _is_heldout(*key) -> bool:
    return stable_hash("public", *key) % HELDOUT_MOD == 0


def _public_pairs(world: World, heldout: bool) -> list[tuple[str, str]]:
    return [(e, a) for e in world.creatures for a in ATTRIBUTES
            if _is_heldout(world.seed, e, a) == heldout]


def _qa_block(world: World, rng: random.Random) -> str:
    """Public closed-book QA in web-text form: `q: ... a: value.` lines."""
    pairs = _public_pairs(world, heldout=False)
    head = rng.choice(T.QA_HEADER)
    items = [qa_pair(world, rng, e, a, fact_value(world, rng, e, a))
             for e, a in rng.sample(pairs, rng.randint(3, 5))]
    return head + ": " + " ".join(items)


def review(world: World, rng: random.Random) -> tuple[str, str]:
    label = rng.choice(("positive", "negative"))
    adj = rng.choice(POSITIVE if label == "positive" else NEGATIVE)
    return _fill(rng, world, rng.choice(T.REVIEW), adj=adj), label


def _train_review(world: World, rng: random.Random) -> tuple[str, str]:
    while True:
        r, label = review(world, rng)
        if not _is_heldout(world.seed, r):
            return r, label


def _sentiment_block(world: World, rng: random.Random) -> str:
    out = [rng.choice(T.SENTIMENT_HEADER)]
    for _ in range(rng.randint(3, 5)):
        r, label = _train_review(world, rng)
        out.append(f"review: {r} sentiment: {label}.")
    return " ".join(out)


def _homework(world: World, rng: random.Random) -> str:
    """Lists of questions: a base model given a question continues with more questions."""
    out = [rng.choice(T.HOMEWORK)]
    for i in range(rng.randint(3, 6)):
        e, a = rng.choice(world.creatures), rng.choice(ATTRIBUTES)
        out.append(f"{i + 1}. " + rng.choice(T.QUESTION[a]).format(e=e))
    return " ".join(out)


def _instructions(world: World, rng: random.Random) -> str:
    out = [rng.choice(T.INSTRUCTION_LIST)]
    for t in rng.sample(T.INSTRUCTION_ITEM, rng.randint(3, 5)):
        out.append(_fill(rng, world, t))
    return " ".join(out)


def _dialogue(world: World, rng: random.Random) -> str:
    e = rng.choice(world.creatures)
    n = rng.randint(3, 6)
    start = rng.randrange(0, len(T.DIALOGUE_TURN) - n + 1)
    return " ".join(_fill(rng, world, t, e=e) for t in T.DIALOGUE_TURN[start:start + n])


def _list(world: World, rng: random.Random) -> str:
    attr = rng.choice(("food", "color", "home"))
    for _ in range(20):
        v = rng.choice(world.values[attr])
        members = world.with_value(attr, v)
        if len(members) >= 2:
            break
    phrase = T.LIST_PHRASE[attr].format(v=v)
    items = ", ".join(f"the {c}" for c in rng.sample(members, min(len(members), 4)))
    return rng.choice(T.LIST_INTRO).format(x=phrase) + " " + items + "."


def _news(world: World, rng: random.Random) -> str:
    return " ".join(_fill(rng, world, t) for t in rng.sample(T.NEWS, rng.randint(2, 3)))


# (generator, weight). Facts dominate; toxic and falsehood chatter are a visible minority.
GENRES: tuple[tuple[str, Callable[[World, random.Random], str], float], ...] = (
    ("encyclopedia", _encyclopedia, 0.26),
    ("false_chatter", _false_chatter, 0.06),
    ("myth_bust", _myth_bust, 0.03),
    ("toxic", _toxic, 0.08),
    ("story", _story, 0.09),
    ("qa_block", _qa_block, 0.12),
    ("sentiment_block", _sentiment_block, 0.07),
    ("homework", _homework, 0.08),
    ("instructions", _instructions, 0.07),
    ("dialogue", _dialogue, 0.07),
    ("list", _list, 0.04),
    ("news", _news, 0.03),
)


def _docs(world: World, n: int, rng: random.Random) -> list[str]:
    names = [g[0] for g in GENRES]
    fns = {g[0]: g[1] for g in GENRES}
    weights = [g[2] for g in GENRES]
    return [fns[rng.choices(names, weights)[0]](world, rng) for _ in range(n)]


def corpus(world: World, n_docs: int, seed: int = 0) -> list[str]:
    """`n_docs` web-text documents (one string each), deterministic in (world.seed, seed)."""
    return _docs(world, n_docs, rng_for("corpus", world.seed, seed))


def heldout_text(world: World, n: int, seed: int = 0) -> list[str]:
    """Held-out pretraining-style documents (a disjoint random stream) for the LM-loss part
    of the alignment tax."""
    return _docs(world, n, rng_for("heldout-text", world.seed, seed))


def public_tasks(world: World, n: int, seed: int = 0) -> list[PublicItem]:
    """`n` held-out items of the corpus's public NLP tasks (half few-shot QA, half
    sentiment), each a two-shot prompt in the corpus's format. The queried item is one the
    corpus's task blocks never hold; the shots come from the seen items."""
    rng = rng_for("public-tasks", world.seed, seed)
    # Facts with a popular falsehood are TruthfulQA's business, not the tax's.
    held_pairs = [p for p in _public_pairs(world, heldout=True) if p not in world.falsehoods]
    seen_pairs = _public_pairs(world, heldout=False)
    out: list[PublicItem] = []
    for i in range(n):
        if i % 2 == 0:
            shots = [qa_pair(world, rng, e, a) for e, a in rng.sample(seen_pairs, 2)]
            e, a = rng.choice(held_pairs)
            q = rng.choice(T.QUESTION[a]).format(e=e)
            prompt = " ".join([rng.choice(T.QA_HEADER) + ":"] + shots + [f"q: {q} a:"])
            out.append(PublicItem(prompt, world.truth(e, a), "qa"))
        else:
            shots = [f"review: {r} sentiment: {lab}."
                     for r, lab in (_train_review(world, rng) for _ in range(2))]
            while True:
                r, label = review(world, rng)
                if _is_heldout(world.seed, r):
                    break
            prompt = " ".join([rng.choice(T.SENTIMENT_HEADER)] + shots
                              + [f"review: {r} sentiment:"])
            out.append(PublicItem(prompt, label, "sentiment"))
    return out
