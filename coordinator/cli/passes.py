"""`coordinator pass start|show|wait` and `coordinator key show|retry`: batch runs."""

from __future__ import annotations

import argparse
import math
import sys
import time

import orjson

from coordinator import output
from coordinator.cli import statuses
from coordinator.cli.progress_text import progress_json, progress_text
from coordinator.client.sync import Coordinator
from coordinator.models import BatchKey, Pass, Redrive
from coordinator.validation import WAIT_SECONDS_MAX


def pass_command(coordinator: Coordinator, args: argparse.Namespace) -> int:
    """`pass start|show|wait NAME`: print the pass; `wait`'s exit status says how it ended."""
    name = args.name
    if args.action == "start":
        # Name the pass this start follows: a request retried after its answer was lost (a 503
        # after it ran) then starts one pass, not two.
        started = coordinator.start_pass(name, after=_current(coordinator, name).number).pass_
        assert started is not None  # every registered process has a current pass
        _print_pass(name, started, as_json=args.json)
        return 0
    if args.action == "show":
        if args.number is None:
            # The current pass as it goes: counts, rate, ETA and the quarantined keys.
            progress = coordinator.progress(name)
            print(progress_json(progress) if args.json else progress_text(progress))
            return 0
        _print_pass(name, coordinator.pass_info(name, args.number), as_json=args.json)
        return 0
    return _wait(coordinator, name, args.timeout, as_json=args.json)


def key_command(coordinator: Coordinator, args: argparse.Namespace) -> int:
    """`key show|retry NAME KEY`: print the key, after lifting its quarantine for `retry`;
    `key retry NAME KEY KEY...|--quarantined`: one line of what the bulk retry did."""
    if args.action == "retry" and (args.quarantined or len(args.key) > 1):
        if args.quarantined:
            done = coordinator.retry_quarantined(args.name)
        else:
            done = coordinator.retry_keys(args.name, args.key)
        print(orjson.dumps(done.to_json()).decode() if args.json else _redrive_line(done))
        return 0
    if args.action == "retry":
        key = coordinator.retry_key(args.name, args.key[0])
    else:
        key = coordinator.key(args.name, args.key)
    print(_render_key(key, as_json=args.json))
    return 0


def _wait(coordinator: Coordinator, name: str, timeout: float | None, *, as_json: bool) -> int:
    """Wait for the current pass to complete, one bounded server-side wait at a time.

    An outage of the service is ridden out by the client, call by call, up to its outage
    budget; past it, OutageTooLong ends the command with statuses.UNAVAILABLE."""
    deadline = None if timeout is None else time.monotonic() + timeout
    current = _current(coordinator, name)
    while not current.complete:
        wait = WAIT_SECONDS_MAX
        if deadline is not None:
            left = deadline - time.monotonic()
            if left <= 0:
                _print_pass(name, current, as_json=as_json)
                print(
                    f"coordinator: pass {current.number} of {name} is not complete after"
                    f" {timeout:g} s ({current.keys_done} keys done)",
                    file=sys.stderr,
                )
                return statuses.TIMED_OUT
            # Whole seconds, as the API takes them; the last wait rounds up, by under a second.
            wait = min(WAIT_SECONDS_MAX, max(1, math.ceil(left)))
        current = coordinator.pass_info(name, current.number, wait)
    _print_pass(name, current, as_json=as_json)
    if current.failed:
        print(
            f"coordinator: pass {current.number} of {name} failed: {current.keys_quarantined}"
            f" keys quarantined, more than its max_failed_keys (see `coordinator keys {name}"
            " --state quarantined`)",
            file=sys.stderr,
        )
        return statuses.PASS_FAILED
    if current.keys_quarantined:
        print(
            f"coordinator: pass {current.number} of {name} completed with"
            f" {current.keys_quarantined} keys quarantined (see `coordinator keys {name}`)",
            file=sys.stderr,
        )
        return statuses.QUARANTINED
    return statuses.OK


def _current(coordinator: Coordinator, name: str) -> Pass:
    current = coordinator.process(name).pass_
    assert current is not None  # every registered process has a current pass
    return current


def _print_pass(name: str, found: Pass, *, as_json: bool) -> None:
    print(output.as_json(found) if as_json else output.pass_table(name, found))


def _redrive_line(done: Redrive) -> str:
    return (
        f"retried {done.retried} keys: {done.quarantined} were quarantined,"
        f" {done.backoff} in backoff, {done.other} neither"
    )


def _render_key(key: BatchKey, *, as_json: bool) -> str:
    return output.as_json(key) if as_json else output.key_detail(key)
