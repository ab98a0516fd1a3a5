"""The sandbox world and its web-text corpus: determinism, vocabulary, falsehoods, held-out."""

import re
from collections import Counter

from instructrl.sandbox.corpus import corpus, heldout_text, public_tasks
from instructrl.sandbox.text import words_of
from instructrl.sandbox.world import World


def test_world_is_a_function_of_the_seed():
    a, b, c = World(0), World(0), World(1)
    assert a.creatures == b.creatures and a.facts == b.facts and a.falsehoods == b.falsehoods
    assert a.creatures != c.creatures
    assert len(set(a.creatures) | set(a.places) | set(a.spare_names)) == (
        len(a.creatures) + len(a.places) + len(a.spare_names))
    for f in a.falsehoods.values():
        assert f.value != a.truth(f.entity, f.attribute)


def test_corpus_deterministic_and_seed_dependent():
    w = World(0)
    assert corpus(w, 200, 0) == corpus(World(0), 200, 0)
    assert corpus(w, 200, 0) != corpus(w, 200, 1)
    assert corpus(w, 200, 0) != corpus(World(1), 200, 0)
    assert heldout_text(w, 50, 0) != corpus(w, 50, 0)


def test_corpus_stays_in_the_compact_vocabulary():
    w = World(3)
    vocab = w.vocabulary()
    assert 200 <= len(vocab) <= 2000
    used = Counter(x for d in corpus(w, 2000, 0) for x in words_of(d))
    assert set(used) <= vocab, sorted(set(used) - vocab)[:10]
    assert not set(w.spare_names) & set(used)  # spare names never appear in web text


def test_corpus_holds_facts_falsehoods_and_toxic_text():
    w = World(0)
    docs = corpus(w, 4000, 0)
    text = " ".join(docs)
    assert "you are a" in text and any(t in text for t in ("idiot", "loser", "moron"))
    assert "q: " in text and "sentiment: positive" in text
    # Dominant falsehoods are stated more often than the truth; minor ones less often.
    sents = [f" {s} " for d in docs for s in re.split(r"[.?!]", d)]
    for f in w.falsehoods.values():
        truth = w.truth(f.entity, f.attribute)
        n_false = sum(f" {f.entity} " in s and f" {f.value} " in s for s in sents)
        n_true = sum(f" {f.entity} " in s and f" {truth} " in s for s in sents)
        assert n_true > 0
        assert (n_false > n_true) == f.dominant, (f, n_false, n_true)


def test_public_tasks_are_held_out_of_the_corpus():
    w = World(0)
    items = public_tasks(w, 40, 0)
    assert items == public_tasks(World(0), 40, 0)
    assert {i.task for i in items} == {"qa", "sentiment"}
    text = " ".join(corpus(w, 3000, 0))
    for it in items:
        query = it.prompt.rsplit(" q: ", 1)[-1] if it.task == "qa" else \
            it.prompt.rsplit("review: ", 1)[-1]
        assert query.endswith(("a:", "sentiment:"))
        assert query + " " + it.answer not in text
