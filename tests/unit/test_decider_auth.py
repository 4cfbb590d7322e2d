"""The decider's auth rules without I/O: secure by default, open mode only on loopback,
the bind address, and which kind of key may make which call."""

from __future__ import annotations

import asyncio
import logging
import os

import pytest
from pydantic import ValidationError

from services.decider import __main__ as entry
from services.decider.app import create_app
from services.decider.auth import FORBIDDEN, INVALID, MISSING, Access, AuthPolicy
from services.decider.settings import DeciderSettings, is_loopback
from stream_runtime.settings import settings_errors

pytestmark = pytest.mark.unit

ADMIN = "admin-key-0123456789abcdef"
CLIENT = "client-key-0123456789abcdef"
READER = "read-key-0123456789abcdef"
AUTH_VARS = ("MAB_AUTH", "MAB_ADMIN_KEY", "MAB_HOST", "MAB_API_HOST", "MAB_CLIENT_KEYS")


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """Unset, and restored afterwards even when the entry point writes them."""
    for name in AUTH_VARS:
        monkeypatch.setenv(name, "")
        monkeypatch.delenv(name)


def _refusal(**given: object) -> str:
    with pytest.raises(ValidationError) as caught:
        DeciderSettings(**given)  # type: ignore[arg-type]
    return "\n".join(settings_errors(caught.value, DeciderSettings))


@pytest.mark.parametrize(
    ("host", "loopback"),
    [
        ("127.0.0.1", True),
        ("127.8.9.10", True),
        ("localhost", True),
        ("LOCALHOST", True),
        ("::1", True),
        ("[::1]", True),
        ("0.0.0.0", False),
        ("::", False),
        ("10.0.0.5", False),
        ("my-host.example", False),  # names are never resolved
        ("", False),
    ],
)
def test_loopback_addresses(host: str, loopback: bool) -> None:
    assert is_loopback(host) is loopback


def test_no_admin_key_refuses_to_start_and_names_both_ways_out() -> None:
    message = _refusal()
    assert "no admin key" in message
    assert "MAB_ADMIN_KEY" in message
    assert "MAB_AUTH=open" in message
    assert "mab up --open" in message


def test_open_mode_is_only_for_loopback() -> None:
    for host in ("0.0.0.0", "::", "192.168.1.20", "decider.internal"):
        message = _refusal(auth="open", api_host=host)
        assert "loopback" in message
        assert repr(host) in message
    for host in ("127.0.0.1", "localhost", "::1"):
        assert DeciderSettings(auth="open", api_host=host).auth == "open"


def test_open_mode_with_an_admin_key_is_a_contradiction() -> None:
    message = _refusal(auth="open", admin_key=ADMIN)
    assert "both set" in message


def test_env_spelling_host_alias_and_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MAB_AUTH", " OPEN ")
    settings = DeciderSettings()
    assert (settings.auth, settings.api_host) == ("open", "127.0.0.1")
    monkeypatch.setenv("MAB_API_HOST", "::1")  # the older name still works
    assert DeciderSettings().api_host == "::1"
    monkeypatch.setenv("MAB_HOST", "localhost")  # and the new one wins
    assert DeciderSettings().api_host == "localhost"
    monkeypatch.setenv("MAB_AUTH", "none")
    assert "MAB_AUTH: Input should be 'keys' or 'open'" in _refusal()


def test_entry_point_refuses_before_binding(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """`python -m services.decider` checks the address it is about to bind (a --host on
    the command line included) and exits 2 with one message; no server is started."""
    served: list[tuple[object, ...]] = []
    monkeypatch.setattr(entry, "serve", lambda *a: served.append(a))
    for argv in (["--auth", "open", "--host", "0.0.0.0"], []):
        with pytest.raises(SystemExit) as exit_:
            entry.main(argv)
        assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert "invalid setting: MAB_AUTH=open serves admin calls without a key" in err
    assert "invalid setting: no admin key" in err
    assert served == []


def test_entry_point_hands_its_choices_to_the_workers(monkeypatch: pytest.MonkeyPatch) -> None:
    """Workers build their settings from the environment: the command line's host and
    auth mode are written there, so they validate what was actually bound."""
    served: list[tuple[object, ...]] = []
    monkeypatch.setattr(entry, "serve", lambda *a: served.append(a))
    monkeypatch.setattr(entry, "require_kafka", lambda settings: None)  # no broker here
    monkeypatch.setenv("MAB_API_HOST", "0.0.0.0")
    entry.main(["--auth", "open", "--host", "127.0.0.1", "--port", "8123"])
    assert served == [("granian", "127.0.0.1", 8123, 1, "INFO")]
    assert (os.environ["MAB_HOST"], os.environ["MAB_AUTH"]) == ("127.0.0.1", "open")
    assert DeciderSettings().auth == "open"  # what a worker now reads


def test_app_start_refuses_without_key(caplog: pytest.LogCaptureFixture) -> None:
    """`uvicorn services.decider.app:app` without a key: the lifespan fails with one
    critical log line (uvicorn then exits non-zero) before any connection is made."""
    app = create_app()

    async def start() -> None:
        async with app.router.lifespan_context(app):
            raise AssertionError("started without an admin key")

    with caplog.at_level(logging.CRITICAL, "services.decider"), pytest.raises(ValidationError):
        asyncio.run(start())
    assert any("decider not started: no admin key" in r.getMessage() for r in caplog.records)


def _policy() -> AuthPolicy:
    return AuthPolicy.parse(ADMIN, f"{CLIENT},{CLIENT[::-1]}", READER)


def _bearer(key: str) -> bytes:
    return f"Bearer {key}".encode()


@pytest.mark.parametrize(
    ("need", "admin", "client", "reader"),
    [
        (Access.ADMIN, None, FORBIDDEN[Access.ADMIN], FORBIDDEN[Access.ADMIN]),
        (Access.CLIENT, None, None, FORBIDDEN[Access.CLIENT]),
        (Access.READ, None, None, None),
        (Access.EVALUATE, None, FORBIDDEN[Access.EVALUATE], None),
    ],
)
def test_each_kind_of_key_makes_only_its_calls(
    need: Access, admin: object, client: object, reader: object
) -> None:
    policy = _policy()
    assert policy.check(_bearer(ADMIN), need) is admin
    assert policy.check(_bearer(CLIENT), need) is client
    assert policy.check(_bearer(CLIENT[::-1]), need) is client
    assert policy.check(_bearer(READER), need) is reader
    assert policy.check(None, need) is MISSING
    assert policy.check(_bearer("x" * 30), need) is INVALID
    assert policy.check(_bearer(READER[:-1]), need) is INVALID  # a prefix is no key


def test_what_is_open_without_keys() -> None:
    """Without client keys the storefront's calls and the reads are open (as in the
    original API); without an admin key (open mode) commands and evaluation are too.
    A read key alone opens or closes nothing: it only may read where keys are needed."""
    only_admin = AuthPolicy.parse(ADMIN, None, READER)
    assert only_admin.check(None, Access.CLIENT) is None
    assert only_admin.check(None, Access.READ) is None
    assert only_admin.check(None, Access.ADMIN) is MISSING
    assert only_admin.check(None, Access.EVALUATE) is MISSING
    assert only_admin.check(_bearer(READER), Access.EVALUATE) is None
    open_mode = AuthPolicy.parse(None, None, READER)
    for need in Access:
        assert open_mode.check(None, need) is None
    assert open_mode.principal(_bearer(READER)) == "read-0"
    assert _policy().principal(_bearer(CLIENT[::-1])) == "client-1"


@pytest.mark.parametrize("bad", ["short", "has space in the key!!", "comma,in,the,key,12345"])
def test_weak_or_malformed_keys_are_refused(bad: str) -> None:
    with pytest.raises(ValueError, match="at least"):
        AuthPolicy.parse(bad, None)
    with pytest.raises(ValueError, match="at least"):
        AuthPolicy.parse(None, f"good-client-key-123456,{bad}" if "," not in bad else "x")


def test_principal_compares_every_key() -> None:
    policy = AuthPolicy.parse("admin-key-0123456789", "client-a-0123456789, client-b-0123456789")
    assert policy.principal(b"Bearer admin-key-0123456789") == "admin"
    assert policy.principal(b"bearer client-b-0123456789") == "client-1"
    assert policy.principal(b"Bearer client-b-012345678") is None  # a prefix is no key
    assert policy.principal(b"Basic admin-key-0123456789") is None
    assert policy.principal(None) is None
