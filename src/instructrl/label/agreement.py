"""Inter-labeler agreement on overlapping rankings (paper section 5.1 / App. B.4: training
labelers agree with each other 72.6 +- 1.5 % of the time).

Two labelers who ranked the same K responses are compared on every response pair (i, j) that
both ordered strictly; they agree when they prefer the same one. Pairs either of them tied are
left out (a tie states no preference). Pure functions.
"""

from __future__ import annotations

from collections import defaultdict
from itertools import combinations


def levels(groups: list[list[int]]) -> dict[int, int]:
    """Response index -> its group's position (0 = best)."""
    return {i: lv for lv, g in enumerate(groups) for i in g}


def pair_agreement(a: list[list[int]], b: list[list[int]]) -> tuple[int, int]:
    """(agreeing pairs, pairs both ranked strictly) for two rankings of the same responses."""
    la, lb = levels(a), levels(b)
    agree = total = 0
    for i, j in combinations(sorted(la), 2):
        da, db = la[i] - la[j], lb[i] - lb[j]
        if da == 0 or db == 0:
            continue
        total += 1
        agree += (da < 0) == (db < 0)
    return agree, total


def agreement(rankings: list[tuple[object, str, list[list[int]]]]) -> dict:
    """`rankings`: (item, labeler, groups) for every non-skipped ranking. Returns overall
    agreement, each labeler's agreement with everyone they overlapped with, and counts."""
    by_item: dict[object, list[tuple[str, list[list[int]]]]] = defaultdict(list)
    for item, labeler, groups in rankings:
        by_item[item].append((labeler, groups))
    agree = total = items = 0
    per: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    for entries in by_item.values():
        if len(entries) < 2:
            continue
        items += 1
        for (la, ga), (lb, gb) in combinations(entries, 2):
            a, t = pair_agreement(ga, gb)
            agree, total = agree + a, total + t
            for name in (la, lb):
                per[name][0] += a
                per[name][1] += t
    return {"rate": agree / total if total else None, "pairs": total, "items": items,
            "per_labeler": {name: {"rate": a / t if t else None, "pairs": t}
                            for name, (a, t) in sorted(per.items())}}
