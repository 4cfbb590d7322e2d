"""JSON (de)serialisation of events, with upcasting of older schema versions.

Records are orjson-encoded JSON objects. Decoding goes through one cached
``TypeAdapter`` of the discriminated union, after the upcasters have brought a record
to the current ``schema_version``. Bulk producers may omit ``type`` and ``event_id`` on
reward records (the documented minimal contract); :func:`decode_reward` fills them.

The two hot record types, ``reward_observed`` and ``decision_made``, first go through
the *accept-only* fast path of :mod:`schemas.fast_decode` (msgspec wire structs, parsed
and checked in one pass), which costs a fraction of parsing plus pydantic's validation,
the largest single cost of folding. It never rejects
anything: whatever it does not plainly accept (an unknown key, a bool or numeric string
where a number is expected, an out-of-range value, a bad id, a missing field, an old
``schema_version`` …) falls back to the pydantic path here, which stays the single
source of truth for every rejection and its :class:`DecodeError` reason.
``tests/unit/test_schemas_codec_fast_path.py`` checks with property tests that
fast-then-fallback and the pure pydantic path (:func:`_decode_slow`,
:func:`_decode_reward_slow`) agree on valid records and on near-valid mutations.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Mapping
from typing import Any, Final

import orjson
from pydantic import TypeAdapter, ValidationError

from mab_client.models import ExposureCreate
from schemas.dead_letter import position_id
from schemas.events import (
    INVALID_USER_CONTEXT,
    SCHEMA_VERSION,
    AnyEvent,
    Event,
    RewardObserved,
)
from schemas.fast_decode import FAST_PATH_ENABLED, fast_event, fast_reward
from schemas.ids import INVALID_ID
from schemas.rejections import Rejection

#: Records larger than this are rejected before parsing (:attr:`Rejection.OVERSIZE`).
MAX_RECORD_BYTES: Final = 64 * 1024

_ADAPTER: Final[TypeAdapter[AnyEvent]] = TypeAdapter(Event)

#: ``UPCASTERS[n]`` turns a version-``n`` dict into a version-``n+1`` dict.
UPCASTERS: Final[dict[int, Callable[[dict[str, Any]], dict[str, Any]]]] = {}


class DecodeError(ValueError):
    """A record that cannot become an event, with why (its stable label) and a detail."""

    def __init__(self, reason: Rejection, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


def encode(event: AnyEvent) -> bytes:
    return orjson.dumps(event.model_dump(mode="json"))


def _upcast(obj: dict[str, Any]) -> dict[str, Any]:
    version = obj.get("schema_version", 1)
    if not isinstance(version, int) or isinstance(version, bool):
        raise DecodeError(
            Rejection.BAD_SCHEMA_VERSION, f"schema_version {version!r} is not an integer"
        )
    if version > SCHEMA_VERSION:
        raise DecodeError(
            Rejection.UNKNOWN_SCHEMA_VERSION,
            f"schema_version {version} is newer than {SCHEMA_VERSION}",
        )
    while version < SCHEMA_VERSION:
        upcaster = UPCASTERS.get(version)
        if upcaster is None:
            raise DecodeError(
                Rejection.UNKNOWN_SCHEMA_VERSION, f"no upcaster from version {version}"
            )
        obj = upcaster(obj)
        version += 1
        obj["schema_version"] = version
    return obj


def _non_finite_reward(raw: bytes) -> bool:
    """Whether ``raw`` is refused only because its reward is ``NaN``/``Infinity`` or a
    number beyond a double (what ``json.dumps(float("nan"))`` writes). Strict JSON, and
    so orjson, refuses those tokens; Python's lenient parser reads them, which tells a
    producer the precise reason. Only runs on records orjson already refused."""
    try:
        obj = json.loads(raw)
    except (ValueError, RecursionError):
        # RecursionError: JSON nested deeper than Python's parser recurses (orjson refused
        # it too). Uncaught, it escaped the decoder and the consumer retried the same
        # record forever; it is just bad JSON.
        return False
    reward = obj.get("reward") if isinstance(obj, dict) else None
    return isinstance(reward, float) and not math.isfinite(reward)


def _load(raw: bytes) -> dict[str, Any]:
    if len(raw) > MAX_RECORD_BYTES:
        raise DecodeError(Rejection.OVERSIZE, f"{len(raw)} bytes > {MAX_RECORD_BYTES}")
    try:
        obj = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        if _non_finite_reward(raw):
            raise DecodeError(
                Rejection.NON_FINITE_REWARD, f"reward is NaN or infinite: {exc}"
            ) from None
        raise DecodeError(Rejection.BAD_JSON, str(exc)) from None
    if not isinstance(obj, dict):
        raise DecodeError(
            Rejection.NOT_AN_OBJECT, f"expected a JSON object, got {type(obj).__name__}"
        )
    return obj


#: pydantic error types that mean "a value of the wrong JSON type".
_TYPE_ERRORS: Final = frozenset(
    {
        "float_type",
        "float_parsing",
        "int_type",
        "int_parsing",
        "int_from_float",
        "string_type",
        "bool_type",
        "bool_parsing",
        "dict_type",
        "model_type",
        "model_attributes_type",
        "tuple_type",
        "list_type",
    }
)
_EVENT_TYPES: Final = frozenset(
    {
        "experiment_created",
        "arms_added",
        "strategy_changed",
        "decision_made",
        "reward_observed",
        "change_point_detected",
        "guardrail_breached",
    }
)


def _reason(error: Mapping[str, Any]) -> Rejection:
    """The stable DLQ reason of pydantic's first error.

    Precise labels for what producers get wrong most (a reward that is NaN, negative or
    above the ceiling of every experiment, a number sent as a string, a missing or
    unknown field, an invalid id, a user context of the wrong shape or size); any other
    constraint is ``invalid``, with pydantic's message as the detail.
    """
    kind = error["type"]
    loc = [p for p in error["loc"] if p not in _EVENT_TYPES]
    name = loc[-1] if loc else ""
    if "user_context" in loc or kind == INVALID_USER_CONTEXT:
        return Rejection.BAD_USER_CONTEXT
    if kind == INVALID_ID:
        return Rejection.BAD_ID
    if kind == "union_tag_invalid":
        return Rejection.WRONG_EVENT_TYPE
    if kind == "union_tag_not_found":
        return Rejection.MISSING_FIELD
    if name == "reward" and kind == "finite_number":
        return Rejection.NON_FINITE_REWARD
    if name == "reward" and kind in ("greater_than_equal", "less_than_equal"):
        return Rejection.REWARD_OUT_OF_RANGE
    if kind in _TYPE_ERRORS:
        return Rejection.WRONG_TYPE
    if kind == "missing":
        return Rejection.MISSING_FIELD
    if kind == "extra_forbidden":
        return Rejection.UNKNOWN_FIELD
    return Rejection.INVALID


def _validate(obj: dict[str, Any]) -> AnyEvent:
    try:
        return _ADAPTER.validate_python(_upcast(obj))
    except ValidationError as exc:
        first = exc.errors()[0]
        loc = ".".join(str(p) for p in first["loc"])
        raise DecodeError(_reason(first), f"{loc}: {first['msg']}") from None


# --------------------------------------------------------------------------- public API


def decode(raw: bytes) -> AnyEvent:
    """Decode any event record, or raise :class:`DecodeError`.

    Tries the accept-only fast path first; whatever it does not accept is decided (and
    rejected, with its reason) by the pydantic path exactly as before.
    """
    if len(raw) <= MAX_RECORD_BYTES:
        event = fast_event(raw)
        if event is not None:
            return event
    return _validate(_load(raw))


def _reward_record(
    raw: bytes,
    fallback_event_id: str | None,
    fallback_ts: float | None,
    fallback_position: tuple[str, int, int] | None,
) -> dict[str, Any]:
    """A rewards-topic record as a dict with the fallbacks of :func:`decode_reward`
    filled in (one place, so its pydantic-only reference cannot drift from it), or
    :class:`DecodeError` when it is another event type."""
    obj = _load(raw)
    obj.setdefault("type", "reward_observed")
    if fallback_event_id is not None:
        obj.setdefault("event_id", fallback_event_id)
    elif fallback_position is not None and "event_id" not in obj:
        obj["event_id"] = position_id(*fallback_position)
    if fallback_ts is not None:
        obj.setdefault("ts", fallback_ts)
    if obj["type"] != "reward_observed":
        raise DecodeError(Rejection.WRONG_EVENT_TYPE, f"type {obj['type']!r} on the rewards topic")
    return obj


def decode_reward(
    raw: bytes,
    *,
    fallback_event_id: str | None = None,
    fallback_ts: float | None = None,
    fallback_position: tuple[str, int, int] | None = None,
) -> RewardObserved:
    """Decode a record of the rewards topic, accepting the minimal producer contract.

    Without an ``event_id`` or ``ts`` the record is still valid; the consumer passes a
    deterministic id derived from the record's topic/partition/offset and the broker's
    timestamp, never random ones, so a redelivered or replayed record folds the same.
    Such records take the fast path too (it fills the fallbacks in the same way).
    ``fallback_position`` (topic, partition, offset) is the id's source when no
    ``fallback_event_id`` is given: formatted only for a record that needs it (most
    records carry their own id, and this runs per record).
    """
    if FAST_PATH_ENABLED and len(raw) <= MAX_RECORD_BYTES:
        fast = fast_reward(raw, fallback_event_id, fallback_ts, fallback_position)
        if fast is not None:
            return fast
    event = _validate(_reward_record(raw, fallback_event_id, fallback_ts, fallback_position))
    assert isinstance(event, RewardObserved)
    return event


def decode_exposure(raw: bytes) -> ExposureCreate:
    """Decode a record of the exposures topic: one ``POST /exposures`` item, the same
    JSON (:class:`~mab_client.models.ExposureCreate`), or :class:`DecodeError` with the
    reasons every other record gets (``oversize``, ``bad_json``, ``missing_field``,
    ``wrong_type``, ``bad_id``, ...). Not an event: it becomes one (a ``DecisionMade``)
    only once judged against the stored allocation it names."""
    obj = _load(raw)
    try:
        return ExposureCreate.model_validate(obj)
    except ValidationError as exc:
        first = exc.errors()[0]
        loc = ".".join(str(p) for p in first["loc"])
        raise DecodeError(_reason(first), f"{loc}: {first['msg']}") from None


def _decode_slow(raw: bytes) -> AnyEvent:
    """:func:`decode` through pydantic only: the reference the fast path is tested against."""
    return _validate(_load(raw))


def _decode_reward_slow(
    raw: bytes, *, fallback_event_id: str | None = None, fallback_ts: float | None = None
) -> RewardObserved:
    """:func:`decode_reward` through pydantic only (the fast path's test reference)."""
    event = _validate(_reward_record(raw, fallback_event_id, fallback_ts, None))
    assert isinstance(event, RewardObserved)
    return event
