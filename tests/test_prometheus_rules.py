"""deploy/prometheus and deploy/grafana: the rules pass `promtool check rules`, every alert is
unit-tested by `promtool test rules` (firing and quiet), the dashboard's queries parse, and
every metric and label they use is in the GET /metrics of a real `coordinator serve`."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from coordinator.embedded import EmbeddedValkey
from tests.test_serve import _env, serving

ROOT = Path(__file__).resolve().parent.parent
RULES = ROOT / "deploy" / "prometheus" / "coordinator-rules.yaml"
RULE_TESTS = ROOT / "deploy" / "prometheus" / "coordinator-rules.test.yaml"
DASHBOARD = ROOT / "deploy" / "grafana" / "coordinator.json"
SCRAPE = ROOT / "deploy" / "prometheus" / "prometheus.yml"
KUBE = ROOT / "deploy" / "kubernetes"
API = "/api/v1/process"
# Labels Prometheus adds to every scraped series (Kubernetes service discovery adds the last
# two where the scrape configuration relabels them so); the rest come from /metrics.
TARGET_LABELS = frozenset({"job", "instance", "namespace", "pod"})
# Grafana's own variables, as the dashboard's queries are sent once Grafana fills them in.
GRAFANA_VARIABLES = {"$__rate_interval": "5m", "$job": ".+", "$process": ".+"}

# PromQL words that are not metric names: operators, modifiers, keywords.
_KEYWORDS = frozenset(
    {"and", "or", "unless", "bool", "offset", "inf", "nan", "by", "without", "on", "ignoring"}
    | {"group_left", "group_right", "atan2"}
)
_STRING = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'')
_MATCHERS = re.compile(r"\{([^}]*)\}")
_GROUPING = re.compile(r"\b(by|without|on|ignoring|group_left|group_right)\s*\(([^)]*)\)")
_RANGE = re.compile(r"\[[^\]]*\]")
# A name starts a token: not inside a number (5m, 1e3) or after a dot.
_NAME = re.compile(r"(?<![\w.:])([a-zA-Z_:][a-zA-Z0-9_:]*+)(?!\s*\()")
_LABEL = re.compile(r"([a-zA-Z_]\w*)\s*(?:=~|!~|!=|=)")


def promql_names(expr: str) -> tuple[set[str], set[str]]:
    """The metric (or recorded) names an expression reads, and the label names it uses."""
    labels: set[str] = set()
    for match in _GROUPING.finditer(expr):
        labels |= {name.strip() for name in match.group(2).split(",") if name.strip()}
    expr = _GROUPING.sub(" ", expr)
    for match in _MATCHERS.finditer(expr):
        labels |= set(_LABEL.findall(_STRING.sub('""', match.group(1))))
    expr = _RANGE.sub(" ", _MATCHERS.sub(" ", _STRING.sub('""', expr)))
    metrics = {name for name in _NAME.findall(expr) if name not in _KEYWORDS}
    return metrics, labels


def test_promql_names_reads_names_and_labels_apart() -> None:
    """The extraction the checks below rely on."""
    expr = (
        'sum by (job, route) (rate(coordinator_http_requests_total{status=~"5..",'
        ' route!~"/healthz|/a{b}"}[5m] offset 1h)) / on (job) group_left'
        " coordinator:http_requests:rate5m > 1e3 and absent(up)"
    )
    metrics, labels = promql_names(expr)
    assert metrics == {"coordinator_http_requests_total", "coordinator:http_requests:rate5m", "up"}
    assert labels == {"job", "route", "status"}


def _promtool() -> str:
    found = shutil.which("promtool")
    if found is None:
        pytest.fail(
            "promtool is missing: install Debian's prometheus package (apt-get install"
            " prometheus; `make test` does it when run as root)"
        )
    return found


def _rules() -> list[dict[str, Any]]:
    return [
        rule for group in yaml.safe_load(RULES.read_text())["groups"] for rule in group["rules"]
    ]


def _dashboard_queries() -> Iterator[str]:
    """Every query of the dashboard (its panels', and its variables' label_values metrics)."""
    dashboard = json.loads(DASHBOARD.read_text())
    for panel in dashboard["panels"]:
        for target in panel.get("targets", []):
            yield target["expr"]
    for variable in dashboard["templating"]["list"]:
        if variable["type"] == "query":
            found = re.fullmatch(r"label_values\((.+),\s*(\w+)\)", variable["query"]["query"])
            assert found, variable
            yield f"count by ({found.group(2)}) ({found.group(1)})"


def _filled(expr: str) -> str:
    for variable, value in GRAFANA_VARIABLES.items():
        expr = expr.replace(variable, value)
    return expr


# --- promtool ------------------------------------------------------------------------------


def test_rules_pass_promtool_check() -> None:
    result = subprocess.run(
        [_promtool(), "check", "rules", str(RULES)], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(_rules())} rules found" in result.stdout


def test_alerts_pass_their_unit_tests() -> None:
    result = subprocess.run(
        [_promtool(), "test", "rules", RULE_TESTS.name],
        cwd=RULE_TESTS.parent,
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_every_alert_is_tested_firing_and_quiet() -> None:
    """Each alert has a unit test where it fires and one where it must not."""
    firing: set[str] = set()
    quiet: set[str] = set()
    for case in yaml.safe_load(RULE_TESTS.read_text())["tests"]:
        for check in case.get("alert_rule_test", []):
            (firing if check["exp_alerts"] else quiet).add(check["alertname"])
    alerts = {rule["alert"] for rule in _rules() if "alert" in rule}
    assert alerts - firing == set()
    assert alerts - quiet == set()
    assert firing | quiet <= alerts  # no test of an alert that no longer exists


def test_dashboard_queries_parse(tmp_path: Path) -> None:
    """promtool parses each dashboard query as it checks a rule's expression."""
    queries = list(_dashboard_queries())
    assert len(queries) >= 10
    rules = [
        {"record": f"dashboard:query_{i}:check", "expr": _filled(q)} for i, q in enumerate(queries)
    ]
    path = tmp_path / "dashboard-queries.yaml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    result = subprocess.run(
        [_promtool(), "check", "rules", str(path)], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_dashboard_panels_are_laid_out_once() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    panels = dashboard["panels"]
    assert len({p["id"] for p in panels}) == len(panels)
    for panel in panels:
        position = panel["gridPos"]
        assert position["x"] + position["w"] <= 24, panel["title"]
        if panel["type"] != "row":
            # Every query goes to the data source the dashboard's variable picks.
            assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
            assert panel["targets"], panel["title"]
    (variable,) = [v for v in dashboard["templating"]["list"] if v["type"] == "datasource"]
    assert variable["name"] == "datasource"
    assert variable["query"] == "prometheus"


# --- the names against a live /metrics -----------------------------------------------------


@pytest.fixture(scope="module")
def exposition(tmp_path_factory: pytest.TempPathFactory, valkey: EmbeddedValkey) -> str:
    """GET /metrics of a real `coordinator serve` after a cycle that gives every family a
    series: a grant, a renewal, a completed release, a grant refused for no free key."""
    prefix = f"prom{tmp_path_factory.mktemp('x').name[-6:]}".replace("-", "")
    env = _env(
        tmp_path_factory.mktemp("prometheus") / "data",
        COORDINATOR_REDIS_URL=valkey.url,
        COORDINATOR_KEY_PREFIX=prefix,
        COORDINATOR_METRICS_REFRESH_SECONDS="0.5",
    )
    with serving(env) as served:
        base = served.base
        created = httpx.post(f"{base}{API}", json={"process_name": "nightly", "key_set_size": 1})
        assert created.status_code == 201, created.text
        grant = {"process_name": "nightly", "machine": "m1"}
        lease = httpx.post(f"{base}{API}/batch_keys", json=grant)
        assert lease.status_code == 201, lease.text
        external_id = lease.json()["external_id"]
        assert httpx.post(f"{base}{API}/batch_keys", json=grant).status_code == 409
        renewed = httpx.patch(f"{base}{API}/batch_keys/{external_id}", json={})
        assert renewed.status_code == 200, renewed.text
        released = httpx.delete(
            f"{base}{API}/batch_keys/{external_id}", params={"outcome": "completed"}
        )
        assert released.status_code == 200, released.text
        # The figures are refreshed in the background (each interval, from the first scrape
        # on): poll until they include the release.
        deadline = time.monotonic() + 60
        while True:
            text = httpx.get(f"{base}/metrics", timeout=10).text
            if 'coordinator_process_stalest_completion_age_seconds{process="nightly"' in text:
                return text
            assert time.monotonic() < deadline, text
            time.sleep(0.1)


def _live(exposition: str) -> tuple[set[str], set[str]]:
    """The sample names (coordinator_grants_total, ..._bucket) and label names served."""
    names: set[str] = set()
    labels: set[str] = set()
    for family in text_string_to_metric_families(exposition):
        for sample in family.samples:
            names.add(sample.name)
            labels |= set(sample.labels)
    return names, labels


def _used() -> dict[str, tuple[set[str], set[str]]]:
    used = {f"rule {r.get('record') or r['alert']}": promql_names(r["expr"]) for r in _rules()}
    for i, query in enumerate(_dashboard_queries()):
        used[f"dashboard query {i}"] = promql_names(_filled(query))
    return used


def test_rules_and_dashboard_read_only_served_metrics(exposition: str) -> None:
    """A name is a series /metrics serves (counters with _total, histograms' _bucket), or
    a rule's recorded name; nothing else."""
    served, _ = _live(exposition)
    assert "coordinator_process_stalest_completion_age_seconds" in served, exposition
    recorded = {r["record"] for r in _rules() if "record" in r}
    unknown = {
        where: names - served - recorded
        for where, (names, _) in _used().items()
        if names - served - recorded
    }
    assert unknown == {}


def test_rules_and_dashboard_use_served_labels(exposition: str) -> None:
    _, served = _live(exposition)
    unknown = {
        where: labels - served - TARGET_LABELS
        for where, (_, labels) in _used().items()
        if labels - served - TARGET_LABELS
    }
    assert unknown == {}


def test_the_check_catches_a_misspelt_metric(exposition: str) -> None:
    """The name check can fail: a counter read without its _total suffix is not served."""
    served, _ = _live(exposition)
    assert "coordinator_grants_total" in served
    (names, _) = promql_names("sum(rate(coordinator_grants[5m]))")
    assert names - served == {"coordinator_grants"}


# --- the scrape configuration --------------------------------------------------------------


def test_scrape_config_passes_promtool(tmp_path: Path) -> None:
    """Debian's promtool is built without Kubernetes discovery: its block is swapped for a
    static target, and the rest (authorization, relabelling, the rules) checked as written."""
    config = yaml.safe_load(SCRAPE.read_text())
    token = tmp_path / "coordinator-token"
    token.write_text("bpc_not-a-real-token\n")
    config["rule_files"] = [str(SCRAPE.parent / name) for name in config["rule_files"]]
    for job in config["scrape_configs"]:
        assert job.pop("kubernetes_sd_configs")
        job["static_configs"] = [{"targets": ["coordinator:8000"]}]
        job["authorization"]["credentials_file"] = str(token)
    path = tmp_path / "prometheus.yml"
    path.write_text(yaml.safe_dump(config))
    result = subprocess.run(
        [_promtool(), "check", "config", str(path)], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert RULES.name in result.stdout


def test_scrape_config_finds_the_manifests_pods() -> None:
    """The discovery block names the namespace, pod label and port name of deploy/kubernetes,
    and scrapes pods (not the Service's endpoints, which drop a replica that lost Redis: its
    coordinator_store_up 0 would never be seen)."""
    (job,) = yaml.safe_load(SCRAPE.read_text())["scrape_configs"]
    (discovery,) = job["kubernetes_sd_configs"]
    assert discovery["role"] == "pod"
    namespace = yaml.safe_load((KUBE / "kustomization.yaml").read_text())["namespace"]
    assert discovery["namespaces"]["names"] == [namespace]
    deployment = yaml.safe_load((KUBE / "api" / "deployment.yaml").read_text())
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    keeps = {
        tuple(r["source_labels"]): r["regex"]
        for r in job["relabel_configs"]
        if r.get("action") == "keep"
    }
    pod_label = keeps[("__meta_kubernetes_pod_label_app_kubernetes_io_name",)]
    assert labels["app.kubernetes.io/name"] == pod_label
    assert keeps[("__meta_kubernetes_pod_container_port_name",)] in {
        p["name"] for p in container["ports"]
    }
    targets = {r.get("target_label") for r in job["relabel_configs"]}
    assert TARGET_LABELS - {"job", "instance"} <= targets
