"""The commands that call the service: one client call each, then one document printed.

`keys`, `events` and `process list` stream instead (coordinator.cli.listing); `pass` and `key`
are batch runs' (coordinator.cli.passes); `run` holds a key while a command runs
(coordinator.cli.run).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable

import orjson

from coordinator import output
from coordinator.cli import listing, passes, transport
from coordinator.cli.run import run_job, run_loop
from coordinator.client.blocking_lease import Lease
from coordinator.client.sync import Coordinator
from coordinator.config import ConfigError
from coordinator.models import BatchKey, Process

# None: a release retried through an outage found its lease already ended by an earlier try.
Result = Process | BatchKey | list[Process] | None
# One call per command (`process` commands by their action).
_CALLS: dict[str, Callable[[Coordinator, argparse.Namespace], Result]] = {
    "register": lambda c, a: c.register(
        a.name,
        a.keys,
        a.lease_seconds,
        mode=a.mode,
        max_attempts=a.max_attempts,
        retry_backoff_seconds=a.retry_backoff,
        max_failed_keys=a.max_failed_keys,
    ),
    "delete": lambda c, a: c.unregister(a.name),
    "acquire": lambda c, a: c.acquire(a.name, a.machine, a.lease_seconds, a.wait),
    "renew": lambda c, a: c.renew(a.external_id, a.lease_seconds),
    "release": lambda c, a: c.release(a.external_id, a.outcome),
    "revoke": lambda c, a: c.revoke(a.external_id),
}
# The commands that print in their own way, and choose their own exit status.
_PRINTERS: dict[str, Callable[[Coordinator, argparse.Namespace], int]] = {
    "keys": listing.print_keys,
    "events": listing.print_events,
    "pass": passes.pass_command,
    "key": passes.key_command,
}


def client_command(args: argparse.Namespace) -> int:
    """Every command but `serve`, `token` and `completion`."""
    if args.command == "run" and not args.command_args:
        raise ConfigError("run needs a command: coordinator run PROCESS -- COMMAND ARGS...")
    with transport.client(args) as coordinator:
        if args.command in _PRINTERS:
            return _PRINTERS[args.command](coordinator, args)
        if args.command == "run":
            return (run_loop if args.loop else run_job)(
                coordinator,
                args.name,
                args.machine,
                args.command_args,
                wait_seconds=args.wait,
                lease_seconds=args.lease_seconds,
                announce=lambda lease: _announce(lease, as_json=args.json),
                fatal_exit_codes=frozenset(args.fatal_exit_code or ()),
            )
        if args.command == "process" and args.action == "list":
            return listing.print_processes(coordinator, args)
        if args.command == "process" and args.action == "purge":
            coordinator.purge_history(args.name)
            purged = {"process_name": args.name, "purged": True}
            print(_json(purged) if args.json else f"purged the history of {args.name}")
            return 0
        result = _CALLS[args.command if args.command != "process" else args.action](
            coordinator, args
        )
    print(_render(result, as_json=args.json))
    return 0


def _announce(lease: Lease, *, as_json: bool) -> None:
    """`run`'s one line on stderr: the key it holds, before the command starts."""
    if as_json:
        line = _json({**lease.batch_key.to_json(), "key_set_size": lease.key_set_size})
    else:
        line = (
            f"coordinator: holding key {lease.key} of {lease.batch_key.process_name}"
            f" (key_set_size {lease.key_set_size}, fencing token {lease.fencing_token},"
            f" external id {lease.external_id})"
        )
    print(line, file=sys.stderr, flush=True)


def _json(document: dict[str, object]) -> str:
    return orjson.dumps(document).decode()


def _render(result: Result, *, as_json: bool) -> str:
    if result is None:
        ended = "the lease had already ended: an earlier attempt of the release took effect"
        return "null" if as_json else ended
    if as_json:
        return output.as_json(result)
    if isinstance(result, Process):
        return output.processes_table([result])
    if isinstance(result, BatchKey):
        return output.keys_table([result])
    return output.processes_table(result)
