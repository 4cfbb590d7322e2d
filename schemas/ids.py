"""Identifier rules shared by the API, the hot path, the codec, the CLI and the key layout.

**What an id is.** Like the original mab-ecommerce-optimizer API, experiment and arm ids
are trimmed (``" a "`` is ``"a"``) and then any string of 1-120 *printable* characters
is valid, so the ids storefront teams use (``Free Shipping``, ``10% off``, ``a:b``,
``Livraison gratuite été``) work unchanged. "Printable" is Python's
:meth:`str.isprintable`: letters, marks, numbers, punctuation, symbols and the ASCII
space; refused are control characters (``\\n``, ``\\t``, ``\\x7f`` …), format characters
(``U+200B`` zero-width space, bidi marks …), separators other than the ASCII space
(``U+00A0`` no-break space, line and paragraph separators), surrogates, private-use and
unassigned code points. Trimming removes what :meth:`str.strip` removes (all Unicode
whitespace); since every whitespace character but the ASCII space is non-printable, a
valid id never starts or ends with whitespace. Length counts code points, after
trimming. :func:`normalize_id` is the one implementation of this rule; the pydantic
types :data:`ExperimentId` / :data:`ArmId`, the decider's raw hot path, the codec's fast
path and the CLI all call it (or :func:`is_valid_id`, its "already normalized" test).

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
from typing import Annotated, Final
from urllib.parse import unquote

from pydantic import AfterValidator, Field
from pydantic_core import PydanticCustomError

ID_MAX_LEN: Final = 120
#: Longest randomisation unit id (a visitor, session or account id) and unit token: the
#: same rule as ids with a longer bound, since account ids and e-mail-like ids are longer.
UNIT_ID_MAX_LEN: Final = 200

#: Default upper bound on arms per experiment (``MAB_MAX_ARMS`` of the decider changes
#: it): a catalogue-sized experiment of 1,000 arms is a real storefront case.
DEFAULT_MAX_ARMS: Final = 1000
#: The highest ``MAB_MAX_ARMS`` accepted, and the most arm ids one request may list.
#: An experiment's config and snapshot are one Redis value each and the decider keeps
#: per-arm state per decision batch: 10,000 arms of 120 characters are ~1.2 MB of ids.
MAX_ARMS_CEILING: Final = 10_000

#: pydantic error type of an invalid id (the codec maps it to the DLQ reason ``bad_id``).
INVALID_ID: Final = "invalid_id"


class InvalidIdError(ValueError):
    """An id that is not 1-120 printable characters after trimming; says which rule."""


def normalize_id(value: str, what: str = "id", max_len: int = ID_MAX_LEN) -> str:
    """The trimmed id, or :class:`InvalidIdError` naming the broken rule.

    ``what`` names the field in the message (``"experiment_id"``, ``"arm id"`` …);
    ``max_len`` is :data:`UNIT_ID_MAX_LEN` for unit ids, the one longer bound.
    """
    if not isinstance(value, str):
        raise InvalidIdError(f"{what} must be a string")
    text = value.strip()
    if not text:
        raise InvalidIdError(f"{what} must not be empty (after trimming whitespace)")
    if len(text) > max_len:
        raise InvalidIdError(
            f"{what} has {len(text)} characters after trimming; at most {max_len} are allowed"
        )
    if not text.isprintable():
        bad = next(c for c in text if not c.isprintable())
        raise InvalidIdError(
            f"{what} contains the non-printable character U+{ord(bad):04X}; ids are "
            "printable characters (no control, format or separator characters other "
            "than the space)"
        )
    return text


def is_valid_id(value: object, max_len: int = ID_MAX_LEN) -> bool:
    """Whether ``value`` is a valid id *as it is* (already trimmed): the cheap check of
    hot paths, equivalent to ``normalize_id(value) == value`` without an exception.

    Every whitespace character except the ASCII space is non-printable, so a printable
    string is trimmed exactly when it neither starts nor ends with a space.
    """
    return (
        isinstance(value, str)
        and 0 < len(value) <= max_len
        and value.isprintable()
        and value[0] != " "
        and value[-1] != " "
    )


def _pydantic_id(value: str) -> str:
    try:
        return normalize_id(value)
    except InvalidIdError as exc:
        raise PydanticCustomError(INVALID_ID, "{reason}", {"reason": str(exc)}) from None


_ID_DOC: Final = (
    f"1-{ID_MAX_LEN} printable characters after trimming surrounding whitespace "
    "(spaces, punctuation and accents allowed; no control characters)."
)
_Id = Annotated[
    str,
    AfterValidator(_pydantic_id),
    Field(json_schema_extra={"minLength": 1, "maxLength": ID_MAX_LEN}, description=_ID_DOC),
]
#: An experiment id, validated and trimmed by :func:`normalize_id` (pydantic type).
ExperimentId = _Id
#: An arm id: the same rule.
ArmId = _Id


def _pydantic_unit_id(value: str) -> str:
    try:
        return normalize_id(value, "unit_id", UNIT_ID_MAX_LEN)
    except InvalidIdError as exc:
        raise PydanticCustomError(INVALID_ID, "{reason}", {"reason": str(exc)}) from None


#: A unit id, or the unit token events carry instead (a 32-hex digest, or the unit id
#: itself when the experiment stores raw ids): the id rule with :data:`UNIT_ID_MAX_LEN`.
UnitId = Annotated[
    str,
    AfterValidator(_pydantic_unit_id),
    Field(
        json_schema_extra={"minLength": 1, "maxLength": UNIT_ID_MAX_LEN},
        description=f"1-{UNIT_ID_MAX_LEN} printable characters after trimming.",
    ),
]

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
