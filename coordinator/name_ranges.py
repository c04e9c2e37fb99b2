"""Which stretches of the registry a process listing reads: name ranges in name order.

The registry is one sorted set whose scores are all 0, so ZRANGEBYLEX reads any run of names
in order. A listing's `prefix`, and a scoped token's patterns (`auth.Principal.processes`),
become such runs, so the listing reads only the names it may show: an exact name is one point,
`reports-*` one prefix run; a pattern with a wildcard further in (`*-daily`, `a?c`) reads the
run of its literal start and is filtered by the token's own check.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

# The characters that make a shell pattern more than a literal (`!` only inside brackets).
_WILDCARDS = "*?["
# Above every character of a process name (validation.PROCESS_NAME_PATTERN is ASCII).
_TOP = b"\xff"


class Scope(Protocol):
    """What a caller may see (an `auth.Principal`): its patterns, and the one check of a name."""

    @property
    def processes(self) -> tuple[str, ...] | None:
        """Shell patterns of the names it covers; None: every process."""
        ...

    def may_act_on(self, process_name: str) -> bool:
        """Whether it covers this process."""
        ...


@dataclass(frozen=True, slots=True, order=True)
class NameRange:
    """Names starting with `start` (or, `exact`, only `start` itself)."""

    start: str
    exact: bool = False

    def holds(self, name: str) -> bool:
        """Whether `name` lies in the range."""
        return name == self.start if self.exact else name.startswith(self.start)

    def within(self, other: NameRange) -> bool:
        """Whether every name of this range is also in `other`."""
        return other.holds(self.start) and (self.exact or not other.exact)

    def bounds(self, after: str | None) -> tuple[bytes, bytes] | None:
        """ZRANGEBYLEX min and max of the range's names past `after`; None when none can be."""
        low = b"[" + self.start.encode()
        high = low if self.exact else low + _TOP
        if after is None or after < self.start:
            return low, high
        if self.exact or (not after.startswith(self.start) and after > self.start):
            return None  # `after` is at or past the whole range
        return b"(" + after.encode(), high


def ranges(prefix: str, patterns: tuple[str, ...] | None) -> list[NameRange]:
    """The disjoint ranges, in name order, of names starting with `prefix` that `patterns`
    (a token's scope; None: every process) can match."""
    wanted = NameRange(prefix)
    if patterns is None:
        return [wanted]
    found = [r for r in (_narrowed(_of_pattern(p), wanted) for p in patterns) if r is not None]
    kept: list[NameRange] = []
    # Two ranges either nest or are apart, so in name order each one is inside the last kept
    # one or past all of it.
    for candidate in sorted(set(found), key=lambda r: (r.start, r.exact)):
        if not kept or not candidate.within(kept[-1]):
            kept.append(candidate)
    return kept


def _of_pattern(pattern: str) -> NameRange:
    """The range a shell pattern's names lie in: its literal start."""
    cut = min((i for i in map(pattern.find, _WILDCARDS) if i >= 0), default=-1)
    if cut < 0:
        return NameRange(pattern, exact=True)
    return NameRange(pattern[:cut])


def _narrowed(scope: NameRange, wanted: NameRange) -> NameRange | None:
    """The part of `scope` whose names start with `wanted.start`; None if none do."""
    if scope.within(wanted):
        return scope
    if wanted.within(scope):
        return wanted
    return None
