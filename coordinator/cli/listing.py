"""`keys`, `events` and `process list`: listings printed as they are read, never held whole.

A table for people (with, for keys, a one-line summary on stderr), or JSON Lines (for
`process list`, the one JSON array the API answers, written a process at a time).
"""

from __future__ import annotations

import argparse
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from contextlib import closing
from itertools import islice

import orjson

from coordinator import output
from coordinator.cli.values import NEVER
from coordinator.client.sync import Coordinator
from coordinator.models import KEY_STATES, BatchKey, Process

FOLLOW_POLL_SECONDS = 0.5
_BATCH_STATES = tuple(s for s in KEY_STATES if s not in ("held", "free"))
_SUMMARY_WORDS = {"backoff": "in backoff"}


def print_keys(coordinator: Coordinator, args: argparse.Namespace) -> int:
    """List a process's keys (of `--state`, after `--after`, at most `--limit`)."""
    wanted = _state_filter(args.state)
    # Without a filter the service stops at the limit; with one, only the shown keys count.
    read_limit = args.limit if wanted is None else None
    counts: Counter[str] = Counter()
    with closing(coordinator.iter_keys(args.name, args.after, read_limit)) as keys:
        shown: Iterable[BatchKey] = _tally(keys, counts)
        if wanted is not None:
            shown = filter(wanted, shown)
        if args.limit is not None:
            shown = islice(shown, args.limit)
        if args.json:
            out = sys.stdout.buffer
            for key in shown:
                out.write(output.json_line(key))
            out.flush()
            return 0
        printed = 0
        for line in output.key_table_lines(shown):
            print(line)
            printed += 1
    sys.stdout.flush()
    print(_summary(counts, printed - 1), file=sys.stderr)
    return 0


def print_processes(coordinator: Coordinator, args: argparse.Namespace) -> int:
    """List the registered processes by name (starting with `--name-prefix`, at most
    `--limit`), page by page as they are printed."""
    processes = coordinator.iter_processes(args.name_prefix or "", None, args.limit)
    with closing(processes):
        if args.json:
            _print_json_array(processes)
            return 0
        for line in output.process_table_lines(processes):
            print(line)
    sys.stdout.flush()
    return 0


def _print_json_array(processes: Iterable[Process]) -> None:
    """The bytes `output.as_json` gives for the whole list, without holding it."""
    out = sys.stdout.buffer
    out.write(b"[")
    for i, process in enumerate(processes):
        out.write((b"," if i else b"") + orjson.dumps(process.to_json()))
    out.write(b"]\n")
    out.flush()


def print_events(coordinator: Coordinator, args: argparse.Namespace) -> int:
    """Print events, and with --follow keep polling for new ones until interrupted."""
    after = args.after
    while True:
        batch = coordinator.events(args.name, after, args.limit)
        for event in batch:
            if args.json:
                sys.stdout.buffer.write(output.json_line(event))
            else:
                sys.stdout.write(output.event_line(event, as_json=False) + "\n")
        sys.stdout.flush()
        if batch:
            after = batch[-1].id
        if not args.follow:
            return 0
        if not batch:
            time.sleep(FOLLOW_POLL_SECONDS)


def _state_filter(state: str | None) -> Callable[[BatchKey], bool] | None:
    """Which keys `--state` lets through: those in that state, or `never`: free, never completed.

    The state is the one the store read with each key (inspect.lua), so the table, the
    summary and --json cannot disagree with the API.
    """
    if state is None:
        return None
    if state == NEVER:
        return _never_completed
    return lambda k: k.state == state


def _never_completed(key: BatchKey) -> bool:
    return key.state == "free" and key.last_completed_at is None


def _tally(keys: Iterable[BatchKey], counts: Counter[str]) -> Iterator[BatchKey]:
    """Pass the keys on, counting them by state (and the free ones never completed)."""
    for key in keys:
        counts[key.state] += 1
        if _never_completed(key):
            counts[NEVER] += 1
        yield key


def _summary(counts: Counter[str], shown: int) -> str:
    """`10 keys: 1 held, 7 free (6 never completed), 2 quarantined`, saying how many were shown
    if fewer; a batch-run state (done, backoff, quarantined) is named only when a key is in it."""
    read = sum(counts[state] for state in KEY_STATES)
    noun = "key" if read == 1 else "keys"
    states = [f"{counts['held']} held", f"{counts['free']} free ({counts[NEVER]} never completed)"]
    states += [f"{counts[s]} {_SUMMARY_WORDS.get(s, s)}" for s in _BATCH_STATES if counts[s]]
    if shown == read:
        return f"{read} {noun}: {', '.join(states)}"
    return f"{shown} shown of {read} {noun} read: {', '.join(states)}"
