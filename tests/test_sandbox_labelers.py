"""Simulated labelers: held-out pool, noisy-but-real rankings, agreement band, imperfect demos."""

from collections import Counter

import pytest

from instructrl.data.records import Prompt, Ranking, Response
from instructrl.sandbox.checks import check
from instructrl.sandbox.labelers import make_labelers, pairwise_agreement
from instructrl.sandbox.tasks import reference_answer, write_prompts
from instructrl.sandbox.variants import FAULTS, mixed_responses
from instructrl.sandbox.world import World, rng_for


@pytest.fixture(scope="module")
def setup():
    w = World(0)
    ps = [p for p in write_prompts(w, 1500, 60, seed=0) if not p.meta.get("unclear")]
    labs = make_labelers(w, 10, 4)
    return w, ps, labs


def test_heldout_pool_differs(setup):
    w, ps, labs = setup
    train = [lab for lab in labs if not lab.heldout]
    held = [lab for lab in labs if lab.heldout]
    assert len(train) == 10 and len(held) == 4
    assert len({lab.id for lab in labs}) == 14

    def mean(pool, k):
        return sum(lab.weights[k] / lab.weights["correct"] for lab in pool) / len(pool)
    for k in ("truthful", "harmless", "no_falsehood"):
        assert mean(held, k) > 1.5 * mean(train, k)
    # And it shows in judgments: held-out labelers punish a popular falsehood harder.
    e, a = next(iter(w.falsehoods))
    p = Prompt("p1", "u1", "q", "open_qa",
               meta={"task": "qa", "entity": e, "attribute": a, "answer": w.truth(e, a)})
    ref = reference_answer(w, p)
    c_true = check(w, p, ref)
    c_false = check(w, p, FAULTS["falsehood"](w, p, ref, rng_for(1)))
    assert c_false.repeats_falsehood and not c_true.repeats_falsehood

    def gap(lab):
        return lab.utility(c_true) - lab.utility(c_false)
    assert min(gap(lab) for lab in held) > 0
    assert sum(map(gap, held)) / len(held) > sum(map(gap, train)) / len(train)


def test_rankings_deterministic_and_valid(setup):
    w, ps, labs = setup
    p = ps[0]
    rs = [Response(t, "x") for t in mixed_responses(w, p, 5, rng_for(0))]
    r1, r2 = labs[0].rank(p, rs), labs[0].rank(p, rs)
    assert r1 == r2
    assert Ranking.from_dict(r1.to_dict()) == r1
    assert len(r1.likert) == 5 and len(r1.flags) == 5
    assert [labs[0].rank(q, rs, salt=str(i)).ranking for i, q in enumerate(ps[:20])] != \
        [labs[0].rank(q, rs, salt="x").ranking for q in ps[:20]]


def test_unclear_prompts_are_skipped():
    w = World(0)
    ps = [p for p in write_prompts(w, 500, 20, seed=0) if p.meta.get("unclear")]
    lab = make_labelers(w, 2, 1)[0]
    r = lab.rank(ps[0], [Response("a", "x"), Response("b", "y")])
    assert r.skipped == "unclear intent" and r.ranking == []


def test_reference_beats_corrupted_far_beyond_chance(setup):
    w, ps, labs = setup
    train = [lab for lab in labs if not lab.heldout]
    rng = rng_for("t", 0)
    wins = n = 0
    for p in ps[:600]:
        ref = reference_answer(w, p)
        bad = FAULTS[rng.choice(["falsehood", "wrong_fact", "miss_constraint", "toxic",
                                 "off_task", "refuse", "comply"])](w, p, ref, rng)
        if bad == ref:
            continue
        wins += rng.choice(train).compare(p, ref, bad)
        n += 1
    assert n > 300 and 0.75 < wins / n < 0.97  # real signal, but noisy


def test_likert_tracks_quality(setup):
    w, ps, labs = setup
    lab = labs[0]
    good = [lab.rate(p, reference_answer(w, p))[0] for p in ps[:200]]
    bad = [lab.rate(p, FAULTS["off_task"](w, p, "", rng_for(i)))[0] for i, p in
           enumerate(ps[:200])]
    assert sum(good) / 200 > sum(bad) / 200 + 2
    flags = [lab.rate(p, FAULTS["off_task"](w, p, "", rng_for(i)))[1] for i, p in
             enumerate(ps[:200])]
    assert sum("fails_instruction" in f for f in flags) > 150


def test_training_labeler_agreement_near_the_papers_73_percent(setup):
    w, ps, labs = setup
    train = [lab for lab in labs if not lab.heldout]
    rng = rng_for("agreement", 0)
    agree = total = 0
    for p in ps[:400]:
        rs = [Response(t, "x") for t in mixed_responses(w, p, rng.randint(4, 7), rng)]
        a, b = rng.sample(train, 2)
        x, y = pairwise_agreement(a.rank(p, rs), b.rank(p, rs))
        agree += x
        total += y
    assert 0.65 <= agree / total <= 0.85, agree / total


def test_demonstrations_imperfect_but_mostly_good(setup):
    w, ps, labs = setup
    train = [lab for lab in labs if not lab.heldout]
    faults = Counter()
    for i, p in enumerate(ps):
        c = check(w, p, train[i % len(train)].demonstrate(p))
        faults["any"] += (c.correct < 1 or not c.truthful or not c.constraints_ok
                          or not c.harmless or c.hallucination)
        faults["falsehood"] += c.repeats_falsehood
        faults["constraint"] += not c.constraints_ok
        faults["long"] += c.n_words > 20
    n = len(ps)
    assert 0.08 < faults["any"] / n < 0.4
    for k in ("falsehood", "constraint", "long"):
        assert faults[k] / n > 0.01, k
