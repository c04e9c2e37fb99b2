"""The dashboard's progress of a batch run, its times and what a worker token is offered, in
Debian's headless Chromium against a live `coordinator serve` (as tests/test_dashboard.py).

The page shows GET /api/v1/process/{name}/progress of the process on screen: these tests read
the very answers the page was given (a route that passes them through) and check the page says
what they say, so a rate that moves with the clock is never raced.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from playwright.sync_api import Browser, Dialog, Page, Route, expect, sync_playwright

from coordinator.auth import new_token
from tests.test_dashboard import (
    ARTIFACTS,
    CHROMIUM,
    DESKTOP,
    LAUNCH_ARGS,
    PHONE,
    PROCESS,
    Tab,
    _grant,
    _name,
    _open,
    _overflowing,
    _register,
    _release,
)
from tests.test_serve import _env, serving

pytestmark = pytest.mark.slow

UI = Path(__file__).parent.parent / "coordinator" / "ui" / "index.html"
# The refresh is every 2 s; a loaded machine gets some slack over Playwright's 5 s.
expect.set_options(timeout=10_000)
# "2026-12-02 01:45:10 UTC": how the page writes every time.
UTC_TIME = "%Y-%m-%d %H:%M:%S UTC"


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    assert CHROMIUM.is_file(), f"{CHROMIUM} is missing (`apt-get install chromium`)"
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, args=LAUNCH_ARGS)
        yield chromium
        chromium.close()


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with serving(_env(tmp_path_factory.mktemp("progress") / "data")) as served:
        yield served.base


@pytest.fixture
def api(base: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=base, timeout=10) as client:
        yield client


def _utc(text: str) -> str:
    """An RFC 3339 time of the API as the page writes it."""
    return datetime.fromisoformat(text).astimezone(UTC).strftime(UTC_TIME)


def _duration(seconds: float) -> str:
    """The page's duration(): "5 s", "2 min 5 s", "1 h", "3 h 2 min", "1 d 4 h"."""

    def pair(big: int, unit: str, small: int, small_unit: str) -> str:
        return f"{big} {unit} {small} {small_unit}" if small else f"{big} {unit}"

    s = max(0, int(seconds))
    if s < 60:
        return f"{s} s"
    m, s = divmod(s, 60)
    if m < 60:
        return pair(m, "min", s, "s")
    h, m = divmod(m, 60)
    if h < 24:
        return pair(h, "h", m, "min")
    d, h = divmod(h, 24)
    return pair(d, "d", h, "h")


class Answers:
    """The progress answers the page was given, passed through untouched."""

    def __init__(self, page: Page) -> None:
        self.seen: list[dict[str, Any]] = []
        self.paths: list[str] = []
        page.route("**/api/v1/process/*/progress", self._pass)

    def _pass(self, route: Route) -> None:
        response = route.fetch()
        self.paths.append(httpx.URL(route.request.url).path)
        if response.ok:
            self.seen.append(response.json())
        route.fulfill(response=response)


def _facts(page: Page) -> dict[str, str]:
    shown: dict[str, str] = page.evaluate(
        """() => Object.fromEntries([...document.querySelectorAll("#progress-facts dd")]
            .map(dd => [dd.dataset.fact, dd.textContent]))"""
    )
    return shown


def _expected_facts(progress: dict[str, Any]) -> dict[str, str]:
    """What the page must say of one progress answer."""
    window = _duration(progress["rate_window_seconds"])
    rate = progress["rate_per_minute"]
    if rate is None:
        rate_text = (
            f"unknown: fewer than {progress['eta_min_keys_done']} keys done in the last {window}"
        )
    else:
        rate_text = f"{rate:.1f} keys/min over the last {window}"
    if progress["complete"]:
        eta = "the pass is complete"
    elif progress["eta_seconds"] is None:
        eta = "unknown"
    else:
        eta = f"in {_duration(progress['eta_seconds'])} ({_utc(progress['eta_at'])})"
    return {
        "Done": str(progress["keys_done"]),
        "Quarantined": str(progress["keys_quarantined"]),
        "In backoff": str(progress["keys_in_backoff"]),
        "Held": str(progress["keys_held"]),
        "Left": f"{progress['keys_left']} (neither done nor quarantined)",
        "Rate": rate_text,
        "ETA": eta,
    }


def _agreed(page: Page, answers: Answers, **want: Any) -> dict[str, Any]:
    """Until the page shows the last answer it was given and that answer has the fields of
    `want` (the page polls every 2 s), at most 15 s; returns that answer."""
    deadline = time.monotonic() + 15
    while True:
        last = answers.seen[-1] if answers.seen else None
        shown = _facts(page)
        if last is not None and all(last[k] == v for k, v in want.items()):
            expected = _expected_facts(last)
            # A rate's tie (x.x5) may round either way in JavaScript and in Python.
            if shown == expected or (
                {k: v for k, v in shown.items() if k != "Rate"}
                == {k: v for k, v in expected.items() if k != "Rate"}
                and last["rate_per_minute"] is not None
                and abs(float(shown["Rate"].split()[0]) - last["rate_per_minute"]) <= 0.051
            ):
                return last
        assert time.monotonic() < deadline, (shown, last, want)
        page.wait_for_timeout(100)


def test_progress_shows_counts_rate_eta_and_the_quarantined_keys(
    browser: Browser, base: str, api: httpx.Client
) -> None:
    """Done, quarantined, held and left as the progress route counts them, done % and
    quarantined % apart, the rate and ETA unknown until enough keys are done, then a number;
    the quarantined keys with their attempts, the machine each last failed on and when."""
    name = _name("sweep")
    other = _name("bystander")
    _register(api, name, 10, mode="once", max_attempts=1)
    _register(api, other, 2, mode="once")
    tab = Tab(browser, viewport=DESKTOP)
    page = tab.page
    answers = Answers(page)
    # Opened by its link, so the page never shows (nor polls) the list's first process.
    page.goto(f"{base}/#process={name}")
    expect(page.locator("#process-heading")).to_have_text(name)
    first = _agreed(page, answers, keys_done=0)
    assert (first["rate_per_minute"], first["eta_seconds"]) == (None, None)
    expect(page.locator("#quarantine")).to_be_hidden()

    # Two keys done: still too few for a rate; two failed once, so quarantined.
    for n in range(2):
        _release(api, _grant(api, name, f"worker-{n}"))
    quarantining = datetime.now(UTC)
    for machine in ("worker-q7", "worker-q8"):
        assert _release(api, _grant(api, name, machine), "failed")["state"] == "quarantined"
    quarantined = datetime.now(UTC)
    held = _grant(api, name, "worker-h")
    progress = _agreed(page, answers, keys_done=2, keys_quarantined=2, keys_held=1)
    assert progress["keys_left"] == 6
    assert _facts(page)["ETA"] == "unknown"
    assert _facts(page)["Rate"].startswith("unknown: fewer than")
    expect(page.locator("#pass-counts")).to_have_text(
        "4 of 10 keys finished (40 %): 2 done (20 %), 2 quarantined (20 %)."
        " The bar counts quarantined keys as finished."
    )
    bar = page.get_by_role("progressbar", name=f"Pass {progress['pass']}")
    expect(bar).to_have_js_property("value", 4)
    expect(bar).to_have_js_property("max", 10)

    # The quarantined keys: attempts, the machine as stored (not this host's name), and when.
    rows = page.locator("#quarantine-body tr")
    expect(rows).to_have_count(2)
    listed = {q["key"]: q for q in progress["quarantined"]}
    assert {q["machine"] for q in listed.values()} == {"worker-q7", "worker-q8"}
    for i, key in enumerate(sorted(listed)):
        cells = rows.nth(i).locator("td")
        expect(cells.nth(0)).to_have_text(str(key))
        expect(cells.nth(1)).to_have_text(f"{listed[key]['attempts']} of 1")
        expect(cells.nth(2)).to_have_text(str(listed[key]["machine"]))
        # When its failed release quarantined it (the service's clock is this machine's),
        # written in ISO UTC as every time on the page.
        at = listed[key]["at"]
        assert quarantining <= datetime.fromisoformat(at) <= quarantined, at
        expect(cells.nth(3)).to_have_text(_utc(at))
        expect(cells.nth(3)).to_be_visible()
        assert re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC", cells.nth(3).inner_text())
    # The service keeps every quarantine's time, so the column is shown.
    expect(page.locator("#quarantine-table th.when")).to_be_visible()
    expect(page.locator("#quarantine-table th.when")).to_have_text("Quarantined at")
    expect(page.locator("#quarantine-more")).to_be_hidden()

    # A third key done: a rate over the window, and an ETA of the keys left at that rate.
    _release(api, held)
    progress = _agreed(page, answers, keys_done=3, keys_held=0)
    assert progress["rate_per_minute"] is not None
    assert progress["eta_seconds"] is not None
    assert re.fullmatch(r"in .+ \(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC\)", _facts(page)["ETA"])

    # A quarantined key's details name the machine of its last failure too.
    key, last = sorted(listed)
    page.locator(f"#key-{key}").click()
    expect(page.locator("#key-detail")).to_contain_text(
        f"Last failure's machine{listed[key]['machine']}"
    )

    # A Retry in the list lifts that key's quarantine; the list then drops it, and focus
    # moves on to the next key's Retry.
    page.locator(f'#quarantine-body button[data-retry="{key}"]').click()
    expect(page.locator("#notice")).to_contain_text(f"Key {key} of “{name}” can be granted again")
    expect(rows).to_have_count(1)
    assert api.get(f"{PROCESS}/{name}/keys/{key}").json()["state"] == "free"
    expect(page.locator(f'#quarantine-body button[data-retry="{last}"]')).to_be_focused()

    # Only the process on screen is polled for its progress, never the list's others.
    assert set(answers.paths) == {f"{PROCESS}/{name}/progress"}
    tab.close()


def test_times_are_iso_utc_whatever_the_browser_locale(
    browser: Browser, base: str, api: httpx.Client
) -> None:
    """In a German browser fourteen hours ahead of UTC, every time on the page — the pass's
    start, a backoff's end, a quarantine, the status line — is ISO 8601 in UTC, labelled."""
    name = _name("zones")
    _register(api, name, 4, mode="once", max_attempts=2, retry_backoff_seconds=3600)
    parked = _release(api, _grant(api, name, "worker-b"), "failed")
    assert parked["state"] == "backoff"
    doomed = _release(api, _grant(api, name, "worker-f"), "fatal")
    assert doomed["state"] == "quarantined"
    tab = Tab(browser, viewport=DESKTOP, locale="de-DE", timezone_id="Pacific/Kiritimati")
    page = tab.page
    _open(page, base, name)
    process = api.get(f"{PROCESS}/{name}").json()
    started = _utc(process["pass"]["started_at"])
    expect(page.locator('#run-facts [data-fact="Started"]')).to_have_text(
        re.compile(rf"^{re.escape(started)} \(.+ ago\)$")
    )
    retry_at = _utc(parked["retry_at"])
    cell = page.locator(f"#key-{parked['key']}")
    expect(cell).to_have_attribute("aria-label", re.compile(rf", retry at {re.escape(retry_at)}$"))
    cell.click()
    expect(page.locator("#key-detail")).to_contain_text(f"Retry at{retry_at} (in 59 min")
    [listed] = api.get(f"{PROCESS}/{name}/progress").json()["quarantined"]
    assert listed["key"] == doomed["key"]
    expect(page.locator("#quarantine-body td.when")).to_have_text(_utc(listed["at"]))
    expect(page.locator("#status")).to_have_text(
        re.compile(r"^Updated \d\d:\d\d:\d\d UTC · every 2 s$")
    )
    # The page formats no time by the browser's locale at all.
    assert not re.search(r"toLocale(Time|Date)String|\.toLocaleString\(\"en-GB", UI.read_text())
    tab.close()


class _Held:
    """Requests held unanswered until the test lets them go."""

    def __init__(self) -> None:
        self.routes: list[Route] = []

    def hold(self, route: Route) -> None:
        self.routes.append(route)


def test_a_worker_token_is_offered_no_admin_control(browser: Browser, tmp_path: Path) -> None:
    """A worker token never sees an admin control — not even while the page is still asking
    GET /api/v1/token what the token may do — and an admin token sees every one."""
    admin, admin_line = new_token("admin")
    worker, worker_line = new_token("worker")
    env = _env(tmp_path / "data", COORDINATOR_TOKENS=f"{admin_line};{worker_line}")
    with serving(env) as served, httpx.Client(base_url=served.base, timeout=10) as api:
        api.headers["Authorization"] = f"Bearer {admin}"
        _register(api, "guarded", 3, mode="once", max_attempts=1)
        quarantined = _release(api, _grant(api, "guarded", "worker-q"), "failed")
        held = _grant(api, "guarded", "worker-h")
        controls = [
            "#register",
            "#delete-process",
            "#start-pass",
            "#retry-quarantined",
            f'#quarantine-body button[data-retry="{quarantined["key"]}"]',
            f'#held-body button[data-revoke="{held["external_id"]}"]',
        ]
        for token, offered in ((worker, False), (admin, True)):
            tab = Tab(browser, viewport=DESKTOP)
            page = tab.page
            tab.context.add_init_script(f"sessionStorage.setItem('coordinator.token', '{token}')")
            asked = _Held()
            page.route("**/api/v1/token", asked.hold)
            page.goto(f"{served.base}/#process=guarded")
            deadline = time.monotonic() + 10
            while not asked.routes:
                assert time.monotonic() < deadline, "the page did not ask what the token may do"
                page.wait_for_timeout(50)
            # Until the answer comes, nothing an admin alone may do is on show.
            expect(page.locator("#register")).to_be_hidden()
            asked.routes[0].continue_()
            page.unroute("**/api/v1/token")
            expect(page.locator("#quarantine-body tr")).to_have_count(1)
            expect(page.locator("#held-body tr")).to_have_count(1)
            page.locator(f"#key-{quarantined['key']}").click()
            expect(page.locator("#key-detail")).to_contain_text("quarantined")
            detail_retry = page.locator("#key-detail button[data-retry]")
            for control in [page.locator(selector) for selector in controls] + [detail_retry]:
                if offered:
                    expect(control).to_be_visible()
                else:
                    expect(control).to_be_hidden()
            if not offered:
                visible = page.evaluate(
                    """() => [...document.querySelectorAll("button, input, select, summary")]
                        .filter(e => e.checkVisibility())
                        .map(e => e.id || e.dataset.process || e.textContent.trim())"""
                )
                assert sorted(visible) == sorted(
                    ["token", "Use token", "token-forget", "process-prefix", "guarded"]
                ), visible
            tab.close()


def test_screenshot_of_a_batch_run_in_progress(browser: Browser, tmp_path: Path) -> None:
    """docs/dashboard-progress.png: a nightly `once` sweep part done, with quarantined keys,
    on a server of its own so the list shows only the demo."""
    with serving(_env(tmp_path / "data")) as served, httpx.Client(base_url=served.base) as api:
        name = "nightly-invoices"
        _register(api, name, 64, lease_seconds=3600, mode="once", max_attempts=1)
        _register(api, "hourly-reports", 8)
        machines = [f"batch-{n:02d}" for n in range(1, 5)]
        leases = [_grant(api, name, machines[n % 4]) for n in range(30)]
        for n, lease in enumerate(leases[:26]):  # 23 done, 3 quarantined; 4 still held
            _release(api, lease, "failed" if n in (5, 13, 22) else "completed")
        tab = Tab(browser, viewport=DESKTOP)
        page = tab.page
        answers = Answers(page)
        page.goto(f"{served.base}/#process={name}")
        progress = _agreed(page, answers, keys_done=23, keys_quarantined=3, keys_held=4)
        assert progress["eta_seconds"] is not None
        expect(page.locator("#quarantine-body tr")).to_have_count(3)
        expect(page.locator("#quarantine-body")).to_contain_text("batch-02")
        page.mouse.move(0, 0)
        ARTIFACTS.mkdir(exist_ok=True)
        page.screenshot(path=ARTIFACTS / "dashboard-progress.png", full_page=True)
        tab.close()

        # At phone width the progress and the quarantined keys (as cards) fit.
        phone = Tab(browser, viewport=PHONE, is_mobile=True, has_touch=True, device_scale_factor=2)
        phone.page.goto(f"{served.base}/#process={name}")
        expect(phone.page.locator("#quarantine-body tr")).to_have_count(3)
        expect(phone.page.locator('#progress-facts [data-fact="Done"]')).to_have_text("23")
        assert _overflowing(phone.page) == []
        phone.page.screenshot(path=ARTIFACTS / "dashboard-progress-phone.png", full_page=True)
        phone.close()


def test_retry_all_quarantined_redrives_every_one(
    browser: Browser, base: str, api: httpx.Client
) -> None:
    """Retry all quarantined… asks first, then every quarantined key of the process is free
    again (POST …/keys/retry), and the page's list empties."""
    name = _name("redrive")
    _register(api, name, 5, mode="once", max_attempts=1)
    for n in range(3):
        assert _release(api, _grant(api, name, f"worker-{n}"), "failed")["state"] == "quarantined"
    tab = Tab(browser, viewport=DESKTOP)
    page = tab.page
    page.goto(f"{base}/#process={name}")
    expect(page.locator("#quarantine-body tr")).to_have_count(3)
    questions: list[str] = []

    def answer(dialog: Dialog) -> None:
        questions.append(dialog.message)
        dialog.accept()

    page.once("dialog", answer)
    page.get_by_role("button", name="Retry all quarantined…").click()
    expect(page.locator("#notice")).to_have_text(
        f"3 keys of “{name}” can be granted again (failed attempts reset)."
    )
    assert questions[0].startswith(f"Retry all 3 quarantined keys of “{name}”?")
    expect(page.locator("#quarantine")).to_be_hidden()
    expect(page.locator("#grid")).to_be_focused()  # not lost with the hidden list
    states = {k["state"] for k in api.get(f"/api/v1/process/batch_keys/{name}").json()}
    assert states == {"free"}
    tab.close()


def test_a_failed_pass_says_so(browser: Browser, base: str, api: httpx.Client) -> None:
    """A process registered on the form with max failed keys 1: once two keys are
    quarantined the pass shows as failed, not complete, with the policy among its facts."""
    name = _name("poison")
    tab = Tab(browser, viewport=DESKTOP)
    page = tab.page
    page.goto(f"{base}/ui")
    form = page.locator("#register-form")
    form.get_by_label("Name").fill(name)
    form.get_by_label("Keys", exact=True).fill("6")
    form.get_by_label("Mode").select_option("once")
    form.get_by_label("Max attempts").fill("1")
    form.get_by_label("Max failed keys").fill("1")
    form.get_by_role("button", name="Register").click()
    expect(page.locator("#process-heading")).to_have_text(name)
    assert api.get(f"{PROCESS}/{name}").json()["max_failed_keys"] == 1
    for n in range(2):
        _release(api, _grant(api, name, f"worker-{n}"), "failed")
    run = api.get(f"{PROCESS}/{name}").json()["pass"]
    assert run["failed"] is True
    expect(page.locator("#pass-state")).to_have_text("failed")
    expect(page.locator("#pass-state")).to_have_class("badge failed")
    expect(page.locator('#run-facts [data-fact="Max failed keys"]')).to_have_text(
        "1: a pass with more quarantined keys fails"
    )
    expect(page.locator('#progress-facts [data-fact="ETA"]')).to_have_text("none: the pass failed")
    tab.close()
