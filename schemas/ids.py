"""Identifier rules shared by the API, the consumers and the Redis key layout.

The seed accepted any string, so ids containing ``:`` or ``*`` collided with its key
layout. We restrict ids to a safe charset that can never contain a key separator, a
glob character or a hash-tag brace, which keeps every Redis key unambiguous.
"""

from __future__ import annotations

import os
import re
from typing import Annotated, Final

from pydantic import StringConstraints

ID_MAX_LEN: Final = 120
ID_PATTERN: Final = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,119}$"
_ID_RE: Final = re.compile(ID_PATTERN)

#: Upper bound on arms per experiment: strategies are O(arms) per decision and the
#: dashboard must stay readable; 256 is far beyond any sane storefront test.
MAX_ARMS: Final = 256

ExperimentId = Annotated[str, StringConstraints(pattern=ID_PATTERN, max_length=ID_MAX_LEN)]
ArmId = Annotated[str, StringConstraints(pattern=ID_PATTERN, max_length=ID_MAX_LEN)]


def is_valid_id(value: object) -> bool:
    """Cheap check used on hot paths where a pydantic model would cost too much."""
    return (
        isinstance(value, str) and len(value) <= ID_MAX_LEN and _ID_RE.fullmatch(value) is not None
    )


#: Random ids drawn per ``os.urandom`` call. One ``getrandom`` syscall cost 1-3 µs on this
#: machine class, and a decision needs two ids (event and decision), a reward one.
_POOL_SIZE: Final = 256
_pool: list[str] = []
# A forked worker must never hand out the ids its parent drew (duplicates across workers).
os.register_at_fork(after_in_child=_pool.clear)


def random_hex() -> str:
    """32 hex digits (128 bits) from the OS CSPRNG, unpredictable like ``uuid4().hex``.

    Drawn in blocks of :data:`_POOL_SIZE`: unique and unguessable ids (a guessable
    decision id would let a client pre-empt another visitor's reward) at a fraction of
    a syscall each.
    """
    try:
        return _pool.pop()
    except IndexError:
        raw = os.urandom(16 * _POOL_SIZE).hex()
        _pool.extend([raw[i : i + 32] for i in range(0, len(raw), 32)])
        return _pool.pop()
