"""JSON (de)serialisation of events, with upcasting of older schema versions.

Records are orjson-encoded JSON objects. Decoding goes through one cached
``TypeAdapter`` of the discriminated union, after the upcasters have brought a record
to the current ``schema_version``. Bulk producers may omit ``type`` and ``event_id`` on
reward records (the documented minimal contract); :func:`decode_reward` fills them.

The two hot record types, ``reward_observed`` and ``decision_made``, first go through a
hand-written *accept-only* fast path (see :func:`_fast_event`): pydantic validation
costs ~7 µs a record, the largest single cost of folding, while the fast path costs
well under 1 µs. The fast path never rejects anything: it only accepts records whose
every key and value is of the plain, canonical JSON shape that the pydantic path
provably accepts, and builds exactly the model pydantic would build. Anything else
(an unknown key, a bool or numeric string where a number is expected, an out-of-range
value, a bad id, a missing field, an old ``schema_version`` …) falls back to the
pydantic path, which stays the single source of truth for every rejection and its
:class:`DecodeError` reason. ``tests/unit/test_codec_fast_path.py`` checks with
property tests that fast-then-fallback and the pure pydantic path (:func:`_decode_slow`,
:func:`_decode_reward_slow`) agree on valid records and on near-valid mutations.
"""

from __future__ import annotations

import json
import math
import operator
import sys
from collections.abc import Callable, Mapping
from typing import Any, Final

import orjson
from pydantic import BaseModel, TypeAdapter, ValidationError

from schemas.dead_letter import position_id
from schemas.events import (
    INVALID_USER_CONTEXT,
    MAX_ATTRIBUTION_WINDOW_S,
    SCHEMA_VERSION,
    AnyEvent,
    DecisionMade,
    Event,
    RewardObserved,
)
from schemas.ids import INVALID_ID, is_valid_id
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
    }
)


def _reason(error: Mapping[str, Any]) -> Rejection:
    """The stable DLQ reason of pydantic's first error.

    Precise labels for what producers get wrong most (a reward that is NaN or outside
    [0, 1], a number sent as a string, a missing or unknown field, an invalid id, a
    user context of the wrong shape or size); any other constraint is ``invalid``, with
    pydantic's message as the detail.
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


# --------------------------------------------------------------------------- fast path
#
# Every check below mirrors a constraint of ``schemas/events.py`` / ``schemas/ids.py``
# in its *strictest* form; whatever is not plainly valid returns ``None`` (= "ask
# pydantic"), never an error. So the fast path can only differ from pydantic by
# accepting something pydantic rejects, or by building a different model: the property
# tests hunt for both.

_FLOAT_MAX: Final = sys.float_info.max
#: ints up to 2**53 convert to float exactly, as pydantic's lax int -> float does.
_EXACT_INT: Final = 2**53

_REWARD_FIELDS: Final = (
    "event_id",
    "ts",
    "schema_version",
    "experiment_id",
    "type",
    "arm_id",
    "reward",
    "decision_id",
    "source",
    "user_context",
)
_DECISION_FIELDS: Final = (
    "event_id",
    "ts",
    "schema_version",
    "experiment_id",
    "type",
    "decision_id",
    "arm_id",
    "strategy",
    "strategy_params",
    "propensity",
    "config_version",
    "snapshot_version",
    "degraded",
    "attribution_window_s",
)
_MISSING: Final = object()
_REWARD_KEYS: Final = frozenset(_REWARD_FIELDS)
_DECISION_KEYS: Final = frozenset(_DECISION_FIELDS)


def _constructible(model: type[BaseModel], fields: tuple[str, ...]) -> bool:
    """Whether ``model`` still has exactly the shape the fast path was written for.

    A field added to (or reordered in) ``events.py``, a post-init hook or a private
    attribute would make a hand-built instance differ from a validated one: the fast
    path then switches itself off rather than build a wrong model (and a unit test
    fails, asking for the fast path to be updated).
    """
    return (
        tuple(model.model_fields) == fields
        and model.__pydantic_post_init__ is None
        and not model.__private_attributes__
        and model.model_config.get("extra") == "forbid"
    )


_FAST_PATH_ENABLED: Final = (
    _constructible(RewardObserved, _REWARD_FIELDS)
    and _constructible(DecisionMade, _DECISION_FIELDS)
    and SCHEMA_VERSION == 1  # a missing schema_version is then current, never upcast
)

#: Slot setters of ``BaseModel`` instances, called directly: cheaper than
#: ``object.__setattr__`` (no attribute lookup) and exactly what ``model_construct`` sets.
_new_object = object.__new__
_set_dict = BaseModel.__dict__["__dict__"].__set__
_set_fields_set = BaseModel.__dict__["__pydantic_fields_set__"].__set__
_set_extra = BaseModel.__dict__["__pydantic_extra__"].__set__
_set_private = BaseModel.__dict__["__pydantic_private__"].__set__

_get_reward_required: Final = operator.itemgetter(
    "event_id", "ts", "experiment_id", "arm_id", "reward"
)
_get_decision_required: Final = operator.itemgetter(
    "event_id",
    "ts",
    "experiment_id",
    "decision_id",
    "arm_id",
    "strategy",
    "propensity",
    "config_version",
    "snapshot_version",
)

#: Ids already seen to be valid as they are. A stream repeats a handful of experiment
#: and arm ids, so a set lookup replaces most checks. Only ``str`` that passed
#: :func:`~schemas.ids.is_valid_id` enter (an id that still needs trimming does not: the
#: pydantic path trims it); the set is emptied when it grows past its bound, so a
#: stream of distinct ids costs memory of at most ``_KNOWN_IDS_MAX`` short strings.
_KNOWN_IDS: Final[set[str]] = set()
_KNOWN_IDS_MAX: Final = 4096


def _valid_new_id(value: str) -> bool:
    """The check behind the :data:`_KNOWN_IDS` memo (``value`` is a ``str``)."""
    if not is_valid_id(value):
        return False
    if len(_KNOWN_IDS) >= _KNOWN_IDS_MAX:
        _KNOWN_IDS.clear()
    _KNOWN_IDS.add(value)
    return True


def _fast_reward(obj: dict[str, Any]) -> RewardObserved | None:
    """``obj`` as a :class:`RewardObserved` if it is plainly valid, else ``None``.

    Requires ``event_id`` and ``ts`` (their defaults are random/clock-based, which only
    pydantic's default factories should produce), ``type`` and a current (or absent)
    ``schema_version``. Numbers must be JSON floats, or JSON ints converted exactly
    (pydantic converts ints to float in lax mode too), never bools or strings; ids must
    be valid as they are (trimmed); strings must be ``str`` within their length bounds.
    A ``user_context`` other than null is left to pydantic (its bounds are checked there).
    """
    if not _REWARD_KEYS.issuperset(obj) or obj.get("user_context") is not None:
        return None
    try:
        event_id, ts, experiment_id, arm_id, reward = _get_reward_required(obj)
    except KeyError:
        return None
    get = obj.get
    schema_version = get("schema_version", SCHEMA_VERSION)
    decision_id = get("decision_id")
    source = get("source", "api")
    if (
        get("type") != "reward_observed"
        or schema_version != SCHEMA_VERSION
        or type(schema_version) is not int  # True == 1 == 1.0, and _upcast refuses both
        or type(event_id) is not str
        or not 0 < len(event_id) <= 64
        or type(experiment_id) is not str
        or type(arm_id) is not str
        or (decision_id is not None and (type(decision_id) is not str or not decision_id))
        or type(source) is not str
    ):
        return None
    if type(ts) is not float:
        if type(ts) is not int or not 0 <= ts <= _EXACT_INT:
            return None
        ts = float(ts)
    if type(reward) is not float:
        if type(reward) is not int:
            return None
        reward = float(reward)
    if (
        not 0.0 <= ts <= _FLOAT_MAX  # finite and non-negative: NaN fails every comparison
        or not 0.0 <= reward <= 1.0
        or len(source) > 64
        or (decision_id is not None and len(decision_id) > 64)
        or (experiment_id not in _KNOWN_IDS and not _valid_new_id(experiment_id))
        or (arm_id not in _KNOWN_IDS and not _valid_new_id(arm_id))
    ):
        return None
    event: RewardObserved = _new_object(RewardObserved)
    _set_dict(
        event,
        {
            "event_id": event_id,
            "ts": ts,
            "schema_version": SCHEMA_VERSION,
            "experiment_id": experiment_id,
            "type": "reward_observed",
            "arm_id": arm_id,
            "reward": reward,
            "decision_id": decision_id,
            "source": source,
            "user_context": None,
        },
    )
    _set_fields_set(event, set(obj))
    _set_extra(event, None)
    _set_private(event, None)
    return event


def _fast_decision(obj: dict[str, Any]) -> DecisionMade | None:
    """``obj`` as a :class:`DecisionMade` if it is plainly valid, else ``None``.

    Same rules as :func:`_fast_reward`; the versions must be JSON ints (not bools, not
    floats), ``degraded`` a JSON bool and ``strategy_params`` (when given) an object.
    """
    if not _DECISION_KEYS.issuperset(obj):
        return None
    try:
        (
            event_id,
            ts,
            experiment_id,
            decision_id,
            arm_id,
            strategy,
            propensity,
            config_version,
            snapshot_version,
        ) = _get_decision_required(obj)
    except KeyError:
        return None
    get = obj.get
    schema_version = get("schema_version", SCHEMA_VERSION)
    strategy_params = get("strategy_params", _MISSING)
    degraded = get("degraded", False)
    window = get("attribution_window_s")
    if window is not None:
        if type(window) is not float:
            if type(window) is not int or not 0 < window <= _EXACT_INT:
                return None
            window = float(window)
        if not 0.0 < window <= MAX_ATTRIBUTION_WINDOW_S:
            return None
    if (
        get("type") != "decision_made"
        or schema_version != SCHEMA_VERSION
        or type(schema_version) is not int
        or type(event_id) is not str
        or not 0 < len(event_id) <= 64
        or type(experiment_id) is not str
        or type(decision_id) is not str
        or not 0 < len(decision_id) <= 64
        or type(arm_id) is not str
        or type(strategy) is not str
        or type(config_version) is not int
        or type(snapshot_version) is not int
        or type(degraded) is not bool
    ):
        return None
    if strategy_params is _MISSING:
        strategy_params = {}
    elif type(strategy_params) is not dict:  # JSON object keys are always str
        return None
    if type(ts) is not float:
        if type(ts) is not int or not 0 <= ts <= _EXACT_INT:
            return None
        ts = float(ts)
    if type(propensity) is not float:
        if type(propensity) is not int:
            return None
        propensity = float(propensity)
    if (
        not 0.0 <= ts <= _FLOAT_MAX
        or not 0.0 < propensity <= 1.0
        or (experiment_id not in _KNOWN_IDS and not _valid_new_id(experiment_id))
        or (arm_id not in _KNOWN_IDS and not _valid_new_id(arm_id))
    ):
        return None
    event: DecisionMade = _new_object(DecisionMade)
    _set_dict(
        event,
        {
            "event_id": event_id,
            "ts": ts,
            "schema_version": SCHEMA_VERSION,
            "experiment_id": experiment_id,
            "type": "decision_made",
            "decision_id": decision_id,
            "arm_id": arm_id,
            "strategy": strategy,
            "strategy_params": strategy_params,
            "propensity": propensity,
            "config_version": config_version,
            "snapshot_version": snapshot_version,
            "degraded": degraded,
            "attribution_window_s": window,
        },
    )
    _set_fields_set(event, set(obj))
    _set_extra(event, None)
    _set_private(event, None)
    return event


def _fast_event(obj: dict[str, Any]) -> AnyEvent | None:
    """The fast path of :func:`decode`: a hot event type, or ``None`` to ask pydantic."""
    if not _FAST_PATH_ENABLED:
        return None
    kind = obj.get("type")
    if kind == "reward_observed":
        return _fast_reward(obj)
    if kind == "decision_made":
        return _fast_decision(obj)
    return None


# --------------------------------------------------------------------------- public API


def decode(raw: bytes) -> AnyEvent:
    """Decode any event record, or raise :class:`DecodeError`.

    Tries the accept-only fast path first; whatever it does not accept is decided (and
    rejected, with its reason) by the pydantic path exactly as before.
    """
    obj = _load(raw)
    event = _fast_event(obj)
    if event is not None:
        return event
    return _validate(obj)


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
    The fallbacks are filled in first, so such records take the fast path too.
    ``fallback_position`` (topic, partition, offset) is the id's source when no
    ``fallback_event_id`` is given: formatted only for a record that needs it (most
    records carry their own id, and this runs per record).
    """
    obj = _reward_record(raw, fallback_event_id, fallback_ts, fallback_position)
    if _FAST_PATH_ENABLED:
        fast = _fast_reward(obj)
        if fast is not None:
            return fast
    event = _validate(obj)
    assert isinstance(event, RewardObserved)
    return event


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
