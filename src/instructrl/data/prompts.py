"""Prompt-set tools (paper section 3.2, App. A.3): dedupe by long common prefix, cap prompts per
user, split train/valid/test *by user ID* so that no user's prompts appear in two splits, and
hold out whole categories or styles from training (the "ood" split, section 4.4)."""

from __future__ import annotations

import dataclasses
import hashlib
import random
from collections import Counter
from dataclasses import dataclass

from instructrl.config import DataConfig
from instructrl.data.records import Prompt


def _normalise(text: str) -> str:
    return " ".join(text.lower().split())


def dedupe(prompts: list[Prompt], prefix_chars: int) -> list[Prompt]:
    """Keep the first of any prompts that share a common prefix of at least `prefix_chars`
    characters (after lower-casing and collapsing white space); shorter prompts are duplicates
    only when identical. Sharing such a prefix is the same as having equal first
    `prefix_chars` characters, so one dict lookup per prompt suffices."""
    seen: set[str] = set()
    out = []
    for p in prompts:
        key = _normalise(p.text)[:prefix_chars]
        if key not in seen:
            seen.add(key)
            out.append(p)
    return out


def cap_per_user(prompts: list[Prompt], max_per_user: int, seed: int) -> list[Prompt]:
    """At most `max_per_user` prompts per user ID (paper: 200), chosen at random but
    deterministically given `seed`; input order is kept."""
    by_user: dict[str, list[int]] = {}
    for i, p in enumerate(prompts):
        by_user.setdefault(p.user_id, []).append(i)
    keep: set[int] = set()
    for user in sorted(by_user):
        idx = by_user[user]
        if len(idx) > max_per_user:
            idx = random.Random(f"{seed}:{user}").sample(idx, max_per_user)
        keep.update(idx)
    return [p for i, p in enumerate(prompts) if i in keep]


def split_by_user(prompts: list[Prompt], valid_fraction: float, test_fraction: float,
                  seed: int) -> list[Prompt]:
    """Assign whole users to train / valid / test (fractions of users, not prompts)."""
    users = sorted({p.user_id for p in prompts})
    random.Random(seed).shuffle(users)
    n_valid = _split_count(valid_fraction, len(users))
    n_test = _split_count(test_fraction, len(users))
    split = {u: "valid" for u in users[:n_valid]}
    split.update({u: "test" for u in users[n_valid:n_valid + n_test]})
    return [dataclasses.replace(p, split=split.get(p.user_id, "train")) for p in prompts]


def _split_count(frac: float, n: int) -> int:
    # A non-zero fraction gets at least one unit once there are enough units to go round.
    return max(1, round(frac * n)) if frac > 0 and n >= 3 else round(frac * n)


def split_keys(keys, valid_fraction: float, test_fraction: float, seed: int) -> dict[str, str]:
    """key -> "train" / "valid" / "test" for distinct keys (user ids, or prompt ids of prompts
    that are their own user). Which keys is decided by a seeded hash of each key, not by the
    order or the set they come in: a key keeps its split when others are added or removed
    (a `limit`, another source), except at the margin the fractions move. `split_by_user`
    shuffles instead; the sandbox's recorded figures rest on it, so it stays as it is."""
    order = sorted(set(keys), key=lambda k: hashlib.sha256(f"{seed}:{k}".encode()).hexdigest())
    n_valid = _split_count(valid_fraction, len(order))
    n_test = _split_count(test_fraction, len(order))
    split = {k: "valid" for k in order[:n_valid]}
    split.update({k: "test" for k in order[n_valid:n_valid + n_test]})
    split.update({k: "train" for k in order[n_valid + n_test:]})
    return split


def hold_out(prompts: list[Prompt], categories, styles) -> list[Prompt]:
    """Prompts of the held-out categories or styles, whoever wrote them, to the "ood" split:
    no stage trains on them and evaluation judges them apart (paper section 4.4: instructions
    rare in the training distribution, such as code or other languages). Users' splits are
    decided before, so holding out a category moves no other prompt."""
    cats, sty = set(categories), set(styles)
    return [dataclasses.replace(p, split="ood") if p.category in cats or p.style in sty else p
            for p in prompts]


@dataclass(frozen=True)
class PrepareReport:
    n_in: int
    n_after_dedupe: int
    n_after_cap: int
    per_split: dict[str, int]
    per_category: dict[str, dict[str, int]]  # split -> category -> count

    def lines(self) -> list[str]:
        out = [f"prompts read: {self.n_in}; after dedupe: {self.n_after_dedupe}; "
               f"after the per-user cap: {self.n_after_cap}"]
        cats = sorted({c for d in self.per_category.values() for c in d})
        splits = ("train", "valid", "test") + (("ood",) if "ood" in self.per_split else ())
        out.append(f"{'category':<16}" + "".join(f"{s:>8}" for s in splits))
        for c in cats:
            out.append(f"{c:<16}" + "".join(f"{self.per_category.get(s, {}).get(c, 0):>8}"
                                            for s in splits))
        out.append(f"{'total':<16}" + "".join(f"{self.per_split.get(s, 0):>8}" for s in splits))
        return out


def prepare(prompts: list[Prompt], cfg: DataConfig) -> tuple[list[Prompt], PrepareReport]:
    deduped = dedupe(prompts, cfg.prefix_chars)
    capped = cap_per_user(deduped, cfg.max_per_user, cfg.seed)
    out = hold_out(split_by_user(capped, cfg.valid_fraction, cfg.test_fraction, cfg.seed),
                   cfg.heldout_categories, cfg.heldout_styles)
    per_cat: dict[str, Counter] = {}
    for p in out:
        per_cat.setdefault(p.split, Counter())[p.category] += 1
    report = PrepareReport(len(prompts), len(deduped), len(capped),
                           dict(Counter(p.split for p in out)),
                           {s: dict(c) for s, c in per_cat.items()})
    return out, report
