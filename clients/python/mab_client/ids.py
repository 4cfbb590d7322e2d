"""What an experiment or arm id is: the rule the decider applies, held by the SDK.

Like the original mab-ecommerce-optimizer API, ids are trimmed (``" a "`` is ``"a"``)
and then any string of 1-120 *printable* characters is valid, so the ids storefront
teams use (``Free Shipping``, ``10% off``, ``a:b``, ``Livraison gratuite été``) work
unchanged. "Printable" is Python's :meth:`str.isprintable`: letters, marks, numbers,
punctuation, symbols and the ASCII space; refused are control characters (``\\n``,
``\\t``, ``\\x7f`` …), format characters (``U+200B`` zero-width space, bidi marks …),
separators other than the ASCII space (``U+00A0`` no-break space, line and paragraph
separators), surrogates, private-use and unassigned code points. Trimming removes what
:meth:`str.strip` removes (all Unicode whitespace); since every whitespace character but
the ASCII space is non-printable, a valid id never starts or ends with whitespace.
Length counts code points, after trimming.

The rule lives here, in the SDK, because both sides need it and the SDK cannot import
the server: the request models (:mod:`mab_client.models`) refuse a bad id in the
caller's process, and the server (``schemas.ids``: the API, its raw hot path, the codec,
the CLI) imports this very function. This module imports nothing but pydantic, so the
server's core may depend on it. How ids become Redis keys is the server's business
(``schemas.ids.key_segment``); how they become URL path segments is
:mod:`mab_client.paths`.
"""

from __future__ import annotations

from typing import Annotated, Final

from pydantic import AfterValidator, Field
from pydantic_core import PydanticCustomError

ID_MAX_LEN: Final = 120
#: Longest randomisation unit id (a visitor, session or account id) and unit token: the
#: same rule as ids with a longer bound, since account ids and e-mail-like ids are longer.
UNIT_ID_MAX_LEN: Final = 200

#: The most arm ids one request may list, and the highest ``MAB_MAX_ARMS`` a server
#: accepts (its default, 1,000, is the server's setting). An experiment's config and
#: snapshot are one Redis value each and the decider keeps per-arm state per decision
#: batch: 10,000 arms of 120 characters are ~1.2 MB of ids.
MAX_ARMS_CEILING: Final = 10_000

#: pydantic error type of an invalid id (the server's codec maps it to the DLQ reason
#: ``bad_id``).
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
