"""The decoders' accept-only fast path for the two hot record types.

pydantic validation costs several times more than the rest of folding a record, so
``reward_observed`` and ``decision_made`` records come here first
(:func:`schemas.codec.decode`, :func:`schemas.codec.decode_reward`). The fast path never
rejects anything: it only accepts records whose every key and value is of the plain,
canonical JSON shape that the pydantic path provably accepts, and builds exactly the
model pydantic would build; for anything else it returns ``None`` and the pydantic path
decides, with its :class:`~schemas.codec.DecodeError` reason.

Every check below mirrors a constraint of ``schemas/events.py`` / ``schemas/ids.py`` in
its *strictest* form. So the fast path can only differ from pydantic by accepting
something pydantic rejects, or by building a different model: the property tests of
``tests/unit/test_schemas_codec_fast_path.py`` hunt for both.
"""

from __future__ import annotations

import operator
import sys
from typing import Any, Final, get_args

from pydantic import BaseModel

from schemas.events import (
    EXPOSURE_ID_MAX_LEN,
    MAX_ATTRIBUTION_WINDOW_S,
    REWARD_MAX,
    REWARD_MIN,
    SCHEMA_VERSION,
    AnyEvent,
    DecisionAssignment,
    DecisionMade,
    RewardObserved,
)
from schemas.ids import UNIT_ID_MAX_LEN, is_valid_id

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
    "unit_id",
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
)
_MISSING: Final = object()
_ASSIGNMENTS: Final = frozenset(get_args(DecisionAssignment))
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


FAST_PATH_ENABLED: Final = (
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


def fast_reward(obj: dict[str, Any]) -> RewardObserved | None:
    """``obj`` as a :class:`RewardObserved` if it is plainly valid, else ``None``.

    Requires ``event_id`` and ``ts`` (their defaults are random/clock-based, which only
    pydantic's default factories should produce), ``type`` and a current (or absent)
    ``schema_version``. Numbers must be JSON floats, or JSON ints converted exactly
    (pydantic converts ints to float in lax mode too), never bools or strings; ids must
    be valid as they are (trimmed); strings must be ``str`` within their length bounds.
    A ``user_context`` other than null is left to pydantic (its bounds are checked there).
    A ``unit_id`` must be a valid unit token as it is (never memoised: units are many).
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
    unit_id = get("unit_id")
    if unit_id is not None and not is_valid_id(unit_id, UNIT_ID_MAX_LEN):
        return None
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
        or not REWARD_MIN <= reward <= REWARD_MAX
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
            "unit_id": unit_id,
        },
    )
    _set_fields_set(event, set(obj))
    _set_extra(event, None)
    _set_private(event, None)
    return event


def fast_decision(obj: dict[str, Any]) -> DecisionMade | None:
    """``obj`` as a :class:`DecisionMade` if it is plainly valid, else ``None``.

    Same rules as :func:`fast_reward`; the versions must be JSON ints (not bools, not
    floats), ``degraded`` a JSON bool and ``strategy_params`` (when given) an object.
    The unit fields, each optional: ``unit_id`` a valid unit token as it is,
    ``assignment`` one of its literals, ``allocation_version`` a non-negative JSON int,
    ``exposure_id`` a string within its bounds.
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
    unit_id = get("unit_id")
    assignment = get("assignment")
    allocation_version = get("allocation_version")
    exposure_id = get("exposure_id")
    if (
        (unit_id is not None and not is_valid_id(unit_id, UNIT_ID_MAX_LEN))
        or (
            assignment is not None
            and (type(assignment) is not str or assignment not in _ASSIGNMENTS)
        )
        or (
            allocation_version is not None
            and (type(allocation_version) is not int or allocation_version < 0)
        )
        or (
            exposure_id is not None
            and (type(exposure_id) is not str or not 0 < len(exposure_id) <= EXPOSURE_ID_MAX_LEN)
        )
    ):
        return None
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
            "unit_id": unit_id,
            "assignment": assignment,
            "allocation_version": allocation_version,
            "exposure_id": exposure_id,
        },
    )
    _set_fields_set(event, set(obj))
    _set_extra(event, None)
    _set_private(event, None)
    return event


def fast_event(obj: dict[str, Any]) -> AnyEvent | None:
    """The fast path of :func:`decode`: a hot event type, or ``None`` to ask pydantic."""
    if not FAST_PATH_ENABLED:
        return None
    kind = obj.get("type")
    if kind == "reward_observed":
        return fast_reward(obj)
    if kind == "decision_made":
        return fast_decision(obj)
    return None
