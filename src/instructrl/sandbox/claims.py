"""Read factual claims out of free text: "the glatind eats fish and is blue" ->
(glatind, food, fish), (glatind, color, blue).

This is what makes the sandbox's truthfulness check a real program check on the response
text, not a lookup of how the text was made. The language is small enough for a few rules:
- a sentence ending in "?" asserts nothing; nor does reported speech ("people say ...");
- a subject is a creature name, or a list of them ("the a, the b and the c eat fish"), or
  "it"/"they" for the last subject (or the prompt's entity when there is none yet);
- color and size words are claims by themselves ("is blue", "a tiny creature"); food and
  home values are claims only next to a cue ("eats fish", "lives in karvo"), so "went to
  karvo" or "looked for roots" claim nothing;
- "not", "never", ... in the same clause negate it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from instructrl.sandbox import text as T
from instructrl.sandbox.world import World

CUES = {"food": frozenset({"eat", "eats", "ate", "eating", "feeds", "feed", "food"}),
        "home": frozenset({"live", "lives", "lived", "living", "home", "comes", "find"})}
NEGATIONS = frozenset({"not", "never", "no", "doesn't", "isn't", "don't", "aren't", "cannot",
                       "can't", "won't"})
PRONOUNS = frozenset({"it", "they", "its", "their"})
_GLUE = frozenset({"the", "a", "an", "and", "or", "both", "also"})
_SENTENCE = re.compile(r"[^.!?;\n]+[.!?;]?")


@dataclass(frozen=True)
class Claim:
    entity: str
    attribute: str
    value: str
    negated: bool = False


def sentences(text: str) -> list[str]:
    return [s.strip() for s in _SENTENCE.findall(text.lower()) if s.strip()]


def parse_claims(world: World, text: str, *, default_entity: str | None = None,
                 extra_entities: frozenset[str] | set[str] = frozenset()) -> list[Claim]:
    """Every (entity, attribute, value, negated) claim the text asserts. `extra_entities`
    are names that count as subjects besides the world's creatures (a closed-QA context's
    creature)."""
    known = set(world.creatures) | set(extra_entities)
    claims: list[Claim] = []
    group: list[str] = [default_entity] if default_entity else []
    for sent in sentences(text):
        if sent.endswith("?") or any(r in sent for r in T.REPORTED):
            # A question or reported speech asserts nothing; but its subject can still be
            # what a following "it" means.
            names = [w for w in T.words_of(sent) if w in known]
            if names:
                group = names[-1:]
            continue
        seg: list[str] = []
        in_list = False  # the current subject group was named in this sentence
        for w in T.words_of(sent):
            if w in known:
                if any(x not in _GLUE for x in seg):  # a predicate ended: close the clause
                    claims += _segment_claims(world, group, seg)
                    group = [w]
                elif in_list:  # "the a, the b and the c eat fish"
                    group = group + [w]
                else:
                    group = [w]
                seg, in_list = [], True
            elif w in PRONOUNS:
                if any(x not in _GLUE for x in seg):
                    claims += _segment_claims(world, group, seg)
                seg = []
            else:
                seg.append(w)
        claims += _segment_claims(world, group, seg)
    return claims


def _segment_claims(world: World, group: list[str], seg: list[str]) -> list[Claim]:
    if not group or not seg:
        return []
    words = set(seg)
    negated = bool(words & NEGATIONS)
    out = []
    for w in seg:
        attr = world.value_attr.get(w)
        if attr is None:
            continue
        if attr in CUES and not words & CUES[attr]:
            continue
        out.extend(Claim(e, attr, w, negated) for e in group)
    return out


def mentioned_entities(world: World, text: str) -> list[str]:
    """Distinct creature names in order of first mention."""
    seen: list[str] = []
    for w in T.words_of(text):
        if w in world.facts and w not in seen:
            seen.append(w)
    return seen


def invented_names(world: World, text: str) -> list[str]:
    """Words after "the"/"a" that are not in the world's vocabulary: made-up creatures."""
    vocab = world.vocab
    words = T.words_of(text)
    return [b for a, b in zip(words, words[1:]) if a in ("the", "a") and b not in vocab
            and not b.isdigit()]
