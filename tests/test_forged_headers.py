"""Nothing forged is trusted: a client address is no credential once tokens are configured, and
the compose stack takes forwarded headers only from its own nginx, which overwrites them."""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from coordinator.auth import new_token
from coordinator.embedded import EmbeddedValkey
from tests.test_serve import Served, _env, serving

COMPOSE = Path(__file__).parent.parent / "compose.yaml"
NGINX_CONF = Path(__file__).parent.parent / "deploy" / "nginx" / "coordinator.conf"
WORKER, WORKER_LINE = new_token("worker")
# What a client anywhere sends to pass for the proxy's own host.
FORGED = {"X-Forwarded-For": "127.0.0.1"}


def _compose() -> dict[str, Any]:
    document: dict[str, Any] = yaml.safe_load(COMPOSE.read_text())
    return document


def _compose_forwarded_allow_ips() -> str:
    value: str = _compose()["services"]["api"]["environment"]["FORWARDED_ALLOW_IPS"]
    return value


@pytest.fixture(
    # "*" is the worst a proxy setup can do (every peer trusted); the other is what compose sets.
    params=["*", "compose"],
)
def guarded(
    request: pytest.FixtureRequest, valkey: EmbeddedValkey, prefix: str, tmp_path: Path
) -> Iterator[Served]:
    """A real `coordinator serve` with tokens, trusting forwarded headers as the param says."""
    allowed = _compose_forwarded_allow_ips() if request.param == "compose" else request.param
    env = _env(
        tmp_path / "data",
        COORDINATOR_REDIS_URL=valkey.url,
        COORDINATOR_KEY_PREFIX=prefix,
        COORDINATOR_TOKENS=WORKER_LINE,
        FORWARDED_ALLOW_IPS=allowed,
    )
    with serving(env) as served:
        yield served


def test_metrics_with_tokens_need_one_from_loopback_and_forged_loopback(guarded: Served) -> None:
    for headers in [{}, FORGED]:
        response = httpx.get(f"{guarded.base}/metrics", headers=headers)
        assert response.status_code == 401, (headers, response.text[:200])
        assert response.headers["content-type"] == "application/problem+json"
        assert response.json()["code"] == "unauthorized"
        assert "coordinator_" not in response.text
    scraped = httpx.get(f"{guarded.base}/metrics", headers={"Authorization": f"Bearer {WORKER}"})
    assert scraped.status_code == 200
    assert "coordinator_store_up 1.0" in scraped.text


def test_open_api_still_serves_metrics_to_loopback(
    valkey: EmbeddedValkey, prefix: str, tmp_path: Path
) -> None:
    env = _env(tmp_path / "data", COORDINATOR_REDIS_URL=valkey.url, COORDINATOR_KEY_PREFIX=prefix)
    with serving(env) as served:
        response = httpx.get(f"{served.base}/metrics")
    assert response.status_code == 200
    assert "coordinator_store_up 1.0" in response.text


def test_compose_trusts_forwarded_headers_from_its_nginx_only() -> None:
    compose = _compose()
    allowed = _compose_forwarded_allow_ips()
    # One address, not "*" nor a network: uvicorn compares the peer's address with it.
    nginx = ipaddress.ip_address(allowed)
    assert compose["services"]["nginx"]["networks"]["default"]["ipv4_address"] == allowed
    # The other containers cannot be given nginx's address: it is outside the dynamic range.
    (pool,) = compose["networks"]["default"]["ipam"]["config"]
    assert nginx in ipaddress.ip_network(pool["subnet"])
    assert nginx not in ipaddress.ip_network(pool["ip_range"])
    # The replicas are on the same network as nginx, given no address of their own.
    assert "networks" not in compose["services"]["api"]


def test_compose_nginx_overwrites_x_forwarded_for() -> None:
    config = NGINX_CONF.read_text()
    directives = re.findall(r"^\s*proxy_set_header\s+X-Forwarded-For\s+(\S+);", config, re.M | re.I)
    # $remote_addr: the peer nginx accepted.
    assert directives == ["$remote_addr"]
    assert "proxy_add_x_forwarded_for" not in config
