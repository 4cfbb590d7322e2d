"""How every Kafka client of the project connects: one settings model and one start-up check.

Managed Kafka (Confluent Cloud, Amazon MSK, Aiven, Redpanda Cloud, Strimzi with
authentication) needs TLS and SASL; a storefront team should not discover that the
decider speaks SASL while ``mab replay`` does not. So there is exactly one place that
reads the connection settings (``KAFKA_BOOTSTRAP_SERVERS``, ``KAFKA_SECURITY_PROTOCOL``,
``KAFKA_SASL_*``, ``KAFKA_SSL_*``), validates them once at start-up and renders them for
the two client libraries: librdkafka (``confluent-kafka``, every runtime client) and
aiokafka (the user-facing bulk producer example and the tests' external clients). The
services' settings classes inherit :class:`KafkaConnection`, so the variable names are the
same everywhere.

The second half is what makes a wrong password or an untrusted CA *one clear error*
instead of an endless retry log. librdkafka never gives up on a broker by itself: it
reports each failed attempt through the client's ``error_cb`` and reconnects with
back-off, forever. Measured against a SASL_SSL listener (Kafka 4.1, librdkafka 2.16):

* wrong password or unknown user: ``_AUTHENTICATION`` "SASL authentication error:
  Authentication failed during authentication due to invalid credentials with SASL
  mechanism SCRAM-SHA-512" (the broker does not say which of the two was wrong);
* a mechanism the listener does not offer: ``_AUTHENTICATION`` "... mechanism handshake
  failed: Broker: Unsupported SASL mechanism: broker's supported mechanisms: ...";
* a CA that did not sign the broker's certificate: ``_SSL`` "SSL handshake failed: ...
  certificate verify failed: broker certificate could not be verified ...";
* a TLS client on a PLAINTEXT listener: ``_TRANSPORT`` "... connecting to a PLAINTEXT
  broker listener?";
* a PLAINTEXT client on a TLS listener, or no broker at all: only ``_TRANSPORT`` /
  ``_ALL_BROKERS_DOWN`` (indistinguishable from a broker that is still starting);
* an unreadable or mismatched PEM file: ``_INVALID_ARG`` "Failed to create ...:
  ssl.ca.location failed: ..." when the client is created.

Each of these arrives together with ``_ALL_BROKERS_DOWN``, and only when the client is
polled. :func:`wait_until_reachable` therefore asks for metadata in short rounds and
polls between them: the first permanent error (the first three kinds) ends the wait at
once with a :class:`KafkaConnectionError` naming the variable to fix; transient ones
(the broker may start after us) are waited out up to ``KAFKA_START_TIMEOUT_S``, then
reported with the last error librdkafka gave.
"""

from __future__ import annotations

import logging
import os
import re
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, Literal, TypeVar

from confluent_kafka import Consumer, KafkaError, KafkaException, Producer
from confluent_kafka.admin import AdminClient
from confluent_kafka.admin._metadata import ClusterMetadata
from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

if TYPE_CHECKING:
    import ssl

SecurityProtocol = Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"]
SaslMechanism = Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"]

#: The variables, by field: messages name what the operator sets, not our field names
#: (names of variables, not secrets: hence the ``noqa`` on the two password ones).
BOOTSTRAP: Final = "KAFKA_BOOTSTRAP_SERVERS"
PROTOCOL: Final = "KAFKA_SECURITY_PROTOCOL"
MECHANISM: Final = "KAFKA_SASL_MECHANISM"
USERNAME: Final = "KAFKA_SASL_USERNAME"
PASSWORD: Final = "KAFKA_SASL_PASSWORD"  # noqa: S105
CA: Final = "KAFKA_SSL_CA_LOCATION"
CERTIFICATE: Final = "KAFKA_SSL_CERTIFICATE_LOCATION"
KEY: Final = "KAFKA_SSL_KEY_LOCATION"
KEY_PASSWORD: Final = "KAFKA_SSL_KEY_PASSWORD"  # noqa: S105

#: librdkafka property -> variable, for the errors it raises when a client is created.
_RDKAFKA_FILES: Final = {
    "ssl.ca.location": CA,
    "ssl.certificate.location": CERTIFICATE,
    "ssl.key.location": KEY,
}
#: Longest single metadata request of :func:`wait_until_reachable`: callbacks (where
#: librdkafka reports why it cannot connect) are only served between two requests.
_ROUND_S: Final = 1.0


class KafkaConnectionError(RuntimeError):
    """Kafka cannot be used with these settings. ``setting`` names the variable to fix;
    the message starts with it (``KAFKA_SASL_PASSWORD: the broker rejected ...``)."""

    def __init__(self, setting: str, problem: str) -> None:
        super().__init__(f"{setting}: {problem}")
        self.setting = setting
        self.problem = problem


class KafkaConnection(BaseSettings):
    """Where the brokers are and how to authenticate to them (env variables of the same
    name, case-insensitive). Frozen and validated at construction: a missing password or
    an unreadable CA file fails the start, naming the variable."""

    model_config = SettingsConfigDict(frozen=True, extra="ignore", case_sensitive=False)

    kafka_bootstrap_servers: str = Field(default="127.0.0.1:9092", min_length=1)
    kafka_security_protocol: SecurityProtocol = "PLAINTEXT"
    kafka_sasl_mechanism: SaslMechanism | None = None
    kafka_sasl_username: str | None = None
    #: Never logged: ``SecretStr`` prints as stars, and :meth:`describe` leaves it out.
    kafka_sasl_password: SecretStr | None = None
    #: PEM file of the CA(s) that signed the brokers' certificates; unset: the system's.
    kafka_ssl_ca_location: Path | None = None
    #: Client certificate and key (PEM) for brokers that require mutual TLS.
    kafka_ssl_certificate_location: Path | None = None
    kafka_ssl_key_location: Path | None = None
    kafka_ssl_key_password: SecretStr | None = None
    #: How long a process waits at start-up for a broker that does not answer yet (it may
    #: start after us); a rejected password or certificate fails at once instead.
    kafka_start_timeout_s: float = Field(default=30.0, gt=0.0, le=3600.0)

    @field_validator("kafka_security_protocol", "kafka_sasl_mechanism", mode="before")
    @classmethod
    def _upper(cls, v: object) -> object:
        """``sasl_ssl`` and ``scram-sha-512`` are what librdkafka's docs show; accept them."""
        if isinstance(v, str):
            return v.strip().upper() or None
        return v

    @field_validator(
        "kafka_sasl_mechanism",
        "kafka_sasl_username",
        "kafka_sasl_password",
        "kafka_ssl_ca_location",
        "kafka_ssl_certificate_location",
        "kafka_ssl_key_location",
        "kafka_ssl_key_password",
        mode="before",
    )
    @classmethod
    def _blank_is_unset(cls, v: object) -> object:
        """An empty variable (``KAFKA_SASL_USERNAME=`` in an env file) means unset."""
        if isinstance(v, str) and not v.strip():
            return None
        return v

    @field_validator(
        "kafka_ssl_ca_location", "kafka_ssl_certificate_location", "kafka_ssl_key_location"
    )
    @classmethod
    def _readable_file(cls, v: Path | None) -> Path | None:
        """Checked here, not when librdkafka first opens it: the start fails with the
        variable's name instead of an OpenSSL error code."""
        if v is None:
            return v
        if not v.exists():
            raise ValueError(f"{v} does not exist")
        if not v.is_file():
            raise ValueError(f"{v} is not a file")
        if not os.access(v, os.R_OK):
            raise ValueError(f"{v} is not readable by this process (uid {os.getuid()})")
        return v

    @model_validator(mode="after")
    def _consistent(self) -> KafkaConnection:
        protocol = self.kafka_security_protocol
        sasl = protocol.startswith("SASL_")
        tls = protocol.endswith("SSL")
        sasl_fields = self._sasl_fields()
        if sasl:
            missing = [name for name, value in sasl_fields if value is None]
            if missing:
                raise ValueError(
                    f"{', '.join(missing)} must be set when {PROTOCOL}={protocol}"
                    + (
                        " (PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512)"
                        if self.kafka_sasl_mechanism is None
                        else ""
                    )
                )
        else:
            # Credentials that would silently not be sent are a misconfiguration, not a
            # default: the likely intent was SASL_SSL.
            given = [name for name, value in sasl_fields if value is not None]
            if given:
                raise ValueError(
                    f"{', '.join(given)} set, but {PROTOCOL}={protocol} sends no SASL "
                    "credentials (use SASL_SSL, or SASL_PLAINTEXT on a private network)"
                )
        if not tls:
            given = [name for name, value in self._tls_fields() if value is not None]
            if given:
                raise ValueError(
                    f"{', '.join(given)} set, but {PROTOCOL}={protocol} does not use TLS "
                    "(use SSL or SASL_SSL)"
                )
        cert, key = self.kafka_ssl_certificate_location, self.kafka_ssl_key_location
        if (cert is None) != (key is None):
            raise ValueError(f"{CERTIFICATE} and {KEY} go together: set both or neither")
        if self.kafka_ssl_key_password is not None and key is None:
            raise ValueError(f"{KEY_PASSWORD} set without {KEY}")
        return self

    def _sasl_fields(self) -> list[tuple[str, object]]:
        return [
            (MECHANISM, self.kafka_sasl_mechanism),
            (USERNAME, self.kafka_sasl_username),
            (PASSWORD, self.kafka_sasl_password),
        ]

    def _tls_fields(self) -> list[tuple[str, object]]:
        return [
            (CA, self.kafka_ssl_ca_location),
            (CERTIFICATE, self.kafka_ssl_certificate_location),
            (KEY, self.kafka_ssl_key_location),
            (KEY_PASSWORD, self.kafka_ssl_key_password),
        ]

    # ------------------------------------------------------------------ construction
    @classmethod
    def plaintext(cls, servers: str) -> KafkaConnection:
        """A PLAINTEXT connection to ``servers``, ignoring the environment (the local
        stack's own broker, tests)."""
        if not servers.strip():
            raise KafkaConnectionError(BOOTSTRAP, "empty")
        return cls.model_construct(kafka_bootstrap_servers=servers)

    def connection(self) -> KafkaConnection:
        """Only the connection fields, as a plain :class:`KafkaConnection`: what clients
        take, small enough to pickle into replay's worker processes."""
        if type(self) is KafkaConnection:
            return self
        fields = {name: getattr(self, name) for name in KafkaConnection.model_fields}
        return KafkaConnection.model_construct(**fields)

    def with_servers(self, servers: str | None) -> KafkaConnection:
        """The same security settings with other bootstrap servers (``--bootstrap``)."""
        base = self.connection()
        if not servers:
            return base
        return base.model_copy(update={"kafka_bootstrap_servers": servers})

    # ------------------------------------------------------------------ rendering
    def librdkafka_config(self) -> dict[str, Any]:
        """``bootstrap.servers`` and the security properties of a confluent-kafka client.

        Holds the password in clear: pass it to a client, never to a log line.
        """
        config: dict[str, Any] = {
            "bootstrap.servers": self.kafka_bootstrap_servers,
            "security.protocol": self.kafka_security_protocol,
        }
        if self.kafka_sasl_mechanism is not None:
            config["sasl.mechanism"] = self.kafka_sasl_mechanism
            config["sasl.username"] = self.kafka_sasl_username
            assert self.kafka_sasl_password is not None  # the validator requires it
            config["sasl.password"] = self.kafka_sasl_password.get_secret_value()
        for prop, path in (
            ("ssl.ca.location", self.kafka_ssl_ca_location),
            ("ssl.certificate.location", self.kafka_ssl_certificate_location),
            ("ssl.key.location", self.kafka_ssl_key_location),
        ):
            if path is not None:
                config[prop] = str(path)
        if self.kafka_ssl_key_password is not None:
            config["ssl.key.password"] = self.kafka_ssl_key_password.get_secret_value()
        return config

    def aiokafka_kwargs(self) -> dict[str, Any]:
        """Keyword arguments of an aiokafka client (producer, consumer or admin)."""
        kwargs: dict[str, Any] = {
            "bootstrap_servers": self.kafka_bootstrap_servers,
            "security_protocol": self.kafka_security_protocol,
        }
        if self.kafka_sasl_mechanism is not None:
            assert self.kafka_sasl_password is not None  # the validator requires it
            kwargs["sasl_mechanism"] = self.kafka_sasl_mechanism
            kwargs["sasl_plain_username"] = self.kafka_sasl_username
            kwargs["sasl_plain_password"] = self.kafka_sasl_password.get_secret_value()
        if self.kafka_security_protocol.endswith("SSL"):
            kwargs["ssl_context"] = self.ssl_context()
        return kwargs

    def ssl_context(self) -> ssl.SSLContext:
        """The TLS context aiokafka needs (the system's CAs unless a CA file is set;
        hostnames checked), built as aiokafka's ``create_ssl_context`` builds it, with the
        standard library only: this module is runtime code, aiokafka is not a runtime
        dependency."""
        import ssl  # lazy: only aiokafka users pay

        context = ssl.create_default_context(
            ssl.Purpose.SERVER_AUTH, cafile=_str(self.kafka_ssl_ca_location)
        )
        certfile = _str(self.kafka_ssl_certificate_location)
        if certfile is not None:
            context.load_cert_chain(
                certfile,
                _str(self.kafka_ssl_key_location),
                None
                if self.kafka_ssl_key_password is None
                else self.kafka_ssl_key_password.get_secret_value(),
            )
        return context

    def describe(self) -> str:
        """For log lines and errors: servers, protocol, mechanism and user; no secret."""
        text = f"{self.kafka_bootstrap_servers} ({self.kafka_security_protocol}"
        if self.kafka_sasl_mechanism is not None:
            text += f", {self.kafka_sasl_mechanism} as {self.kafka_sasl_username!r}"
        return text + ")"

    # ------------------------------------------------------------------ diagnosis
    def explain(self, err: KafkaError) -> KafkaConnectionError | None:
        """The setting to fix for a permanent connection error, or None (transient)."""
        code, text = err.code(), err.str()
        mechanism = self.kafka_sasl_mechanism
        if code == KafkaError._AUTHENTICATION:
            offered = re.search(r"supported mechanisms: ([\w, -]+?)(?: \(after|$)", text)
            if offered is not None:
                return KafkaConnectionError(
                    MECHANISM,
                    f"the broker does not offer SASL/{mechanism} (it offers {offered[1]})",
                )
            return KafkaConnectionError(
                PASSWORD,
                f"the broker rejected SASL/{mechanism} authentication for user "
                f"{self.kafka_sasl_username!r} (wrong password, or no such user)",
            )
        if code == KafkaError._SSL:
            if "certificate verify failed" in text:
                ca = self.kafka_ssl_ca_location
                trusted_by = str(ca) if ca is not None else "the system's CA certificates"
                return KafkaConnectionError(
                    CA,
                    f"the broker's certificate is not trusted by {trusted_by} "
                    "(certificate verify failed)",
                )
            return KafkaConnectionError(PROTOCOL, f"TLS handshake failed: {_detail(text)}")
        if code == KafkaError._TRANSPORT and "connecting to a PLAINTEXT broker listener" in text:
            return KafkaConnectionError(
                PROTOCOL,
                f"{self.kafka_security_protocol} is set, but {_broker(text)} is a PLAINTEXT "
                "listener",
            )
        return None

    def unreachable(self, timeout_s: float, last: KafkaError | None) -> KafkaConnectionError:
        """No broker answered within ``timeout_s`` and nothing permanent was reported."""
        why = "no error reported" if last is None else _detail(last.str())
        hint = ""
        if self.kafka_security_protocol == "PLAINTEXT":
            hint = f"; if the listener uses TLS or SASL, set {PROTOCOL}"
        return KafkaConnectionError(
            BOOTSTRAP,
            f"no broker at {self.kafka_bootstrap_servers} answered within {timeout_s:g} s "
            f"({why}){hint}",
        )

    def explain_creation(self, exc: KafkaException) -> KafkaConnectionError:
        """librdkafka refused the configuration when the client was created (a PEM file
        it cannot parse, a key that does not match the certificate)."""
        err = exc.args[0] if exc.args else None
        text = err.str() if isinstance(err, KafkaError) else str(exc)
        for prop, setting in _RDKAFKA_FILES.items():
            if f"{prop} failed" in text:
                detail = text.split(f"{prop} failed: ", 1)[-1]
                return KafkaConnectionError(setting, f"librdkafka cannot use it ({detail})")
        return KafkaConnectionError(PROTOCOL, f"the Kafka client refused the settings: {text}")


def _str(path: Path | None) -> str | None:
    return None if path is None else str(path)


def _detail(text: str) -> str:
    """librdkafka's text without the broker prefix and the ``(after Nms in state X)``
    suffix, which change from attempt to attempt."""
    text = re.sub(r"^(?:\S+://)?\S+/\S+: ", "", text)
    return re.sub(r" \(after \d+ms in state \w+\)$", "", text)


def _broker(text: str) -> str:
    found = re.match(r"^(?:\S+://)?(\S+?)/\S+: ", text)
    return found[1] if found is not None else "the broker"


#: A bare ``host:port[,host:port]`` string: a PLAINTEXT connection (tests, the local stack).
KafkaTarget = KafkaConnection | str


def as_connection(kafka: KafkaTarget) -> KafkaConnection:
    """``kafka`` itself, or a PLAINTEXT connection to the servers a string names."""
    return KafkaConnection.plaintext(kafka) if isinstance(kafka, str) else kafka.connection()


class ClientErrors:
    """The ``error_cb`` of one librdkafka client.

    Remembers the last error (for the "did not answer" message), the first permanent one
    (:meth:`KafkaConnection.explain`) and the first fatal one (an idempotent producer or
    a consumer that cannot go on). Errors are logged at DEBUG only: librdkafka logs each
    failed connection attempt itself, and the start-up check or the loop reports what
    matters, once.
    """

    def __init__(self, kafka: KafkaConnection, log: logging.Logger | None = None) -> None:
        self.kafka = kafka
        self.log = log or logging.getLogger("stream_runtime.kafka")
        self.last: KafkaError | None = None
        self.permanent: KafkaConnectionError | None = None
        self.fatal: KafkaError | None = None

    def __call__(self, err: KafkaError) -> None:
        # "1/1 brokers are down" follows every failed attempt; the attempt's own error
        # says why, so it is kept in preference.
        if err.code() != KafkaError._ALL_BROKERS_DOWN or self.last is None:
            self.last = err
        if self.permanent is None:
            self.permanent = self.kafka.explain(err)
        if err.fatal() and self.fatal is None:
            self.fatal = err
        self.log.debug("kafka client error", extra={"error": err.str(), "code": err.name()})

    def raise_if_fatal(self) -> None:
        """Raise a fatal error reported since the client started (the loop's check)."""
        if self.fatal is not None:
            raise KafkaException(self.fatal)


ClientT = TypeVar("ClientT", Consumer, Producer, AdminClient)


def new_client(
    kind: Callable[..., ClientT],
    kafka: KafkaTarget,
    settings: Mapping[str, Any] | None = None,
    *,
    log: logging.Logger | None = None,
) -> tuple[ClientT, ClientErrors]:
    """A confluent-kafka client of ``kind`` with the connection's properties, ``settings``
    on top, and a :class:`ClientErrors` as its ``error_cb`` (returned with it).

    ``log`` also receives librdkafka's own log lines (``logger=``), as JSON lines in the
    services instead of raw ``%3|...`` lines on stderr.
    """
    conn = as_connection(kafka)
    errors = ClientErrors(conn, log)
    config = {**conn.librdkafka_config(), **(settings or {}), "error_cb": errors}
    if log is not None:
        config["logger"] = log
    try:
        return kind(config), errors
    except KafkaException as exc:
        raise conn.explain_creation(exc) from None


def wait_until_reachable(
    client: Consumer | Producer | AdminClient,
    errors: ClientErrors,
    timeout_s: float | None = None,
) -> ClusterMetadata:
    """The cluster's metadata once a broker answers, or :class:`KafkaConnectionError`.

    Fails at the first permanent error (within about a second: one metadata round) and
    otherwise after ``timeout_s`` (default ``KAFKA_START_TIMEOUT_S``). Serves the
    client's callbacks between rounds: call it before a consumer subscribes or is
    assigned partitions (its ``poll`` would otherwise consume a record).
    """
    limit = errors.kafka.kafka_start_timeout_s if timeout_s is None else timeout_s
    deadline = time.monotonic() + limit
    while True:
        left = deadline - time.monotonic()
        try:
            return client.list_topics(timeout=max(0.05, min(_ROUND_S, left)))
        except KafkaException:
            pass  # why is reported through error_cb, served by the poll below
        client.poll(0)
        if errors.permanent is not None:
            raise errors.permanent
        if time.monotonic() >= deadline:
            raise errors.kafka.unreachable(limit, errors.last)
