"""The dashboard in a real browser: Debian's headless Chromium, driven by Playwright, against a
live `coordinator serve` with its embedded Valkey.

Playwright never downloads a browser here: it drives /usr/bin/chromium (Debian's `chromium`
package, which `make test` installs when missing). Without it these tests fail, they do not skip.
Screenshots go to tests/artifacts/ (git-ignored); docs/dashboard.png is a copy of
dashboard.png.
"""

from __future__ import annotations

import re
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import httpx
import pytest
from playwright.sync_api import (
    Browser,
    ConsoleMessage,
    Dialog,
    Page,
    Route,
    expect,
    sync_playwright,
)

from coordinator.auth import new_token
from coordinator.validation import MAX_ATTEMPTS_MAX, MODES, RETRY_BACKOFF_SECONDS_MAX
from tests.test_serve import _env, serving

pytestmark = pytest.mark.slow

CHROMIUM = Path("/usr/bin/chromium")
ARTIFACTS = Path(__file__).parent / "artifacts"
LAUNCH_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
DESKTOP = {"width": 1280, "height": 800}
PHONE = {"width": 390, "height": 844}
KEYS = "/api/v1/process/batch_keys"
PROCESS = "/api/v1/process"
# The key states only a batch run has, and how the page words them (STATE_TEXT in index.html).
RUN_STATES = {"done": "done in this pass", "backoff": "in backoff", "quarantined": "quarantined"}
# The page refreshes every 2 s; a loaded CI machine gets some slack over Playwright's 5 s.
expect.set_options(timeout=10_000)


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    if not CHROMIUM.is_file():
        pytest.fail(
            f"{CHROMIUM} is missing: the dashboard tests need Debian's chromium package"
            " (`apt-get install chromium`; `make test` installs it when missing, as root)",
            pytrace=False,
        )
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, args=LAUNCH_ARGS)
        yield chromium
        chromium.close()


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A live `coordinator serve` with an open API, as `make run` starts it."""
    with serving(_env(tmp_path_factory.mktemp("dashboard") / "data")) as served:
        yield served.base


@pytest.fixture
def api(base: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=base, timeout=10) as client:
        yield client


class Tab:
    """A page of its own browser context; page errors and console errors fail the test."""

    def __init__(self, browser: Browser, **context: Any) -> None:
        self.context = browser.new_context(**context)
        self.page = self.context.new_page()
        self.problems: list[str] = []
        self.page.on("pageerror", lambda error: self.problems.append(f"page error: {error}"))
        self.page.on("console", self._console)

    def _console(self, message: ConsoleMessage) -> None:
        # A refused API call logs "Failed to load resource"; the page shows those itself.
        if message.type == "error" and "Failed to load resource" not in message.text:
            self.problems.append(f"console: {message.text}")

    def close(self) -> None:
        self.context.close()
        assert not self.problems, self.problems


@pytest.fixture
def page(browser: Browser) -> Iterator[Page]:
    tab = Tab(browser, viewport=DESKTOP)
    yield tab.page
    tab.close()


def _name(stem: str) -> str:
    return f"{stem}-{uuid.uuid4().hex[:6]}"


def _register(api: httpx.Client, name: str, keys: int, **fields: Any) -> None:
    response = api.post(
        "/api/v1/process", json={"process_name": name, "key_set_size": keys, **fields}
    )
    assert response.status_code == 201, response.text


def _grant(api: httpx.Client, name: str, machine: str, **fields: Any) -> dict[str, Any]:
    response = api.post(KEYS, json={"process_name": name, "machine": machine, **fields})
    assert response.status_code == 201, response.text
    granted: dict[str, Any] = response.json()
    return granted


def _release(
    api: httpx.Client, lease: dict[str, Any], outcome: str = "completed"
) -> dict[str, Any]:
    """End a lease; `outcome="failed"` is a release whose work did not complete."""
    response = api.delete(f"{KEYS}/{lease['external_id']}", params={"outcome": outcome})
    assert response.status_code == 200, response.text
    released: dict[str, Any] = response.json()
    return released


def _process(api: httpx.Client, name: str) -> dict[str, Any]:
    response = api.get(f"{PROCESS}/{name}")
    assert response.status_code == 200, response.text
    process: dict[str, Any] = response.json()
    return process


def _open(page: Page, base: str, name: str) -> None:
    """Load the dashboard and pick the process from its list, as an operator would."""
    page.goto(f"{base}/")
    page.locator("#process-list button", has_text=name).click()
    expect(page.locator("#process-heading")).to_have_text(name)


def _wait_for_refresh(page: Page) -> None:
    """Until the page has loaded fresh data at least once more (it does every 2 s)."""
    body = page.locator("body")
    seen = body.get_attribute("data-refreshes")
    expect(body).not_to_have_attribute("data-refreshes", seen or "", timeout=10_000)


def _time(text: str) -> datetime:
    return datetime.fromisoformat(text)


def _state(key: dict[str, Any], lease_seconds: int, now: datetime) -> str:
    """The page's own rule (classify() in index.html) applied to a key of the API's listing:
    a held key is expiring with under 10 % of its process's lease left; a batch run's done,
    backoff (until its retry_at) and quarantined keys are shown as such."""
    if key["external_id"] is not None:
        left = (_time(key["expires_at"]) - now).total_seconds()
        return "expiring" if left < 0.1 * lease_seconds else "held"
    backoff_over = key["state"] == "backoff" and _time(key["retry_at"]) <= now
    if key["state"] in RUN_STATES and not backoff_over:
        return str(key["state"])
    return "free" if key["last_completed_at"] is not None else "never"


def _shown_states(page: Page) -> dict[str, str]:
    """Every cell of the grid: key number -> the state it shows."""
    shown: dict[str, str] = page.evaluate(
        """() => Object.fromEntries([...document.querySelectorAll("#grid [data-key]")]
            .map(cell => [cell.dataset.key, cell.dataset.state]))"""
    )
    return shown


def _states_agree(page: Page, api: httpx.Client, name: str, lease_seconds: int) -> list[Any]:
    """Until every cell shows what the page's rule makes of the API's listing (the page
    refreshes every 2 s), at most 10 s; returns the listing they agreed on."""
    deadline = time.monotonic() + 10
    while True:
        listing: list[Any] = api.get(f"{KEYS}/{name}").json()
        expected = {str(k["key"]): _state(k, lease_seconds, datetime.now(UTC)) for k in listing}
        shown = _shown_states(page)
        if shown == expected or time.monotonic() > deadline:
            assert shown == expected
            return listing
        page.wait_for_timeout(250)


def _overflowing(page: Page) -> list[str]:
    """The controls that do not fit the window's width."""
    overflowing: list[str] = page.evaluate(
        """() => [...document.querySelectorAll("button, input, select, table, progress, #grid")]
            .filter(e => e.offsetParent !== null
                         && e.getBoundingClientRect().right > window.innerWidth + 0.5)
            .map(e => e.id || e.textContent.trim() || e.tagName)"""
    )
    return overflowing


def _answer_next_dialog(page: Page, questions: list[str], *, accept: bool) -> None:
    """Answer the page's next confirm(), noting its question."""

    def on_dialog(dialog: Dialog) -> None:
        questions.append(dialog.message)
        if accept:
            dialog.accept()
        else:
            dialog.dismiss()

    page.once("dialog", on_dialog)


class _Inputs(HTMLParser):
    """The attributes of a page's named <input>s."""

    def __init__(self, html: str) -> None:
        super().__init__()
        self.by_name: dict[str, dict[str, str | None]] = {}
        self.feed(html)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        named = dict(attrs)
        if tag == "input" and named.get("name"):
            self.by_name[str(named["name"])] = named


def test_grid_shows_leases_and_revoke_ends_one(page: Page, base: str, api: httpx.Client) -> None:
    name = _name("nightly")
    _register(api, name, 10)
    first = _grant(api, name, "worker-1")
    second = _grant(api, name, "worker-2")
    assert (first["key"], second["key"]) == (0, 1)

    _open(page, base, name)
    grid = page.locator("#grid")
    expect(grid.locator("[data-key]")).to_have_count(10)
    expect(grid.locator('[data-lease="held"]')).to_have_count(2)
    expect(grid.locator('[data-lease="free"]')).to_have_count(8)
    expect(grid.locator('[data-state="held"]')).to_have_count(2)
    expect(grid.locator('[data-state="never"]')).to_have_count(8)  # nothing completed yet
    expect(page.locator('#legend [data-count="held"]')).to_have_text("2")
    expect(page.locator('#legend [data-count="never"]')).to_have_text("8")
    # The hover text and the table name the machine and how long the key has been held.
    expect(page.locator("#key-0")).to_have_attribute(
        "title",
        re.compile(
            r"^Key 0: held\nmachine worker-1\nheld for \d+ s\nlease ends in (59 min \d+ s|1 h)\n"
            r"never completed$"
        ),
    )
    rows = page.locator("#held-body tr")
    expect(rows).to_have_count(2)
    expect(rows.nth(0)).to_contain_text("worker-1")
    expect(rows.nth(1)).to_contain_text("worker-2")
    # Clicking a cell shows its details, with the lease's own revoke button.
    page.locator("#key-1").click()
    expect(page.locator("#key-detail")).to_contain_text("worker-2")
    expect(page.locator("#key-detail")).to_contain_text(second["external_id"])
    # ... and the arrow keys move through the grid.
    page.keyboard.press("ArrowRight")
    expect(page.locator("#key-detail")).to_contain_text("Key 2")
    expect(page.locator("#key-detail")).to_contain_text("free, never completed")
    expect(grid).to_have_attribute("aria-activedescendant", "key-2")

    # Revoke asks first: dismissing the question changes nothing.
    questions: list[str] = []

    def answer(accept: bool) -> None:
        def on_dialog(dialog: Dialog) -> None:
            questions.append(dialog.message)
            if accept:
                dialog.accept()
            else:
                dialog.dismiss()

        page.once("dialog", on_dialog)

    revoke_first = page.locator(
        f'#held-body tr[data-key="0"] button[data-revoke="{first["external_id"]}"]'
    )
    answer(accept=False)
    revoke_first.click()
    _wait_for_refresh(page)
    assert questions == [questions[0]]
    assert "Revoke the lease on key 0 held by worker-1?" in questions[0]
    expect(grid.locator('[data-lease="held"]')).to_have_count(2)
    assert api.get(f"{KEYS}/{name}").json()[0]["external_id"] == first["external_id"]

    answer(accept=True)
    revoke_first.click()
    expect(grid.locator('[data-lease="held"]')).to_have_count(1)
    expect(grid.locator('[data-lease="free"]')).to_have_count(9)
    expect(page.locator("#key-0")).to_have_attribute("data-lease", "free")
    expect(page.locator("#key-1")).to_have_attribute("data-lease", "held")
    expect(page.locator("#notice")).to_contain_text("Revoked the lease on key 0")
    expect(page.locator("#held-body tr")).to_have_count(1)
    assert len(questions) == 2

    # The API agrees: key 0 is free, its old lease is gone for its holder, key 1 still held.
    keys = api.get(f"{KEYS}/{name}").json()
    assert keys[0]["external_id"] is None
    assert keys[1]["external_id"] == second["external_id"]
    gone = api.delete(f"{KEYS}/{first['external_id']}")
    assert gone.status_code == 410
    assert gone.json()["code"] == "lease_gone"
    # Revoking a lease that has already ended shows the API's own explanation.
    page.once("dialog", lambda dialog: dialog.accept())
    page.evaluate(
        """id => {
            const button = document.createElement("button");
            button.dataset.revoke = id;
            button.dataset.key = "0";
            document.body.append(button);
            button.click();
        }""",
        first["external_id"],
    )
    expect(page.locator("#error")).to_be_visible()
    expect(page.locator("#error-detail")).to_contain_text(gone.json()["detail"])


def test_register_and_delete_through_the_page(page: Page, base: str, api: httpx.Client) -> None:
    name = _name("reports")
    page.goto(f"{base}/ui")
    form = page.locator("#register-form")
    form.get_by_label("Name").fill(name)
    form.get_by_label("Keys", exact=True).fill("6")
    form.get_by_label("Lease seconds").fill("600")
    form.get_by_role("button", name="Register").click()

    expect(page.locator("#process-heading")).to_have_text(name)
    expect(page.locator("#process-list button", has_text=name)).to_have_attribute(
        "aria-current", "true"
    )
    expect(page.locator("#grid [data-key]")).to_have_count(6)
    expect(page.locator('#grid [data-state="never"]')).to_have_count(6)
    expect(page.locator("#process-meta")).to_have_text("6 keys · lease 10 min")
    # Registered without batch-run options: no pass, no batch-run states (though it has a pass).
    expect(page.locator("#run")).to_be_hidden()
    for state in RUN_STATES:
        expect(page.locator(f'#legend [data-legend="{state}"]')).to_be_hidden()
    listed = {p["process_name"]: p for p in api.get("/api/v1/process").json()}
    assert listed[name]["pass"]["number"] == 1
    assert listed[name]["key_set_size"] == 6
    assert listed[name]["lease_seconds"] == 600

    # A refused registration shows the problem's detail.
    form.get_by_label("Name").fill(name)
    form.get_by_role("button", name="Register").click()
    refused = api.post("/api/v1/process", json={"process_name": name, "key_set_size": 16})
    assert refused.status_code == 409
    expect(page.locator("#error-detail")).to_have_text(refused.json()["detail"])

    page.once("dialog", lambda dialog: dialog.accept())
    page.get_by_role("button", name="Delete process…").click()
    expect(page.locator("#process-list button", has_text=name)).to_have_count(0)
    expect(page.locator("#notice")).to_contain_text(f"Deleted process “{name}”")
    assert api.get(f"{KEYS}/{name}").status_code == 404


def test_register_form_starts_from_the_servers_defaults(
    page: Page, base: str, api: httpx.Client
) -> None:
    """The form registers what a registration naming neither size nor lease gets."""
    name = _name("defaults")
    page.goto(f"{base}/ui")
    form = page.locator("#register-form")
    expect(form.get_by_label("Keys", exact=True)).to_have_value("10")
    expect(form.get_by_label("Lease seconds")).to_have_attribute("placeholder", "3600")
    form.get_by_label("Name").fill(name)
    form.get_by_role("button", name="Register").click()
    expect(page.locator("#process-heading")).to_have_text(name)
    expect(page.locator("#notice")).to_have_text(f"Registered “{name}” with 10 keys.")
    # The form is reset to its defaults.
    expect(form.get_by_label("Keys", exact=True)).to_have_value("10")

    other = _name("defaults")
    through_api = api.post("/api/v1/process", json={"process_name": other})
    assert through_api.status_code == 201, through_api.text
    listed = {p["process_name"]: p for p in api.get("/api/v1/process").json()}
    # The same process object but for the name and when its first pass started.
    same = {**listed[name], "process_name": other, "pass": None}
    assert same == {**through_api.json(), "pass": None}


def test_register_form_follows_the_configured_defaults(tmp_path: Path) -> None:
    """A deployment's own default lease and maximum size reach the form."""
    env = _env(
        tmp_path / "data", COORDINATOR_DEFAULT_LEASE_SECONDS="900", COORDINATOR_MAX_KEY_SET_SIZE="8"
    )
    with serving(env) as served, httpx.Client(base_url=served.base) as api:
        inputs = _Inputs(api.get("/").text).by_name
        registered = api.post("/api/v1/process", json={"process_name": "defaults"})
    assert registered.status_code == 201, registered.text
    assert registered.json()["key_set_size"] == 8
    assert registered.json()["lease_seconds"] == 900
    assert inputs["key_set_size"]["value"] == "8"
    assert inputs["key_set_size"]["max"] == "8"
    assert inputs["lease_seconds"]["placeholder"] == "900"


def test_counts_match_the_apis_listing(page: Page, base: str, api: httpx.Client) -> None:
    """A process with free, never completed, held and expiring keys, opened by its
    `#process=<name>` link: every cell, the legend and the held table agree with the API's
    own listing, read by the page's rule."""
    name = _name("mixed")
    lease = 1000  # so a key with under 100 s left is expiring
    _register(api, name, 12, lease_seconds=lease)
    first = [_grant(api, name, f"worker-{n}") for n in range(5)]  # keys 0-4
    for done in first[:3]:  # keys 0-2 completed
        assert api.delete(f"{KEYS}/{done['external_id']}").status_code == 200
    # Key 3 released failed: free again, still never completed, and first in line.
    failed = api.delete(f"{KEYS}/{first[3]['external_id']}", params={"outcome": "failed"})
    assert failed.status_code == 200
    for machine in ("worker-5", "worker-6"):  # keys 3 and 5
        _grant(api, name, machine)
    for machine in ("late-1", "late-2"):  # keys 6 and 7: 60 s left of a 1000 s lease
        _grant(api, name, machine, lease_seconds=60)
    single = _name("single")
    _register(api, single, 1)

    listing = api.get(f"{KEYS}/{name}").json()
    states = {key["key"]: _state(key, lease, datetime.now(UTC)) for key in listing}
    counts = Counter(states.values())
    assert counts == {"free": 3, "never": 4, "held": 3, "expiring": 2}  # all four present

    page.goto(f"{base}/#process={name}")
    expect(page.locator("#process-heading")).to_have_text(name)
    expect(page.locator("#process-meta")).to_have_text("12 keys · lease 16 min 40 s")
    expect(page.locator("#run")).to_be_hidden()  # not a batch run, though a key failed
    for state in ("free", "never", "held", "expiring"):
        expect(page.locator(f'#legend [data-count="{state}"]')).to_have_text(str(counts[state]))
    assert _shown_states(page) == {str(key): state for key, state in states.items()}
    held = [key for key in listing if key["external_id"] is not None]
    expect(page.locator("#held-body tr")).to_have_count(len(held))
    for key in held:
        row = page.locator(f'#held-body tr[data-key="{key["key"]}"]')
        expect(row).to_have_attribute("data-state", states[key["key"]])
        expect(row).to_contain_text(key["machine"])
        expect(row.locator("button[data-revoke]")).to_have_attribute(
            "data-revoke", key["external_id"]
        )

    # One key is "1 key", in the list and in the heading; picking it updates the link.
    single_button = page.locator("#process-list button", has_text=single)
    expect(single_button.locator(".meta")).to_have_text("1 key · lease 1 h")
    single_button.click()
    expect(page.locator("#process-meta")).to_have_text("1 key · lease 1 h")
    expect(page).to_have_url(f"{base}/#process={single}")
    page.go_back()
    expect(page.locator("#process-heading")).to_have_text(name)


def test_batch_run_pass_key_states_retry_and_next_pass(
    page: Page, base: str, api: httpx.Client
) -> None:
    """A `once` process with done, backoff, quarantined, held and free keys, made by real
    grants and releases: the pass, its progress and every cell agree with the API, and the
    page's Retry and Start next pass do what the API then reports."""
    name = _name("sweep")
    lease = 3600
    # With max_attempts 2 a key is quarantined at its second failure in a row, and backs off
    # `backoff` s after its first: the test waits that long, once. Key 3, failed last, stays in
    # backoff as long while the page is checked.
    backoff = 15
    _register(
        api,
        name,
        6,
        lease_seconds=lease,
        mode="once",
        max_attempts=2,
        retry_backoff_seconds=backoff,
    )
    leases = [_grant(api, name, f"worker-{n}") for n in range(5)]  # keys 0-4; 5 stays free
    assert [granted["key"] for granted in leases] == [0, 1, 2, 3, 4]
    for done in leases[:2]:  # keys 0 and 1: done in this pass
        assert _release(api, done)["state"] == "done"
    failed = _release(api, leases[2], "failed")  # key 2: its first failure
    assert (failed["state"], failed["attempts"]) == ("backoff", 1)
    deadline = time.monotonic() + backoff + 30
    while api.get(f"{PROCESS}/{name}/keys/2").json()["state"] == "backoff":
        assert time.monotonic() < deadline, "key 2's backoff did not end"
        time.sleep(0.25)
    again = _grant(api, name, "worker-5")  # key 2 again: first in line of the free keys
    assert again["key"] == 2
    quarantined = _release(api, again, "failed")
    assert (quarantined["state"], quarantined["attempts"]) == ("quarantined", 2)
    backing_off = _release(api, leases[3], "failed")  # key 3: in backoff for `backoff` s
    assert backing_off["state"] == "backoff"
    process = _process(api, name)

    _open(page, base, name)
    listing = _states_agree(page, api, name, lease)
    expected = {"done": 2, "quarantined": 1, "backoff": 1, "held": 1, "free": 1}
    assert Counter(k["state"] for k in listing) == expected
    for state in RUN_STATES:
        expect(page.locator(f'#legend [data-legend="{state}"]')).to_be_visible()
        expect(page.locator(f'#legend [data-count="{state}"]')).to_have_text(
            str(sum(k["state"] == state for k in listing))
        )
    # Not colour alone: each batch-run cell says its state, attempts and when a backoff ends.
    for key in listing:
        if key["state"] not in RUN_STATES:
            continue
        label = (
            f"Key {key['key']}, {RUN_STATES[key['state']]}, failed attempts {key['attempts']} of 2"
        )
        if key["state"] == "backoff":
            at = _time(key["retry_at"]).astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
            label += f", retry at {at}"
            expect(page.locator(f"#key-{key['key']}")).to_have_attribute(
                "title",
                re.compile(
                    rf"^Key {key['key']}: in backoff\nfailed attempts {key['attempts']} of 2\n"
                    rf"retry at {at} \(in \d+ s\)\nnever completed$"
                ),
            )
        expect(page.locator(f"#key-{key['key']}")).to_have_attribute("aria-label", label)

    # The pass: its number, and a progress bar of done + quarantined of all keys.
    run = process["pass"]
    size = process["key_set_size"]
    assert process["mode"] == "once"
    expect(page.locator("#pass-number")).to_have_text(str(run["number"]))
    expect(page.locator("#pass-state")).to_have_text(
        "complete" if run["completed_at"] else "in progress"
    )
    bar = page.get_by_role("progressbar", name=f"Pass {run['number']}")
    reached = min(run["keys_done"] + run["keys_quarantined"], size)
    expect(bar).to_have_js_property("max", size)
    expect(bar).to_have_js_property("value", reached)
    done, parked = run["keys_done"], run["keys_quarantined"]
    expect(page.locator("#pass-counts")).to_have_text(
        f"{reached} of {size} keys finished ({100 * reached // size} %): {done} done"
        f" ({100 * done // size} %), {parked} quarantined ({100 * parked // size} %)."
        " The bar counts quarantined keys as finished."
    )
    facts = page.locator("#run-facts")
    expect(facts.locator('[data-fact="Mode"]')).to_contain_text(process["mode"])
    expect(facts.locator('[data-fact="Max attempts"]')).to_contain_text(
        str(process["max_attempts"])
    )
    expect(facts.locator('[data-fact="Retry backoff"]')).to_contain_text(
        f"{process['retry_backoff_seconds']} s"
    )
    expect(page.locator("#process-meta")).to_have_text(
        f"6 keys · lease 1 h · once · pass {run['number']}"
    )

    # Retry on the quarantined key: the API then reports it free, its attempts reset.
    key = next(k["key"] for k in listing if k["state"] == "quarantined")
    page.locator(f"#key-{key}").click()
    detail = page.locator("#key-detail")
    expect(detail).to_contain_text(f"Key {key}")
    expect(detail).to_contain_text("quarantined")
    detail.get_by_role("button", name=f"Retry key {key}").click()
    expect(page.locator("#notice")).to_contain_text(f"Key {key} of “{name}” can be granted again")
    retried = api.get(f"{PROCESS}/{name}/keys/{key}").json()
    assert (retried["state"], retried["attempts"]) == ("free", 0)
    expect(page.locator(f"#key-{key}")).to_have_attribute(
        "data-state", _state(retried, lease, datetime.now(UTC))
    )
    expect(detail.locator("button[data-retry]")).to_have_count(0)
    run = _process(api, name)["pass"]
    expect(bar).to_have_js_property("value", min(run["keys_done"] + run["keys_quarantined"], size))

    # Start next pass asks first: dismissing the question changes nothing.
    questions: list[str] = []
    _answer_next_dialog(page, questions, accept=False)
    page.get_by_role("button", name="Start next pass…").click()
    _wait_for_refresh(page)
    assert len(questions) == 1
    assert f"Start pass {run['number'] + 1} of “{name}”?" in questions[0]
    assert _process(api, name)["pass"]["number"] == run["number"]
    _answer_next_dialog(page, questions, accept=True)
    page.get_by_role("button", name="Start next pass…").click()
    expect(page.locator("#pass-number")).to_have_text(str(run["number"] + 1))
    expect(page.locator("#notice")).to_contain_text(f"Started pass {run['number'] + 1}")
    assert len(questions) == 2
    after = _process(api, name)["pass"]
    assert after["number"] == run["number"] + 1
    assert after["keys_done"] == 0
    bar = page.get_by_role("progressbar", name=f"Pass {after['number']}")
    expect(bar).to_have_js_property(
        "value", min(after["keys_done"] + after["keys_quarantined"], size)
    )
    # Every key grantable again (done, backoff lifted) but the held one, as the API says.
    listing = _states_agree(page, api, name, lease)
    assert {k["state"] for k in listing} == {"free", "held"}

    # Another admin starts the next pass just before this page's start reaches the service:
    # the page sends the pass it showed (`after`), so nothing more starts and it says so.
    shown = after["number"]
    sent: list[Any] = []

    def beaten_to_it(route: Route) -> None:
        sent.append(route.request.post_data_json)
        other = api.post(f"{PROCESS}/{name}/passes", json={"after": shown})
        assert other.status_code == 201, other.text
        route.continue_()

    page.route(f"**/api/v1/process/{name}/passes", beaten_to_it)
    _answer_next_dialog(page, questions, accept=True)
    page.get_by_role("button", name="Start next pass…").click()
    expect(page.locator("#notice")).to_contain_text(
        f"Pass {shown + 1} of “{name}” had already been started: nothing new was started."
    )
    assert sent == [{"after": shown}]
    assert _process(api, name)["pass"]["number"] == shown + 1
    page.unroute(f"**/api/v1/process/{name}/passes")


def test_register_form_registers_a_batch_run(
    browser: Browser, page: Page, base: str, api: httpx.Client
) -> None:
    """The form's batch-run fields start from the defaults of a registration without them,
    are bounded by the server's own limits, and register what they say; the pass shows as
    complete once every key is done or quarantined."""
    name = _name("sweep")
    page.goto(f"{base}/ui")
    form = page.locator("#register-form")
    mode = form.get_by_label("Mode")
    attempts = form.get_by_label("Max attempts")
    backoff = form.get_by_label("Retry backoff seconds")
    expect(mode).to_have_value("rotate")
    expect(attempts).to_have_value("")
    expect(backoff).to_have_value("0")
    assert mode.locator("option").evaluate_all("options => options.map(o => o.value)") == list(
        MODES
    )
    expect(attempts).to_have_attribute("max", str(MAX_ATTEMPTS_MAX))
    expect(backoff).to_have_attribute("max", str(RETRY_BACKOFF_SECONDS_MAX))
    form.get_by_label("Name").fill(name)
    form.get_by_label("Keys", exact=True).fill("3")
    mode.select_option("once")
    attempts.fill("1")
    backoff.fill("45")
    form.get_by_role("button", name="Register").click()

    expect(page.locator("#process-heading")).to_have_text(name)
    process = _process(api, name)
    assert (process["key_set_size"], process["mode"]) == (3, "once")
    assert (process["max_attempts"], process["retry_backoff_seconds"]) == (1, 45)
    expect(page.locator("#run")).to_be_visible()
    expect(page.locator("#pass-number")).to_have_text(str(process["pass"]["number"]))
    expect(page.locator("#pass-state")).to_have_text("in progress")
    facts = page.locator("#run-facts")
    expect(facts.locator('[data-fact="Mode"]')).to_have_text("once: each key is done once per pass")
    expect(facts.locator('[data-fact="Max attempts"]')).to_have_text(
        "1, then the key is quarantined"
    )
    expect(facts.locator('[data-fact="Retry backoff"]')).to_have_text(
        "45 s, doubled after each failure"
    )
    expect(facts.locator('[data-fact="Completed"]')).to_have_text("not yet")
    # The form is reset to its defaults.
    expect(mode).to_have_value("rotate")
    expect(attempts).to_have_value("")
    expect(backoff).to_have_value("0")

    # Two keys done and one failed once, so quarantined: the pass is complete.
    leases = [_grant(api, name, f"worker-{n}") for n in range(3)]
    _release(api, leases[0])
    _release(api, leases[1])
    assert _release(api, leases[2], "failed")["state"] == "quarantined"
    run = _process(api, name)["pass"]
    assert run["completed_at"] is not None
    expect(page.locator("#pass-state")).to_have_text("complete")
    expect(facts.locator('[data-fact="Completed"]')).not_to_have_text("not yet")
    bar = page.get_by_role("progressbar", name=f"Pass {run['number']}")
    expect(bar).to_have_js_property("value", run["keys_done"] + run["keys_quarantined"])
    expect(bar).to_have_js_property("max", 3)
    expect(page.locator("#process-list button", has_text=name).locator(".meta")).to_have_text(
        f"3 keys · lease 1 h · once · pass {run['number']} complete"
    )
    ARTIFACTS.mkdir(exist_ok=True)
    page.locator("#key-2").click()
    expect(page.locator("#key-detail")).to_contain_text("Failed attempts1 of 1")
    page.mouse.move(0, 0)
    page.evaluate("window.scrollTo(0, 0)")
    page.screenshot(path=ARTIFACTS / "dashboard-batch-run.png")

    # At phone width the pass, its button and the form's new fields fit.
    phone = Tab(browser, viewport=PHONE, is_mobile=True, has_touch=True, device_scale_factor=2)
    _open(phone.page, base, name)
    expect(phone.page.locator("#pass-state")).to_have_text("complete")
    phone.page.locator("#register summary").click()  # folded on a phone
    expect(phone.page.locator("#register-form").get_by_label("Mode")).to_be_visible()
    assert _overflowing(phone.page) == []
    phone.page.screenshot(path=ARTIFACTS / "dashboard-batch-run-phone.png", full_page=True)
    phone.close()


def test_tokens_are_sent_and_refusals_shown(browser: Browser, tmp_path: Path) -> None:
    admin, admin_line = new_token("admin")
    worker, worker_line = new_token("worker")
    env = _env(tmp_path / "data", COORDINATOR_TOKENS=f"{admin_line};{worker_line}")
    with serving(env) as served, httpx.Client(base_url=served.base) as api:
        api.headers["Authorization"] = f"Bearer {admin}"
        _register(api, "guarded", 4)
        _register(api, "guarded-run", 2, mode="once")
        held = _grant(api, "guarded", "worker-9")
        tab = Tab(browser, viewport=DESKTOP)
        page = tab.page
        page.goto(f"{served.base}/")  # the page itself needs no token
        expect(page.locator("#error-detail")).to_contain_text(
            "Send an API token as 'Authorization: Bearer <token>'."
        )

        page.get_by_label("API token").fill(worker)
        page.get_by_role("button", name="Use token").click()
        expect(page.locator("#error")).to_be_hidden()
        expect(page.locator('#grid [data-lease="held"]')).to_have_count(1)
        assert page.evaluate("sessionStorage.getItem('coordinator.token')") == worker

        # A worker token may list but not revoke: the button is not offered, and a click that
        # reaches it anyway is refused by the API (the 403's detail is shown, the lease stays).
        revoke = page.locator(f'button[data-revoke="{held["external_id"]}"]').first
        expect(revoke).to_be_hidden()
        page.once("dialog", lambda dialog: dialog.accept())
        revoke.dispatch_event("click")
        expect(page.locator("#error-detail")).to_have_text("This needs an admin token.")
        assert api.get(f"{KEYS}/guarded").json()[0]["external_id"] == held["external_id"]
        # ... nor start a pass: the same refusal, the pass stays.
        page.get_by_role("button", name="Dismiss the error").click()
        expect(page.locator("#error")).to_be_hidden()
        page.locator('#process-list button[data-process="guarded-run"]').click()
        expect(page.locator("#process-heading")).to_have_text("guarded-run")
        page.once("dialog", lambda dialog: dialog.accept())
        expect(page.locator("#start-pass")).to_be_hidden()
        page.locator("#start-pass").dispatch_event("click")
        expect(page.locator("#error-title")).to_have_text(
            "Could not start a pass of “guarded-run”:"
        )
        expect(page.locator("#error-detail")).to_have_text("This needs an admin token.")
        assert api.get(f"{PROCESS}/guarded-run").json()["pass"]["number"] == 1
        page.locator('#process-list button[data-process="guarded"]').click()

        page.get_by_label("API token").fill(admin)
        page.get_by_role("button", name="Use token").click()
        page.once("dialog", lambda dialog: dialog.accept())
        page.locator(f'button[data-revoke="{held["external_id"]}"]').first.click()
        expect(page.locator('#grid [data-lease="held"]')).to_have_count(0)
        assert api.get(f"{KEYS}/guarded").json()[0]["external_id"] is None
        tab.close()


def test_screenshots_at_desktop_and_phone_width(browser: Browser, tmp_path: Path) -> None:
    """A process in every state, on a server of its own so the list shows only the demo."""
    with serving(_env(tmp_path / "data")) as served, httpx.Client(base_url=served.base) as api:
        _register(api, "nightly-invoices", 64, lease_seconds=3600)
        _register(api, "hourly-reports", 8)
        _register(api, "search-reindex", 256, lease_seconds=900)
        leases = [_grant(api, "nightly-invoices", f"batch-{n % 4 + 1:02d}") for n in range(26)]
        for lease in leases[:20]:  # keys 0-19 done, 20-25 still held
            assert api.delete(f"{KEYS}/{lease['external_id']}").status_code == 200
        for machine in ("batch-05", "batch-06"):  # keys 26, 27: 5 min left of a 1 h lease
            _grant(api, "nightly-invoices", machine, lease_seconds=300)
        _grant(api, "hourly-reports", "cron-1")

        tab = Tab(browser, viewport=DESKTOP)
        page = tab.page
        _open(page, served.base, "nightly-invoices")
        counts = {"free": "20", "never": "36", "held": "6", "expiring": "2"}
        for state, number in counts.items():
            expect(page.locator(f'#legend [data-count="{state}"]')).to_have_text(number)
            expect(page.locator(f'#grid [data-state="{state}"]')).to_have_count(int(number))
        expect(page.locator("#key-26")).to_have_attribute("data-lease", "held")
        expect(page.locator('#held-body tr[data-state="expiring"]')).to_have_count(2)
        page.locator("#key-21").click()
        expect(page.locator("#key-detail")).to_contain_text("batch-02")
        page.mouse.move(0, 0)
        ARTIFACTS.mkdir(exist_ok=True)
        page.screenshot(path=ARTIFACTS / "dashboard.png")
        tab.close()

        phone = Tab(browser, viewport=PHONE, is_mobile=True, has_touch=True, device_scale_factor=2)
        page = phone.page
        _open(page, served.base, "nightly-invoices")
        expect(page.locator('#grid [data-state="expiring"]')).to_have_count(2)
        widths = page.evaluate("[document.documentElement.scrollWidth, window.innerWidth]")
        assert widths[0] <= widths[1], f"horizontal scroll at phone width: {widths}"
        assert widths[1] == PHONE["width"]
        # Every control is on screen, none cut off at the right edge.
        assert _overflowing(page) == []
        page.screenshot(path=ARTIFACTS / "dashboard-phone.png")
        phone.close()


def test_page_is_self_contained(api: httpx.Client) -> None:
    """No external resource, and a policy that would block one anyway."""
    for path in ("/", "/ui"):
        response = api.get(path)
        assert response.status_code == 200
        assert response.headers["content-type"] == "text/html; charset=utf-8"
        policy = response.headers["content-security-policy"]
        assert "default-src 'none'" in policy
        assert "connect-src 'self'" in policy
        nonce = policy.split("'nonce-")[1].split("'")[0]
        assert response.text.count(f'nonce="{nonce}"') == 2
        assert re.search(r"__[A-Z_]+__", response.text) is None  # every placeholder filled
        for external in ("http://", "https://", "//cdn", "src="):
            assert external not in response.text
    assert (
        api.get("/").headers["content-security-policy"]
        != api.get("/ui").headers["content-security-policy"]
    )


def _hidden_controls(page: Page) -> dict[str, bool]:
    """Whether each admin control of the page is hidden (not displayed) now."""
    hidden: dict[str, bool] = page.evaluate(
        """() => Object.fromEntries(["#register", "#delete-process", "#start-pass",
            "#held-body button[data-revoke]", "#key-detail button[data-revoke]"]
            .map(s => [s, document.querySelector(s) === null
                       || document.querySelector(s).offsetParent === null]))"""
    )
    return hidden


def test_a_worker_token_is_not_offered_admin_actions(browser: Browser, tmp_path: Path) -> None:
    admin, admin_line = new_token("admin")
    worker, worker_line = new_token("worker", "roles-*")
    env = _env(tmp_path / "data", COORDINATOR_TOKENS=f"{admin_line};{worker_line}")
    with serving(env) as served, httpx.Client(base_url=served.base) as api:
        api.headers["Authorization"] = f"Bearer {admin}"
        _register(api, "roles-run", 2, mode="once")
        held = _grant(api, "roles-run", "worker-3")
        rights = api.get("/api/v1/token", headers={"Authorization": f"Bearer {worker}"})
        assert rights.json() == {
            "role": "worker",
            "processes": ["roles-*"],
            "tokens_required": True,
        }
        assert api.get("/api/v1/token").json()["role"] == "admin"
        assert api.get("/api/v1/token", headers={"Authorization": ""}).status_code == 401
        tab = Tab(browser, viewport=DESKTOP)
        page = tab.page
        page.goto(f"{served.base}/")
        for token, role in ((worker, "worker"), (admin, "admin"), (worker, "worker")):
            page.get_by_label("API token").fill(token)
            page.get_by_role("button", name="Use token").click()
            expect(page.locator("body")).to_have_attribute("data-role", role)
            expect(page.locator("#process-heading")).to_have_text("roles-run")
            page.locator("#key-0").click()
            expect(page.locator("#key-detail")).to_contain_text(held["external_id"])
            expect(page.locator("#held-body tr")).to_have_count(1)
            hidden = _hidden_controls(page)
            assert hidden == dict.fromkeys(hidden, role == "worker"), (role, hidden)
        # The API still decides: the worker's token is refused the revoke the page hid.
        page.once("dialog", lambda dialog: dialog.accept())
        page.locator("#key-detail button[data-revoke]").dispatch_event("click")
        expect(page.locator("#error-detail")).to_have_text("This needs an admin token.")
        assert api.get(f"{KEYS}/roles-run").json()[0]["external_id"] == held["external_id"]
        tab.close()


def test_control_characters_are_escaped_in_the_revoke_question(
    page: Page, base: str, api: httpx.Client
) -> None:
    name = _name("controls")
    _register(api, name, 2)
    machine = "w1?\n\nThe key stays held: nothing is revoked.\r\u202eok\x1b[2J"
    held = _grant(api, name, machine)
    _open(page, base, name)
    questions: list[str] = []
    _answer_next_dialog(page, questions, accept=False)
    page.locator(f'#held-body button[data-revoke="{held["external_id"]}"]').click()
    _wait_for_refresh(page)
    [question] = questions
    first_line = question.split("\n", 1)[0]
    assert first_line == (
        "Revoke the lease on key 0 held by w1?\\n\\nThe key stays held: nothing is revoked."
        "\\r\\u202eok\\u001b[2J?"
    )
    assert question.count("\n") == 2  # only the page's own blank line
    assert "\u202e" not in question
    assert "\x1b" not in question
    assert api.get(f"{KEYS}/{name}").json()[0]["external_id"] == held["external_id"]


@pytest.mark.parametrize("fragment", ["#process=%", "#process=%E2%82", "#process=%zz"])
def test_a_malformed_process_link_shows_a_message(
    page: Page, base: str, api: httpx.Client, fragment: str
) -> None:
    name = _name("links")
    _register(api, name, 1)
    page.goto(f"{base}/{fragment}")
    expect(page.locator("#error")).to_be_visible()
    expect(page.locator("#error-title")).to_have_text("This link names no process:")
    expect(page.locator("#error-detail")).to_contain_text(
        f"“{fragment}” is not a link to a process"
    )
    # The rest of the page works: it loads, lists the processes and shows one.
    expect(page.locator("#status")).to_contain_text("Updated")
    expect(page.locator("#process-list button", has_text=name)).to_be_visible()
    page.locator("#process-list button", has_text=name).click()
    expect(page.locator("#process-heading")).to_have_text(name)


def test_the_process_list_pages_searches_and_polls_one_page(
    browser: Browser, tmp_path: Path
) -> None:
    """300 processes: the list shows a page of them, pages on, finds names by their start, and
    every request for the list (first render and each poll) asks for one page only."""
    names = [f"paged-{i:03d}" for i in range(300)]
    with serving(_env(tmp_path / "data")) as served, httpx.Client(base_url=served.base) as api:
        for name in reversed(names):
            _register(api, name, 1)
        tab = Tab(browser, viewport=DESKTOP)
        page = tab.page
        listed: list[str] = []
        page.on(
            "request",
            lambda request: (
                listed.append(request.url) if httpx.URL(request.url).path == PROCESS else None
            ),
        )
        buttons = page.locator("#process-list button")

        def shown() -> list[str]:
            found: list[str] = buttons.evaluate_all("bs => bs.map(b => b.dataset.process)")
            return found

        page.goto(f"{served.base}/")
        expect(page.locator("#process-heading")).to_have_text(names[0])  # the first, selected
        expect(buttons).to_have_count(50)
        assert shown() == names[:50]
        expect(page.locator("#process-page")).to_have_text("Page 1")
        expect(page.locator("#processes-previous")).to_be_disabled()

        page.locator("#processes-next").click()
        expect(page.locator("#process-page")).to_have_text("Page 2")
        expect(buttons.first).to_have_attribute("data-process", names[50])
        assert shown() == names[50:100]
        # The selected process stays shown though its page is not: it is asked for alone.
        expect(page.locator("#process-heading")).to_have_text(names[0])
        page.locator("#process-list button", has_text=names[60]).click()
        expect(page.locator("#process-heading")).to_have_text(names[60])
        page.locator("#processes-previous").click()
        expect(buttons.first).to_have_attribute("data-process", names[0])

        page.locator("#process-prefix").fill("paged-12")
        expect(buttons).to_have_count(10)
        assert shown() == names[120:130]
        expect(page.locator("#process-pages")).to_be_hidden()  # one page holds them all
        page.locator("#process-prefix").fill("paged-9")
        expect(page.locator("#no-processes")).to_have_text("No process name starts with “paged-9”.")
        page.locator("#process-prefix").fill("bad prefix")
        expect(page.locator("#search-hint")).to_be_visible()
        page.locator("#process-prefix").fill("")
        expect(buttons).to_have_count(50)
        _wait_for_refresh(page)
        _wait_for_refresh(page)
        tab.close()
    pages = [httpx.URL(url).params for url in listed]
    assert len(pages) >= 8  # the first render, the clicks, the searches and the polls
    assert all(0 < int(p.get("limit", "0")) <= 50 for p in pages), listed
