"""The decoders' accept-only fast path for the two hot record types.

pydantic validation (and, before it, parsing the record into a dict) costs several times
more than the rest of folding a record, so ``reward_observed`` and ``decision_made``
records come here first (:func:`schemas.codec.decode`, :func:`schemas.codec.decode_reward`).
The record's bytes are parsed and checked in one pass by msgspec against the *wire
structs* below, which declare every field of the event with its constraint in its
strictest form; the model is then built from the struct exactly as pydantic would build
it. The fast path never rejects anything: whatever a wire struct does not accept (an
unknown key, a bool or numeric string where a number is expected, an out-of-range value,
a bad id, an old ``schema_version``, a key the event's model fills with a random or
clock-based default …) returns ``None``, and the pydantic path decides, with its
:class:`~schemas.codec.DecodeError` reason.

So the fast path can only differ from pydantic by accepting something pydantic rejects,
or by building a different model: the property tests of
``tests/unit/test_schemas_codec_fast_path.py`` hunt for both, on the record bytes.

Where msgspec and the pydantic path (orjson, then pydantic's lax mode) read the same
JSON differently, the wire structs are narrowed to the part where they agree:

* integers outside the 64-bit range: orjson reads them as floats, msgspec exactly; the
  integer fields are bounded to the signed 64-bit range (a float field gets the same
  double from both);
* ``strategy_params`` is any JSON object, whose nested numbers would differ the same
  way: it is kept as raw bytes by msgspec and parsed by orjson, as the slow path does;
* ids are checked by the one id rule (:func:`schemas.ids.is_valid_id`), not by a
  pattern: an id that is valid once trimmed is left to pydantic, which trims it.
"""

from __future__ import annotations

import sys
from typing import Annotated, Any, Final, Literal

import msgspec
import orjson
from msgspec import UNSET, Meta, UnsetType
from pydantic import BaseModel

from schemas.dead_letter import position_id
from schemas.events import (
    EXPOSURE_ID_MAX_LEN,
    MAX_ATTRIBUTION_WINDOW_S,
    REWARD_CEILING,
    REWARD_MIN,
    SCHEMA_VERSION,
    AnyEvent,
    DecisionAssignment,
    DecisionMade,
    RewardObserved,
)
from schemas.ids import UNIT_ID_MAX_LEN, is_valid_id

_FLOAT_MAX: Final = sys.float_info.max
#: Integers the fast path accepts: signed 64-bit, which orjson reads as integers too
#: (beyond the signed or unsigned 64-bit range it reads floats; msgspec bounds take
#: int64 limits only).
_INT_MIN: Final = -(2**63)
_INT_MAX: Final = 2**63 - 1

#: ``event_id`` and ``decision_id``: 1-64 characters.
_Key = Annotated[str, Meta(min_length=1, max_length=64)]
_Int64 = Annotated[int, Meta(ge=_INT_MIN, le=_INT_MAX)]
_Ts = Annotated[float, Meta(ge=0.0, le=_FLOAT_MAX)]  # finite, non-negative


class RewardWire(
    msgspec.Struct, tag_field="type", tag="reward_observed", forbid_unknown_fields=True, gc=False
):
    """A ``reward_observed`` record as the fast path accepts it (see the module
    docstring). ``UNSET``: the key was absent. On the rewards topic ``type`` may be
    absent too (a tagged struct decoded on its own does not require its tag)."""

    experiment_id: str
    arm_id: str
    reward: Annotated[float, Meta(ge=REWARD_MIN, le=REWARD_CEILING)]
    event_id: _Key | UnsetType = UNSET
    ts: _Ts | UnsetType = UNSET
    schema_version: Literal[1] | UnsetType = UNSET
    decision_id: _Key | UnsetType | None = UNSET
    source: Annotated[str, Meta(max_length=64)] | UnsetType = UNSET
    user_context: UnsetType | None = UNSET  # a context is left to pydantic (its bounds)
    unit_id: str | UnsetType | None = UNSET
    #: Metric values are left to pydantic (names, finiteness, count): a record that has
    #: them is decoded by the slow path; null is taken here, as pydantic takes it.
    metrics: UnsetType | None = UNSET


class DecisionWire(
    msgspec.Struct, tag_field="type", tag="decision_made", forbid_unknown_fields=True, gc=False
):
    """A ``decision_made`` record as the fast path accepts it (``UNSET``: absent)."""

    event_id: _Key
    ts: _Ts
    experiment_id: str
    decision_id: _Key
    arm_id: str
    strategy: str
    propensity: Annotated[float, Meta(gt=0.0, le=1.0)]
    config_version: _Int64
    snapshot_version: _Int64
    schema_version: Literal[1] | UnsetType = UNSET
    strategy_params: msgspec.Raw | UnsetType = UNSET  # parsed by orjson (module docstring)
    degraded: bool | UnsetType = UNSET
    attribution_window_s: (
        Annotated[float, Meta(gt=0.0, le=MAX_ATTRIBUTION_WINDOW_S)] | UnsetType | None
    ) = UNSET
    unit_id: str | UnsetType | None = UNSET
    assignment: DecisionAssignment | UnsetType | None = UNSET
    allocation_version: Annotated[int, Meta(ge=0, le=_INT_MAX)] | UnsetType | None = UNSET
    exposure_id: (
        Annotated[str, Meta(min_length=1, max_length=EXPOSURE_ID_MAX_LEN)] | UnsetType | None
    ) = UNSET
    holdout: Literal[True] | UnsetType | None = UNSET


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
    "unit_id",
    "metrics",
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
    "unit_id",
    "assignment",
    "allocation_version",
    "exposure_id",
    "holdout",
)


def _constructible(
    model: type[BaseModel], wire: type[msgspec.Struct], fields: tuple[str, ...]
) -> bool:
    """Whether ``model`` still has exactly the shape the fast path was written for.

    A field added to (or reordered in) ``events.py``, a post-init hook or a private
    attribute would make a hand-built instance differ from a validated one: the fast
    path then switches itself off rather than build a wrong model (and a unit test
    fails, asking for the fast path to be updated).
    """
    return (
        tuple(model.model_fields) == fields
        and set(wire.__struct_fields__) | {"type"} == set(fields)
        and model.__pydantic_post_init__ is None
        and not model.__private_attributes__
        and model.model_config.get("extra") == "forbid"
    )


FAST_PATH_ENABLED: Final = (
    _constructible(RewardObserved, RewardWire, _REWARD_FIELDS)
    and _constructible(DecisionMade, DecisionWire, _DECISION_FIELDS)
    and SCHEMA_VERSION == 1  # the wire structs' Literal[1]; absent is then current
)

_decode_reward_wire: Final = msgspec.json.Decoder(RewardWire).decode
_decode_event_wire: Final = msgspec.json.Decoder(RewardWire | DecisionWire).decode
_WireError: Final = msgspec.MsgspecError

#: Slot setters of ``BaseModel`` instances, called directly: cheaper than
#: ``object.__setattr__`` (no attribute lookup) and exactly what ``model_construct`` sets.
_new_object = object.__new__
_set_dict = BaseModel.__dict__["__dict__"].__set__
_set_fields_set = BaseModel.__dict__["__pydantic_fields_set__"].__set__
_set_extra = BaseModel.__dict__["__pydantic_extra__"].__set__
_set_private = BaseModel.__dict__["__pydantic_private__"].__set__

#: The fields of an accepted event that are always set: required by the wire struct, or
#: (``type``, and a reward's ``event_id``/``ts``) filled in before validation.
_REWARD_SET: Final = frozenset({"type", "event_id", "ts", "experiment_id", "arm_id", "reward"})
_DECISION_SET: Final = frozenset(
    {
        "type",
        "event_id",
        "ts",
        "experiment_id",
        "decision_id",
        "arm_id",
        "strategy",
        "propensity",
        "config_version",
        "snapshot_version",
    }
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


def fast_reward(
    raw: bytes,
    fallback_event_id: str | None = None,
    fallback_ts: float | None = None,
    fallback_position: tuple[str, int, int] | None = None,
) -> RewardObserved | None:
    """A rewards-topic record as a :class:`RewardObserved` if it is plainly valid, else
    ``None``; the fallbacks are those of :func:`schemas.codec.decode_reward`.

    An absent ``event_id`` or ``ts`` takes its fallback (checked like a sent value); with
    no fallback the model would make a random or clock-based one, which only pydantic's
    default factories should produce.
    """
    try:
        wire = _decode_reward_wire(raw)
    except _WireError:
        return None
    return _reward(wire, fallback_event_id, fallback_ts, fallback_position)


def _reward(
    wire: RewardWire,
    fallback_event_id: str | None,
    fallback_ts: float | None,
    fallback_position: tuple[str, int, int] | None,
) -> RewardObserved | None:
    experiment_id = wire.experiment_id
    arm_id = wire.arm_id
    if (experiment_id not in _KNOWN_IDS and not _valid_new_id(experiment_id)) or (
        arm_id not in _KNOWN_IDS and not _valid_new_id(arm_id)
    ):
        return None
    event_id = wire.event_id
    if event_id is UNSET:
        if fallback_event_id is not None:
            event_id = fallback_event_id
        elif fallback_position is not None:
            event_id = position_id(*fallback_position)
        else:
            return None
        if not 0 < len(event_id) <= 64:
            return None
    ts = wire.ts
    if ts is UNSET:
        if type(fallback_ts) is not float or not 0.0 <= fallback_ts <= _FLOAT_MAX:
            return None
        ts = fallback_ts
    fields = set(_REWARD_SET)
    if wire.schema_version is not UNSET:
        fields.add("schema_version")
    decision_id = wire.decision_id
    if decision_id is UNSET:
        decision_id = None
    else:
        fields.add("decision_id")
    source = wire.source
    if source is UNSET:
        source = "api"
    else:
        fields.add("source")
    if wire.user_context is not UNSET:
        fields.add("user_context")
    unit_id = wire.unit_id
    if unit_id is UNSET:
        unit_id = None
    else:
        fields.add("unit_id")
        if unit_id is not None and not is_valid_id(unit_id, UNIT_ID_MAX_LEN):
            return None
    if wire.metrics is not UNSET:
        fields.add("metrics")
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
            "reward": wire.reward,
            "decision_id": decision_id,
            "source": source,
            "user_context": None,
            "unit_id": unit_id,
            "metrics": None,
        },
    )
    _set_fields_set(event, fields)
    _set_extra(event, None)
    _set_private(event, None)
    return event


def _decision(wire: DecisionWire) -> DecisionMade | None:
    # Each optional field written out, as in _reward (this runs per record): absent, it
    # takes the model's default and stays out of the fields set; present, it joins it.
    experiment_id = wire.experiment_id
    arm_id = wire.arm_id
    if (experiment_id not in _KNOWN_IDS and not _valid_new_id(experiment_id)) or (
        arm_id not in _KNOWN_IDS and not _valid_new_id(arm_id)
    ):
        return None
    fields = set(_DECISION_SET)
    if wire.schema_version is not UNSET:
        fields.add("schema_version")
    raw_params = wire.strategy_params
    if raw_params is UNSET:
        strategy_params: Any = {}
    else:
        fields.add("strategy_params")
        try:  # msgspec only skipped over it (a number may still be out of range)
            strategy_params = orjson.loads(memoryview(raw_params))
        except orjson.JSONDecodeError:
            return None
        if type(strategy_params) is not dict:  # JSON object keys are always str
            return None
    degraded = wire.degraded
    if degraded is UNSET:
        degraded = False
    else:
        fields.add("degraded")
    window = wire.attribution_window_s
    if window is UNSET:
        window = None
    else:
        fields.add("attribution_window_s")
    unit_id = wire.unit_id
    if unit_id is UNSET:
        unit_id = None
    else:
        fields.add("unit_id")
        if unit_id is not None and not is_valid_id(unit_id, UNIT_ID_MAX_LEN):
            return None
    assignment = wire.assignment
    if assignment is UNSET:
        assignment = None
    else:
        fields.add("assignment")
    allocation_version = wire.allocation_version
    if allocation_version is UNSET:
        allocation_version = None
    else:
        fields.add("allocation_version")
    exposure_id = wire.exposure_id
    if exposure_id is UNSET:
        exposure_id = None
    else:
        fields.add("exposure_id")
    holdout = wire.holdout
    if holdout is UNSET:
        holdout = None
    else:
        fields.add("holdout")
    event: DecisionMade = _new_object(DecisionMade)
    _set_dict(
        event,
        {
            "event_id": wire.event_id,
            "ts": wire.ts,
            "schema_version": SCHEMA_VERSION,
            "experiment_id": experiment_id,
            "type": "decision_made",
            "decision_id": wire.decision_id,
            "arm_id": arm_id,
            "strategy": wire.strategy,
            "strategy_params": strategy_params,
            "propensity": wire.propensity,
            "config_version": wire.config_version,
            "snapshot_version": wire.snapshot_version,
            "degraded": degraded,
            "attribution_window_s": window,
            "unit_id": unit_id,
            "assignment": assignment,
            "allocation_version": allocation_version,
            "exposure_id": exposure_id,
            "holdout": holdout,
        },
    )
    _set_fields_set(event, fields)
    _set_extra(event, None)
    _set_private(event, None)
    return event


def fast_event(raw: bytes) -> AnyEvent | None:
    """The fast path of :func:`~schemas.codec.decode`: a record of a hot event type (its
    ``type`` key required), or ``None`` to ask pydantic."""
    if not FAST_PATH_ENABLED:
        return None
    try:
        wire = _decode_event_wire(raw)
    except _WireError:
        return None
    if type(wire) is RewardWire:
        return _reward(wire, None, None, None)
    assert type(wire) is DecisionWire
    return _decision(wire)
