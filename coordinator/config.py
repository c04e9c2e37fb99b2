"""Settings, read from the environment once at start-up."""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from coordinator import validation
from coordinator.errors import InvalidField
from coordinator.validation import (
    DELETED_HISTORY_SECONDS_DEFAULT,
    DELETED_HISTORY_SECONDS_MAX,
    DELETED_HISTORY_SECONDS_MIN,
    EVENTS_CAP_MAX,
    KEY_SET_SIZE_LIMIT,
    LEASE_SECONDS_MAX,
)

REDIS_URL_SCHEMES = (
    "redis://",
    "rediss://",
    "unix://",
    "memory://",
    "redis+cluster://",
    "rediss+cluster://",
    "redis+sentinel://",
    "rediss+sentinel://",
)

# Processes with series of their own on /metrics: each is about a dozen series.
METRICS_PROCESSES_LIMIT = 10_000

# A DNS name or IPv4 address (letters, digits, dots, hyphens), or an IPv6 address in brackets,
# as it appears in a Host header once its port is taken off.
_HOST_NAME = re.compile(r"[a-z0-9]([a-z0-9.-]{0,251}[a-z0-9])?|\[[0-9a-f:.]{2,45}\]")


class ConfigError(ValueError):
    """An environment variable holds a value the service cannot use."""


@dataclass(frozen=True, slots=True)
class Settings:
    """Everything a deployment can set, with its default."""

    redis_url: str | None = None
    data_dir: Path = Path(".coordinator-data")
    valkey_port: int | None = None
    key_prefix: str = "bpc"
    default_lease_seconds: int = 3600
    max_key_set_size: int = 1_000_000
    redis_timeout_seconds: float = 2.0
    redis_max_connections: int = 64
    # Grants waiting for a key at once on one replica; the next is answered 409 at once.
    max_waiters: int = 10_000
    # Open HTTP connections one API process holds; the next is answered 503 at once.
    max_connections: int = 10_000
    min_replica_acks: int = 0
    events_cap: int = 10_000
    deleted_history_seconds: int = DELETED_HISTORY_SECONDS_DEFAULT
    log_level: str = "info"
    tokens: str | None = None
    tokens_file: Path | None = None
    # Host names (any port) the API answers besides the loopback ones; None: only those, and
    # only when no tokens are configured (coordinator.browser_guard says why).
    allowed_hosts: tuple[str, ...] | None = None
    # GET /metrics (coordinator.metrics_refresh): series of their own for at most this many of
    # the busiest processes and for the named ones (None: none named); totals cover them all.
    # One API process of all sharing the Redis refreshes the figures, at most once per interval.
    metrics_processes_max: int = 100
    metrics_processes: tuple[str, ...] | None = None
    metrics_refresh_seconds: float = 10.0

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        """Read `COORDINATOR_*` variables; unset or empty ones keep their default."""
        env = os.environ if env is None else env

        def get(name: str) -> str | None:
            value = env.get(f"COORDINATOR_{name}", "").strip()
            return value or None

        defaults = cls()
        prefix = get("KEY_PREFIX") or defaults.key_prefix
        if any(c in prefix for c in "{} \t\r\n"):
            raise ConfigError("COORDINATOR_KEY_PREFIX may not contain braces or whitespace")
        redis_url = get("REDIS_URL")
        if redis_url is not None and not redis_url.startswith(REDIS_URL_SCHEMES):
            raise ConfigError(
                "COORDINATOR_REDIS_URL must start with redis://, rediss://, unix://, memory://,"
                f" redis+cluster:// or redis+sentinel://, not {redis_url!r}"
            )
        return cls(
            redis_url=redis_url,
            data_dir=Path(get("DATA_DIR") or defaults.data_dir),
            # 0 only when unset: the embedded Valkey then keeps the port it chose once.
            valkey_port=_int(get("VALKEY_PORT"), "VALKEY_PORT", 0, 1, 65535) or None,
            key_prefix=prefix,
            default_lease_seconds=_int(
                get("DEFAULT_LEASE_SECONDS"),
                "DEFAULT_LEASE_SECONDS",
                defaults.default_lease_seconds,
                1,
                LEASE_SECONDS_MAX,
            ),
            max_key_set_size=_int(
                get("MAX_KEY_SET_SIZE"),
                "MAX_KEY_SET_SIZE",
                defaults.max_key_set_size,
                1,
                KEY_SET_SIZE_LIMIT,
            ),
            redis_timeout_seconds=_float(
                get("REDIS_TIMEOUT_SECONDS"),
                "REDIS_TIMEOUT_SECONDS",
                defaults.redis_timeout_seconds,
            ),
            min_replica_acks=_replica_acks(get("MIN_REPLICA_ACKS"), redis_url),
            tokens=get("TOKENS"),
            log_level=_log_level(get("LOG_LEVEL") or defaults.log_level),
            events_cap=_int(
                get("EVENTS_CAP"), "EVENTS_CAP", defaults.events_cap, 1, EVENTS_CAP_MAX
            ),
            deleted_history_seconds=_int(
                get("DELETED_HISTORY_SECONDS"),
                "DELETED_HISTORY_SECONDS",
                defaults.deleted_history_seconds,
                DELETED_HISTORY_SECONDS_MIN,
                DELETED_HISTORY_SECONDS_MAX,
            ),
            tokens_file=Path(tokens_file) if (tokens_file := get("TOKENS_FILE")) else None,
            redis_max_connections=_int(
                get("REDIS_MAX_CONNECTIONS"),
                "REDIS_MAX_CONNECTIONS",
                defaults.redis_max_connections,
                1,
                10_000,
            ),
            max_waiters=_int(get("MAX_WAITERS"), "MAX_WAITERS", defaults.max_waiters, 0, 1_000_000),
            max_connections=_int(
                get("MAX_CONNECTIONS"), "MAX_CONNECTIONS", defaults.max_connections, 1, 1_000_000
            ),
            allowed_hosts=_host_names(get("ALLOWED_HOSTS")),
            metrics_processes_max=_int(
                get("METRICS_PROCESSES_MAX"),
                "METRICS_PROCESSES_MAX",
                defaults.metrics_processes_max,
                0,
                METRICS_PROCESSES_LIMIT,
            ),
            metrics_processes=_process_names(get("METRICS_PROCESSES")),
            metrics_refresh_seconds=_float(
                get("METRICS_REFRESH_SECONDS"),
                "METRICS_REFRESH_SECONDS",
                defaults.metrics_refresh_seconds,
            ),
        )


def _host_names(raw: str | None) -> tuple[str, ...] | None:
    """COORDINATOR_ALLOWED_HOSTS: comma-separated names or IP addresses, without ports."""
    if raw is None:
        return None
    names = tuple(name.strip().lower().rstrip(".") for name in raw.split(","))
    for name in names:
        if not _HOST_NAME.fullmatch(name):
            raise ConfigError(
                "COORDINATOR_ALLOWED_HOSTS must list host names or addresses without ports,"
                f" separated by commas (api.example.com,10.0.0.5,[fd00::1]), not {name!r}"
            )
    return names


def _process_names(raw: str | None) -> tuple[str, ...] | None:
    """COORDINATOR_METRICS_PROCESSES: comma-separated process names (not patterns)."""
    if raw is None:
        return None
    names = tuple(name.strip() for name in raw.split(","))
    if len(names) > METRICS_PROCESSES_LIMIT:
        raise ConfigError(
            f"COORDINATOR_METRICS_PROCESSES names at most {METRICS_PROCESSES_LIMIT} processes"
        )
    for name in names:
        try:
            validation.process_name(name)
        except InvalidField as error:
            raise ConfigError(
                f"COORDINATOR_METRICS_PROCESSES must list process names separated by commas:"
                f" {name!r} {str(error).partition(' ')[2]}"
            ) from None
    return names


def _log_level(raw: str) -> str:
    if raw.lower() not in ("debug", "info", "warning", "error"):
        raise ConfigError(f"COORDINATOR_LOG_LEVEL must be debug, info, warning or error: {raw!r}")
    return raw.lower()


def _replica_acks(raw: str | None, redis_url: str | None) -> int:
    acks = _int(raw, "MIN_REPLICA_ACKS", 0, 0, 16)
    if acks and redis_url is not None and "+cluster://" in redis_url:
        raise ConfigError("COORDINATOR_MIN_REPLICA_ACKS is not supported on a cluster")
    return acks


def _int(raw: str | None, name: str, default: int, low: int, high: int) -> int:
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ConfigError(f"COORDINATOR_{name} must be an integer, not {raw!r}") from None
    if not low <= value <= high:
        raise ConfigError(f"COORDINATOR_{name} must be from {low} to {high}, not {value}")
    return value


def _float(raw: str | None, name: str, default: float) -> float:
    if raw is None:
        return default
    try:
        value = float(raw)
    except ValueError:
        raise ConfigError(f"COORDINATOR_{name} must be a number, not {raw!r}") from None
    if not 0 < value <= 3600:
        raise ConfigError(f"COORDINATOR_{name} must be above 0 and at most 3600, not {value}")
    return value
