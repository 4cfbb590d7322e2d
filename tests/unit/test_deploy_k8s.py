"""The Kubernetes manifests (deploy/k8s), checked offline: every resource validates
against the Kubernetes 1.33 schemas that kubernetes-validate ships (strict: unknown
fields are errors), and the manifests agree with the code (probe paths in the decider's
OpenAPI, env names in the settings classes, replicas within the partition count, the
images' users and modules)."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import kubernetes_validate
import pytest
import yaml

from schemas.topics import DEFAULT_PARTITIONS
from services.decider.app import create_app
from tests.fixtures.deploy_files import (
    REPO,
    SECRETS,
    SERVICE_ENV,
    decider_bind_host,
    dockerfiles,
    env_is_read,
    image_contains,
    module_file,
)

pytestmark = pytest.mark.unit

K8S = REPO / "deploy" / "k8s"
#: The Kubernetes version the manifests are written for (and validated against).
KUBERNETES_VERSION = "1.33.0"
PARTITION_LIMIT = "mab-optimizer/partition-limit"
DASHBOARD_HEALTH = "/_stcore/health"


def _load(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


MANIFESTS = {p.name: _load(p) for p in sorted(K8S.glob("*.yaml")) if p.name != "kustomization.yaml"}
#: The optional in-cluster Redis (its own kustomization, namespace ``redis``).
REDIS_DIR = K8S / "redis"
REDIS_MANIFESTS = {
    p.name: _load(p) for p in sorted(REDIS_DIR.glob("*.yaml")) if p.name != "kustomization.yaml"
}
RESOURCES = [(name, doc) for name, docs in MANIFESTS.items() for doc in docs]
REDIS_RESOURCES = [(f"redis/{n}", doc) for n, docs in REDIS_MANIFESTS.items() for doc in docs]
OPERATIONS = (REPO / "docs" / "operations.md").read_text()
IMAGES = dockerfiles()


def _of_kind(kind: str) -> dict[str, dict[str, Any]]:
    return {d["metadata"]["name"]: d for _, d in RESOURCES if d["kind"] == kind}


def _workloads() -> list[dict[str, Any]]:
    return [d for _, d in RESOURCES if d["kind"] in {"Deployment", "Job"}]


def _containers(workload: dict[str, Any]) -> list[dict[str, Any]]:
    containers: list[dict[str, Any]] = workload["spec"]["template"]["spec"]["containers"]
    return containers


def _ids(items: list[tuple[str, dict[str, Any]]]) -> list[str]:
    return [f"{name}:{doc['kind']}/{doc['metadata']['name']}" for name, doc in items]


@pytest.mark.parametrize(
    ("name", "doc"), RESOURCES + REDIS_RESOURCES, ids=_ids(RESOURCES + REDIS_RESOURCES)
)
def test_resource_is_valid_against_the_kubernetes_schema(name: str, doc: dict[str, Any]) -> None:
    # SchemaNotFoundError (an unknown kind or apiVersion) fails the test too.
    version = kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)
    assert version == "1.33"


def test_schema_validation_rejects_broken_manifests() -> None:
    """The check is real: wrong types and unknown fields are errors."""
    decider = copy.deepcopy(_of_kind("Deployment")["decider"])
    decider["spec"]["replicas"] = "two"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(decider, KUBERNETES_VERSION, strict=True)
    hpa = copy.deepcopy(_of_kind("HorizontalPodAutoscaler")["decider"])
    hpa["spec"]["targetCPUUtilizationPercentage"] = 70  # autoscaling/v1 field in v2
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(hpa, KUBERNETES_VERSION, strict=True)


def test_kustomization_lists_every_manifest() -> None:
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    assert sorted(kustomization["resources"]) == sorted(MANIFESTS)
    assert all(d["metadata"].get("namespace", "mab") == "mab" for _, d in RESOURCES)
    redis = yaml.safe_load((REDIS_DIR / "kustomization.yaml").read_text())
    assert sorted(redis["resources"]) == sorted(REDIS_MANIFESTS)
    assert all(d["metadata"].get("namespace", "redis") == "redis" for _, d in REDIS_RESOURCES)


def _secret_refs() -> set[tuple[str, str, str]]:
    """(namespace, secret, key or "*") of every Secret a manifest refers to."""
    refs: set[tuple[str, str, str]] = set()
    for _, doc in RESOURCES + REDIS_RESOURCES:
        if doc["kind"] not in {"Deployment", "Job", "StatefulSet"}:
            continue
        namespace = doc["metadata"]["namespace"]
        for volume in doc["spec"]["template"]["spec"].get("volumes", []):
            if "secret" in volume:
                refs.add((namespace, volume["secret"]["secretName"], "*"))
        for container in _containers(doc):
            for source in container.get("envFrom", []):
                if "secretRef" in source:
                    refs.add((namespace, source["secretRef"]["name"], "*"))
            for e in container.get("env", []):
                ref = e.get("valueFrom", {}).get("secretKeyRef")
                if ref:
                    refs.add((namespace, ref["name"], ref["key"]))
    return refs


def test_no_secret_ships_and_every_referenced_one_is_documented() -> None:
    """Applying the manifests never overwrites a Secret the operator created (the old
    placeholder did): none is among them, none is generated. Each one they refer to is
    created by a documented ``kubectl create secret`` in its namespace, with its keys."""
    everything = RESOURCES + REDIS_RESOURCES
    assert [d["metadata"]["name"] for _, d in everything if d["kind"] == "Secret"] == []
    for path in (K8S / "kustomization.yaml", REDIS_DIR / "kustomization.yaml"):
        kustomization = yaml.safe_load(path.read_text())
        assert "secretGenerator" not in kustomization, path
    refs = _secret_refs()
    assert {(ns, name) for ns, name, _ in refs} == {
        ("mab", "mab-api-keys"),
        ("mab", "mab-redis"),
        ("redis", "mab-redis"),
        ("mab", "mab-kafka"),
        ("mab", "mab-kafka-tls"),
    }
    for namespace, name, key in refs:
        assert name in SECRETS, name
        assert key == "*" or key in SECRETS[name], (name, key)
        assert f"kubectl -n {namespace} create secret generic {name}" in OPERATIONS, (
            namespace,
            name,
        )
    for required in ("MAB_ADMIN_KEY", "REDIS_PASSWORD"):
        assert f"--from-literal={required}=" in OPERATIONS
    # No pod starts without its secrets: an absent admin key is not "open", an absent
    # Redis password is not "no password".
    for workload in _workloads():
        for container in _containers(workload):
            for source in container.get("envFrom", []):
                if "secretRef" in source:
                    assert source["secretRef"].get("optional", False) is False, source


def _redis_container() -> dict[str, Any]:
    (statefulset,) = [d for _, d in REDIS_RESOURCES if d["kind"] == "StatefulSet"]
    (container,) = _containers(statefulset)
    return container


def test_the_bundled_redis_requires_the_secrets_password_off_the_command_line() -> None:
    container = _redis_container()
    env = {e["name"]: e["valueFrom"]["secretKeyRef"] for e in container["env"]}
    assert (
        env["REDIS_PASSWORD"]
        == env["REDISCLI_AUTH"]
        == {
            "name": "mab-redis",
            "key": "REDIS_PASSWORD",
        }
    )
    kind, flag, script = container["command"]
    assert (kind, flag) == ("sh", "-c")
    # Configuration on stdin from the environment; `$(VAR)` would make the kubelet put
    # the password itself on the command line, and so would --requirepass.
    assert script.startswith("exec redis-server - ")
    assert 'requirepass "$REDIS_PASSWORD"' in script.splitlines()
    assert "$(REDIS_PASSWORD)" not in script
    assert "--requirepass" not in script
    assert "--appendonly yes" in script
    assert container["readinessProbe"]["exec"]["command"] == ["redis-cli", "ping"]


def test_the_bundled_redis_is_where_the_configmap_points() -> None:
    url = urlsplit(_of_kind("ConfigMap")["mab-stream"]["data"]["REDIS_URL"])
    assert url.password is None, "the password comes from the Secret, not the ConfigMap"
    (service,) = [d for _, d in REDIS_RESOURCES if d["kind"] == "Service"]
    name, namespace = service["metadata"]["name"], service["metadata"]["namespace"]
    assert url.hostname == f"{name}.{namespace}.svc"
    assert url.port == service["spec"]["ports"][0]["port"]
    container = _redis_container()
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports[service["spec"]["ports"][0]["targetPort"]] == url.port
    (statefulset,) = [d for _, d in REDIS_RESOURCES if d["kind"] == "StatefulSet"]
    assert "--dir /data" in container["command"][2]
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    claims = {c["metadata"]["name"] for c in statefulset["spec"]["volumeClaimTemplates"]}
    assert mounts["data"] == "/data"
    assert "data" in claims


def test_decider_scales_on_cpu() -> None:
    hpa = _of_kind("HorizontalPodAutoscaler")["decider"]
    assert hpa["apiVersion"] == "autoscaling/v2"
    target = hpa["spec"]["scaleTargetRef"]
    assert (target["kind"], target["name"]) == ("Deployment", "decider")
    assert "decider" in _of_kind("Deployment")
    (metric,) = hpa["spec"]["metrics"]
    assert metric["resource"]["name"] == "cpu"
    # Utilisation is relative to the request: without one the HPA cannot compute it.
    (container,) = _containers(_of_kind("Deployment")["decider"])
    assert container["resources"]["requests"]["cpu"]
    assert hpa["spec"]["minReplicas"] >= 2


def test_decider_probes_hit_routes_of_its_api() -> None:
    paths = set(create_app().openapi()["paths"])
    (container,) = _containers(_of_kind("Deployment")["decider"])
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    probes = {k: container[k] for k in ("startupProbe", "livenessProbe", "readinessProbe")}
    for kind, probe in probes.items():
        assert probe["httpGet"]["path"] in paths, f"{kind}: no route {probe['httpGet']['path']}"
        assert probe["httpGet"]["port"] in ports
    assert probes["livenessProbe"]["httpGet"]["path"] == "/health"
    assert probes["readinessProbe"]["httpGet"]["path"] == "/ready"
    service = _of_kind("Service")["decider"]
    assert service["spec"]["ports"][0]["targetPort"] in ports
    assert (
        service["spec"]["selector"].items()
        <= _of_kind("Deployment")["decider"]["spec"]["template"]["metadata"]["labels"].items()
    )


def test_dashboard_probes_and_api_url() -> None:
    (container,) = _containers(_of_kind("Deployment")["dashboard"])
    assert container["livenessProbe"]["httpGet"]["path"] == DASHBOARD_HEALTH
    env = {e["name"]: e.get("value") for e in container["env"]}
    port = _of_kind("Service")["decider"]["spec"]["ports"][0]["port"]
    assert env["MAB_API_URL"] == f"http://decider.mab.svc:{port}"


@pytest.mark.parametrize("name", ["reward-consumer", "projector"])
def test_consumers_stay_within_the_partition_count(name: str) -> None:
    deployment = _of_kind("Deployment")[name]
    limit = int(deployment["metadata"]["annotations"][PARTITION_LIMIT])
    assert limit == DEFAULT_PARTITIONS
    assert 1 <= deployment["spec"]["replicas"] <= limit
    assert name not in {
        h["spec"]["scaleTargetRef"]["name"] for h in _of_kind("HorizontalPodAutoscaler").values()
    }, "a CPU autoscaler would add members beyond the partitions"
    (container,) = _containers(deployment)
    command = container["readinessProbe"]["exec"]["command"]
    assert command == ["python", "-m", "stream_runtime.probe"]
    probe_module = module_file("stream_runtime.probe")
    assert probe_module is not None
    assert image_contains(IMAGES[name], probe_module)


def _configmap_keys(ref: str) -> set[str]:
    return set(_of_kind("ConfigMap")[ref]["data"])


def _secret_keys(ref: str) -> set[str]:
    """The keys an operator-created Secret may hold (tests/fixtures/deploy_files.py)."""
    return set(SECRETS[ref])


@pytest.mark.parametrize(
    "workload", _workloads(), ids=[w["metadata"]["name"] for w in _workloads()]
)
def test_env_names_are_read_by_the_service(workload: dict[str, Any]) -> None:
    service = workload["metadata"]["labels"]["app.kubernetes.io/name"]
    for container in _containers(workload):
        names: set[str] = {e["name"] for e in container.get("env", [])}
        secret_names: set[str] = set()
        for source in container.get("envFrom", []):
            if "configMapRef" in source:
                names |= _configmap_keys(source["configMapRef"]["name"])
            else:
                secret_names |= _secret_keys(source["secretRef"]["name"])
        for e in container.get("env", []):
            ref = e.get("valueFrom", {}).get("configMapKeyRef")
            if ref:
                assert ref["key"] in _configmap_keys(ref["name"]), e
            secret = e.get("valueFrom", {}).get("secretKeyRef")
            if secret:
                assert secret["key"] in _secret_keys(secret["name"]), e
        unread = sorted(n for n in names | secret_names if not env_is_read(service, n))
        assert not unread, f"{service} does not read {unread}: {sorted(SERVICE_ENV[service])}"


@pytest.mark.parametrize(
    "workload", _workloads(), ids=[w["metadata"]["name"] for w in _workloads()]
)
def test_containers_match_their_images(workload: dict[str, Any]) -> None:
    """Image name, user and command agree with deploy/docker/<service>/Dockerfile."""
    pod = workload["spec"]["template"]["spec"]
    for container in _containers(workload):
        repo = container["image"].split(":")[0]
        assert repo.startswith("mab-"), repo
        image = IMAGES[repo.removeprefix("mab-")]
        uid = int((image.runtime.user or "0").split(":")[0])
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert pod["securityContext"]["runAsUser"] == uid
        assert container["securityContext"]["allowPrivilegeEscalation"] is False
        command = container.get("command", image.runtime.cmd)
        if command[:2] == ["python", "-m"]:
            target = module_file(command[2]) or module_file(f"{command[2]}.__main__")
            assert target is not None
            assert image_contains(image, target), f"{repo}: {target} not in the image"
        else:
            assert command == image.runtime.cmd, f"{repo}: command differs from the image's"
        ports = {p["containerPort"] for p in container.get("ports", [])}
        assert ports <= set(image.runtime.expose)


def test_decider_serves_the_cluster_and_needs_its_key() -> None:
    """The decider binds 127.0.0.1 unless MAB_HOST says otherwise: its pods set
    MAB_HOST=0.0.0.0 (through the mab-decider ConfigMap) so the Service reaches them, and
    never open admin calls."""
    (container,) = _containers(_of_kind("Deployment")["decider"])
    env: dict[str, str] = {}
    for source in container.get("envFrom", []):
        if "configMapRef" in source:
            env.update(_of_kind("ConfigMap")[source["configMapRef"]["name"]]["data"])
    env.update({e["name"]: e["value"] for e in container.get("env", []) if "value" in e})
    assert env["MAB_HOST"] == "0.0.0.0"
    command = container.get("command", IMAGES["decider"].runtime.cmd)
    assert decider_bind_host(env, command) == "0.0.0.0"
    assert "MAB_AUTH" not in env


def test_dashboard_gets_a_read_key_never_the_admin_key() -> None:
    (container,) = _containers(_of_kind("Deployment")["dashboard"])
    refs = {e["name"]: e["valueFrom"]["secretKeyRef"] for e in container["env"] if "valueFrom" in e}
    assert refs["MAB_API_KEY"]["key"] == "MAB_READ_KEYS"
    assert refs["MAB_API_KEY"]["name"] == "mab-api-keys"
    assert not any(r["key"] == "MAB_ADMIN_KEY" for r in refs.values())
    assert not container.get("envFrom"), "the whole Secret would hand it the admin key"
