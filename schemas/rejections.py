"""Why a record or a reward is rejected: one enum of stable labels, each with its text.

The label is public and stable: it is the ``mab.dlq.reason`` header of a dead letter,
the ``outcome`` label of the decider's reward metrics, the ``type`` of a per-item error
of ``POST /rewards`` and what ``mab dlq count`` groups by. A :class:`Rejection` *is*
its label (a ``StrEnum``), so it goes onto the wire as the same bytes as before. Its
:attr:`~Rejection.text` says what the label means in general (``mab dlq count`` and
the producer contract list them); the explanation of one rejected reward, naming its
ids, is :func:`bandit_core.fold.rejection_text`.
"""

from __future__ import annotations

from collections.abc import Mapping
from enum import StrEnum
from typing import Final


class Rejection(StrEnum):
    """A stable rejection label (see the module docstring); :attr:`text` explains it."""

    OVERSIZE = "oversize"
    BAD_JSON = "bad_json"
    NOT_AN_OBJECT = "not_an_object"
    NON_FINITE_REWARD = "non_finite_reward"
    REWARD_OUT_OF_RANGE = "reward_out_of_range"
    WRONG_TYPE = "wrong_type"
    MISSING_FIELD = "missing_field"
    UNKNOWN_FIELD = "unknown_field"
    BAD_ID = "bad_id"
    BAD_USER_CONTEXT = "bad_user_context"
    INVALID = "invalid"
    BAD_SCHEMA_VERSION = "bad_schema_version"
    UNKNOWN_SCHEMA_VERSION = "unknown_schema_version"
    WRONG_EVENT_TYPE = "wrong_event_type"
    EMPTY = "empty"
    UNKNOWN_TOPIC = "unknown_topic"
    UNKNOWN_EXPERIMENT = "unknown_experiment"
    UNKNOWN_ARM = "unknown_arm"
    BAD_DECISION_ID = "bad_decision_id"
    ARM_MISMATCH = "arm_mismatch"
    NO_ASSIGNMENT = "no_assignment"
    UNKNOWN_ALLOCATION = "unknown_allocation"
    ARM_NOT_ASSIGNED = "arm_not_assigned"
    BAD_METRIC = "bad_metric"

    @property
    def text(self) -> str:
        """What the label means, in a sentence for people."""
        return _TEXT[self]

    @classmethod
    def text_of(cls, label: str) -> str:
        """The text of a label read off the wire; empty for one this code does not know
        (a dead letter without our headers, or from another version)."""
        try:
            return cls(label).text
        except ValueError:
            return ""


_TEXT: Final[Mapping[Rejection, str]] = {
    Rejection.OVERSIZE: "record larger than MAX_RECORD_BYTES, rejected before parsing",
    Rejection.BAD_JSON: "not valid JSON (or not UTF-8)",
    Rejection.NOT_AN_OBJECT: "JSON, but not an object",
    Rejection.NON_FINITE_REWARD: "reward is NaN or infinite",
    Rejection.REWARD_OUT_OF_RANGE: "reward below 0, above 1 for a binary experiment, or "
    "above REWARD_CEILING (1e6) for any",
    Rejection.WRONG_TYPE: "a field holds a value of the wrong JSON type",
    Rejection.MISSING_FIELD: "a required field is missing",
    Rejection.UNKNOWN_FIELD: "a field the contract does not define",
    Rejection.BAD_ID: "an experiment or arm id that is empty, longer than 120 characters "
    "after trimming, or not printable (see schemas/ids.py)",
    Rejection.BAD_USER_CONTEXT: "user_context is not a JSON object, or beyond its bounds "
    "(32 keys, 2 KiB as JSON, finite numbers)",
    Rejection.INVALID: "another constraint of the record schema failed",
    Rejection.BAD_SCHEMA_VERSION: "schema_version is not an integer",
    Rejection.UNKNOWN_SCHEMA_VERSION: "schema_version newer than this code (or no upcaster)",
    Rejection.WRONG_EVENT_TYPE: "an event type that does not belong on this topic",
    Rejection.EMPTY: "record without a value (tombstone)",
    Rejection.UNKNOWN_TOPIC: "a record from a topic the processor does not read",
    Rejection.UNKNOWN_EXPERIMENT: "no such experiment",
    Rejection.UNKNOWN_ARM: "the arm is not in the experiment",
    Rejection.BAD_DECISION_ID: "decision_id was not issued by this service",
    Rejection.ARM_MISMATCH: "the reward names another arm than its decision served",
    Rejection.NO_ASSIGNMENT: "a reward by unit_id without decision_id, for a unit that has "
    "no current assignment (never decided, or its sticky assignment expired)",
    Rejection.UNKNOWN_ALLOCATION: "an exposure names an allocation version that was never "
    "stored or is older than MAB_ALLOCATION_RETENTION_S",
    Rejection.ARM_NOT_ASSIGNED: "an exposure names another arm than the assignment rule "
    "gives its unit under that allocation version",
    Rejection.BAD_METRIC: "a reward's metric is not declared by its experiment, or its "
    "value is outside the metric's declared range",
}
