"""Rendezvous (highest-random-weight) hashing with bounded load.

Every worker gets a score ``xxh64(key || name)``; a key goes to the highest-scoring worker
whose load stays within ``bound x`` the mean load (counting the new request), else to the
next one. Adding or removing a worker moves only the keys whose top choice changed, about
1/n of them. Invariant (tested): with ``bound >= 1`` some worker always qualifies.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import xxhash


def ranked(key: bytes, names: Sequence[str]) -> list[str]:
    """Names ordered by rendezvous score for ``key``, best first."""
    return sorted(names, key=lambda name: xxhash.xxh64_intdigest(key + name.encode()),
                  reverse=True)


def choose_bounded(key: bytes, loads: dict[str, int], bound: float) -> str:
    """The best-ranked name whose load is below ``ceil(bound * (total + 1) / n)``."""
    if not loads:
        raise ValueError("no workers to choose from")
    capacity = math.ceil(bound * (sum(loads.values()) + 1) / len(loads))
    order = ranked(key, list(loads))
    for name in order:
        if loads[name] < capacity:
            return name
    return order[0]  # unreachable for bound >= 1; kept for bound < 1
