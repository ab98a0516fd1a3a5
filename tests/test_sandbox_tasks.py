"""Simulated users' prompts: categories, styles, volumes, near-duplicates, reference answers."""

from collections import Counter

import pytest

from instructrl.data.prompts import dedupe
from instructrl.data.records import CATEGORIES, STYLES, Prompt
from instructrl.sandbox.checks import check
from instructrl.sandbox.tasks import reference_answer, write_prompts
from instructrl.sandbox.text import count_words
from instructrl.sandbox.world import World


@pytest.fixture(scope="module")
def world_prompts():
    w = World(0)
    return w, write_prompts(w, 3000, 120, seed=0)


def test_prompts_deterministic_by_seed(world_prompts):
    w, ps = world_prompts
    assert ps == write_prompts(World(0), 3000, 120, seed=0)
    assert [p.text for p in ps[:50]] != [p.text for p in write_prompts(World(1), 50, 120)]


def test_prompts_are_valid_records_of_many_categories_and_styles(world_prompts):
    w, ps = world_prompts
    for p in ps[:300]:
        assert Prompt.from_dict(p.to_dict()) == p and p.split is None
    cats = Counter(p.category for p in ps)
    assert len([c for c in cats if c not in ("harmful", "other")]) >= 7
    assert set(cats) <= set(CATEGORIES) and cats["harmful"] > 0
    assert set(Counter(p.style for p in ps)) == set(STYLES)
    assert max(count_words(p.text) for p in ps) <= 48
    unclear = sum(bool(p.meta.get("unclear")) for p in ps) / len(ps)
    assert 0.01 < unclear < 0.1


def test_users_have_heavy_tails_and_near_duplicates(world_prompts):
    w, ps = world_prompts
    per_user = Counter(p.user_id for p in ps)
    assert max(per_user.values()) > 200  # the paper's per-user cap has work to do
    assert min(per_user.values()) < 20
    deduped = dedupe(ps, 64)
    assert 0.05 * len(ps) < len(ps) - len(deduped) < 0.5 * len(ps)
    # Users differ in what they ask for.
    mixes = {}
    for p in ps:
        mixes.setdefault(p.user_id, Counter())[p.category] += 1
    top = [u for u, _ in per_user.most_common(3)]
    assert len({mixes[u].most_common(1)[0][0] for u in top}) >= 2 or \
        mixes[top[0]] != mixes[top[1]]


def test_reference_answers_pass_every_check(world_prompts):
    w, ps = world_prompts
    for p in ps:
        if p.meta.get("unclear"):
            continue
        r = reference_answer(w, p)
        c = check(w, p, r)
        assert c.correct == 1 and c.follows_instruction and c.constraints_ok, (p, r, c)
        assert c.truthful and not c.hallucination and c.harmless, (p, r, c)
        assert c.n_words <= 30
