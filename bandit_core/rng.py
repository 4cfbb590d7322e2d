"""Random generators for the strategies.

The original mab-ecommerce-optimizer re-seeded its generator on every request, so a seeded
experiment served the same arm forever. Here the service creates ONE
:class:`random.Random` per experiment per process with :func:`make_rng` and keeps drawing
from it; a ``seed`` then makes a whole *sequence* of decisions reproducible instead of
freezing a single one.
"""

from __future__ import annotations

import os
import random
import weakref
from typing import Final

import numpy as np

_NP_GENERATORS: Final[weakref.WeakKeyDictionary[random.Random, np.random.Generator]] = (
    weakref.WeakKeyDictionary()
)


def make_rng(seed: int | None) -> random.Random:
    """A generator seeded with ``seed`` (a strategy's ``seed`` param) when given, else
    from ``os.urandom``."""
    if seed is None:
        return random.Random(int.from_bytes(os.urandom(16), "big"))
    return random.Random(seed)


def numpy_generator(rng: random.Random) -> np.random.Generator:
    """A numpy generator tied to ``rng`` for vectorised draws (many arms, Monte Carlo).

    It is seeded once from ``rng`` on first use and then reused (building one costs
    more than a small Monte Carlo run), so a seeded ``rng`` still gives a
    reproducible sequence. It lives as long as ``rng`` does.
    """
    gen = _NP_GENERATORS.get(rng)
    if gen is None:
        gen = np.random.Generator(np.random.SFC64(rng.getrandbits(64)))
        _NP_GENERATORS[rng] = gen
    return gen
