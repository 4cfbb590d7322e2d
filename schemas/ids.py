"""Identifier rules of the server: the id rule (the SDK's) and the encodings of ids.

**What an id is** is defined once, in the SDK (:mod:`mab_client.ids`): trimmed, then
1-120 printable characters, as in the original mab-ecommerce-optimizer API. The SDK
holds it because its request models refuse a bad id before any network call and it
cannot import the server; the server imports it from there (the one allowed direction,
checked by import-linter) and re-exports it here, so the API models, the decider's raw
hot path, the codec's fast path and the CLI all call the same :func:`normalize_id` (or
:func:`is_valid_id`, its "already normalized" test). The arm limit's default
(:data:`DEFAULT_MAX_ARMS`, ``MAB_MAX_ARMS``) is a server setting and stays here.

**Where an id becomes part of a name**, it is encoded so that no two ids can collide and
no id can escape its place:

* Redis keys and hash fields (the ``{…}`` hash tag, bucket fields ``<arm>|<kind>``):
  :func:`key_segment`. ``[A-Za-z0-9._-]`` stays as is and every other UTF-8 byte becomes
  ``%XX`` (upper-case hex). Injective and reversible (:func:`id_from_key_segment`), and
  it leaves every id that the earlier restricted charset allowed unchanged, so keys
  written before ids were widened stay where they are. The result never contains
  ``{``, ``}``, ``:``, ``|``, whitespace or a glob character (``*?[]\\``).
* URL path segments: the SDK's :func:`mab_client.paths.url_segment` (RFC 3986
  percent-encoding of everything but the unreserved characters; ``.`` and ``..`` are
  spelled ``%2E`` so no client or proxy can remove them as dot segments). The decider
  routes such segments back, including an encoded ``/`` (``%2F``) and ``%`` (``%25``):
  see ``services/decider/paths.py``.
* Kafka record keys: the UTF-8 bytes of the id (:func:`schemas.topics.partition_key`).
  UTF-8 is already injective and a Kafka key is opaque bytes, and bulk producers key
  their records by the id they know, so the API's and their records of one experiment
  share a partition.

Ids never become metric labels (unbounded) nor file names in this project; an id in an
error message or a dead letter's detail header is text for people, never parsed back.
"""

from __future__ import annotations

import os
import re
from typing import Final
from urllib.parse import unquote

from mab_client.ids import (
    ID_MAX_LEN,
    INVALID_ID,
    MAX_ARMS_CEILING,
    UNIT_ID_MAX_LEN,
    ArmId,
    ExperimentId,
    InvalidIdError,
    UnitId,
    is_valid_id,
    normalize_id,
)

__all__ = [
    "DEFAULT_MAX_ARMS",
    "ID_MAX_LEN",
    "INVALID_ID",
    "MAX_ARMS_CEILING",
    "UNIT_ID_MAX_LEN",
    "ArmId",
    "ExperimentId",
    "InvalidIdError",
    "UnitId",
    "id_from_key_segment",
    "is_valid_id",
    "key_segment",
    "normalize_id",
    "random_hex",
]

#: Default upper bound on arms per experiment (``MAB_MAX_ARMS`` of the decider changes
#: it, up to :data:`MAX_ARMS_CEILING`): a catalogue-sized experiment of 1,000 arms is a
#: real storefront case.
DEFAULT_MAX_ARMS: Final = 1000


# --------------------------------------------------------------------------- encodings

#: Bytes kept as they are in a key segment: the charset ids were once restricted to.
_KEY_SAFE: Final = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789._-")
_KEY_BYTE: Final = tuple(chr(b) if b in _KEY_SAFE else f"%{b:02X}" for b in range(256))
_PLAIN: Final = re.compile(r"[A-Za-z0-9._-]+").fullmatch
_KEY_SEGMENT: Final = re.compile(r"(?:[A-Za-z0-9._-]|%[0-9A-F]{2})+").fullmatch


def key_segment(identifier: str) -> str:
    """``identifier`` as a piece of a Redis key or hash field (see the module docstring).

    Percent-encoding with only ``[A-Za-z0-9._-]`` kept: injective (``%`` itself is
    encoded), and an id made of those characters only, like every id of the earlier
    charset, is its own segment.
    """
    if _PLAIN(identifier):
        return identifier
    return "".join([_KEY_BYTE[b] for b in identifier.encode()])


def id_from_key_segment(segment: str) -> str:
    """The id :func:`key_segment` encoded as ``segment``; ``ValueError`` for any string
    it cannot have produced (so a foreign key is never mistaken for an experiment's)."""
    if not _KEY_SEGMENT(segment):
        raise ValueError(f"{segment!r} is not an encoded id")
    identifier = unquote(segment, errors="strict")
    if key_segment(identifier) != segment:  # e.g. "%41" for "A": not our spelling
        raise ValueError(f"{segment!r} is not the canonical encoding of an id")
    return identifier


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
