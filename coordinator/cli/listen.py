"""Where `coordinator serve` listens: its flags, else COORDINATOR_HOST and COORDINATOR_PORT,
and whether it can listen there, checked before anything is started."""

from __future__ import annotations

import errno
import ipaddress
import socket
from dataclasses import dataclass

from coordinator.cli import values
from coordinator.config import ConfigError

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8000


class PortInUse(ConfigError):
    """Another program listens on the port the API would take."""


@dataclass(frozen=True, slots=True)
class Address:
    """The API's host and port, and where each came from (for messages)."""

    host: str
    port: int
    port_from: str

    @property
    def local_url(self) -> str:
        """The API's URL for a client on this machine."""
        host = {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}.get(self.host, self.host)  # noqa: S104
        return f"http://[{host}]:{self.port}" if ":" in host else f"http://{host}:{self.port}"

    @property
    def is_loopback(self) -> bool:
        """Whether only this machine can reach the API."""
        if self.host == "localhost":
            return True
        try:
            return ipaddress.ip_address(self.host).is_loopback
        except ValueError:
            return False


def address(host_flag: str | None, port_flag: int | None) -> Address:
    """The flags win over the variables, which win over the defaults."""
    host = host_flag or values.from_env("COORDINATOR_HOST", str.strip) or DEFAULT_HOST
    if port_flag is not None:
        return Address(host, port_flag, "--port")
    port = values.from_env("COORDINATOR_PORT", values.port)
    if port is not None:
        return Address(host, port, "COORDINATOR_PORT")
    return Address(host, DEFAULT_PORT, "the default")


def ensure_free(address: Address) -> None:
    """Raise PortInUse (or ConfigError) unless the API could listen on `address` now."""
    try:
        found = socket.getaddrinfo(
            address.host, address.port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )
    except socket.gaierror as error:
        raise ConfigError(f"cannot listen on host {address.host!r}: {error.strerror}") from None
    for family, kind, protocol, _, sockaddr in found:
        with socket.socket(family, kind, protocol) as probe:
            # As uvicorn binds: a port whose last connections linger in TIME_WAIT is free.
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                probe.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            try:
                probe.bind(sockaddr)
            except OSError as error:
                raise _refusal(address, error) from None


def _refusal(address: Address, error: OSError) -> ConfigError:
    where = f"port {address.port} ({address.port_from}) on {address.host}"
    choose = "choose another port with --port or COORDINATOR_PORT (with make: make run PORT=8001)"
    if error.errno == errno.EADDRINUSE:
        return PortInUse(f"{where} is in use by another program: stop it, or {choose}")
    if error.errno == errno.EACCES:
        return ConfigError(f"{where} needs privileges this user lacks: {choose} above 1023")
    return ConfigError(f"cannot listen on {where}: {error.strerror}")
