"""The Kafka connection settings: validation messages that name the variable, the two
renderings (librdkafka, aiokafka), the password never shown, and the diagnosis of
librdkafka's errors (texts as librdkafka 2.16 reports them against Kafka 4.1)."""

from __future__ import annotations

import ssl
from pathlib import Path

import pytest
from confluent_kafka import KafkaError, KafkaException
from pydantic import ValidationError

from deploy.stack.config import KafkaExtras
from deploy.stack.kafka_broker import kafka_server_properties
from services.decider.settings import DeciderSettings
from services.reward_consumer.settings import ConsumerSettings
from stream_runtime.kafka_connection import KafkaConnection, as_connection
from stream_runtime.settings import settings_errors

pytestmark = pytest.mark.unit

#: (A real CA certificate is not needed to render or validate: only a readable file.)
PASSWORD = "s3cret-Pa55"


@pytest.fixture(autouse=True)
def _no_kafka_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """Settings read the environment: start every test from none of our variables."""
    for name in list(KafkaConnection.model_fields):
        monkeypatch.delenv(name.upper(), raising=False)


def sasl_ssl(tmp_path: Path, **overrides: object) -> KafkaConnection:
    ca = tmp_path / "ca.pem"
    ca.write_text("-----BEGIN CERTIFICATE-----\n")
    fields: dict[str, object] = {
        "kafka_bootstrap_servers": "b-1.example:9096,b-2.example:9096",
        "kafka_security_protocol": "SASL_SSL",
        "kafka_sasl_mechanism": "SCRAM-SHA-512",
        "kafka_sasl_username": "mab",
        "kafka_sasl_password": PASSWORD,
        "kafka_ssl_ca_location": ca,
        **overrides,
    }
    return KafkaConnection(**fields)  # type: ignore[arg-type]


def errors_of(exc: pytest.ExceptionInfo[ValidationError]) -> list[str]:
    return settings_errors(exc.value)


def test_the_default_is_plaintext_to_the_local_broker() -> None:
    conn = KafkaConnection()
    assert conn.librdkafka_config() == {
        "bootstrap.servers": "127.0.0.1:9092",
        "security.protocol": "PLAINTEXT",
    }
    assert conn.aiokafka_kwargs() == {
        "bootstrap_servers": "127.0.0.1:9092",
        "security_protocol": "PLAINTEXT",
    }


def test_sasl_ssl_renders_for_librdkafka(tmp_path: Path) -> None:
    conn = sasl_ssl(tmp_path)
    assert conn.librdkafka_config() == {
        "bootstrap.servers": "b-1.example:9096,b-2.example:9096",
        "security.protocol": "SASL_SSL",
        "sasl.mechanism": "SCRAM-SHA-512",
        "sasl.username": "mab",
        "sasl.password": PASSWORD,
        "ssl.ca.location": str(tmp_path / "ca.pem"),
    }


def test_sasl_ssl_renders_for_aiokafka_with_an_ssl_context(tmp_path: Path) -> None:
    conn = sasl_ssl(tmp_path, kafka_ssl_ca_location=None)  # the system's CAs
    kwargs = conn.aiokafka_kwargs()
    context = kwargs.pop("ssl_context")
    assert isinstance(context, ssl.SSLContext)
    assert context.verify_mode == ssl.CERT_REQUIRED
    assert context.check_hostname
    assert kwargs == {
        "bootstrap_servers": "b-1.example:9096,b-2.example:9096",
        "security_protocol": "SASL_SSL",
        "sasl_mechanism": "SCRAM-SHA-512",
        "sasl_plain_username": "mab",
        "sasl_plain_password": PASSWORD,
    }


def test_lower_case_values_are_accepted_as_librdkafka_documents_them(tmp_path: Path) -> None:
    conn = sasl_ssl(tmp_path, kafka_security_protocol="sasl_ssl", kafka_sasl_mechanism="plain")
    assert (conn.kafka_security_protocol, conn.kafka_sasl_mechanism) == ("SASL_SSL", "PLAIN")


def test_the_environment_is_read_with_the_documented_names(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ca = tmp_path / "ca.pem"
    ca.write_text("x")
    for name, value in {
        "KAFKA_BOOTSTRAP_SERVERS": "kafka.example:9093",
        "KAFKA_SECURITY_PROTOCOL": "SASL_SSL",
        "KAFKA_SASL_MECHANISM": "SCRAM-SHA-256",
        "KAFKA_SASL_USERNAME": "svc",
        "KAFKA_SASL_PASSWORD": PASSWORD,
        "KAFKA_SSL_CA_LOCATION": str(ca),
        "MAB_AUTH": "open",  # the decider needs an admin key or open mode to validate
    }.items():
        monkeypatch.setenv(name, value)
    # The services' settings inherit the same fields: one set of names everywhere.
    for settings in (KafkaConnection(), ConsumerSettings(), DeciderSettings()):
        assert settings.connection().librdkafka_config()["sasl.username"] == "svc"
        assert settings.kafka_sasl_mechanism == "SCRAM-SHA-256"


def test_the_password_never_shows(tmp_path: Path) -> None:
    conn = sasl_ssl(tmp_path, kafka_ssl_key_password=None)
    for text in (repr(conn), str(conn), conn.describe(), str(conn.model_dump())):
        assert PASSWORD not in text
    assert conn.describe() == (
        "b-1.example:9096,b-2.example:9096 (SASL_SSL, SCRAM-SHA-512 as 'mab')"
    )


def test_sasl_needs_mechanism_user_and_password() -> None:
    with pytest.raises(ValidationError) as caught:
        KafkaConnection(kafka_security_protocol="SASL_SSL")
    assert errors_of(caught) == [
        "KAFKA_SASL_MECHANISM, KAFKA_SASL_USERNAME, KAFKA_SASL_PASSWORD must be set when "
        "KAFKA_SECURITY_PROTOCOL=SASL_SSL (PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512)"
    ]
    with pytest.raises(ValidationError) as caught:
        KafkaConnection.model_validate(
            {
                "kafka_security_protocol": "SASL_PLAINTEXT",
                "kafka_sasl_mechanism": "PLAIN",
                "kafka_sasl_username": "mab",
                "kafka_sasl_password": "",  # an empty variable is unset, not empty
            }
        )
    assert errors_of(caught) == [
        "KAFKA_SASL_PASSWORD must be set when KAFKA_SECURITY_PROTOCOL=SASL_PLAINTEXT"
    ]


def test_credentials_that_would_not_be_sent_are_refused() -> None:
    with pytest.raises(ValidationError) as caught:
        KafkaConnection.model_validate(
            {"kafka_sasl_username": "mab", "kafka_sasl_password": PASSWORD}
        )
    assert errors_of(caught) == [
        "KAFKA_SASL_USERNAME, KAFKA_SASL_PASSWORD set, but KAFKA_SECURITY_PROTOCOL=PLAINTEXT "
        "sends no SASL credentials (use SASL_SSL, or SASL_PLAINTEXT on a private network)"
    ]


def test_tls_files_without_tls_are_refused(tmp_path: Path) -> None:
    ca = tmp_path / "ca.pem"
    ca.write_text("x")
    with pytest.raises(ValidationError) as caught:
        KafkaConnection(kafka_ssl_ca_location=ca)
    assert errors_of(caught) == [
        "KAFKA_SSL_CA_LOCATION set, but KAFKA_SECURITY_PROTOCOL=PLAINTEXT does not use TLS "
        "(use SSL or SASL_SSL)"
    ]


def test_unknown_protocol_and_mechanism_name_their_variable() -> None:
    with pytest.raises(ValidationError) as caught:
        KafkaConnection.model_validate({"kafka_security_protocol": "TLS"})
    (line,) = errors_of(caught)
    assert line.startswith("KAFKA_SECURITY_PROTOCOL: Input should be 'PLAINTEXT', 'SSL'")
    with pytest.raises(ValidationError) as caught:
        KafkaConnection.model_validate(
            {
                "kafka_security_protocol": "SASL_SSL",
                "kafka_sasl_mechanism": "GSSAPI",
                "kafka_sasl_username": "u",
                "kafka_sasl_password": "p",
            }
        )
    (line,) = errors_of(caught)
    assert line.startswith("KAFKA_SASL_MECHANISM: Input should be 'PLAIN', 'SCRAM-SHA-256'")


def test_files_must_exist_and_be_readable(tmp_path: Path) -> None:
    missing = tmp_path / "nope.pem"
    with pytest.raises(ValidationError) as caught:
        sasl_ssl(tmp_path, kafka_ssl_ca_location=missing)
    assert errors_of(caught) == [f"KAFKA_SSL_CA_LOCATION: {missing} does not exist"]
    with pytest.raises(ValidationError) as caught:
        sasl_ssl(tmp_path, kafka_ssl_ca_location=tmp_path)
    assert errors_of(caught) == [f"KAFKA_SSL_CA_LOCATION: {tmp_path} is not a file"]


def test_client_certificate_and_key_go_together(tmp_path: Path) -> None:
    cert = tmp_path / "client.pem"
    cert.write_text("x")
    with pytest.raises(ValidationError) as caught:
        sasl_ssl(tmp_path, kafka_ssl_certificate_location=cert)
    assert errors_of(caught) == [
        "KAFKA_SSL_CERTIFICATE_LOCATION and KAFKA_SSL_KEY_LOCATION go together: set both or neither"
    ]
    conn = sasl_ssl(
        tmp_path,
        kafka_ssl_certificate_location=cert,
        kafka_ssl_key_location=cert,
        kafka_ssl_key_password="key-pw",
    )
    config = conn.librdkafka_config()
    assert config["ssl.certificate.location"] == config["ssl.key.location"] == str(cert)
    assert config["ssl.key.password"] == "key-pw"


def test_with_servers_keeps_the_security_and_a_bare_string_is_plaintext(
    tmp_path: Path,
) -> None:
    conn = sasl_ssl(tmp_path)
    moved = conn.with_servers("other:9096")
    assert moved.kafka_bootstrap_servers == "other:9096"
    assert moved.kafka_sasl_username == "mab"
    assert conn.with_servers(None) == conn
    assert as_connection("127.0.0.1:1").librdkafka_config() == {
        "bootstrap.servers": "127.0.0.1:1",
        "security.protocol": "PLAINTEXT",
    }


def test_settings_errors_are_one_line_per_variable() -> None:
    with pytest.raises(ValidationError) as caught:
        ConsumerSettings(kafka_start_timeout_s=0, mab_max_batch_records=0)
    assert errors_of(caught) == [
        "KAFKA_START_TIMEOUT_S: Input should be greater than 0",
        "MAB_MAX_BATCH_RECORDS: Input should be greater than or equal to 1",
    ]


# ---------------------------------------------------------------- diagnosis


def err(code: int, text: str) -> KafkaError:
    return KafkaError(code, text)


def test_a_rejected_password_names_the_password(tmp_path: Path) -> None:
    problem = sasl_ssl(tmp_path).explain(
        err(
            KafkaError._AUTHENTICATION,
            "sasl_ssl://b-1.example:9096/bootstrap: SASL authentication error: Authentication "
            "failed during authentication due to invalid credentials with SASL mechanism "
            "SCRAM-SHA-512 (after 313ms in state AUTH_REQ)",
        )
    )
    assert problem is not None
    assert problem.setting == "KAFKA_SASL_PASSWORD"
    assert str(problem) == (
        "KAFKA_SASL_PASSWORD: the broker rejected SASL/SCRAM-SHA-512 authentication for user "
        "'mab' (wrong password, or no such user)"
    )


def test_an_unoffered_mechanism_names_the_mechanism(tmp_path: Path) -> None:
    problem = sasl_ssl(tmp_path, kafka_sasl_mechanism="PLAIN").explain(
        err(
            KafkaError._AUTHENTICATION,
            "sasl_ssl://b-1.example:9096/bootstrap: SASL PLAIN mechanism handshake failed: "
            "Broker: Unsupported SASL mechanism: broker's supported mechanisms: SCRAM-SHA-256,"
            "SCRAM-SHA-512 (after 301ms in state AUTH_HANDSHAKE)",
        )
    )
    assert str(problem) == (
        "KAFKA_SASL_MECHANISM: the broker does not offer SASL/PLAIN "
        "(it offers SCRAM-SHA-256,SCRAM-SHA-512)"
    )


def test_an_untrusted_certificate_names_the_ca(tmp_path: Path) -> None:
    text = (
        "sasl_ssl://b-1.example:9096/bootstrap: SSL handshake failed: error:0A000086:SSL "
        "routines::certificate verify failed: broker certificate could not be verified, verify "
        "that ssl.ca.location is correctly configured or root CA certificates are installed "
        "(install ca-certificates package) (after 4ms in state SSL_HANDSHAKE)"
    )
    problem = sasl_ssl(tmp_path).explain(err(KafkaError._SSL, text))
    assert str(problem) == (
        f"KAFKA_SSL_CA_LOCATION: the broker's certificate is not trusted by {tmp_path}/ca.pem "
        "(certificate verify failed)"
    )
    system = sasl_ssl(tmp_path, kafka_ssl_ca_location=None).explain(err(KafkaError._SSL, text))
    assert "not trusted by the system's CA certificates" in str(system)


def test_transient_errors_are_not_diagnosed(tmp_path: Path) -> None:
    conn = sasl_ssl(tmp_path)
    refused = err(
        KafkaError._TRANSPORT,
        "sasl_ssl://b-1.example:9096/bootstrap: Connect to ipv4#10.0.0.1:9096 failed: "
        "Connection refused (after 0ms in state CONNECT)",
    )
    assert conn.explain(refused) is None
    assert conn.explain(err(KafkaError._ALL_BROKERS_DOWN, "1/1 brokers are down")) is None
    assert str(conn.unreachable(30, refused)) == (
        "KAFKA_BOOTSTRAP_SERVERS: no broker at b-1.example:9096,b-2.example:9096 answered "
        "within 30 s (Connect to ipv4#10.0.0.1:9096 failed: Connection refused)"
    )


def test_a_file_librdkafka_refuses_at_creation_names_its_variable(tmp_path: Path) -> None:
    exc = KafkaException(
        err(
            KafkaError._INVALID_ARG,
            "Failed to create producer: ssl.key.location failed: error:05800074:x509 "
            "certificate routines::key values mismatch",
        )
    )
    problem = sasl_ssl(tmp_path).explain_creation(exc)
    assert str(problem) == (
        "KAFKA_SSL_KEY_LOCATION: librdkafka cannot use it (error:05800074:x509 certificate "
        "routines::key values mismatch)"
    )


def test_the_local_broker_takes_extra_listeners_and_properties(tmp_path: Path) -> None:
    extras = KafkaExtras(
        listeners={"SASL_SSL": 19094},
        properties={"sasl.enabled.mechanisms": "SCRAM-SHA-512"},
    )
    lines = kafka_server_properties(tmp_path, 19092, 19093, extras).splitlines()
    assert (
        "listeners=PLAINTEXT://127.0.0.1:19092,SASL_SSL://127.0.0.1:19094,"
        "CONTROLLER://127.0.0.1:19093"
    ) in lines
    assert "advertised.listeners=PLAINTEXT://127.0.0.1:19092,SASL_SSL://127.0.0.1:19094" in lines
    assert (
        "listener.security.protocol.map=PLAINTEXT:PLAINTEXT,SASL_SSL:SASL_SSL,CONTROLLER:PLAINTEXT"
    ) in lines
    assert lines[-1] == "sasl.enabled.mechanisms=SCRAM-SHA-512"  # last: it wins
    assert "inter.broker.listener.name=PLAINTEXT" in lines
