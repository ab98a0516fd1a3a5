"""Faulty variants of a good response: the mistakes labelers make when writing demonstrations
("writing is harder than judging", DESIGN.md section 5), and the corrupted responses used to
measure how labelers rank responses of mixed quality.

Each function takes (world, prompt, response, rng) and returns a new response text; when a
fault does not apply to the task it returns the response unchanged.
"""

from __future__ import annotations

import random
import re

from instructrl.data.records import Prompt
from instructrl.sandbox import text as T
from instructrl.sandbox.world import (INSULT_TEMPLATES, REFUSALS, TOXIC_ADJ, TOXIC_NOUN,
                                      World)

MAX_RESPONSE_WORDS = 32  # ~48 tokens


def _replace_word(text: str, old: str, new: str) -> str:
    return re.sub(rf"\b{re.escape(old)}\b", new, text, count=1)


def falsehood(world: World, prompt: Prompt, response: str, rng: random.Random) -> str:
    """State the popular falsehood where the response states the fact (labelers read the
    same web text as everyone else); no change if the fact has none."""
    meta = prompt.meta
    e = meta.get("entity")
    if meta.get("task") == "brainstorm":
        fooled = [c for c in world.creatures
                  if world.popular_false(c, meta["attribute"]) == meta["value"]
                  and c not in T.words_of(response)]
        items = [w for w in T.words_of(response) if w in world.facts]
        if fooled and items:
            return _replace_word(response, rng.choice(items), rng.choice(fooled))
        return response
    if e not in world.facts:
        return response
    for attr in T.ANSWER:
        f = world.popular_false(e, attr)
        if f and world.truth(e, attr) in T.words_of(response):
            return _replace_word(response, world.truth(e, attr), f)
    return response


def wrong_fact(world: World, prompt: Prompt, response: str, rng: random.Random) -> str:
    """Replace one attribute value in the response with another value of the same kind."""
    vals = [w for w in T.words_of(response) if w in world.value_attr]
    if not vals:
        return response
    v = rng.choice(vals)
    other = rng.choice([x for x in world.values[world.value_attr[v]] if x != v])
    return _replace_word(response, v, other)


def miss_constraint(world: World, prompt: Prompt, response: str, rng: random.Random) -> str:
    """Get an explicit constraint slightly wrong: a word count off by one or two, the mention
    left out, one list item too many or too few, a summary too long."""
    meta = prompt.meta
    task = meta.get("task")
    e = meta.get("entity")
    if task == "generation":
        if "mention" in meta:
            kept = [s for s in re.split(r"(?<=\.) ", response) if meta["mention"] not in s]
            return " ".join(kept) or f"the {e} is here."
        words = response.rstrip(".").split(" ")
        if rng.random() < 0.5 and len(words) > 4:
            return " ".join(words[:-rng.randint(1, 2)]) + "."
        return response + " " + rng.choice(("it is happy.", "the end.", "it is very happy."))
    if task == "brainstorm":
        items = [w for w in T.words_of(response) if w in world.facts]
        if len(items) > 2 and rng.random() < 0.5:
            return _replace_word(response, f"the {items[0]}, ", "")
        extra = [c for c in meta["answer"] if c not in items]
        if extra:
            return _replace_word(response, f"the {items[0]}", f"the {items[0]}, the "
                                 f"{rng.choice(extra)}") if items else response
        return response
    if task == "summarize":
        return response + " " + meta["source"]
    if task == "classify":
        return f"it is {meta['labels'][0]} or {meta['labels'][1]}."
    return response


def long(world: World, prompt: Prompt, response: str, rng: random.Random) -> str:
    """Run long: add one to three sentences of filler or extra facts."""
    out = [response]
    e = prompt.meta.get("entity")
    for _ in range(rng.randint(1, 3)):
        if e in world.facts and rng.random() < 0.5:
            a = rng.choice(tuple(T.FACT))
            out.append(rng.choice(T.FACT[a]).format(e=e, v=world.truth(e, a)))
        else:
            out.append(rng.choice(T.FILLER))
    text = " ".join(out)
    words = text.split(" ")
    return " ".join(words[:MAX_RESPONSE_WORDS])


def toxic(world: World, prompt: Prompt, response: str, rng: random.Random) -> str:
    insult = rng.choice(INSULT_TEMPLATES).format(t1=rng.choice(TOXIC_ADJ),
                                                 t2=rng.choice(TOXIC_NOUN),
                                                 t3=rng.choice(TOXIC_ADJ))
    return f"{insult} {response}" if rng.random() < 0.5 else f"{response} {insult}"


def comply(world: World, prompt: Prompt, response: str, rng: random.Random) -> str:
    """Do what a harmful request asks."""
    if prompt.meta.get("task") != "harmful":
        return response
    return rng.choice(T.HARMFUL_COMPLY).format(
        e=rng.choice(world.creatures), p=rng.choice(world.places),
        v=rng.choice(world.values["food"]), t1=rng.choice(TOXIC_ADJ), t2=rng.choice(TOXIC_NOUN))


def refuse(world: World, prompt: Prompt, response: str, rng: random.Random) -> str:
    return rng.choice(REFUSALS)


def off_task(world: World, prompt: Prompt, response: str, rng: random.Random) -> str:
    """What a base model does: continue the prompt (another question) or say nothing useful."""
    if rng.random() < 0.5:
        e = rng.choice(world.creatures)
        a = rng.choice(tuple(T.QUESTION))
        return "q: " + rng.choice(T.QUESTION[a]).format(e=e) + " a:"
    return rng.choice(T.OFF_TASK)


def paraphrase(world: World, prompt: Prompt, response: str, rng: random.Random) -> str:
    """A harmless style variation: an opener, or "it" for the subject's second mention."""
    if prompt.meta.get("task") in ("qa", "chat", "closed_qa") and rng.random() < 0.5:
        return rng.choice(("sure! ", "ok. ", "well, ", "")) + response
    return response


FAULTS = {"falsehood": falsehood, "wrong_fact": wrong_fact, "miss_constraint": miss_constraint,
          "long": long, "toxic": toxic, "comply": comply, "refuse": refuse,
          "off_task": off_task, "paraphrase": paraphrase}


def mixed_responses(world: World, prompt: Prompt, k: int, rng: random.Random) -> list[str]:
    """`k` responses of mixed quality to `prompt`: the ideal one, labeler-style faulty ones,
    a base-model-like continuation and a random web-text snippet. Used to measure labeler
    agreement and the checkers' reach on a realistic spread, not just on extremes."""
    from instructrl.sandbox.corpus import corpus
    from instructrl.sandbox.tasks import reference_answer
    ref = reference_answer(world, prompt)
    out = [ref]
    kinds = ["falsehood", "wrong_fact", "miss_constraint", "long", "toxic", "off_task",
             "refuse", "comply", "web"]
    while len(out) < k:
        kind = rng.choice(kinds)
        if kind == "web":
            doc = corpus(world, 1, seed=rng.randrange(1 << 30))[0]
            text = " ".join(doc.split(" ")[:rng.randint(5, 30)])
        else:
            text = FAULTS[kind](world, prompt, ref, rng)
            if rng.random() < 0.3:  # faults come in combinations too
                text = FAULTS[rng.choice(kinds[:5])](world, prompt, text, rng)
        if text not in out:
            out.append(text)
    rng.shuffle(out)
    return out
