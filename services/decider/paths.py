"""Routing ``/experiments/{id}/...`` for any id, including ids that contain ``/`` or ``%``.

Clients send an id as one percent-encoded path segment (:func:`mab_client.paths.url_segment`:
``a/b`` is ``a%2Fb``, ``10% off`` is ``10%25%20off``). ASGI servers decode the whole
path into ``scope["path"]`` before the app sees it (granian and uvicorn both: ``a%2Fb``
arrives as ``a/b``), and Starlette routes on that decoded path, so ``/experiments/a%2Fb/
stats`` would look like four segments and never match. The undecoded bytes are still in
``scope["raw_path"]`` (both servers fill it, without the query string).

So :func:`segment_path` rebuilds the routing path from ``raw_path`` segment by segment:
each segment is decoded, and then the two characters that would change the path's
structure when decoded, ``%`` and ``/``, are written back as ``%25`` and ``%2F``. A path
without ``%`` is left alone (the hot routes never pay for this). The route convertor
:class:`IdConvertor` (``{experiment_id:mab_id}``) matches one such segment and decodes
exactly those two escapes, which yields the id the client encoded. Every other route is
unaffected: none of them has a ``%`` in a valid URL.
"""

from __future__ import annotations

from collections.abc import MutableMapping
from typing import Annotated, Any, Final
from urllib.parse import unquote, unquote_to_bytes

from fastapi import Path
from starlette.convertors import Convertor, register_url_convertor

from mab_client.paths import url_segment
from schemas.ids import ExperimentId

#: The convertor's name in route paths: ``/experiments/{experiment_id:mab_id}``.
ID_CONVERTOR: Final = "mab_id"
#: Route prefix of one experiment, for every router of the decider.
EXPERIMENT: Final = f"/experiments/{{experiment_id:{ID_CONVERTOR}}}"
#: The path parameter of :data:`EXPERIMENT`, validated (and trimmed) like every id.
ExperimentIdPath = Annotated[
    ExperimentId,
    Path(
        description="Experiment id as one percent-encoded path segment (`a/b` is `a%2Fb`, "
        "`10% off` is `10%25%20off`).",
        examples=["cta-button-test"],
    ),
]


def segment_path(raw_path: bytes) -> str:
    """The routing path of ``raw_path``: decoded per segment, ``%`` and ``/`` kept escaped.

    Decoding follows the servers' own rule for ``scope["path"]`` (UTF-8, an invalid
    sequence becomes U+FFFD, a ``%`` not followed by two hex digits stays a ``%``), so a
    path differs from theirs only in the two escapes.
    """
    segments = []
    for raw in raw_path.split(b"/"):
        text = unquote_to_bytes(raw).decode("utf-8", "replace")
        segments.append(text.replace("%", "%25").replace("/", "%2F"))
    return "/".join(segments)


def keep_encoded_segments(scope: MutableMapping[str, Any]) -> None:
    """Route on :func:`segment_path` instead of the fully decoded path (see module doc).

    Only when the request's raw path holds a ``%`` and describes the same path as
    ``scope["path"]`` (a ``root_path`` prefix is kept as it is).
    """
    raw = scope.get("raw_path")
    if not raw or b"%" not in raw:
        return
    raw = raw.split(b"?", 1)[0]  # some clients' test transports include the query
    decoded = unquote_to_bytes(raw).decode("utf-8", "replace")
    path: str = scope["path"]
    if not path.endswith(decoded):
        return
    scope["path"] = path[: len(path) - len(decoded)] + segment_path(raw)


class IdConvertor(Convertor[str]):
    """One path segment of :func:`segment_path`, as the id the client encoded."""

    regex = "[^/]+"

    def convert(self, value: str) -> str:
        return unquote(value)

    def to_string(self, value: str) -> str:
        return url_segment(value)


register_url_convertor(ID_CONVERTOR, IdConvertor())
