"""API keys: who may call what, decided once for FastAPI routes and the raw fast path.

Three kinds of key, four kinds of call (docs/security.md):

* **admin** key (``MAB_ADMIN_KEY``): may make every call. Only it may change an
  experiment (create, add arms, strategy config).
* **client** keys (``MAB_CLIENT_KEYS``): storefronts. Decisions, rewards and the reads.
* **read** keys (``MAB_READ_KEYS``): the dashboard and analysts. The reads and the
  off-policy evaluation, nothing that writes to the log: a leaked dashboard key can
  neither change an experiment nor skew its statistics with fake decisions or rewards.

A call needs a key when keys of its kind are configured: commands and evaluation
whenever the admin key is set (always, unless ``MAB_AUTH=open``, which the settings
allow only on a loopback address), decisions, rewards and reads when
``MAB_CLIENT_KEYS`` is set (storefronts of the original API send no key). Tokens travel
as ``Authorization: Bearer <key>`` and are compared with :func:`hmac.compare_digest`
against *every* configured key (no early exit), so the time taken says nothing about how
much of a key was right nor which key matched. The 401/403 bodies and headers are built
once here and sent byte-identically by both serving paths.
"""

from __future__ import annotations

import enum
import hmac
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

import orjson
from fastapi import HTTPException
from pydantic import SecretStr

from mab_client.models import ErrorPublic
from services.decider.settings import DeciderSettings

#: Shorter keys are refused at start-up: a guessable admin key is no key.
MIN_KEY_LEN: Final = 16
REALM: Final = 'Bearer realm="mab"'

#: What the decider logs at start and on ``/ready``, and puts in ``/ready``'s body, while
#: admin calls are open (``MAB_AUTH=open``).
OPEN_MODE_WARNING: Final = (
    "MAB_AUTH=open: admin calls (create, add arms, config, evaluate) are served without "
    "an API key, on a loopback address only; set MAB_ADMIN_KEY (and unset MAB_AUTH) to "
    "require the admin key"
)


class Role(enum.Enum):
    """The kind of a configured key."""

    ADMIN = "admin"
    CLIENT = "client"
    READ = "read"


class Access(enum.Enum):
    """What a route needs."""

    ADMIN = "admin"  # create, add arms, config
    CLIENT = "client"  # decision, reward(s)
    READ = "read"  # list, get, stats, timeseries
    EVALUATE = "evaluate"  # off-policy evaluation: reads whole partitions


#: The kinds of key each call accepts: the least each caller needs, nothing more.
ACCEPTED: Final[dict[Access, frozenset[Role]]] = {
    Access.ADMIN: frozenset({Role.ADMIN}),
    Access.CLIENT: frozenset({Role.ADMIN, Role.CLIENT}),
    Access.READ: frozenset({Role.ADMIN, Role.CLIENT, Role.READ}),
    # An operator's call, not a storefront's (it reads the log, one at a time): the
    # dashboard's read key may run it, a storefront's client key may not.
    Access.EVALUATE: frozenset({Role.ADMIN, Role.READ}),
}


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
#: A valid key of the wrong kind, per call.
FORBIDDEN: Final[dict[Access, Denial]] = {
    Access.ADMIN: Denial(403, "this call needs the admin key", None),
    Access.CLIENT: Denial(
        403, "this call needs a client key or the admin key (a read key may only read)", None
    ),
    Access.EVALUATE: Denial(403, "this call needs a read key or the admin key", None),
}


def bearer_token(header: bytes | None) -> bytes | None:
    """The token of an ``Authorization: Bearer <token>`` header (scheme case-insensitive)."""
    if not header:
        return None
    scheme, _, token = header.partition(b" ")
    if scheme.lower() != b"bearer":
        return None
    token = token.strip()
    return token or None


def split_keys(raw: str | None) -> list[str]:
    """The keys of a comma-separated variable (``MAB_CLIENT_KEYS``, ``MAB_READ_KEYS``)."""
    return [k.strip() for k in (raw or "").split(",") if k.strip()]


class AuthPolicy:
    """The configured keys and the rule; one instance per process (built at start-up)."""

    __slots__ = ("_keys", "_required", "admin_required", "client_required", "read_keys")

    def __init__(
        self,
        admin_key: str | None,
        client_keys: Sequence[str] = (),
        read_keys: Sequence[str] = (),
    ) -> None:
        keys = ([admin_key] if admin_key else []) + list(client_keys) + list(read_keys)
        for key in keys:
            if len(key) < MIN_KEY_LEN or any(c.isspace() or c == "," for c in key):
                raise ValueError(
                    f"API keys must be at least {MIN_KEY_LEN} characters without spaces or "
                    "commas (e.g. python -c 'import secrets; print(secrets.token_urlsafe())')"
                )
        self._keys: tuple[tuple[bytes, Role, str], ...] = (
            *(((admin_key.encode(), Role.ADMIN, "admin"),) if admin_key else ()),
            *((k.encode(), Role.CLIENT, f"client-{i}") for i, k in enumerate(client_keys)),
            *((k.encode(), Role.READ, f"read-{i}") for i, k in enumerate(read_keys)),
        )
        self.admin_required = admin_key is not None
        self.client_required = bool(client_keys)
        self.read_keys = bool(read_keys)
        # Commands and evaluation are open only without an admin key (MAB_AUTH=open);
        # the storefront's calls and the reads only without client keys.
        self._required = {
            Access.ADMIN: self.admin_required,
            Access.EVALUATE: self.admin_required,
            Access.CLIENT: self.client_required,
            Access.READ: self.client_required,
        }

    @classmethod
    def parse(
        cls, admin_key: str | None, client_keys: str | None, read_keys: str | None = None
    ) -> AuthPolicy:
        """From the env values (``MAB_CLIENT_KEYS``, ``MAB_READ_KEYS``: comma-separated)."""
        return cls(admin_key, split_keys(client_keys), split_keys(read_keys))

    @classmethod
    def from_settings(cls, settings: DeciderSettings) -> AuthPolicy:
        def value(secret: SecretStr | None) -> str | None:
            return None if secret is None else secret.get_secret_value()

        return cls.parse(
            value(settings.admin_key), value(settings.client_keys), value(settings.read_keys)
        )

    @property
    def enabled(self) -> bool:
        return bool(self._keys)

    def identify(self, header: bytes | None) -> tuple[Role, str] | None:
        """The kind and label (``admin``, ``client-<n>``, ``read-<n>``) of the key sent,
        or ``None`` (no token, or not a configured key).

        Every configured key is compared, whatever matched before.
        """
        token = bearer_token(header)
        if token is None:
            return None
        found: tuple[Role, str] | None = None
        for key, role, label in self._keys:
            if hmac.compare_digest(token, key) and found is None:
                found = (role, label)
        return found

    def principal(self, header: bytes | None) -> str | None:
        """The label of the key sent (the rate limiter's bucket), or ``None``."""
        who = self.identify(header)
        return None if who is None else who[1]

    def required(self, need: Access) -> bool:
        """Whether calls of this kind need a key in this configuration."""
        return self._required[need]

    def check(self, header: bytes | None, need: Access) -> Denial | None:
        """``None`` when the request may proceed, else why not."""
        if not self._required[need]:
            return None
        who = self.identify(header)
        if who is None:
            return MISSING if bearer_token(header) is None else INVALID
        if who[0] not in ACCEPTED[need]:
            return FORBIDDEN[need]
        return None


_E401: Final[dict[str, object]] = {
    "model": ErrorPublic,
    "description": "Missing or unknown API key.",
    "headers": {"WWW-Authenticate": {"schema": {"type": "string"}, "example": REALM}},
}
_E403: Final[dict[str, object]] = {
    "model": ErrorPublic,
    "description": "A valid key that may not make this call (a client key on an admin call, "
    "a read key on a decision or reward).",
}
_E429: Final[dict[str, object]] = {
    "model": ErrorPublic,
    "description": "Rate limit of this key exceeded (only with `MAB_RATE_LIMIT_PER_S`).",
    "headers": {"Retry-After": {"schema": {"type": "integer"}, "description": "Seconds."}},
}
#: OpenAPI ``responses`` of protected (and rate-limited) routes. Every configured key
#: may read, so reads are never a 403.
READ_RESPONSES: Final[dict[int | str, dict[str, object]]] = {401: _E401, 429: _E429}
CLIENT_RESPONSES: Final[dict[int | str, dict[str, object]]] = {
    401: _E401,
    403: _E403,
    429: _E429,
}
ADMIN_RESPONSES: Final = CLIENT_RESPONSES
#: Routes with a request body.
BODY_RESPONSES: Final[dict[int | str, dict[str, object]]] = {
    413: {"model": ErrorPublic, "description": "Body larger than `MAB_MAX_BODY_BYTES`."}
}
