"""How the dashboard reaches the decider: the SDK's client, and errors told to an operator.

The dashboard reads the API through :mod:`mab_client` like any other client, so it sees
the very shapes the decider serves. Streamlit scripts are synchronous and a dashboard
that hangs for 30 s on a dead API is worse than one that says it is down: the client
has short timeouts and no retries (the page's "Retry" button and auto-refresh are the
retries). :func:`explain` turns every SDK error into a message for ``st.error`` instead
of a traceback.
"""

from __future__ import annotations

import os
from typing import Any, Final, Literal

import httpx
import streamlit as st

from mab_client import (
    ApiError,
    AuthError,
    MabClient,
    MabError,
    MabTransportError,
    NotFoundError,
    RetryPolicy,
    UnexpectedResponseError,
)

DEFAULT_API_URL: Final = "http://127.0.0.1:8000"
API_URL_ENV: Final = "MAB_API_URL"
#: Bearer token sent with every call when set: a read key (``MAB_READ_KEYS``; ``mab up``
#: generates one for the dashboard). The dashboard only reads, so it needs no more: reads
#: need a key when the decider has ``MAB_CLIENT_KEYS``, evaluation whenever it has an
#: admin key.
API_KEY_ENV: Final = "MAB_API_KEY"
#: Read and connect timeouts of the dashboard's calls (evaluation gets the SDK's longer one).
TIMEOUT: Final = httpx.Timeout(3.0, connect=1.0)

Bucket = Literal["hour", "minute"]


def api_url_from_env() -> str:
    """The API base URL: ``MAB_API_URL`` or the local default, without a trailing slash."""
    return (os.environ.get(API_URL_ENV) or DEFAULT_API_URL).rstrip("/")


def api_key_from_env() -> str | None:
    return os.environ.get(API_KEY_ENV, "").strip() or None


def make_client(base_url: str, api_key: str | None) -> MabClient:
    """The dashboard's client: short timeouts, no retries."""
    return MabClient(
        base_url,
        api_key=api_key,
        timeout=TIMEOUT,
        retry=RetryPolicy(max_attempts=1),
    )


@st.cache_resource(show_spinner=False)
def _shared_client(base_url: str, api_key: str | None) -> MabClient:
    return make_client(base_url, api_key)


def client_from_env() -> MabClient:
    """The client of ``MAB_API_URL`` and ``MAB_API_KEY``, one (and one connection pool)
    per API and key for the whole server: fragments rerun with the client they were
    given, so it must outlive a script run."""
    return _shared_client(api_url_from_env(), api_key_from_env())


def is_rejection(exc: MabError) -> bool:
    """The API refused these parameters (422 or another 4xx that is not about the key or
    a missing resource)."""
    return (
        isinstance(exc, ApiError) and 400 <= exc.status < 500 and exc.status not in (401, 403, 404)
    )


def explain(exc: MabError, base_url: str) -> str:
    """One message an operator can act on, naming the API and what to change."""
    if isinstance(exc, MabTransportError):
        if isinstance(exc.__context__, httpx.TimeoutException):
            return f"The API at {base_url} did not answer within {TIMEOUT.read:g} s."
        return (
            f"Cannot reach the API at {base_url} ({exc}). Is the decider running? Start the "
            f"stack with `make up`, or set {API_URL_ENV}."
        )
    if isinstance(exc, UnexpectedResponseError):
        return f"Unexpected response from {exc.path}: {exc} (is {base_url} the decider?)"
    if isinstance(exc, AuthError):
        return (
            f"The API at {base_url} refused the call ({exc.status}: {one_line(exc.detail)}). "
            f"Set {API_KEY_ENV} to one of the decider's read keys (MAB_READ_KEYS)."
        )
    if isinstance(exc, ApiError) and exc.status >= 500:
        return f"The API at {base_url} answered {exc.status} on {exc.path}: {one_line(exc.detail)}"
    if isinstance(exc, ApiError | NotFoundError):
        return one_line(exc.detail)
    return str(exc)


def show_failure(exc: MabError, base_url: str, title: str, not_found: str | None = None) -> None:
    """Show a failed call on the page: ``not_found`` as a warning when the API answered
    404 and the caller has a message for it, otherwise an error titled ``title`` with
    :func:`explain`'s message."""
    if not_found is not None and isinstance(exc, NotFoundError):
        st.warning(not_found)
    else:
        st.error(f"**{title}.** {explain(exc, base_url)}")


def one_line(detail: Any) -> str:
    """The API's ``detail`` (a string, or pydantic's error list) as one line."""
    if isinstance(detail, str):
        return detail
    if isinstance(detail, list):
        parts = []
        for err in detail:
            if isinstance(err, dict):
                loc = ".".join(str(p) for p in err.get("loc", []) if p != "query")
                parts.append(f"{loc}: {err.get('msg', '')}" if loc else str(err.get("msg", "")))
        if parts:
            return "; ".join(parts)
    return str(detail)
