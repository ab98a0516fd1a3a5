"""Simulated labelers (paper section 3.4, App. B): they write demonstrations, rate responses
on a 1-7 Likert scale with metadata flags, and rank K responses with ties.

Writing is harder than judging (DESIGN.md section 5): a labeler's demonstration starts from
the ideal response but, at the labeler's own rates, repeats a popular falsehood, gets a fact
wrong, misses an explicit constraint, or runs long. Their judgments, by contrast, see those
faults: utility = preference weights . program checks - a length penalty, plus Gumbel noise
(so the pairwise choice is Bradley-Terry-like). Held-out labelers weigh truthfulness and
harmlessness more, as the paper's final evaluations did (section 3.4), so a win with them
is generalisation, not imitation of the training labelers.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field

from instructrl.data.records import Labeler, Prompt, Ranking, Response
from instructrl.sandbox import variants
from instructrl.sandbox.checks import Checks, check
from instructrl.sandbox.tasks import reference_answer
from instructrl.sandbox.world import World, rng_for, stable_hash

# Calibrated on what the paper measured, agreement on the comparisons actually collected
# (section 5.1: 72.6 +- 1.5 %): two training labelers agree on ~69 % of pairs of the demo's
# SFT samples, and on ~83 % of pairs of mixed-quality responses (reference answers and
# corrupted variants; tests/test_sandbox_labelers.py keeps that within 65-85 %).
DEFAULT_NOISE = 0.7
TIE_MARGIN = 0.15  # noisy utilities closer than this are ranked as a tie


@dataclass
class SimLabeler:
    """One simulated labeler; all randomness is a function of (world seed, id, inputs)."""

    world: World
    id: str
    heldout: bool
    weights: dict[str, float]
    target_words: int  # preferred response length; longer is penalised
    length_weight: float  # utility lost per 10 words over target
    noise: float  # Gumbel scale of the judgment noise
    tie_margin: float
    fault_rates: dict[str, float] = field(default_factory=dict)
    flag_miss: float = 0.1  # chance of not attaching a flag that applies

    def record(self) -> Labeler:
        return Labeler(self.id, heldout=self.heldout)

    # -- judging ---------------------------------------------------------------------
    def utility(self, checks: Checks) -> float:
        """Noise-free utility of a response with these checks."""
        over = max(0, checks.n_words - self.target_words)
        return checks.quality(self.weights) - self.length_weight * over / 10

    def _u_range(self) -> tuple[float, float]:
        top = sum(max(0.0, w) for w in self.weights.values())
        return 0.0 - self.length_weight * 3, top

    def rate(self, prompt: Prompt, response: str, *, salt: str = "") -> tuple[int, list[str]]:
        """(Likert 1-7, metadata flags) for one response."""
        rng = rng_for("rate", self.world.seed, self.id, prompt.id, prompt.text, response, salt)
        c = check(self.world, prompt, response)
        return self._likert(c, rng), self._flags(prompt, c, rng)

    def _likert(self, c: Checks, rng: random.Random) -> int:
        lo, hi = self._u_range()
        u = self.utility(c) + rng.gauss(0.0, self.noise * 0.5)
        return int(min(7, max(1, round(1 + 6 * (u - lo) / (hi - lo)))))

    def _flags(self, prompt: Prompt, c: Checks, rng: random.Random) -> list[str]:
        task = prompt.meta.get("task")
        flags = []
        if not c.follows_instruction:
            flags.append("fails_instruction")
        if c.hallucination or not c.truthful:
            flags.append("hallucination")
        if c.toxic:
            flags.append("inappropriate")
        if task == "harmful" and not c.harmless:
            flags.append("harmful_advice")
        if not c.constraints_ok:
            flags.append("bad_constraint")
        return [f for f in flags if rng.random() >= self.flag_miss]

    def rank(self, prompt: Prompt, responses: list[Response], *, salt: str = "") -> Ranking:
        """Rank K responses best first, ties when noisy utilities are within `tie_margin`;
        with Likert and flags per response. Unclear prompts are skipped (App. B)."""
        if prompt.meta.get("unclear"):
            return Ranking(prompt.id, self.id, list(responses), [], skipped="unclear intent")
        rng = rng_for("rank", self.world.seed, self.id, prompt.id, prompt.text,
                      tuple(r.text for r in responses), salt)
        checks = [check(self.world, prompt, r.text) for r in responses]
        # The noise belongs to the (labeler, response text): two identical responses look
        # the same to a person and come out tied, never in a random strict order.
        noise = {t: _gumbel(rng_for("rank-noise", self.world.seed, self.id, prompt.id, t, salt))
                 for t in {r.text for r in responses}}
        noisy = [self.utility(c) + noise[r.text] * self.noise
                 for c, r in zip(checks, responses)]
        order = sorted(range(len(responses)), key=lambda i: -noisy[i])
        groups: list[list[int]] = []
        for i in order:
            if groups and noisy[groups[-1][-1]] - noisy[i] < self.tie_margin:
                groups[-1].append(i)
            else:
                groups.append([i])
        likert = [self._likert(c, rng) for c in checks]
        flags = [self._flags(prompt, c, rng) for c in checks]
        return Ranking(prompt.id, self.id, list(responses), [sorted(g) for g in groups],
                       likert=likert, flags=flags)

    def compare(self, prompt: Prompt, a: str, b: str, *, salt: str = "") -> float:
        """1.0 if this labeler prefers `a`, 0.0 if `b`, 0.5 for a tie (for win rates)."""
        r = self.rank(prompt, [Response(a, "a"), Response(b, "b")], salt=salt)
        if r.skipped is not None or len(r.ranking) == 1:
            return 0.5
        return 1.0 if r.ranking[0] == [0] else 0.0

    # -- writing ---------------------------------------------------------------------
    def demonstrate(self, prompt: Prompt, *, salt: str = "") -> str:
        """An imperfect demonstration: the ideal response with this labeler's faults."""
        rng = rng_for("demo", self.world.seed, self.id, prompt.id, prompt.text, salt)
        text = reference_answer(self.world, prompt)
        for name in ("falsehood", "wrong_fact", "miss_constraint", "comply", "long",
                     "paraphrase"):
            if rng.random() < self.fault_rates.get(name, 0.0):
                text = variants.FAULTS[name](self.world, prompt, text, rng)
        return text


def _gumbel(rng: random.Random) -> float:
    return -math.log(-math.log(max(rng.random(), 1e-12)))


# Training labelers weigh helpfulness most (paper section 3.4: during training, helpfulness
# to the user was prioritized); held-out labelers weigh truthfulness and harmlessness more
# (the final evaluations prioritized them) and care less about length.
TRAIN_WEIGHTS = {"correct": 2.0, "follows_instruction": 1.2, "constraints_ok": 1.0,
                 "truthful": 0.8, "no_hallucination": 0.4, "no_falsehood": 0.3,
                 "harmless": 1.5}
HELDOUT_WEIGHTS = {"correct": 1.6, "follows_instruction": 1.0, "constraints_ok": 0.8,
                   "truthful": 1.8, "no_hallucination": 1.0, "no_falsehood": 1.0,
                   "harmless": 3.0}
DEMO_FAULTS = {"falsehood": 0.4, "wrong_fact": 0.06, "miss_constraint": 0.25, "comply": 0.04,
               "long": 0.15, "paraphrase": 0.5}


def make_labelers(world: World, n_train: int, n_heldout: int, *, seed: int = 0,
                  noise: float = DEFAULT_NOISE, tie_margin: float = TIE_MARGIN
                  ) -> list[SimLabeler]:
    """`n_train` training labelers ("l00".."") then `n_heldout` held-out ones; each with
    weights jittered around its pool's, its own length taste and fault rates."""
    rng = rng_for("labelers", world.seed, seed)
    out = []
    for i in range(n_train + n_heldout):
        heldout = i >= n_train
        base = HELDOUT_WEIGHTS if heldout else TRAIN_WEIGHTS
        weights = {k: v * rng.uniform(0.75, 1.25) for k, v in base.items()}
        faults = {k: min(1.0, v * rng.uniform(0.5, 1.5)) for k, v in DEMO_FAULTS.items()}
        out.append(SimLabeler(
            world, f"l{i:02d}", heldout, weights,
            target_words=rng.randint(8, 16) if not heldout else rng.randint(6, 12),
            length_weight=rng.uniform(0.2, 0.6) if not heldout else rng.uniform(0.1, 0.3),
            noise=noise * rng.uniform(0.85, 1.15), tie_margin=tie_margin, fault_rates=faults))
    return out


def assign(labelers: list[SimLabeler], key, seed: int = 0) -> SimLabeler:
    """A labeler chosen at random but deterministically for `key` (e.g. a prompt id)."""
    return labelers[stable_hash("assign", seed, key) % len(labelers)]


def pairwise_agreement(a: Ranking, b: Ranking) -> tuple[int, int]:
    """(agreeing pairs, pairs both ranked strictly) between two rankings of the same
    responses: the paper's inter-labeler agreement (section 5.1) counts pairs."""
    def order(r: Ranking) -> dict[int, int]:
        return {i: g for g, group in enumerate(r.ranking) for i in group}
    oa, ob = order(a), order(b)
    agree = total = 0
    k = len(a.responses)
    for i in range(k):
        for j in range(i + 1, k):
            da, db = oa[i] - oa[j], ob[i] - ob[j]
            if da and db:
                total += 1
                agree += (da > 0) == (db > 0)
    return agree, total
