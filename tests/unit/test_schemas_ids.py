"""Property tests of every encoding an id goes through (Redis keys and fields, URL path
segments and their routing, the hot path's query parsing).

Ids are any printable text, so the encodings carry the whole safety of the key layout:
injective (two ids never share a key), reversible, and never producing a character the
layout gives a meaning to (the ``{…}`` hash tag, the ``:`` and ``|`` separators, the
glob characters of ``SCAN`` patterns).
"""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import quote, unquote

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from starlette.datastructures import QueryParams

from mab_client.paths import url_segment
from schemas.ids import (
    ID_MAX_LEN,
    id_from_key_segment,
    is_valid_id,
    key_segment,
    normalize_id,
)
from schemas.redis_keys import RedisKeys, bucket_field, parse_bucket_field
from services.decider.hot_path import _experiment_id
from services.decider.paths import IdConvertor, keep_encoded_segments, segment_path

pytestmark = pytest.mark.unit

PROPERTY = settings(max_examples=500, deadline=None)

#: Any valid id: printable text of 1-120 characters, trimmed.
ids = (
    st.text(alphabet=st.characters(codec="utf-8").filter(str.isprintable), max_size=ID_MAX_LEN)
    .map(str.strip)
    .filter(bool)
)
#: Ids made of the characters that matter most to the encodings, so collisions are tried.
tricky_ids = st.text(
    alphabet=st.sampled_from(list("a%:{}|*?[]\\/ .-_~+&=#2F5é")), min_size=1, max_size=12
).filter(is_valid_id)
any_ids = st.one_of(ids, tricky_ids)
#: The charset ids were restricted to before they were widened.
old_ids = st.from_regex(r"[A-Za-z0-9][A-Za-z0-9._-]{0,119}", fullmatch=True)

SEGMENT = re.compile(r"(?:[A-Za-z0-9._-]|%[0-9A-F]{2})+")


@PROPERTY
@given(any_ids, any_ids)
def test_key_segments_are_injective(a: str, b: str) -> None:
    assert (key_segment(a) == key_segment(b)) == (a == b)


@PROPERTY
@given(any_ids)
def test_key_segments_round_trip_and_hold_no_special_character(value: str) -> None:
    segment = key_segment(value)
    assert SEGMENT.fullmatch(segment), segment
    assert not set(segment) & set("{}:|*?[]\\ \t\n")
    assert id_from_key_segment(segment) == value


@PROPERTY
@given(old_ids)
def test_ids_of_the_earlier_charset_keep_their_keys(value: str) -> None:
    assert key_segment(value) == value
    assert RedisKeys("p-").experiment(value).config == f"p-mab:{{{value}}}:config"
    assert bucket_field(value, "d") == f"{value}|d"


@PROPERTY
@given(any_ids, st.sampled_from(["", "t1-", "tenant_a:"]))
def test_every_key_keeps_its_experiment_inside_one_hash_tag(value: str, prefix: str) -> None:
    keys = RedisKeys(prefix)
    exp = keys.experiment(value)
    names = [
        exp.config,
        exp.snapshot,
        exp.offsets,
        exp.seen,
        exp.pending,
        exp.projector_offsets,
        exp.projector_seen,
        exp.change_points,
        exp.bucket("hour", 3600),
        exp.bucket("minute", 60),
    ]
    for key in names:
        # Redis Cluster hashes the text between the first '{' and the next '}'.
        start = key.index("{")
        end = key.index("}", start)
        assert key[start + 1 : end] == key_segment(value)
        assert key.count("{") == key.count("}") == 1
        assert keys.split(key) == (value, key[end + 2 :])
    # A SCAN pattern made of an encoded id has no glob character but its own '*'.
    assert exp.bucket_pattern("hour").count("*") == 1


@PROPERTY
@given(any_ids, any_ids)
def test_two_experiments_never_share_a_key(a: str, b: str) -> None:
    if a != b:
        one, two = RedisKeys().experiment(a), RedisKeys().experiment(b)
        assert one.config != two.config
        assert not two.bucket("hour", 0).startswith(one.bucket_base)


@PROPERTY
@given(any_ids, st.sampled_from(["d", "r", "s"]))
def test_bucket_fields_round_trip(arm: str, kind: str) -> None:
    field = bucket_field(arm, kind)
    assert field.count("|") == 1
    assert parse_bucket_field(field) == (arm, kind)


@pytest.mark.parametrize("foreign", ["a%3ab", "%41", "a b", "{x}", "%", "%2", "", "é"])
def test_a_segment_we_never_write_is_not_decoded(foreign: str) -> None:
    with pytest.raises(ValueError):
        id_from_key_segment(foreign)
    assert RedisKeys().split(f"mab:{{{foreign}}}:config") is None


@PROPERTY
@given(any_ids)
def test_url_segments_are_one_segment_and_round_trip(value: str) -> None:
    segment = url_segment(value)
    assert "/" not in segment
    assert segment not in (".", "..")
    assert unquote(segment) == value


@PROPERTY
@given(any_ids, st.sampled_from(["", "/stats", "/timeseries", "/arms"]))
def test_the_decider_routes_any_encoded_id_back_to_itself(value: str, rest: str) -> None:
    """What a server puts in the scope (decoded path, raw path) is routed on the
    per-segment path, and the convertor turns the segment back into the id."""
    raw = f"/experiments/{url_segment(value)}{rest}".encode()
    scope: dict[str, Any] = {"path": unquote(raw.decode()), "raw_path": raw}
    keep_encoded_segments(scope)
    path: str = scope["path"]
    match = re.fullmatch(rf"/experiments/({IdConvertor.regex}){re.escape(rest)}", path)
    assert match is not None, path
    assert IdConvertor().convert(match.group(1)) == value
    assert IdConvertor().to_string(value) == url_segment(value)


@pytest.mark.parametrize(
    ("raw", "routed"),
    [
        (b"/experiments/a%2Fb/stats", "/experiments/a%2Fb/stats"),
        (b"/experiments/a%2fb", "/experiments/a%2Fb"),
        (b"/experiments/10%25%20off", "/experiments/10%25 off"),
        (b"/experiments/10%zz", "/experiments/10%25zz"),  # a lone '%' stays a character
        (b"/experiments/caf%C3%A9", "/experiments/café"),
        (b"/experiments/caf%E9", "/experiments/caf\ufffd"),  # not UTF-8: as the servers do
        (b"/experiments/plain/stats", "/experiments/plain/stats"),
    ],
)
def test_segment_path_keeps_only_slash_and_percent_encoded(raw: bytes, routed: str) -> None:
    assert segment_path(raw) == routed


def test_a_root_path_prefix_and_a_query_in_raw_path_are_handled() -> None:
    scope = {"path": "/api/experiments/a/b", "raw_path": b"/experiments/a%2Fb?x=1"}
    keep_encoded_segments(scope)
    assert scope["path"] == "/api/experiments/a%2Fb"
    untouched = {"path": "/other", "raw_path": b"/experiments/a%2Fb"}  # inconsistent
    keep_encoded_segments(untouched)
    assert untouched["path"] == "/other"


@PROPERTY
@given(any_ids, st.sampled_from(["", " ", "  \t"]))
def test_the_hot_path_reads_a_query_like_starlette(value: str, pad: str) -> None:
    """Whatever a client's encoder writes (``+`` or ``%20`` for a space), the raw hot
    path and FastAPI's query parser read the same trimmed id."""
    for encoded in (quote(pad + value + pad, safe=""), quote(value, safe=" ").replace(" ", "+")):
        query = f"experiment_id={encoded}".encode()
        starlette = QueryParams(query)["experiment_id"]
        assert _experiment_id(query) == normalize_id(starlette) == value


@pytest.mark.parametrize(
    "query", [b"experiment_id=", b"experiment_id=+", b"experiment_id=a%09b", b"x=1"]
)
def test_the_hot_path_leaves_invalid_queries_to_fastapi(query: bytes) -> None:
    assert _experiment_id(query) is None
