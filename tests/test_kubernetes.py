"""deploy/kubernetes: every manifest is valid for Kubernetes (kubernetes-validate, strict, offline)
and its probes, port, user, shutdown timing and environment are the service's own."""

from __future__ import annotations

import dataclasses
import re
import socket
from pathlib import Path
from typing import Any

import httpx
import kubernetes_validate
import pytest
import yaml
from redis.asyncio import Redis
from redis.backoff import NoBackoff
from redis.retry import Retry

import coordinator
from coordinator.app import ROUTES, create_app
from coordinator.auth import TokenTable, load_tokens, new_token
from coordinator.cli import listen
from coordinator.cli.serve import SHUTDOWN_BOUND_SECONDS
from coordinator.config import Settings
from coordinator.embedded import free_port

ROOT = Path(__file__).resolve().parent.parent
KUBE = ROOT / "deploy" / "kubernetes"
DOCKERFILE = ROOT / "Dockerfile"
# The oldest Kubernetes still maintained when these were written, and the newest the validator
# knows: a field added or removed in between fails one of them.
VERSIONS = ("1.31", kubernetes_validate.latest_version())
# Read by uvicorn, not by Settings: the peers whose X-Forwarded-For it believes.
UVICORN_ENV = frozenset({"FORWARDED_ALLOW_IPS"})
# What a kubelet probe looks like: the pod's own address in Host, as the connection's address.
POD_ADDRESS = "10.1.2.3"


def _documents(path: Path) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


def _kustomizations() -> dict[Path, dict[str, Any]]:
    return {path: _documents(path)[0] for path in sorted(KUBE.rglob("kustomization.yaml"))}


def _listed(kind: str) -> list[Path]:
    """The files every kustomization lists as `resources` or as `patches` (by path)."""
    files = []
    for path, kustomization in _kustomizations().items():
        entries = (
            kustomization.get("resources", [])
            if kind == "resources"
            else [p["path"] for p in kustomization.get("patches", []) if "path" in p]
        )
        files += [path.parent / entry for entry in entries if (path.parent / entry).is_file()]
    return files


def _resources() -> dict[tuple[str, str], dict[str, Any]]:
    """Every resource of the manifests by (kind, name)."""
    found = {}
    for path in _listed("resources"):
        for doc in _documents(path):
            found[doc["kind"], doc["metadata"]["name"]] = doc
    return found


def _pod(kind: str, name: str) -> dict[str, Any]:
    spec: dict[str, Any] = _resources()[kind, name]["spec"]["template"]["spec"]
    return spec


def _api_container() -> dict[str, Any]:
    (container,) = _pod("Deployment", "coordinator")["containers"]
    return container


def _env(container: dict[str, Any]) -> dict[str, str]:
    return {e["name"]: e["value"] for e in container.get("env", [])}


def _port(container: dict[str, Any], port: int | str) -> int:
    """A probe's or Service's port, resolving a named port to the container's number."""
    if isinstance(port, int):
        return port
    (number,) = [p["containerPort"] for p in container["ports"] if p["name"] == port]
    return int(number)


@pytest.fixture
def offline(monkeypatch: pytest.MonkeyPatch) -> None:
    """No connection can be opened: validation must use the schemas the package ships."""

    def refuse(*_args: object, **_kwargs: object) -> None:
        raise AssertionError("kubernetes-validate tried to reach the network")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


# --- the manifests as Kubernetes reads them -------------------------------------------------


@pytest.mark.usefixtures("offline")
@pytest.mark.parametrize("path", _listed("resources"), ids=lambda p: str(p.relative_to(KUBE)))
def test_every_manifest_is_valid_for_kubernetes(path: Path) -> None:
    documents = _documents(path)
    assert documents, f"{path} holds no resource"
    for document in documents:
        for version in VERSIONS:
            # Raises on an unknown field (strict), a wrong type, or a kind with no schema.
            kubernetes_validate.validate(document, version, strict=True)


def test_the_manifests_hold_every_part_of_the_deployment() -> None:
    """What the validation above covers (an empty list would validate nothing)."""
    kinds = {kind for kind, _ in _resources()}
    assert kinds == {
        "Namespace", "Deployment", "Service", "PodDisruptionBudget", "StatefulSet", "NetworkPolicy"
    }  # fmt: skip


@pytest.mark.usefixtures("offline")
def test_the_validator_refuses_an_unknown_field() -> None:
    """The check above can fail: a misspelt field is refused, offline."""
    deployment = _resources()["Deployment", "coordinator"]
    broken = yaml.safe_load(yaml.safe_dump(deployment))
    broken["spec"]["template"]["spec"]["containers"][0]["livenesProbe"] = {}
    with pytest.raises(kubernetes_validate.ValidationError, match="livenesProbe"):
        kubernetes_validate.validate(broken, VERSIONS[-1], strict=True)


def test_every_file_is_in_a_kustomization() -> None:
    """`kubectl apply -k` applies only what a kustomization names: no file is left out, and
    every name it gives exists."""
    assert (KUBE / "kustomization.yaml").is_file()  # what `kubectl apply -k` reads
    named: set[Path] = set()
    for path, kustomization in _kustomizations().items():
        assert kustomization["kind"] == "Kustomization", path
        for entry in kustomization.get("resources", []):
            target = path.parent / entry
            assert target.is_file() or (target / "kustomization.yaml").is_file(), (path, entry)
            named.add(target.resolve())
        for patch in kustomization.get("patches", []):
            named.add((path.parent / patch["path"]).resolve())
        for generator in kustomization.get("secretGenerator", []):
            for entry in generator["files"]:
                named.add((path.parent / entry.rpartition("=")[2]).resolve())
    files = {p.resolve() for p in KUBE.rglob("*") if p.is_file() and p.name != "kustomization.yaml"}
    assert files - named == set()
    assert named - files - {p.resolve() for p in KUBE.rglob("*") if p.is_dir()} == set()


# --- the API Deployment against the service -------------------------------------------------


def test_three_replicas_behind_a_service_and_a_disruption_budget() -> None:
    resources = _resources()
    deployment = resources["Deployment", "coordinator"]
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert deployment["spec"]["replicas"] == 3
    assert deployment["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0
    for selector in (
        deployment["spec"]["selector"]["matchLabels"],
        resources["Service", "coordinator"]["spec"]["selector"],
        resources["PodDisruptionBudget", "coordinator"]["spec"]["selector"]["matchLabels"],
    ):
        assert selector.items() <= labels.items()
    assert resources["PodDisruptionBudget", "coordinator"]["spec"]["maxUnavailable"] == 1


def test_probes_ask_the_services_own_routes_on_its_port(monkeypatch: pytest.MonkeyPatch) -> None:
    container = _api_container()
    for name, value in _env(container).items():
        monkeypatch.setenv(name, value)
    port = listen.address(None, None).port  # where `coordinator serve` listens with this env
    get_routes = {r.path for r in ROUTES if "GET" in (r.methods or ())}
    liveness, readiness = container["livenessProbe"], container["readinessProbe"]
    assert liveness["httpGet"]["path"] == "/healthz"
    # Never liveness on /readyz: a Redis outage would restart every replica at once.
    assert readiness["httpGet"]["path"] == "/readyz"
    for probe in (liveness, readiness):
        assert probe["httpGet"]["path"] in get_routes
        assert _port(container, probe["httpGet"]["port"]) == port
    assert [p["containerPort"] for p in container["ports"]] == [port]
    (service_port,) = _resources()["Service", "coordinator"]["spec"]["ports"]
    assert _port(container, service_port["targetPort"]) == port
    # The image says the same (Dockerfile, EXPOSE).
    assert re.search(rf"^EXPOSE {port}$", DOCKERFILE.read_text(), re.MULTILINE)


def test_environment_names_are_the_services_and_their_values_load() -> None:
    declared = {f"COORDINATOR_{f.name.upper()}" for f in dataclasses.fields(Settings)}
    # Where `serve` listens is read by the CLI (coordinator.cli.listen), not by Settings.
    declared |= {"COORDINATOR_HOST", "COORDINATOR_PORT"}
    container = _api_container()
    envs = [_env(container)]
    for patch in _listed("patches"):
        for doc in _documents(patch):
            (patched,) = doc["spec"]["template"]["spec"]["containers"]
            assert patched["name"] == container["name"], patch
            envs.append({**_env(container), **_env(patched)})
    for env in envs:
        assert set(env) - declared - UVICORN_ENV == set()
        settings = Settings.from_env(env)  # a value the service refuses raises ConfigError
        assert settings.redis_url is not None
        assert settings.tokens_file is not None
    # The default URL is the Valkey Service of valkey/.
    (valkey_port,) = _resources()["Service", "valkey"]["spec"]["ports"]
    assert Settings.from_env(envs[0]).redis_url == f"redis://valkey:{valkey_port['port']}/0"


def test_allowed_hosts_are_the_services_names_in_its_namespace() -> None:
    settings = Settings.from_env(_env(_api_container()))
    assert settings.allowed_hosts is not None
    for path, kustomization in _kustomizations().items():
        if "namespace" in kustomization:
            namespace = kustomization["namespace"]
            assert f"coordinator.{namespace}.svc.cluster.local" in settings.allowed_hosts, path
    assert "coordinator" in settings.allowed_hosts
    assert _resources()["Namespace", namespace]


def test_the_tokens_secret_is_mounted_where_the_service_reads_it() -> None:
    (generator,) = _kustomizations()[KUBE / "api" / "kustomization.yaml"]["secretGenerator"]
    (source,) = generator["files"]
    # The file as shipped parses as a token file (comments only: no token yet).
    assert not TokenTable.parse((KUBE / "api" / source).read_text())
    pod = _pod("Deployment", "coordinator")
    (volume,) = [v for v in pod["volumes"] if "secret" in v]
    assert volume["secret"]["secretName"] == generator["name"]
    (item,) = volume["secret"]["items"]
    assert item["key"] == source
    (mount,) = [m for m in _api_container()["volumeMounts"] if m["name"] == volume["name"]]
    tokens_file = Settings.from_env(_env(_api_container())).tokens_file
    assert tokens_file == Path(mount["mountPath"]) / item["path"]


@pytest.mark.anyio
async def test_probes_pass_with_the_manifests_settings_and_redis_down(tmp_path: Path) -> None:
    """Built with the Deployment's settings (a token line in the file) and no Redis to reach:
    a kubelet-style probe (the pod's address in Host) finds /healthz alive and /readyz not
    ready, so the outage takes replicas out of the Service without restarting them; a foreign
    Host is refused and the Service's name is answered."""
    token, line = new_token("admin")
    tokens = tmp_path / "tokens"
    tokens.write_text(line + "\n")
    env = {**_env(_api_container()), "COORDINATOR_TOKENS_FILE": str(tokens)}
    settings = dataclasses.replace(Settings.from_env(env), redis_timeout_seconds=0.2)
    assert load_tokens(settings)
    redis = Redis(port=free_port(), socket_connect_timeout=0.2, retry=Retry(NoBackoff(), 0))
    app = create_app(settings, redis=redis)
    async with redis, app.router.lifespan_context(app) as state:

        async def with_state(scope: dict[str, Any], receive: Any, send: Any) -> None:
            scope["state"] = dict(state or {})
            await app(scope, receive, send)

        transport = httpx.ASGITransport(app=with_state)
        async with httpx.AsyncClient(transport=transport) as http:
            probe = f"http://{POD_ADDRESS}:8000"
            assert (await http.get(f"{probe}/healthz")).status_code == 200
            assert (await http.get(f"{probe}/readyz")).status_code == 503
            bearer = {"Authorization": f"Bearer {token}"}
            foreign = await http.get("http://elsewhere.example:8000/healthz", headers=bearer)
            assert foreign.status_code == 421
            named = await http.get("http://coordinator:8000/healthz", headers=bearer)
            assert named.status_code == 200


def test_shutdown_fits_in_the_grace_period() -> None:
    """preStop's sleep, then SIGTERM and `serve`'s shutdown bound, all before the SIGKILL."""
    pod = _pod("Deployment", "coordinator")
    command = _api_container()["lifecycle"]["preStop"]["exec"]["command"]
    assert command[0] == "sleep"
    pre_stop = int(command[1])
    assert pre_stop >= 1  # endpoints are removed while the pod still answers
    assert pod["terminationGracePeriodSeconds"] > pre_stop + SHUTDOWN_BOUND_SECONDS


def test_the_image_is_this_version() -> None:
    """The Deployment runs the image `docker build -t batch-process-coordinator` makes, tagged
    with this package's version, so a release's manifests run that release."""
    name, _, tag = _api_container()["image"].partition(":")
    assert name == "batch-process-coordinator"
    assert re.search(rf"docker build -t {name} ", DOCKERFILE.read_text())
    assert tag == coordinator.__version__


def _dockerfile_user() -> int:
    found = re.search(r"^USER (\d+)(?::\d+)?$", DOCKERFILE.read_text(), re.MULTILINE)
    assert found, "the Dockerfile names no numeric USER"
    return int(found.group(1))


@pytest.mark.parametrize("workload", [("Deployment", "coordinator"), ("StatefulSet", "valkey")])
def test_pods_run_non_root_on_a_read_only_root(workload: tuple[str, str]) -> None:
    pod = _pod(*workload)
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert pod["automountServiceAccountToken"] is False
    if workload[0] == "Deployment":
        assert pod["securityContext"]["runAsUser"] == _dockerfile_user() == 10001
    for container in pod["containers"]:
        context = container["securityContext"]
        assert context["readOnlyRootFilesystem"] is True
        assert context["allowPrivilegeEscalation"] is False
        assert context["capabilities"] == {"drop": ["ALL"]}
        assert container["resources"]["requests"]
        assert container["resources"]["limits"]["memory"]


def test_valkey_keeps_an_append_only_file_and_never_evicts() -> None:
    statefulset = _resources()["StatefulSet", "valkey"]
    (container,) = statefulset["spec"]["template"]["spec"]["containers"]
    args = container["args"]
    options = dict(zip(args[1::2], args[2::2], strict=True))
    assert options["--appendonly"] == "yes"
    assert options["--maxmemory-policy"] == "noeviction"
    (claim,) = statefulset["spec"]["volumeClaimTemplates"]
    (mount,) = container["volumeMounts"]
    assert mount["name"] == claim["metadata"]["name"]
    assert mount["mountPath"] == options["--dir"]
    # maxmemory below the container's limit: a full Valkey refuses writes, it is not killed.
    limit = container["resources"]["limits"]["memory"]
    assert limit.endswith("Gi")
    assert options["--maxmemory"].endswith("mb")
    assert int(options["--maxmemory"][:-2]) < int(limit[:-2]) * 1024


def test_only_the_api_pods_reach_valkey() -> None:
    """The network policy admits the API's pods (a wrong label would cut every replica off
    Redis) on Valkey's own port, and selects the Valkey pod."""
    resources = _resources()
    policy = resources["NetworkPolicy", "valkey"]["spec"]
    valkey_pod = resources["StatefulSet", "valkey"]["spec"]["template"]
    api_labels = resources["Deployment", "coordinator"]["spec"]["template"]["metadata"]["labels"]
    assert policy["podSelector"]["matchLabels"].items() <= valkey_pod["metadata"]["labels"].items()
    (rule,) = policy["ingress"]
    (peer,) = rule["from"]
    assert peer["podSelector"]["matchLabels"].items() <= api_labels.items()
    (port,) = rule["ports"]
    (container,) = valkey_pod["spec"]["containers"]
    (service_port,) = resources["Service", "valkey"]["spec"]["ports"]
    assert _port(container, port["port"]) == _port(container, service_port["targetPort"]) == 6379
