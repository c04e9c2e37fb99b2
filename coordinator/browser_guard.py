"""Refuse what only a web page in someone's browser would send.

Two ways a page on another site reaches an API its visitor can reach (a loopback one above all):

- DNS rebinding: the page's own name is made to resolve to 127.0.0.1, so the browser counts the
  API as the page's origin and lets it read every answer. Its requests carry the page's name in
  `Host`, so the open API answers only loopback names (and those COORDINATOR_ALLOWED_HOSTS
  lists): 421 `host_not_allowed`, the status for "not a name this server answers for". The
  address a request arrived at, written as an address, passes too (`serve --host 10.0.0.5`
  and its CLI): a rebinding page's Host is a name, never the server's own address.
- Cross-site requests: any page may send a "simple" POST (no preflight) and only loses the
  answer, and the change is made anyway. Browsers label each request with `Sec-Fetch-Site` and
  with `Origin` on every POST, PATCH and DELETE, so a change labelled as coming from another
  site, or from an origin other than the service's own, is refused: 403 `cross_site_request`.
  Clients that are not browsers send neither header and are unaffected; the dashboard is
  same-origin. (A body without a JSON Content-Type is refused apart, in `schemas`.)

With tokens configured, a page cannot act without a token, and a deployment's names are its
own affair: the Host check then applies only when COORDINATOR_ALLOWED_HOSTS is set.
"""

from __future__ import annotations

import functools
import ipaddress
from collections.abc import Iterable

from starlette.types import ASGIApp, Receive, Scope, Send

from coordinator.problems import problem

# Names that only ever resolve to this machine: no page can be served from them but the host's.
LOOPBACK_HOSTS = frozenset({"localhost", "127.0.0.1", "[::1]"})
# Methods that may change something; a cross-site GET is harmless (the browser hides the answer
# from the page, and Host has been checked).
STATE_CHANGING = frozenset({"POST", "PUT", "PATCH", "DELETE"})
# The Sec-Fetch-Site values of a request another site's page started ("same-site" included: a
# sibling subdomain is another party too); "same-origin" and "none" (typed or bookmarked) pass.
CROSS_SITE = frozenset({b"cross-site", b"same-site"})
_DEFAULT_PORTS = {"http": 80, "https": 443}


def split_authority(authority: str, scheme: str) -> tuple[str, int | None]:
    """A `Host` header (or an origin's host[:port]) as a lower-case name and a port (the
    scheme's default when none is written; None when the port is not a number)."""
    authority = authority.strip().lower()
    if authority.startswith("["):
        name, _, rest = authority.partition("]")
        name += "]"
        port = rest.removeprefix(":") if rest.startswith(":") else ""
        if rest and not rest.startswith(":"):
            return authority, None
    else:
        name, _, port = authority.partition(":")
    name = name.rstrip(".")
    if not port:
        return name, _DEFAULT_PORTS.get(scheme)
    return name, int(port) if port.isascii() and port.isdigit() else None


# Clients send the same few Host values on every request: each is parsed once. Only short ones
# (a DNS name is at most 253 characters), so a stranger's long Host values cannot fill memory.
_split_known = functools.lru_cache(maxsize=1024)(split_authority)
_CACHED_HOST_MAX = 300


class BrowserGuard:
    """ASGI middleware: a foreign Host is 421, a cross-site change 403; all else passes."""

    def __init__(self, app: ASGIApp, listed: Iterable[str] | None) -> None:
        self.app = app
        self.hosts = LOOPBACK_HOSTS | frozenset(listed or ())
        self.listed = listed is not None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Answer a refused request with its problem document; pass the rest to the app."""
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope["headers"])
        host = headers.get(b"host", b"").decode("latin-1")
        if self._foreign(scope, host):
            response = problem(
                "host_not_allowed",
                f"This service does not answer for host {host!r}: use a loopback address or a"
                " name listed in COORDINATOR_ALLOWED_HOSTS.",
            )
        elif scope["method"] in STATE_CHANGING and _cross_site(headers, host, scope["scheme"]):
            response = problem(
                "cross_site_request",
                "A change sent from another site's page is refused; call the API from a client"
                " or from this service's own dashboard.",
            )
        else:
            await self.app(scope, receive, send)
            return
        await response(scope, receive, send)

    def _foreign(self, scope: Scope, host: str) -> bool:
        """Whether the Host is one this service does not answer for."""
        # The token table the lifespan loaded (an empty one, or none yet, is the open API).
        if not self.listed and scope.get("state", {}).get("tokens"):
            return False
        split = _split_known if len(host) <= _CACHED_HOST_MAX else split_authority
        name, port = split(host, scope["scheme"])
        known = name in self.hosts or name == _local_address(scope)
        return not known or port is None


def _local_address(scope: Scope) -> str | None:
    """The address the connection arrived at, as a Host header writes it; None if not an IP."""
    server = scope.get("server")
    if not server:
        return None
    try:
        address = ipaddress.ip_address(server[0])
    except ValueError:
        return None  # a unix socket's path, or a test transport's name
    return f"[{address.compressed}]" if address.version == 6 else address.compressed


def _cross_site(headers: dict[bytes, bytes], host: str, scheme: str) -> bool:
    """Whether the browser says the request comes from a page not of the service's own origin."""
    if headers.get(b"sec-fetch-site", b"").strip().lower() in CROSS_SITE:
        return True
    origin = headers.get(b"origin")
    if origin is None:
        return False  # not a browser, or a browser's same-origin GET-like request
    # "null" (a sandboxed frame, a file: page) and anything unparsable are not the service.
    origin_scheme, sep, authority = origin.decode("latin-1").strip().lower().partition("://")
    if not sep or origin_scheme != scheme:
        return True
    own = split_authority(host, scheme)
    return own[1] is None or split_authority(authority, origin_scheme) != own
