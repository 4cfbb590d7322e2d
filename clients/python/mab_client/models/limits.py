"""Bounds of the API's values that the SDK and the server's events share.

Defined here, in the lowest layer, because a request model must refuse what the server
would refuse (in the caller's process, before any network call) and the SDK cannot
import the server; the server's events (``schemas.events``) and its record decoders
import these names from here. Like :mod:`mab_client.ids`, nothing here imports more
than pydantic.
"""

from __future__ import annotations

from typing import Annotated, Final, Literal

from pydantic import AfterValidator, Field, JsonValue
from pydantic_core import PydanticCustomError, PydanticSerializationError, to_json

#: A reward of a ``binary`` experiment is a finite number in ``[REWARD_MIN, REWARD_MAX]``:
#: 1 converted, 0 did not, partial credit between (the original API's only kind).
REWARD_MIN: Final = 0.0
REWARD_MAX: Final = 1.0
#: What an experiment's rewards are: ``binary`` (the original API's conversions, a reward
#: in [0, 1]) or ``continuous`` (any finite amount in ``[0, REWARD_CEILING]``, e.g. an
#: order value). Each strategy says which it learns from (``Strategy.reward_types``).
RewardType = Literal["binary", "continuous"]
#: Largest reward any record may carry (a ``continuous`` experiment's order value, in the
#: unit the experiment chooses: cents, euros, thousands of yen). Finite so that the
#: projector's sums stay exact: it stores ``round(reward * 1e6)`` micro-units, which for
#: a reward up to 1e6 is an integer below 2**53 (exact in a double), and Redis' HINCRBY
#: on an int64 hour-bucket field overflows only after 9.2 million rewards at this ceiling
#: on one arm in one hour (over 2,500 per second, every one at the maximum), far beyond
#: what an hour of one arm's orders can be.
REWARD_CEILING: Final = 1e6
#: Why a ``reward_cap`` is refused on a binary experiment (the SDK's request and the
#: server's config say it alike).
CAP_NEEDS_CONTINUOUS: Final = (
    "reward_cap is only allowed with reward_type=continuous (a binary reward is at most 1)"
)

# --- holdout and stopping (docs/stopping.md) ---
#: Largest ``holdout_share``: the holdout measures what the bandit earns, so at least
#: half of the traffic stays with the bandit.
HOLDOUT_SHARE_MAX: Final = 0.5
#: The leader's ``P(best)`` at which a winner is declared unless the experiment says
#: otherwise (``stop_probability``).
DEFAULT_STOP_PROBABILITY: Final = 0.95


def check_holdout(
    arm_ids: tuple[str, ...] | list[str], holdout_share: float, control: str | None
) -> None:
    """A holdout needs a control arm, and a control arm must be one of the experiment's:
    the SDK's create request and the server's config say it alike (a ``ValueError``)."""
    if control is not None and control not in arm_ids:
        raise ValueError(
            f"control_arm_id {control!r} is not an arm of the experiment; arms: {list(arm_ids)}"
        )
    if holdout_share > 0 and control is None:
        raise ValueError(
            f"holdout_share {holdout_share} needs a control_arm_id: the arm the holdout gets"
        )


#: Longest attribution window: the dedupe horizon (7 days), beyond which a late reward
#: could no longer be told apart from a first one.
MAX_ATTRIBUTION_WINDOW_S: Final = 7 * 24 * 3600.0

#: Bounds of a reward's ``user_context`` (the original API's free-form object, kept for
#: the contextual strategies to come): at most this many top-level keys, and at most
#: this many bytes as compact JSON. A context describes a visitor (segment, device,
#: locale), not a session log; the bound keeps every reward record small (the topic
#: limit is 64 KiB) and the future per-decision feature work predictable.
USER_CONTEXT_MAX_KEYS: Final = 32
USER_CONTEXT_MAX_BYTES: Final = 2048
#: pydantic error type of a context beyond those bounds (DLQ reason ``bad_user_context``).
INVALID_USER_CONTEXT: Final = "invalid_user_context"

#: The integers a record may carry: the server writes its log with orjson, which encodes
#: 64-bit integers only (a larger one must be refused here, not fail when logged).
_INT_MIN: Final = -(2**63)
_INT_MAX: Final = 2**64 - 1


def _numbers(value: JsonValue) -> tuple[bool, bool]:
    """Whether ``value`` holds an integer beyond 64 bits, and whether it holds a NaN or
    an infinity (JSON has neither; a log encoder would write null), in one pass.

    Iterative and by exact type: it runs for every reward that carries a context, on the
    decider's reward path.
    """
    big = nonfinite = False
    stack: list[JsonValue] = [value]
    pop, extend = stack.pop, stack.extend
    while stack:
        item = pop()
        kind = type(item)
        if kind is dict:
            extend(item.values())  # type: ignore[union-attr]
        elif kind is list:
            extend(item)  # type: ignore[arg-type]
        elif kind is float:
            if item - item != 0.0:  # type: ignore[operator]  # NaN for NaN and ±inf
                nonfinite = True
        elif kind is int and not _INT_MIN <= item <= _INT_MAX:  # type: ignore[operator]
            big = True
    return big, nonfinite


def check_user_context(context: dict[str, JsonValue]) -> dict[str, JsonValue]:
    """``context`` if it is within :data:`USER_CONTEXT_MAX_KEYS` keys and
    :data:`USER_CONTEXT_MAX_BYTES` bytes of compact JSON, with finite numbers only.

    The size is measured as the server's log encoder (orjson) writes the context:
    pydantic-core's compact JSON with NaN as ``null`` is byte for byte the same, within
    the same nesting limit, once integers beyond 64 bits (which orjson refuses) are
    refused first; so the SDK and the server measure the same bytes.
    """
    if len(context) > USER_CONTEXT_MAX_KEYS:
        raise PydanticCustomError(
            INVALID_USER_CONTEXT,
            "user_context has {n} keys; at most {limit} are allowed",
            {"n": len(context), "limit": USER_CONTEXT_MAX_KEYS},
        )
    big, nonfinite = _numbers(context)
    try:
        if big:
            raise ValueError("Integer exceeds 64-bit range")
        size = len(to_json(context, inf_nan_mode="null"))
    except (ValueError, RecursionError, PydanticSerializationError) as exc:
        raise PydanticCustomError(
            INVALID_USER_CONTEXT, "user_context is not encodable as JSON: {error}", {"error": exc}
        ) from None
    if size > USER_CONTEXT_MAX_BYTES:
        raise PydanticCustomError(
            INVALID_USER_CONTEXT,
            "user_context is {size} bytes as JSON; at most {limit} are allowed",
            {"size": size, "limit": USER_CONTEXT_MAX_BYTES},
        )
    if nonfinite:
        raise PydanticCustomError(
            INVALID_USER_CONTEXT, "user_context holds a NaN or infinite number", {}
        )
    return context


def _absent(value: object) -> bool:
    return value is None


UserContext = Annotated[
    dict[str, JsonValue] | None,
    AfterValidator(lambda v: None if v is None else check_user_context(v)),
    Field(
        default=None,
        # Left out of the record when absent: a reward without a context is encoded
        # byte for byte as before the field existed, so consumers of an older version
        # keep reading what an upgraded decider writes.
        exclude_if=_absent,
        json_schema_extra={"maxProperties": USER_CONTEXT_MAX_KEYS},
        description="Optional JSON object describing the visitor (segment, device …), "
        f"as in the original API: at most {USER_CONTEXT_MAX_KEYS} keys and "
        f"{USER_CONTEXT_MAX_BYTES} bytes as compact JSON. Kept on the event (replay and "
        "the audit export carry it); the current strategies ignore it.",
    ),
]


# --------------------------------------------------------------------------- assignment
# The visitor-assignment settings of an experiment (docs/assignment.md): the requests
# that set them and the server's ExperimentConfig share these names and bounds.

#: How an experiment assigns arms to requests that carry a unit id. ``per_request``: a
#: fresh draw per request, as without a unit id; ``sticky``: a unit keeps its first arm;
#: ``consistent``: a stateless hash of the unit onto the current allocation.
AssignmentMode = Literal["sticky", "consistent", "per_request"]
#: What events and Redis carry for a unit: a salted digest of its id, or the id itself.
UnitIdStorage = Literal["hashed", "raw"]
#: A sticky unit keeps its arm this long by default (30 days), at most a year.
DEFAULT_STICKY_TTL_S: Final = 30 * 24 * 3600
MAX_STICKY_TTL_S: Final = 365 * 24 * 3600
#: Allocation epochs: ``version = floor(ts / allocation_interval_s)``.
DEFAULT_ALLOCATION_INTERVAL_S: Final = 60
MIN_ALLOCATION_INTERVAL_S: Final = 5
MAX_ALLOCATION_INTERVAL_S: Final = 3600
#: Slack of the floor check ``k * min_arm_share <= 1``: ``3 * (1/3)`` must pass although
#: the double ``1/3`` times 3 may round a hair above 1.
FLOOR_SLACK: Final = 1e-9
