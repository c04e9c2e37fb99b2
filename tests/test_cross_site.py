"""Pages of other origins, in the real Chromium the suite drives, against a live open
`coordinator serve` on loopback (as `make run` starts it): each attack is sent for real and the
API shows nothing changed after it (coordinator/browser_guard.py, schemas.py).

The attacker's page is served by this test on http://localhost:<its own port> (another origin,
and another site, than the service's http://127.0.0.1:<port>). DNS rebinding is a page whose own
name, rebind.example, Chromium resolves to 127.0.0.1 (--host-resolver-rules): its document is
handed over by Playwright as the attacker's server would, and every fetch after it reaches the
service as same-origin, so only the service's Host check stands in its way.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
from playwright.sync_api import Browser, Page, sync_playwright

from tests.test_dashboard import CHROMIUM, LAUNCH_ARGS
from tests.test_serve import _env, serving

pytestmark = pytest.mark.slow

PROCESS = "/api/v1/process"
KEYS = "/api/v1/process/batch_keys"
REBIND = "rebind.example"
# Chromium's own Private Network Access check stops a page it counts as public (the one handed
# over by Playwright) from fetching a loopback address; Firefox and Safari have no such check,
# and a rebound page need not be public. Off, so what is proved is the service's own defence.
BROWSER_CHECKS_OFF = (
    "--disable-features=BlockInsecurePrivateNetworkRequests,PrivateNetworkAccessSendPreflights,"
    "PrivateNetworkAccessRespectPreflightResults,LocalNetworkAccessChecks"
)
PAGE = b"<!doctype html><title>a page on another site</title><p>nothing to see</p>"


class _Attacker(BaseHTTPRequestHandler):
    """The other site: one harmless-looking page; its script arrives through page.evaluate."""

    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "text/html")
        self.send_header("Content-Length", str(len(PAGE)))
        self.end_headers()
        self.wfile.write(PAGE)

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet: the test's output is its assertions."""


@pytest.fixture(scope="module")
def attacker() -> Iterator[str]:
    """The attacker page's URL, on localhost and a port of its own."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Attacker)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://localhost:{server.server_address[1]}/"
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A live open `coordinator serve` on 127.0.0.1."""
    with serving(_env(tmp_path_factory.mktemp("cross-site") / "data")) as served:
        yield served.base


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    assert CHROMIUM.is_file(), f"{CHROMIUM} is missing (`apt-get install chromium`)"
    with sync_playwright() as playwright:
        rules = f"--host-resolver-rules=MAP {REBIND} 127.0.0.1"
        args = [*LAUNCH_ARGS, rules, BROWSER_CHECKS_OFF]
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, args=args)
        yield chromium
        chromium.close()


@pytest.fixture
def page(browser: Browser) -> Iterator[Page]:
    context = browser.new_context()
    yield context.new_page()
    context.close()


def _register(api: httpx.Client, name: str, **fields: Any) -> None:
    response = api.post(PROCESS, json={"process_name": name, **fields})
    assert response.status_code == 201, response.text


def _state(api: httpx.Client, *names: str) -> list[Any]:
    """Everything the API shows of these processes: the process, its keys and its history."""
    shown: list[Any] = [sorted(p["process_name"] for p in api.get(PROCESS).json())]
    for name in names:
        for path in (f"{PROCESS}/{name}", f"{KEYS}/{name}", f"{PROCESS}/{name}/events"):
            response = api.get(path)
            assert response.status_code == 200, response.text
            shown.append(response.json())
    return shown


def test_no_cors_posts_from_another_site_change_nothing(
    page: Page, base: str, attacker: str, tmp_path: Path
) -> None:
    """(a) JSON bytes with no Content-Type (and as text/plain) to register and grant, (b)
    bodiless POSTs to start a pass and retry a key: simple requests, sent without preflight."""
    with httpx.Client(base_url=base, timeout=10) as api:
        name, done = f"page-target-{tmp_path.name}", f"page-once-{tmp_path.name}"
        _register(api, name, key_set_size=3)
        # A `once` process whose pass is complete: a retry of key 0 would reopen it.
        _register(api, done, key_set_size=1, mode="once")
        held = api.post(KEYS, json={"process_name": done, "machine": "w"}).json()
        assert api.delete(f"{KEYS}/{held['external_id']}").status_code == 200
        before = _state(api, name, done)

        page.goto(attacker)
        sent = page.evaluate(
            """async ([base, name, done]) => {
                const post = async (path, body) => {
                    await fetch(base + path, {method: "POST", mode: "no-cors", body});
                    return path;
                };
                const bytes = (value) => new TextEncoder().encode(JSON.stringify(value));
                const register = {process_name: "planted-" + name, key_set_size: 5};
                const grant = {process_name: name, machine: "page", lease_seconds: 86400};
                return [
                    await post("/api/v1/process", bytes(register)),
                    await post("/api/v1/process", JSON.stringify(register)),
                    await post("/api/v1/process/batch_keys", bytes(grant)),
                    await post("/api/v1/process/batch_keys", bytes(grant)),
                    await post("/api/v1/process/batch_keys", JSON.stringify(grant)),
                    await post(`/api/v1/process/${name}/passes`),
                    await post(`/api/v1/process/${done}/keys/0/retry`),
                    await post(`/api/v1/process/${done}/passes`),
                ];
            }""",
            [base, name, done],
        )
        assert len(sent) == 8  # every request went out and was answered
        assert _state(api, name, done) == before
        assert api.get(f"{PROCESS}/planted-{name}").status_code == 404

        # The service's own page (the dashboard's origin) still makes changes.
        page.goto(f"{base}/")
        status = page.evaluate(
            """async (name) => (await fetch("/api/v1/process", {
                method: "POST", headers: {"Content-Type": "application/json"},
                body: JSON.stringify({process_name: "made-" + name}),
            })).status""",
            name,
        )
        assert status == 201
        assert api.get(f"{PROCESS}/made-{name}").status_code == 200


def test_a_rebound_name_reads_and_deletes_nothing(page: Page, base: str, tmp_path: Path) -> None:
    """(c) DNS rebinding: the page's own origin is the service's port on rebind.example, so its
    fetches are same-origin (readable, any method); the Host is what gives it away."""
    port = base.rsplit(":", 1)[1]
    origin = f"http://{REBIND}:{port}"
    with httpx.Client(base_url=base, timeout=10) as api:
        name = f"rebind-target-{tmp_path.name}"
        _register(api, name, key_set_size=2)
        before = _state(api, name)

        # The attacker's server answers the first load; after that the name points at 127.0.0.1.
        page.route(
            f"{origin}/attack",
            lambda route: route.fulfill(body=PAGE, content_type="text/html"),
        )
        page.goto(f"{origin}/attack")
        answers = page.evaluate(
            """async (name) => {
                const answers = [];
                for (const [method, path] of [
                    ["GET", "/api/v1/process"],
                    ["GET", "/metrics"],
                    ["GET", "/"],
                    ["DELETE", `/api/v1/process/${name}`],
                ]) {
                    const response = await fetch(path, {method});
                    answers.push([method, path, response.status, await response.text()]);
                }
                return answers;
            }""",
            name,
        )
        for method, path, status, text in answers:
            assert status == 421, (method, path, status, text[:200])
            assert name not in text
            assert '"code":"host_not_allowed"' in text
        assert _state(api, name) == before
