"""JSON (de)serialisation of events, with upcasting of older schema versions.

Records are orjson-encoded JSON objects. Decoding goes through one cached
``TypeAdapter`` of the discriminated union, after the upcasters have brought a record
to the current ``schema_version``. Bulk producers may omit ``type`` and ``event_id`` on
reward records (the documented minimal contract); :func:`decode_reward` fills them.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Final

import orjson
from pydantic import TypeAdapter, ValidationError

from schemas.events import SCHEMA_VERSION, AnyEvent, Event, RewardObserved

#: Records larger than this are rejected before parsing (DLQ reason ``oversize``).
MAX_RECORD_BYTES: Final = 64 * 1024

_ADAPTER: Final[TypeAdapter[AnyEvent]] = TypeAdapter(Event)

#: ``UPCASTERS[n]`` turns a version-``n`` dict into a version-``n+1`` dict.
UPCASTERS: Final[dict[int, Callable[[dict[str, Any]], dict[str, Any]]]] = {}


class DecodeError(ValueError):
    """A record that cannot become an event; ``reason`` is a short machine label."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


def encode(event: AnyEvent) -> bytes:
    return orjson.dumps(event.model_dump(mode="json"))


def _upcast(obj: dict[str, Any]) -> dict[str, Any]:
    version = obj.get("schema_version", 1)
    if not isinstance(version, int) or isinstance(version, bool):
        raise DecodeError("bad_schema_version", f"schema_version {version!r} is not an integer")
    if version > SCHEMA_VERSION:
        raise DecodeError(
            "unknown_schema_version", f"schema_version {version} is newer than {SCHEMA_VERSION}"
        )
    while version < SCHEMA_VERSION:
        upcaster = UPCASTERS.get(version)
        if upcaster is None:
            raise DecodeError("unknown_schema_version", f"no upcaster from version {version}")
        obj = upcaster(obj)
        version += 1
        obj["schema_version"] = version
    return obj


def _load(raw: bytes) -> dict[str, Any]:
    if len(raw) > MAX_RECORD_BYTES:
        raise DecodeError("oversize", f"{len(raw)} bytes > {MAX_RECORD_BYTES}")
    try:
        obj = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise DecodeError("bad_json", str(exc)) from None
    if not isinstance(obj, dict):
        raise DecodeError("not_an_object", f"expected a JSON object, got {type(obj).__name__}")
    return obj


def _validate(obj: dict[str, Any]) -> AnyEvent:
    try:
        return _ADAPTER.validate_python(_upcast(obj))
    except ValidationError as exc:
        first = exc.errors()[0]
        loc = ".".join(str(p) for p in first["loc"])
        raise DecodeError("invalid", f"{loc}: {first['msg']}") from None


def decode(raw: bytes) -> AnyEvent:
    """Decode any event record, or raise :class:`DecodeError`."""
    return _validate(_load(raw))


def decode_reward(
    raw: bytes, *, fallback_event_id: str | None = None, fallback_ts: float | None = None
) -> RewardObserved:
    """Decode a record of the rewards topic, accepting the minimal producer contract.

    Without an ``event_id`` or ``ts`` the record is still valid; the consumer passes a
    deterministic id derived from the record's topic/partition/offset and the broker's
    timestamp, never random ones, so a redelivered or replayed record folds the same.
    """
    obj = _load(raw)
    obj.setdefault("type", "reward_observed")
    if fallback_event_id is not None:
        obj.setdefault("event_id", fallback_event_id)
    if fallback_ts is not None:
        obj.setdefault("ts", fallback_ts)
    if obj["type"] != "reward_observed":
        raise DecodeError("wrong_type", f"type {obj['type']!r} on the rewards topic")
    event = _validate(obj)
    assert isinstance(event, RewardObserved)
    return event
