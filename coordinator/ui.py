"""The operators' dashboard: one self-contained HTML page (coordinator/ui/index.html).

The page has no build step and loads nothing from elsewhere: its CSS and JavaScript are inline,
allowed by a per-response nonce, and it talks only to this service's own API. It is served
without a token; the page asks for one and sends it with every API call.
"""

from __future__ import annotations

import secrets
from importlib import resources

from starlette.requests import Request
from starlette.responses import HTMLResponse, Response

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


async def dashboard(_request: Request) -> Response:
    """GET / and GET /ui: the dashboard page."""
    nonce = secrets.token_urlsafe(16)
    return HTMLResponse(
        _PAGE.replace(_NONCE_PLACEHOLDER, nonce),
        headers={
            "Content-Security-Policy": content_security_policy(nonce),
            "Cache-Control": "no-cache",
            "X-Content-Type-Options": "nosniff",
            "Referrer-Policy": "no-referrer",
        },
    )
