"""``mab dlq redrive --from``: fixed-record files are parsed strictly, with line numbers."""

from __future__ import annotations

from pathlib import Path

import pytest

from mab_cli.dlq_cmd import _read_fixed
from stream_runtime.dead_letter import DeadLetterError, Redrive

pytestmark = pytest.mark.unit


def test_fixed_records_accept_text_object_or_base64(tmp_path: Path) -> None:
    f = tmp_path / "fixed.jsonl"
    f.write_text(
        '{"origin": "p-mab.rewards:2:17", "key": "e", "value": "{\\"reward\\": 1}"}\n'
        "\n"
        '{"origin": "p-mab.rewards:0:3", "value": {"experiment_id": "e", "reward": 0}}\n'
        '{"origin": "p-mab.rewards:0:4", "value": null, "value_base64": "AAE="}\n'
    )
    assert _read_fixed(f) == [
        Redrive(("p-mab.rewards", 2, 17), b'{"reward": 1}', b"e"),
        Redrive(("p-mab.rewards", 0, 3), b'{"experiment_id":"e","reward":0}', None),
        Redrive(("p-mab.rewards", 0, 4), b"\x00\x01", None),
    ]


@pytest.mark.parametrize(
    ("line", "error"),
    [
        ("not json", "line 1: not JSON"),
        ("[1]", "line 1: expected a JSON object"),
        ('{"value": "x"}', "line 1: needs an 'origin'"),
        ('{"origin": "t:x:1", "value": "x"}', "line 1: needs an 'origin'"),
        ('{"origin": "t:0:1"}', "line 1: needs a 'value'"),
    ],
)
def test_unusable_lines_are_refused_with_their_number(
    tmp_path: Path, line: str, error: str
) -> None:
    f = tmp_path / "fixed.jsonl"
    f.write_text(line + "\n")
    with pytest.raises(DeadLetterError, match=error):
        _read_fixed(f)
