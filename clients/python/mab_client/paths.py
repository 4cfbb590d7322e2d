"""How an id becomes one URL path segment: the API's rule, owned by its SDK.

Ids are any printable text (``10% off``, ``a/b``, ``..``), so a path built by string
formatting could reach another experiment or another route. The decider routes these
segments back (an encoded ``/`` and ``%`` included) and uses this function to spell its
own URLs, so client and server cannot disagree.
"""

from __future__ import annotations

from urllib.parse import quote


def url_segment(identifier: str) -> str:
    """``identifier`` as one URL path segment (``/experiments/{segment}/stats``).

    Everything but RFC 3986's unreserved characters is percent-encoded (UTF-8), ``/``
    and ``%`` included; the segments ``.`` and ``..`` are encoded too, because clients
    (httpx among them) remove dot segments before sending a request.
    """
    segment = quote(identifier, safe="")
    if segment in (".", ".."):
        return segment.replace(".", "%2E")
    return segment
