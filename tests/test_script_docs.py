"""docs/scripts.md describes the scripts as they are: every script, its KEYS, ARGV and statuses.

Each script's section lists its KEYS in the order coordinator/keys.py passes them (which is the
order of the script's own header), and names every ARGV the script reads; the status table
holds every `Status` the Python side maps and every status code a script can return; the
history's event types are the ones coordinator/models.py declares.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from coordinator import scripts
from coordinator.keys import SCRIPT_KEYS
from coordinator.models import EVENT_TYPES

DOC = (Path(__file__).resolve().parent.parent / "docs" / "scripts.md").read_text()
SOURCES = scripts.sources()


def _section(name: str) -> str:
    start = DOC.index(f"### {name}.lua")
    end = DOC.find("\n#", start + 1)
    return DOC[start:end]


def _row(section: str, label: str) -> str:
    (row,) = [line for line in section.splitlines() if line.startswith(f"| {label} |")]
    return row


def test_the_document_counts_and_names_every_script() -> None:
    assert "eight Lua scripts" in DOC
    assert len(scripts.NAMES) == 8
    for name in scripts.NAMES:
        assert f"### {name}.lua" in DOC, name


@pytest.mark.parametrize("name", scripts.NAMES)
def test_each_section_lists_the_scripts_keys_in_order(name: str) -> None:
    documented = re.findall(r"(\d+) `(\w+)`", _row(_section(name), "KEYS"))
    assert documented == [(str(i), key) for i, key in enumerate(SCRIPT_KEYS[name], 1)]
    header = re.findall(r"^-- KEYS\[(\d+)\] (\w+)", SOURCES[name], re.M)
    assert [key for _, key in header] == list(SCRIPT_KEYS[name])


@pytest.mark.parametrize("name", scripts.NAMES)
def test_each_section_numbers_every_argv_the_script_reads(name: str) -> None:
    read = {int(i) for i in re.findall(r"ARGV\[(\d+)\]", SOURCES[name])}
    row = _row(_section(name), "ARGV")
    documented = {int(i) for i in re.findall(r"(?:^\| ARGV \| |· )(\d+) ", row)}
    assert documented == read


def test_the_status_table_has_every_status() -> None:
    table = dict(re.findall(r"^\| (\d+) \| ([a-z ]+) \|", DOC, re.M))
    assert {int(code) for code in table} == {int(status) for status in scripts.Status}
    for status in scripts.Status:
        assert table[str(int(status))].replace(" ", "_") == status.name.lower(), status
    returned = {int(c) for s in SOURCES.values() for c in re.findall(r"return \{(\d+)", s)}
    assert returned <= {int(status) for status in scripts.Status}
    assert f"outside 0..{max(scripts.Status)}" in DOC


def test_every_event_type_is_named() -> None:
    for kind in EVENT_TYPES:
        assert f"`{kind}`" in DOC, kind


def test_every_keyinfo_field_is_documented() -> None:
    """Each field a script names in `keyinfo` ('x:' .. key) is in the key table's keyinfo row,
    and the quarantine's own fields (m: its machine, q: its time) are in the header of every
    script that writes or removes them."""
    (row,) = [line for line in DOC.splitlines() if line.startswith("| `<prefix>:{<name>}:keyinfo`")]
    documented = set(re.findall(r"`(\w):<", row))
    for name, source in SOURCES.items():
        used = set(re.findall(r"'(\w):' \.\.", source))
        assert used <= documented, (name, used - documented)
        header = source.split("\nlocal ", 1)[0]
        for field in {"m", "q"} & used:
            assert f"{field}:<key>" in header, (name, field)
