"""Typed errors: one class per answer a caller handles differently.

Every error keeps the HTTP status and the server's ``detail`` (a string, or FastAPI's
list of ``{loc, msg, type}`` for a 422), so nothing the server said is lost.
"""

from __future__ import annotations

from typing import Any


class MabError(Exception):
    """Base of every error the client raises."""


class InvalidRequestError(MabError, ValueError):
    """A request the SDK refused to send because it breaks the API's rules (an id with a
    control character, a negative or NaN reward, duplicated arms, an empty batch): the
    server would have answered 422, so nothing was sent and nothing happened.

    ``errors`` says where and why, shaped like :attr:`RequestValidationError.errors`
    (``loc``, ``msg``, ``type``; ``loc`` names the field of the request, without the
    server's leading ``"body"``). A ``ValueError`` too, as the SDK's refusals were before.
    """

    def __init__(self, what: str, errors: list[dict[str, Any]]) -> None:
        self.what = what
        self.errors = errors
        reasons = "; ".join(
            f"{'.'.join(str(p) for p in e.get('loc', ())) or 'request'}: {e.get('msg', '')}"
            for e in errors
        )
        super().__init__(f"{what}: not sent, invalid request: {reasons}")


class MabTransportError(MabError):
    """No HTTP answer (connect error, timeout) after the allowed attempts."""


class UnexpectedResponseError(MabError):
    """A success status whose body is not the documented shape (a proxy's page, an
    incompatible server version): never silently turned into a result."""

    def __init__(self, message: str, method: str = "", path: str = "") -> None:
        self.method = method
        self.path = path
        super().__init__(message)


class ApiError(MabError):
    """The server answered with an error status."""

    def __init__(self, status: int, detail: Any, method: str, path: str) -> None:
        self.status = status
        self.detail = detail
        self.method = method
        self.path = path
        super().__init__(f"{method} {path}: HTTP {status}: {detail}")


class AuthError(ApiError):
    """401/403: missing, unknown or insufficient API key."""


class NotFoundError(ApiError):
    """404: the experiment (or route) does not exist."""


class ConflictError(ApiError):
    """409: the experiment or an arm already exists."""


class RequestValidationError(ApiError):
    """422: the request was refused as a whole; ``errors`` says where and why."""

    @property
    def errors(self) -> list[dict[str, Any]]:
        """The per-field (or, for bulk rewards, per-item) errors; a plain detail as one."""
        if isinstance(self.detail, list):
            return [e if isinstance(e, dict) else {"msg": str(e)} for e in self.detail]
        if isinstance(self.detail, dict):
            items = self.detail.get("errors")
            if isinstance(items, list):
                return [e if isinstance(e, dict) else {"msg": str(e)} for e in items]
            return [self.detail]
        return [{"msg": str(self.detail)}]


class UnavailableError(ApiError):
    """5xx/429 still answered after the allowed attempts: not applied, try again later."""


def error_for(status: int, detail: Any, method: str, path: str) -> ApiError:
    """The typed error of an HTTP error status."""
    cls: type[ApiError]
    if status in (401, 403):
        cls = AuthError
    elif status == 404:
        cls = NotFoundError
    elif status == 409:
        cls = ConflictError
    elif status == 422:
        cls = RequestValidationError
    elif status == 429 or status >= 500:
        cls = UnavailableError
    else:
        cls = ApiError
    return cls(status, detail, method, path)


class InvalidUnitIdError(MabError, ValueError):
    """A unit id that is not 1-200 printable characters after trimming (the message says
    which rule). Raised before anything is hashed or buffered, so nothing is half done."""


class InvalidAllocationError(MabError, ValueError):
    """An allocation that no decision can be made from (weights that are negative, not
    finite, not summing to 1, arms and weights of different lengths ...): refused when
    the :class:`~mab_client.assignment.Allocation` is built, never at decision time."""
