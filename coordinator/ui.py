"""The operators' dashboard: one self-contained HTML page (coordinator/ui/index.html).

The page has no build step and loads nothing from elsewhere: its CSS and JavaScript are inline,
allowed by a per-response nonce, and it talks only to this service's own API. It is served
without a token; the page asks for one and sends it with every API call. Its register form
starts from this server's own defaults and bounds (coordinator/validation.py's for the batch-run
options), filled in when the page is served, and so does its process search box (the name
pattern). The process list is shown a page at a time, and only that page is polled.
"""

from __future__ import annotations

import json
import secrets
from importlib import resources

from starlette.requests import Request
from starlette.responses import HTMLResponse, Response

from coordinator import validation
from coordinator.store import Limits, Store

_NONCE_PLACEHOLDER = "__CSP_NONCE__"
# Read once, at import: a wheel missing the page fails at start, not at the first visit.
_PAGE = resources.files("coordinator").joinpath("ui", "index.html").read_text(encoding="utf-8")


def content_security_policy(nonce: str) -> str:
    """Only this origin, and only the page's own inline style and script."""
    return "; ".join(
        [
            "default-src 'none'",
            f"script-src 'nonce-{nonce}'",
            f"style-src 'nonce-{nonce}'",
            "connect-src 'self'",
            "img-src 'self' data:",
            "base-uri 'none'",
            "form-action 'self'",
            "frame-ancestors 'none'",
        ]
    )


def page(nonce: str, limits: Limits) -> str:
    """The page with its nonce, and the register form's defaults: the store's `limits`, and
    the batch-run options' bounds."""
    # The size a registration without `key_set_size` gets (Store.register caps the default).
    default_size = min(limits.default_key_set_size, limits.max_key_set_size)
    filled = {
        _NONCE_PLACEHOLDER: nonce,
        "__DEFAULT_KEY_SET_SIZE__": str(default_size),
        "__MAX_KEY_SET_SIZE__": str(limits.max_key_set_size),
        "__DEFAULT_LEASE_SECONDS__": str(limits.default_lease_seconds),
        "__MAX_ATTEMPTS_MAX__": str(validation.MAX_ATTEMPTS_MAX),
        "__RETRY_BACKOFF_SECONDS_MAX__": str(validation.RETRY_BACKOFF_SECONDS_MAX),
        # The search box takes what GET /api/v1/process?prefix= does: a name's start.
        "__PROCESS_NAME_MAX__": str(validation.PROCESS_NAME_MAX),
        "__PROCESS_NAME_PATTERN__": json.dumps(validation.PROCESS_NAME_PATTERN),
    }
    text = _PAGE
    for placeholder, value in filled.items():
        text = text.replace(placeholder, value)
    return text


async def dashboard(request: Request) -> Response:
    """GET / and GET /ui: the dashboard page."""
    nonce = secrets.token_urlsafe(16)
    store: Store = request.state.store
    return HTMLResponse(
        page(nonce, store.limits),
        headers={
            "Content-Security-Policy": content_security_policy(nonce),
            "Cache-Control": "no-cache",
            "X-Content-Type-Options": "nosniff",
            "Referrer-Policy": "no-referrer",
        },
    )
