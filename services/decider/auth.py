"""API keys: who may call what, decided once for FastAPI routes and the raw fast path.

Two scopes (docs/security.md):

* **admin** (``MAB_ADMIN_KEY``): commands that change an experiment (create, add arms,
  strategy config). The admin key also works wherever a client key does.
* **client** (``MAB_CLIENT_KEYS``, comma-separated): decisions, rewards and the reads
  (list, get, stats, timeseries).

A scope whose keys are not configured is open, which keeps the seed's key-less workflow
working; ``mab up`` always configures an admin key. Tokens travel as
``Authorization: Bearer <key>`` and are compared with :func:`hmac.compare_digest`
against *every* configured key (no early exit), so the time taken says nothing about
how much of a key was right nor which key matched. The 401/403 bodies and headers are
built once here and sent byte-identically by both serving paths.
"""

from __future__ import annotations

import enum
import hmac
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Annotated, Final

import orjson
from fastapi import Depends, HTTPException, Request, params
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from services.decider.models import ErrorPublic

#: Shorter keys are refused at start-up: a guessable admin key is no key.
MIN_KEY_LEN: Final = 16
REALM: Final = 'Bearer realm="mab"'


class Access(enum.Enum):
    """What a route needs."""

    ADMIN = "admin"
    CLIENT = "client"


@dataclass(frozen=True, slots=True)
class Denial:
    """A refused request: status, JSON body and ``WWW-Authenticate`` (401 only)."""

    status: int
    detail: str
    www_authenticate: str | None

    @property
    def body(self) -> bytes:
        return orjson.dumps({"detail": self.detail})

    def raw_headers(self) -> list[tuple[bytes, bytes]]:
        headers = [(b"content-type", b"application/json")]
        if self.www_authenticate is not None:
            headers.append((b"www-authenticate", self.www_authenticate.encode()))
        return headers

    def http_exception(self) -> HTTPException:
        headers = {"WWW-Authenticate": self.www_authenticate} if self.www_authenticate else None
        return HTTPException(self.status, self.detail, headers=headers)


MISSING: Final = Denial(401, "missing API key: send 'Authorization: Bearer <key>'", REALM)
INVALID: Final = Denial(401, "invalid API key", f'{REALM}, error="invalid_token"')
NOT_ADMIN: Final = Denial(403, "this call needs the admin key", None)


def bearer_token(header: bytes | None) -> bytes | None:
    """The token of an ``Authorization: Bearer <token>`` header (scheme case-insensitive)."""
    if not header:
        return None
    scheme, _, token = header.partition(b" ")
    if scheme.lower() != b"bearer":
        return None
    token = token.strip()
    return token or None


class AuthPolicy:
    """The configured keys and the rule; one instance per process (built at start-up)."""

    __slots__ = ("_admin", "_clients", "admin_required", "client_required")

    def __init__(self, admin_key: str | None, client_keys: Sequence[str] = ()) -> None:
        keys = ([admin_key] if admin_key else []) + list(client_keys)
        for key in keys:
            if len(key) < MIN_KEY_LEN or any(c.isspace() or c == "," for c in key):
                raise ValueError(
                    f"API keys must be at least {MIN_KEY_LEN} characters without spaces or "
                    "commas (e.g. python -c 'import secrets; print(secrets.token_urlsafe())')"
                )
        self._admin = admin_key.encode() if admin_key else None
        self._clients = tuple(k.encode() for k in client_keys)
        self.admin_required = self._admin is not None
        self.client_required = bool(self._clients)

    @classmethod
    def parse(cls, admin_key: str | None, client_keys: str | None) -> AuthPolicy:
        """From the env values (``MAB_CLIENT_KEYS`` is comma-separated)."""
        clients = [k.strip() for k in (client_keys or "").split(",") if k.strip()]
        return cls(admin_key, clients)

    @property
    def enabled(self) -> bool:
        return self.admin_required or self.client_required

    def principal(self, header: bytes | None) -> str | None:
        """``"admin"``, ``"client-<n>"`` or ``None`` (no token, or not a configured key).

        Every configured key is compared, whatever matched before.
        """
        token = bearer_token(header)
        if token is None:
            return None
        found: str | None = None
        if self._admin is not None and hmac.compare_digest(token, self._admin):
            found = "admin"
        for i, key in enumerate(self._clients):
            if hmac.compare_digest(token, key) and found is None:
                found = f"client-{i}"
        return found

    def check(self, header: bytes | None, need: Access) -> Denial | None:
        """``None`` when the request may proceed, else why not."""
        if need is Access.ADMIN:
            if not self.admin_required:
                return None
        elif not self.client_required:
            return None
        who = self.principal(header)
        if who is None:
            return MISSING if bearer_token(header) is None else INVALID
        if need is Access.ADMIN and who != "admin":
            return NOT_ADMIN
        return None


#: The OpenAPI security scheme (Swagger's "Authorize" button). Checking is ours.
bearer_scheme = HTTPBearer(
    auto_error=False,
    scheme_name="apiKey",
    description="`MAB_ADMIN_KEY` for admin calls; a `MAB_CLIENT_KEYS` key (or the admin "
    "key) for decisions, rewards and reads. Calls of a scope without configured keys "
    "are open.",
)


def _authorization(request: Request) -> bytes | None:
    for name, value in request.scope["headers"]:
        if name == b"authorization":
            return bytes(value)
    return None


def _require(need: Access) -> params.Depends:
    async def dependency(
        request: Request,
        _credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer_scheme)],
    ) -> None:
        policy: AuthPolicy | None = getattr(request.app.state, "auth", None)
        if policy is None:
            return
        denial = policy.check(_authorization(request), need)
        if denial is not None:
            raise denial.http_exception()

    marker: params.Depends = Depends(dependency)
    return marker


#: Route dependencies: ``dependencies=[ADMIN]`` / ``dependencies=[CLIENT]``.
ADMIN = _require(Access.ADMIN)
CLIENT = _require(Access.CLIENT)

_E401: Final[dict[str, object]] = {
    "model": ErrorPublic,
    "description": "Missing or unknown API key.",
    "headers": {"WWW-Authenticate": {"schema": {"type": "string"}, "example": REALM}},
}
_E403: Final[dict[str, object]] = {
    "model": ErrorPublic,
    "description": "A valid key that may not make this call (a client key on an admin call).",
}
_E429: Final[dict[str, object]] = {
    "model": ErrorPublic,
    "description": "Rate limit of this key exceeded (only with `MAB_RATE_LIMIT_PER_S`).",
    "headers": {"Retry-After": {"schema": {"type": "integer"}, "description": "Seconds."}},
}
#: OpenAPI ``responses`` of protected (and rate-limited) routes.
CLIENT_RESPONSES: Final[dict[int | str, dict[str, object]]] = {401: _E401, 429: _E429}
ADMIN_RESPONSES: Final[dict[int | str, dict[str, object]]] = {
    401: _E401,
    403: _E403,
    429: _E429,
}
#: Routes with a request body.
BODY_RESPONSES: Final[dict[int | str, dict[str, object]]] = {
    413: {"model": ErrorPublic, "description": "Body larger than `MAB_MAX_BODY_BYTES`."}
}
