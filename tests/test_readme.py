"""The README is the reference a newcomer reads first, so it is checked against the code: its
API table lists every route the service answers, its Configuration table every setting with the
default the code has, and it says where the Python API reference comes from."""

from __future__ import annotations

import ast
import re
from dataclasses import fields
from pathlib import Path

from coordinator import app, config, metrics, models, problems, store, validation
from coordinator.cli import serve, statuses
from coordinator.client import outage
from coordinator.config import Settings

ROOT = Path(__file__).parent.parent
README = ROOT / "README.md"
# `GET /api/v1/process/<process_name>/events[?after=ID…]` in a table cell.
ROUTE = re.compile(r"`(GET|POST|PUT|PATCH|DELETE) (/[^`\s\[?]*)")
PARAMETER = re.compile(r"<[^>]*>|\{[^}]*\}")


def _section(title: str) -> str:
    """The README's text under `## title`, up to the next heading of that level."""
    text = README.read_text(encoding="utf-8")
    found = re.search(rf"^## {re.escape(title)}\n(.*?)(?=^## |\Z)", text, re.MULTILINE | re.DOTALL)
    assert found, f"README.md has no '## {title}' section"
    return found.group(1)


def _tables(section: str) -> list[list[list[str]]]:
    """Every Markdown table of `section`: its body rows, each a list of cells."""
    tables: list[list[list[str]]] = []
    rows: list[list[str]] | None = None
    for line in section.splitlines():
        if not line.startswith("|"):
            rows = None
            continue
        # Cells split on pipes that are not escaped (`completed\|failed` is one cell).
        cells = [cell.strip() for cell in re.split(r"(?<!\\)\|", line.strip()[1:-1])]
        if rows is None:
            rows = []  # the header; the rule under it comes next
            tables.append(rows)
        elif not all(set(cell) <= {"-", ":"} for cell in cells):
            rows.append(cells)
    return tables


def _shape(path: str) -> str:
    """A path with every parameter blanked: `<process_name>` and `{process_name}` alike."""
    return PARAMETER.sub("{}", path)


def _documented_routes() -> set[tuple[str, str]]:
    api_table = _tables(_section("The API"))[0]
    return {(method, _shape(path)) for row in api_table for method, path in ROUTE.findall(row[0])}


def test_api_table_lists_every_route_served() -> None:
    served = {
        (method, _shape(route.path))
        for route in app.ROUTES
        for method in route.methods or ()
        if method != "HEAD"  # Starlette answers HEAD wherever it answers GET
    }
    served.add(("GET", metrics.PATH))  # added to the app by metrics.install
    documented = _documented_routes()
    assert len(documented) >= 10, documented  # the table was read
    missing = sorted(f"{method} {path}" for method, path in served - documented)
    assert not missing, f"routes missing from README.md's API table: {missing}"


def _settings_read() -> set[str]:
    """The COORDINATOR_* variables config.py reads: every `get("NAME")` in it."""
    tree = ast.parse(Path(config.__file__).read_text(encoding="utf-8"))
    return {
        f"COORDINATOR_{call.args[0].value}"
        for call in ast.walk(tree)
        if isinstance(call, ast.Call)
        and isinstance(call.func, ast.Name)
        and call.func.id == "get"
        and call.args
        and isinstance(call.args[0], ast.Constant)
        and isinstance(call.args[0].value, str)
    }


def _shows(cell: str, default: object) -> bool:
    """Whether a Default cell states `default`: "unset…" for None, else its first code span."""
    if default is None:
        return cell.startswith("unset")
    shown = re.match(r"`([^`]+)`", cell)
    if shown is None:
        return False
    text = shown.group(1)
    if isinstance(default, Path):
        return Path(text) == default
    if isinstance(default, int | float):
        return float(text.replace(",", "")) == default
    return text == str(default)


def test_configuration_table_lists_every_setting_with_its_default() -> None:
    read = _settings_read()
    assert len(read) >= 10, read  # config.py was read
    table: dict[str, str] = {}
    for row in _tables(_section("Configuration"))[0]:
        for variable in re.findall(r"`(COORDINATOR_[A-Z_]+)`", row[0]):
            table[variable] = row[1]
    missing = sorted(read - set(table))
    assert not missing, f"settings missing from README.md's Configuration table: {missing}"

    # The defaults the service runs with when nothing is set.
    defaults = Settings.from_env({})
    field_names = {field.name for field in fields(Settings)}
    wrong = []
    for variable in sorted(read):
        name = variable.removeprefix("COORDINATOR_").lower()
        assert name in field_names, f"{variable} sets no Settings field of its name"
        default = getattr(defaults, name)
        if not _shows(table[variable], default):
            wrong.append(f"{variable}: README says {table[variable]!r}, the code {default!r}")
    assert not wrong, wrong


def test_api_defaults_table_agrees_with_the_code() -> None:
    """The request defaults a newcomer reads are the ones the service applies."""
    section = _section("The API")
    defaults = {row[0]: row for row in _tables(section)[1]}
    limits = store.Limits()
    size = defaults["`key_set_size` (register)"]
    assert size[1].startswith(f"{limits.default_key_set_size},")
    assert f"({limits.max_key_set_size:,})" in size[2]
    lease = defaults["`lease_seconds` (register)"]
    assert f"({Settings().default_lease_seconds})" in lease[1]
    assert lease[2] == f"1 to {validation.LEASE_SECONDS_MAX:,}"
    assert defaults["`wait_seconds` (grant)"][2] == f"0 to {validation.WAIT_SECONDS_MAX}"
    events = defaults["`limit` · `after` (events)"]
    assert events[1].startswith(f"{validation.EVENTS_PAGE_DEFAULT} ·")
    assert events[2].startswith(f"1 to {validation.PAGE_MAX:,} ·")
    # key_space_size is explained, as the same number as key_set_size.
    assert "`key_space_size` is always the same number" in section


def test_python_api_reference_is_built_by_make_test() -> None:
    makefile = (ROOT / "Makefile").read_text(encoding="utf-8")
    test_target = re.search(r"^test:(.*)$", makefile, re.MULTILINE)
    assert test_target, "Makefile has no test target"
    assert "docs" in test_target.group(1).split()
    docs = re.search(r"^docs:.*\n((?:\t.*\n)+)", makefile, re.MULTILINE)
    assert docs, "Makefile has no docs target"
    assert "-W error" in docs.group(1)  # a warning fails the build
    assert "build/api" in docs.group(1)
    readme = README.read_text(encoding="utf-8")
    assert "`make docs`, then open `build/api/index.html`" in readme
    for module in ("coordinator.client", "coordinator.store", "coordinator.errors"):
        assert module in makefile
        assert f"`{module}`" in readme


def test_event_types_and_outcomes_are_the_declared_ones() -> None:
    """The README's list of event types and its release outcomes are those the code declares."""
    section = _section("The API")
    listed = re.search(r"`type` one of (.*?)\.\n", section, re.DOTALL)
    assert listed, "the API section names no event types"
    assert re.findall(r"`([a-z-]+)`", listed.group(1)) == list(models.EVENT_TYPES)
    defaults = {row[0]: row for row in _tables(section)[1]}
    accepted = defaults["`outcome` (release)"][2]
    assert re.findall(r"`([a-z]+)`", accepted) == list(validation.OUTCOMES)
    escaped_bar = "\\|"  # a pipe inside a table cell
    assert f"outcome={escaped_bar.join(validation.OUTCOMES)}]" in section


def test_outage_budget_exit_status_and_shutdown_bound_are_the_codes() -> None:
    """What the README says a worker rides out and how fast serve stops: the code's numbers."""
    text = README.read_text(encoding="utf-8")
    deploys = _section("Deploys, restarts and outages")
    assert f"is {outage.OUTAGE_BUDGET_SECONDS:g} s by default" in deploys
    assert f"`{outage.OUTAGE_BUDGET_ENV}`" in deploys
    assert f"for up to {serve.GRACEFUL_SHUTDOWN_SECONDS} s" in deploys
    assert f"exits within {serve.SHUTDOWN_BOUND_SECONDS} s of the signal" in deploys
    assert f"exit {statuses.UNAVAILABLE} (EX_TEMPFAIL)" in deploys
    assert f"{statuses.UNAVAILABLE} when the service stayed unreachable" in _section("Command line")
    assert f"{statuses.UNAVAILABLE} when the service stayed unreachable" in text


# A problem code as the README names it: its status, then the code in backticks
# (409 `pass_failed`, 404 `unknown_key` (not from 0 …)).
PROBLEM_CODE = re.compile(r"\b([45]\d\d)\s+`([a-z_]+)`")


def test_problem_codes_are_the_declared_ones() -> None:
    """Every problem code the README gives with its status is one the service answers with
    that status, and every code the service can answer is given somewhere."""
    text = README.read_text(encoding="utf-8")
    named = {(int(status), code) for status, code in PROBLEM_CODE.findall(text)}
    declared = {(status, code) for code, (status, _title) in problems.PROBLEMS.items()}
    assert named - declared == set(), "named in README.md but not answered"
    assert {code for _, code in declared} - {code for _, code in named} == set(), (
        "answered but never named with its status in README.md"
    )


def test_modes_and_key_states_are_the_declared_ones() -> None:
    """The batch-run options table's modes, and the states a key object gives, are the code's."""
    section = _section("Batch runs")
    options = {row[0]: row for row in _tables(section)[0]}
    assert re.findall(r"`([a-z]+)`", options["`mode`"][1]) == list(validation.MODES)
    keys = re.search(r"Key objects gain `attempts`, `state` \((.*?)\) and", section, re.DOTALL)
    assert keys, "Batch runs names no key states"
    # `done` is explained in passing ("completed in the current pass of a `once` process").
    states = [word for word in re.findall(r"`([a-z]+)`", keys.group(1)) if word != "once"]
    assert states == list(models.KEY_STATES)
