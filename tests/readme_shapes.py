"""Reading README.md's examples and matching what they show against real answers.

A block of example output is marked by an HTML comment on the line before its fence,
`<!-- example: KIND -->` (tests/test_readme_examples.py runs each KIND). In shown JSON, a bare
`…` stands for fields or elements left out (the object or array shows only some) or, as a
value, for any value; inside a string it stands for any characters. Values that differ on
every run (ids, times, tokens) match by shape, and the same shown value must stand for the
same real value throughout one example.
"""

from __future__ import annotations

import itertools
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

README = Path(__file__).resolve().parents[1] / "README.md"
ELLIPSIS = "…"
_MARKED = re.compile(r"^<!-- example: ([a-z-]+) -->\n```\w*\n(.*?)^```$", re.M | re.S)
_FENCE = re.compile(r"^```(\w*)\n(.*?)^```$", re.M | re.S)
UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
HEX_ID = re.compile(r"[0-9a-f]{32}")  # a request's id in the log
TIME = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(?:\.\d+)?(?:Z|[+-]\d\d:\d\d)")
# Numbers that differ on every run, by the field that holds them.
VOLATILE_NUMBERS = frozenset({"fencing_token", "duration_ms"})


@dataclass
class Example:
    kind: str
    text: str
    line: int  # of the fence in README.md, for messages


@dataclass
class Step:
    """One `$ command` of a session and the output shown under it."""

    command: str
    shown: str


def examples(kind: str | None = None) -> list[Example]:
    """The marked example blocks of README.md, in order (of one kind, if given)."""
    text = README.read_text()
    found = [
        Example(m[1], m[2], text.count("\n", 0, m.start()) + 2) for m in _MARKED.finditer(text)
    ]
    return [e for e in found if kind is None or e.kind == kind]


def unmarked_outputs() -> list[int]:
    """Lines of fenced blocks that show output (a `$ ` prompt with lines under it, JSON, or a
    log line) but carry no example marker."""
    text = README.read_text()
    marked = {m.start(0) + m[0].index("```") for m in _MARKED.finditer(text)}
    lines = []
    for fence in _FENCE.finditer(text):
        body = fence[2].splitlines()
        prompted = any(
            a.startswith("$ ") and not a.endswith("\\") and b and not b.startswith("$ ")
            for a, b in itertools.pairwise(body)
        )
        shows = prompted or fence[1] == "json" or (body and body[0].startswith("INFO:"))
        if shows and fence.start() not in marked:
            lines.append(text.count("\n", 0, fence.start()) + 1)
    return lines


def steps(example: Example) -> list[Step]:
    """The commands of a session block (continued over `\\` lines) and what each shows."""
    result: list[Step] = []
    lines = example.text.splitlines()
    at = 0
    while at < len(lines):
        assert lines[at].startswith("$ "), f"README.md:{example.line + at}: {lines[at]!r}"
        command = lines[at][2:]
        while command.endswith("\\"):
            at += 1
            command = command[:-1] + " " + lines[at].strip()
        at += 1
        shown = []
        while at < len(lines) and not lines[at].startswith("$ "):
            shown.append(lines[at])
            at += 1
        result.append(Step(command, "\n".join(shown).strip()))
    return result


class _Elided:
    """A bare `…` in shown JSON."""


ELIDED = _Elided()


class Partial(dict[str, Any]):
    """A shown object that leaves fields out."""


class PartialList(list[Any]):
    """A shown array that leaves elements out (those shown are the first ones)."""


def parse_shown(text: str) -> Any:
    """Shown JSON, with its `…` elisions, as Python values."""
    value, end = _value(text, _space(text, 0))
    assert _space(text, end) == len(text), f"text after the JSON: {text[end:]!r}"
    return value


def _space(text: str, at: int) -> int:
    while at < len(text) and text[at].isspace():
        at += 1
    return at


def _value(text: str, at: int) -> tuple[Any, int]:
    if text.startswith(ELLIPSIS, at):
        return ELIDED, at + 1
    if text[at] in "{[":
        return _container(text, at)
    value, end = json.JSONDecoder().raw_decode(text, at)
    return value, end


def _container(text: str, at: int) -> tuple[Any, int]:
    close = "}" if text[at] == "{" else "]"
    items: list[Any] = []
    members: dict[str, Any] = {}
    partial = False
    at = _space(text, at + 1)
    while text[at] != close:
        if text.startswith(ELLIPSIS, at):  # in place of members or elements: some left out
            partial, at = True, at + 1
        elif close == "}":
            name, at = json.JSONDecoder().raw_decode(text, at)
            at = _space(text, at)
            assert text[at] == ":", text[at:]
            members[name], at = _value(text, _space(text, at + 1))
        else:
            item, at = _value(text, at)
            items.append(item)
        at = _space(text, at)
        if text[at] == ",":
            at = _space(text, at + 1)
    if close == "}":
        return (Partial(members) if partial else members), at + 1
    return (PartialList(items) if partial else items), at + 1


@dataclass
class Matcher:
    """Compares shown values with real ones, remembering what each volatile value stood for."""

    # Compare scalars by kind only (an example object's numbers are an example's).
    kinds_only: bool = False
    bound: dict[tuple[str, str], Any] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)

    def real(self, shown: str) -> str:
        """The real value a shown id or time was matched to (the value itself if none was)."""
        return str(self.bound.get(("str", shown), shown))

    def match(self, shown: Any, real: Any, where: str = "") -> None:
        """Record every way `real` differs from `shown` in self.problems."""
        if shown is ELIDED:
            return
        if self.kinds_only and not isinstance(shown, dict | list):
            if type(shown) is not type(real):
                self.problems.append(f"{where}: README shows {shown!r}, the service {real!r}")
        elif isinstance(shown, dict):
            self._object(shown, real, where)
        elif isinstance(shown, list):
            self._array(shown, real, where)
        elif isinstance(shown, str):
            self._string(shown, real, where)
        elif where.rsplit(".", 1)[-1] in VOLATILE_NUMBERS and shown is not None:
            self._volatile(type(shown) is type(real), shown, real, where)
        elif shown != real or type(shown) is not type(real):
            self.problems.append(f"{where}: README shows {shown!r}, the service {real!r}")

    def _object(self, shown: dict[str, Any], real: Any, where: str) -> None:
        if not isinstance(real, dict):
            self.problems.append(f"{where}: README shows an object, the service {real!r}")
            return
        missing = sorted(set(shown) - set(real))
        unshown = [] if isinstance(shown, Partial) else sorted(set(real) - set(shown))
        if missing:
            self.problems.append(f"{where}: README shows {missing}, the service has no such field")
        if unshown:
            self.problems.append(f"{where}: the service also answers {unshown} (README: add, or …)")
        for name in shown.keys() & real.keys():
            self.match(shown[name], real[name], f"{where}.{name}")

    def _array(self, shown: list[Any], real: Any, where: str) -> None:
        if not isinstance(real, list):
            self.problems.append(f"{where}: README shows an array, the service {real!r}")
            return
        fewer = len(real) < len(shown)
        if fewer or (not isinstance(shown, PartialList) and len(real) > len(shown)):
            self.problems.append(
                f"{where}: README shows {len(shown)} items, the service has {len(real)}"
            )
        for index, (one, other) in enumerate(zip(shown, real, strict=False)):
            self.match(one, other, f"{where}[{index}]")

    def _string(self, shown: str, real: Any, where: str) -> None:
        if not isinstance(real, str):
            self.problems.append(f"{where}: README shows {shown!r}, the service {real!r}")
        elif ELLIPSIS in shown:
            pattern = ".+?".join(re.escape(part) for part in shown.split(ELLIPSIS))
            if not re.fullmatch(pattern, real):
                self.problems.append(f"{where}: README shows {shown!r}, the service {real!r}")
        elif shape := next((s for s in (UUID, TIME, HEX_ID) if s.fullmatch(shown)), None):
            self._volatile(bool(shape.fullmatch(real)), shown, real, where)
        elif shown != real:
            self.problems.append(f"{where}: README shows {shown!r}, the service {real!r}")

    def _volatile(self, same_shape: bool, shown: Any, real: Any, where: str) -> None:
        if not same_shape:
            self.problems.append(f"{where}: README shows {shown!r}, the service {real!r}")
            return
        key = (type(shown).__name__, str(shown))
        before = self.bound.setdefault(key, real)
        if before != real:
            self.problems.append(
                f"{where}: README shows {shown!r} again, but the service's {real!r} differs"
                f" from the {before!r} it stood for before"
            )


# What differs per run in terminal output, in the order replaced, and the shape it becomes.
_SHAPES = [
    (UUID, "<uuid>"),
    (TIME, "<time>"),
    (re.compile(r"redis://[^\s,]+"), "<redis-url>"),
    (re.compile(r"bpc_[\w-]{20,}"), "<token>"),
    (re.compile(r"sha256:[0-9a-f]{64}"), "sha256:<hash>"),
    (re.compile(r"(?<![\w:.])/[\w.+-]+(?:/[\w.+-]+)*"), "<path>"),
    (re.compile(r"\b\d{10,}\b"), "<n>"),
]


def normalized(text: str) -> list[str]:
    """Lines of terminal output with what differs per run replaced by its shape and runs of
    spaces (table padding) made one."""
    out = []
    for line in text.strip().splitlines():
        shaped = line
        for pattern, shape in _SHAPES:
            shaped = pattern.sub(shape, shaped)
        out.append(re.sub(r"\s+", " ", shaped).strip())
    return out


def lines_match(shown: list[str], real: list[str]) -> bool:
    """Normalised lines equal, `…` in a shown line standing for any characters."""
    return len(shown) == len(real) and all(
        re.fullmatch(".*?".join(re.escape(p) for p in one.split(ELLIPSIS)), other)
        for one, other in zip(shown, real, strict=True)
    )
