"""docker-compose.yml, checked offline: valid against the Compose Specification's JSON
schema (the copy check-jsonschema ships, so no network), and consistent with the code:
env variables, images, commands, health checks and ports."""

from __future__ import annotations

import ast
import importlib.resources
import json
import re
from typing import Any

import jsonschema
import pytest
import yaml

from tests.fixtures.deploy_files import (
    PROBE_ENV,
    REPO,
    SERVICE_ENV,
    MissingVariableError,
    decider_bind_host,
    dockerfiles,
    env_is_read,
    image_contains,
    interpolate,
    interpolate_tree,
    is_stdlib,
    module_file,
    parse_dockerfile,
    target_image,
)

pytestmark = pytest.mark.unit

COMPOSE: dict[str, Any] = yaml.safe_load((REPO / "docker-compose.yml").read_text())
SERVICES: dict[str, dict[str, Any]] = COMPOSE["services"]
#: Services built from our Dockerfiles (the others use official images).
BUILT = {name: svc for name, svc in SERVICES.items() if "build" in svc}
#: Binaries the official images ship, for their commands and health checks.
OFFICIAL_BINARIES = {
    "apache/kafka": {"/opt/kafka/bin/kafka-broker-api-versions.sh"},
    "redis": {"redis-cli", "redis-server", "sh", "docker-entrypoint.sh"},
}
#: What compose must refuse to start without (``${VAR:?message}``).
REQUIRED = ("MAB_ADMIN_KEY", "REDIS_PASSWORD")


def compose_schema() -> dict[str, Any]:
    vendor = importlib.resources.files("check_jsonschema.builtin_schemas.vendor")
    schema: dict[str, Any] = json.loads((vendor / "compose-spec.json").read_text())
    return schema


def test_compose_file_is_valid_against_the_compose_spec() -> None:
    schema = compose_schema()
    assert schema["title"] == "Compose Specification"
    validator = jsonschema.Draft202012Validator(schema)
    errors = sorted(validator.iter_errors(COMPOSE), key=lambda e: list(e.absolute_path))
    assert not errors, [f"{list(e.absolute_path)}: {e.message}" for e in errors]


def test_the_schema_check_catches_a_broken_file() -> None:
    """The validation is not vacuous: typical mistakes are rejected."""
    validator = jsonschema.Draft202012Validator(compose_schema())
    broken = json.loads(json.dumps(COMPOSE))
    broken["services"]["decider"]["depends_on"]["kafka"]["condition"] = "service_up"
    broken["services"]["redis"]["healthcheck"]["retries"] = "many"
    broken["services"]["projector"]["restart_policy"] = "always"
    assert len(list(validator.iter_errors(broken))) >= 3


def test_the_full_stack_is_there() -> None:
    assert set(SERVICES) >= {
        "kafka",
        "redis",
        "topic-init",
        "decider",
        "reward-consumer",
        "projector",
        "dashboard",
        "demo-traffic",
        "load-tester",
    }
    assert SERVICES["kafka"]["image"].startswith("apache/kafka:")
    assert SERVICES["kafka"]["environment"]["KAFKA_PROCESS_ROLES"] == "broker,controller"
    assert "--appendonly yes" in " ".join(SERVICES["redis"]["command"])
    volumes = {v.split(":")[1] for name in ("kafka", "redis") for v in SERVICES[name]["volumes"]}
    assert volumes == {"/var/lib/kafka/data", "/data"}
    assert SERVICES["kafka"]["environment"]["KAFKA_LOG_DIRS"] == "/var/lib/kafka/data"
    # Demo traffic and the load tester are opt-in.
    assert SERVICES["demo-traffic"]["profiles"] == ["demo"]
    assert SERVICES["load-tester"]["profiles"] == ["loadtest"]
    for name in ("decider", "reward-consumer", "projector", "dashboard", "kafka", "redis"):
        assert "healthcheck" in SERVICES[name], f"{name} has no health check"


@pytest.mark.parametrize("name", sorted(BUILT))
def test_every_env_variable_is_read_by_the_service(name: str) -> None:
    """A variable no settings class reads is a typo or a leftover: it silently does
    nothing (e.g. ACTIVE_STRATEGY given to the dashboard)."""
    env = BUILT[name].get("environment", {})
    unread = sorted(k for k in env if not env_is_read(name, k))
    assert not unread, f"{name} does not read {unread}; it reads {sorted(SERVICE_ENV[name])}"


@pytest.mark.parametrize("name", sorted(BUILT))
def test_build_points_at_an_existing_dockerfile_and_target(name: str) -> None:
    build = BUILT[name]["build"]
    assert build["context"] == "."
    path = REPO / build["dockerfile"]
    assert path.is_file(), build["dockerfile"]
    image = parse_dockerfile(path)
    assert image.stage(build["target"]) is not None, f"no stage {build['target']!r} in {path}"
    assert build["target"] == name or (name == "topic-init" and build["target"] == "tools")


def _argv(test: list[str] | str) -> list[str]:
    if isinstance(test, str):
        return test.split()
    kind, *argv = test
    return argv if kind == "CMD" else " ".join(argv).split()


@pytest.mark.parametrize("name", sorted(SERVICES))
def test_health_checks_use_what_the_image_has(name: str) -> None:
    svc = SERVICES[name]
    if "healthcheck" not in svc:
        return
    argv = _argv(svc["healthcheck"]["test"])
    if "build" not in svc:
        repo = svc["image"].split(":")[0]
        assert argv[0] in OFFICIAL_BINARIES[repo], f"{name}: {argv[0]} not in {repo}"
        return
    image = target_image(REPO / svc["build"]["dockerfile"], svc["build"]["target"])
    assert argv[0] == "python", f"{name}: only the image's Python is certain to exist"
    if argv[1] == "-m":
        target = module_file(argv[2])
        assert target is not None, f"{name}: no module {argv[2]}"
        assert image_contains(image, target), f"{name}: {target} is not in the image"
        if argv[2] == "stream_runtime.probe":
            # The probe checks the endpoints the processor itself is given.
            given = set(svc["environment"]) & PROBE_ENV
            assert given >= {"KAFKA_BOOTSTRAP_SERVERS", "REDIS_URL"}, name
    else:
        assert argv[1] == "-c"
        tree = ast.parse(argv[2])
        mods = {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
        assert mods, f"{name}: a -c check that imports nothing checks nothing"
        assert all(is_stdlib(m) for m in mods), f"{name}: {mods} not stdlib"


def _container_ports(svc: dict[str, Any]) -> set[int]:
    return {int(str(p).rsplit(":", 1)[1].split("/")[0]) for p in svc.get("ports", [])}


@pytest.mark.parametrize("name", sorted(BUILT))
def test_ports_agree_with_command_image_and_health_check(name: str) -> None:
    svc = BUILT[name]
    image = target_image(REPO / svc["build"]["dockerfile"], svc["build"]["target"])
    published = _container_ports(svc)
    assert published <= set(image.runtime.expose), f"{name}: publishes {published}"
    command = " ".join(svc.get("command") or image.runtime.cmd)
    listened = {int(p) for p in re.findall(r"--(?:server\.|web-)?port[ =](\d+)", command)}
    assert published <= listened, f"{name}: {command!r} does not listen on {published}"
    if "healthcheck" in svc:
        probed = {int(p) for p in re.findall(r"127\.0\.0\.1:(\d+)", str(svc["healthcheck"]))}
        assert probed <= listened


def _default(value: str) -> str:
    """What ``${VAR:-default}`` becomes when .env leaves VAR empty (else the value)."""
    found = re.fullmatch(r"\$\{[A-Z0-9_]+:-(.*)\}", value)
    return found[1] if found else value


def test_clients_reach_the_services_where_they_listen() -> None:
    """MAB_API_URL, the bootstrap servers and the Redis URL name a service and its port
    (the bootstrap servers by default: a managed Kafka replaces them in .env)."""
    decider_port = _container_ports(SERVICES["decider"]).pop()
    for name, svc in BUILT.items():
        env = svc.get("environment", {})
        if "MAB_API_URL" in env:
            assert env["MAB_API_URL"] == f"http://decider:{decider_port}", name
        if "KAFKA_BOOTSTRAP_SERVERS" in env:
            assert _default(env["KAFKA_BOOTSTRAP_SERVERS"]) == "kafka:9092", name
            assert _default(env["KAFKA_SECURITY_PROTOCOL"]) == "PLAINTEXT", name
        if "REDIS_URL" in env:
            assert env["REDIS_URL"].startswith("redis://redis:6379/"), name
    listeners = SERVICES["kafka"]["environment"]["KAFKA_ADVERTISED_LISTENERS"]
    assert "PLAINTEXT://kafka:9092" in listeners


def test_env_example_documents_exactly_the_compose_variables() -> None:
    """docker compose reads .env only to substitute ``${VAR}`` in the compose file, so
    .env.example lists those and nothing else (a REDIS_URL there would do nothing)."""
    names = {
        line.split("=", 1)[0].strip()
        for line in (REPO / ".env.example").read_text().splitlines()
        if "=" in line and not line.lstrip().startswith("#")
    }
    text = (REPO / "docker-compose.yml").read_text()
    interpolated = set(re.findall(r"\$\{([A-Z0-9_]+)", text))
    assert names == interpolated, f"only in .env.example: {names - interpolated}; " + (
        f"undocumented: {interpolated - names}"
    )


def test_every_dockerfile_is_used_by_compose() -> None:
    used = {svc["build"]["target"] for svc in BUILT.values()}
    assert set(dockerfiles()) == used


def test_decider_serves_the_other_containers() -> None:
    """The decider binds 127.0.0.1 unless MAB_HOST says otherwise: in a container that
    would serve nobody, so compose sets MAB_HOST=0.0.0.0 itself (not only the image), and
    never open admin calls (the decider refuses MAB_AUTH=open off loopback anyway)."""
    svc = SERVICES["decider"]
    image = target_image(REPO / svc["build"]["dockerfile"], svc["build"]["target"])
    env = {**image.runtime.env, **svc["environment"]}
    assert svc["environment"]["MAB_HOST"] == "0.0.0.0"
    assert decider_bind_host(env, svc.get("command") or image.runtime.cmd) == "0.0.0.0"
    assert "MAB_AUTH" not in env
    assert env["MAB_ADMIN_KEY"].startswith("${MAB_ADMIN_KEY:?")


def test_dashboard_gets_a_read_key_never_the_admin_key() -> None:
    """The dashboard only reads: its bearer token is the decider's read key."""
    dashboard = SERVICES["dashboard"]["environment"]
    assert dashboard["MAB_API_KEY"] == "${MAB_READ_KEYS:-}"
    assert SERVICES["decider"]["environment"]["MAB_READ_KEYS"] == "${MAB_READ_KEYS:-}"
    assert "MAB_ADMIN_KEY" not in str(dashboard)


def test_interpolation_follows_the_compose_spec() -> None:
    """The reader the two tests below rely on (a wrong one would make them vacuous)."""
    env = {"SET": "v", "EMPTY": ""}
    assert interpolate("$$SET ${SET} $SET ${UNSET}", env) == "$SET v v "
    assert interpolate("${UNSET:-d} ${EMPTY:-d} ${EMPTY-d} ${SET:+r} ${UNSET:+r}", env) == (
        "d d  r "
    )
    assert interpolate("${EMPTY?fine}", env) == ""
    with pytest.raises(MissingVariableError, match="EMPTY is missing a value: say why"):
        interpolate("${EMPTY:?say why}", env)
    with pytest.raises(MissingVariableError, match="UNSET"):
        interpolate("${UNSET?x}", env)


@pytest.mark.parametrize("missing", REQUIRED)
@pytest.mark.parametrize("value", [None, ""], ids=["unset", "empty"])
def test_compose_refuses_to_start_without_the_admin_key_or_the_redis_password(
    missing: str, value: str | None
) -> None:
    """An empty .env copied from .env.example must not start a stack whose admin calls
    are open or whose Redis has no password: compose stops with a message naming the
    variable and where to set it."""
    env = {name: "set-in-dot-env-0123456789" for name in REQUIRED if name != missing}
    if value is not None:
        env[missing] = value
    with pytest.raises(MissingVariableError) as stopped:
        interpolate_tree(COMPOSE, env)
    assert f"required variable {missing} is missing a value" in str(stopped.value)
    assert ".env.example" in str(stopped.value)


def test_the_password_and_the_admin_key_reach_who_needs_them() -> None:
    given = {"MAB_ADMIN_KEY": "admin-key-0123456789", "REDIS_PASSWORD": "redis-pass-0123"}
    services: dict[str, dict[str, Any]] = interpolate_tree(COMPOSE, given)["services"]
    assert services["decider"]["environment"]["MAB_ADMIN_KEY"] == given["MAB_ADMIN_KEY"]
    readers = [n for n, svc in services.items() if "REDIS_URL" in svc.get("environment", {})]
    assert sorted(readers) == ["decider", "projector", "reward-consumer"]
    for name in readers:
        env = services[name]["environment"]
        assert env["REDIS_PASSWORD"] == given["REDIS_PASSWORD"], name
        assert "@" not in env["REDIS_URL"], f"{name}: the password travels apart from the URL"
    redis = services["redis"]
    assert redis["environment"]["REDISCLI_AUTH"] == given["REDIS_PASSWORD"]  # health check
    # redis-server reads the password as configuration on stdin (`-`), from its own
    # environment: it is never on a command line, where `ps` would show it.
    kind, flag, script = redis["command"]
    assert (kind, flag) == ("sh", "-c")
    assert {kind, *script.split()[1:3]} <= OFFICIAL_BINARIES["redis"]
    assert script.startswith("exec docker-entrypoint.sh redis-server - ")
    assert 'requirepass "$REDIS_PASSWORD"' in script.splitlines()
    assert given["REDIS_PASSWORD"] not in script
    assert "--requirepass" not in script
    assert redis["environment"]["REDIS_PASSWORD"] == given["REDIS_PASSWORD"]
