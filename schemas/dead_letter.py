"""The dead-letter record: headers written by the reward consumer, read by ``mab dlq``.

A dead-lettered record keeps the rejected record's **value bytes untouched** (so a fixed
cause can re-drive them as they were) and its key; everything about the rejection is in
headers, all UTF-8 strings:

=========================  ====================================================
``mab.dlq.reason``         stable label (:class:`schemas.rejections.Rejection`)
``mab.dlq.detail``         short human-readable explanation (≤ 300 characters)
``mab.dlq.source.topic``   topic the record was read from
``mab.dlq.source.partition``  its partition
``mab.dlq.source.offset``  its offset
``mab.dlq.source.timestamp``  its Kafka timestamp (ms since the epoch)
``mab.dlq.rejected_by``    consumer group and client id of the rejecting processor
``mab.dlq.rejected_at``    wall time of the rejection (ms since the epoch)
=========================  ====================================================

The source position ``(topic, partition, offset)`` identifies a rejected record: the
consumer dead-letters *before* committing its Kafka offsets, so a crash in between
redelivers the batch and may dead-letter a record a second time. Readers count and
re-drive by that position, never by DLQ offset (:func:`dedupe`).

A re-driven record goes back to its source topic with ``mab.redrive.*`` headers naming
its *original* position, and ``mab dlq redrive`` appends a value-less marker (reason
``redriven``) for that position to the DLQ, so the DLQ's open records (latest entry per
origin, :func:`dedupe` and :func:`redriven_origins`) no longer list it, unless it is
rejected again. The consumers
derive a minimal record's fallback event id from that original position, so re-driving
the same record twice, or re-driving a record that had in fact been applied, still
counts once (see
``stream_runtime.batch.decode_reward_or_decision``).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Final

H_REASON: Final = "mab.dlq.reason"
H_DETAIL: Final = "mab.dlq.detail"
H_TOPIC: Final = "mab.dlq.source.topic"
H_PARTITION: Final = "mab.dlq.source.partition"
H_OFFSET: Final = "mab.dlq.source.offset"
H_TIMESTAMP: Final = "mab.dlq.source.timestamp"
H_REJECTED_BY: Final = "mab.dlq.rejected_by"
H_REJECTED_AT: Final = "mab.dlq.rejected_at"

#: Headers of a re-driven record: the original position (its identity) and when.
H_REDRIVE_TOPIC: Final = "mab.redrive.source.topic"
H_REDRIVE_PARTITION: Final = "mab.redrive.source.partition"
H_REDRIVE_OFFSET: Final = "mab.redrive.source.offset"
H_REDRIVE_AT: Final = "mab.redrive.at"

DETAIL_MAX: Final = 300

#: Reason of the marker ``mab dlq redrive`` appends for each origin it re-drove.
REDRIVEN: Final = "redriven"

Headers = Sequence[tuple[str, bytes]]


def position_id(topic: str, partition: int, offset: int) -> str:
    """The identity of a log position; also a minimal reward's fallback event id."""
    return f"{topic}:{partition}:{offset}"


def dead_letter_headers(
    *,
    reason: str,
    detail: str,
    topic: str,
    partition: int,
    offset: int,
    timestamp: int,
    rejected_by: str,
    rejected_at_ms: int,
    original: Headers = (),
) -> list[tuple[str, bytes]]:
    """Headers of a dead letter; the original record's own headers are kept after ours
    (minus any older ``mab.dlq.*``, so a re-driven record rejected again is unambiguous)."""
    out = [
        (H_REASON, reason.encode()),
        (H_DETAIL, detail[:DETAIL_MAX].encode()),
        (H_TOPIC, topic.encode()),
        (H_PARTITION, str(partition).encode()),
        (H_OFFSET, str(offset).encode()),
        (H_TIMESTAMP, str(timestamp).encode()),
        (H_REJECTED_BY, rejected_by.encode()),
        (H_REJECTED_AT, str(rejected_at_ms).encode()),
    ]
    out += [(k, v) for k, v in original if not k.startswith("mab.dlq.")]
    return out


def redrive_headers(topic: str, partition: int, offset: int, at_ms: int) -> list[tuple[str, bytes]]:
    """Headers of a re-driven record (its original position)."""
    return [
        (H_REDRIVE_TOPIC, topic.encode()),
        (H_REDRIVE_PARTITION, str(partition).encode()),
        (H_REDRIVE_OFFSET, str(offset).encode()),
        (H_REDRIVE_AT, str(at_ms).encode()),
    ]


Position = tuple[str, int, int]


def redriven_source(headers: Headers) -> Position | None:
    """The original position of a re-driven record, or ``None`` for any other record."""
    if not headers:
        return None
    found = {k: v for k, v in headers if k.startswith("mab.redrive.source.")}
    try:
        return (
            found[H_REDRIVE_TOPIC].decode(),
            int(found[H_REDRIVE_PARTITION]),
            int(found[H_REDRIVE_OFFSET]),
        )
    except (KeyError, ValueError, UnicodeDecodeError):
        return None


def redriven_position(headers: Headers) -> str | None:
    """:func:`redriven_source` as a position id (a minimal reward's fallback event id)."""
    source = redriven_source(headers)
    return None if source is None else position_id(*source)


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """One record of the DLQ topic, parsed."""

    dlq_offset: int
    reason: str
    detail: str
    source_topic: str
    source_partition: int
    source_offset: int
    source_timestamp: int
    rejected_by: str
    rejected_at_ms: int
    key: bytes | None
    value: bytes | None
    headers: tuple[tuple[str, bytes], ...]

    @property
    def position(self) -> Position:
        return (self.source_topic, self.source_partition, self.source_offset)

    @property
    def origin(self) -> Position:
        """The record's identity: its first position in the log. A re-driven record that
        is rejected again keeps the origin of the record it was re-driven from."""
        return redriven_source(self.headers) or self.position

    @property
    def redriven(self) -> bool:
        """A marker written by ``mab dlq redrive``: the origin was re-driven (no value)."""
        return self.reason == REDRIVEN

    @classmethod
    def parse(
        cls, dlq_offset: int, key: bytes | None, value: bytes | None, headers: Headers
    ) -> DeadLetter:
        """Parse a DLQ record; a record missing our headers gets reason ``unlabelled``."""
        h = {k: v for k, v in headers}

        def text(name: str, default: str = "") -> str:
            raw = h.get(name)
            return raw.decode("utf-8", "replace") if raw is not None else default

        def number(name: str) -> int:
            try:
                return int(text(name, "-1"))
            except ValueError:
                return -1

        return cls(
            dlq_offset=dlq_offset,
            reason=text(H_REASON, "unlabelled"),
            detail=text(H_DETAIL),
            source_topic=text(H_TOPIC),
            source_partition=number(H_PARTITION),
            source_offset=number(H_OFFSET),
            source_timestamp=number(H_TIMESTAMP),
            rejected_by=text(H_REJECTED_BY),
            rejected_at_ms=number(H_REJECTED_AT),
            key=key,
            value=value,
            headers=tuple(headers),
        )


def dedupe(letters: Iterable[DeadLetter]) -> list[DeadLetter]:
    """One dead letter per rejected record: the latest real entry per origin.

    A batch redelivered after a crash between the dead-letter write and the Kafka commit
    dead-letters its rejects again with the same source position, and a re-driven record
    rejected again appends a new dead letter naming the same origin: latest wins, in DLQ
    order of first sight. :data:`REDRIVEN` markers never replace a real entry; see
    :func:`redriven_origins` for which entries they close.
    """
    by_origin: dict[Position, DeadLetter] = {}
    for letter in letters:
        if not letter.redriven:
            by_origin[letter.origin] = letter
    return list(by_origin.values())


def redriven_origins(letters: Iterable[DeadLetter]) -> set[Position]:
    """Origins whose latest DLQ entry is a re-drive marker (re-driven, not rejected since)."""
    latest: dict[Position, bool] = {}
    for letter in letters:
        latest[letter.origin] = letter.redriven
    return {origin for origin, marker in latest.items() if marker}
