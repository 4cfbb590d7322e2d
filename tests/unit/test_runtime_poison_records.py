"""A record that breaks the decoder must be a reject, never a batch failure.

A batch failure is retried from the same offset, so an exception that a record's bytes
cause on every attempt would stall its partition forever (a poison pill). Found by the
hostile-records fault test: JSON nested deeper than Python's recursion limit made the
NaN diagnosis (``json.loads``) raise ``RecursionError`` out of the codec.
"""

from __future__ import annotations

import pytest

from schemas.codec import DecodeError, decode_reward
from schemas.events import AnyEvent
from stream_runtime.batch import RecordLike, decode_batch
from stream_runtime.kafka_consumer import KafkaRecord as Rec

pytestmark = pytest.mark.unit


@pytest.mark.parametrize(
    "raw",
    [
        b"[" * 30_000 + b"]" * 30_000,
        b'{"a":' * 5_000 + b"1" + b"}" * 5_000,
        b'{"reward":NaN,"x":' + b"[" * 20_000 + b"]" * 20_000 + b"}",
    ],
)
def test_deeply_nested_json_is_bad_json(raw: bytes) -> None:
    with pytest.raises(DecodeError) as err:
        decode_reward(raw, fallback_event_id="t:0:0", fallback_ts=0.0)
    assert err.value.reason == "bad_json"


def test_an_unexpected_decoder_error_rejects_the_record_only() -> None:
    def decode_one(record: RecordLike) -> AnyEvent | None:
        if record.offset == 1:
            raise RecursionError("a decoder bug")
        return None

    records = [Rec("t", 0, i, 0, b"{}") for i in range(3)]
    out = decode_batch(records, {"t": decode_one})
    assert [(r.record.offset, r.reason) for r in out.rejected] == [(1, "invalid")]
    assert "RecursionError" in out.rejected[0].detail
    assert out.ignored == 2
