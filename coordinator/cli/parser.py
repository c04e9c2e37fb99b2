"""The `coordinator` argument parser: every command and option, each with its help."""

from __future__ import annotations

import argparse
import textwrap
from typing import NoReturn

from coordinator import __version__, validation
from coordinator.cli import service_options, statuses, values
from coordinator.cli.service_options import DEFAULT_URL
from coordinator.machine import default_machine

SHELLS = ("bash", "zsh", "fish")
MODES = ("rotate", "once")

EPILOG = f"""\
The options --url, --token, --redis-url, --direct, --prefix, --outage-budget and --json go
before or after the command: `coordinator --json process list` is `coordinator process list
--json`.

Where the commands find the service: --url (COORDINATOR_URL), else the `coordinator serve`
running on COORDINATOR_DATA_DIR (./.coordinator-data), else {DEFAULT_URL}. With
--redis-url or --direct they run the service's scripts on its Redis instead.

--json: a command that answers once prints one JSON document, in the API's shapes; a command
that streams (keys, events) prints JSON Lines, one object per line, as it reads them.

{textwrap.fill(statuses.summary(), 94)}

Completion: eval "$(coordinator completion bash)" in ~/.bashrc (zsh likewise;
fish: coordinator completion fish | source).
"""


class UsageError(Exception):
    """A command line the parser refuses; `prog` is the command whose --help explains it."""

    def __init__(self, message: str, prog: str) -> None:
        super().__init__(message)
        self.prog = prog


class Parser(argparse.ArgumentParser):
    """argparse, raising UsageError instead of printing the usage and exiting."""

    def error(self, message: str) -> NoReturn:
        """Hand the refusal to `main`, which reports it on one line."""
        raise UsageError(message, self.prog)


Commands = argparse._SubParsersAction  # what add_subparsers returns


def build_parser() -> Parser:
    """The whole command line."""
    parser = Parser(
        prog="coordinator",
        description="Hands out numbered batch keys to workers, so many machines can split"
        " one batch job.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        allow_abbrev=False,
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    service_options.add(parser, at_top=True)
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    _add_serve(commands)
    _add_token(commands)
    _add_process(commands)
    _add_key_commands(commands)
    _add_pass(commands)
    _add_key(commands)
    _add_events(commands)
    _add_run(commands)
    completion = _command(commands, "completion", "print a shell completion script")
    completion.add_argument(
        "shell", choices=SHELLS, metavar="SHELL", help="the shell: bash, zsh or fish"
    )
    return parser


def _command(
    commands: Commands[Parser], name: str, summary: str, description: str | None = None
) -> Parser:
    """A subcommand; `summary` is its line in its parent's help."""
    parser: Parser = commands.add_parser(
        name,
        help=summary,
        description=description or summary[0].upper() + summary[1:] + ".",
        allow_abbrev=False,
    )
    return parser


def _client_command(
    commands: Commands[Parser], name: str, summary: str, description: str | None = None
) -> Parser:
    """A subcommand that calls the service."""
    parser = _command(commands, name, summary, description)
    service_options.add(parser, at_top=False)
    return parser


def _add_serve(commands: Commands[Parser]) -> None:
    serve = _command(
        commands,
        "serve",
        "run the HTTP API",
        "Run the HTTP API. Without COORDINATOR_REDIS_URL it starts a private Valkey with its"
        " data in COORDINATOR_DATA_DIR (./.coordinator-data).",
    )
    serve.add_argument("--host", help="address to listen on (COORDINATOR_HOST; else 127.0.0.1)")
    serve.add_argument(
        "--port", type=values.port, help="port to listen on (COORDINATOR_PORT; else 8000)"
    )
    serve.add_argument(
        "--workers",
        type=values.positive,
        default=1,
        help="API processes sharing the port (default 1)",
    )
    serve.add_argument(
        "--log-level",
        choices=["debug", "info", "warning", "error"],
        help="log level (COORDINATOR_LOG_LEVEL; default info); each request is one JSON line",
    )
    serve.add_argument(
        "--insecure-open",
        action="store_true",
        help="allow listening beyond loopback with no API tokens configured",
    )


def _add_token(commands: Commands[Parser]) -> None:
    token = _command(commands, "token", "make API tokens")
    actions = token.add_subparsers(dest="action", metavar="COMMAND", required=True)
    create = _command(actions, "create", "print a new token once, and the line that grants it")
    create.add_argument(
        "--role",
        choices=["admin", "worker"],
        required=True,
        help="admin may do everything; worker may list, acquire, renew and release",
    )
    create.add_argument(
        "--processes", help="limit it to these process names or patterns (a,b,reports-*)"
    )


def _add_process(commands: Commands[Parser]) -> None:
    process = _command(
        commands, "process", "list, register or delete processes, or purge a deleted one's history"
    )
    actions = process.add_subparsers(dest="action", metavar="COMMAND", required=True)
    listed = _client_command(
        actions,
        "list",
        "list the registered processes",
        "List the registered processes by name, page by page as they are printed.",
    )
    # Not --prefix: that is the Redis key prefix of every client command.
    listed.add_argument(
        "--name-prefix",
        metavar="PREFIX",
        help="only the processes whose names start with this (e.g. nightly-)",
    )
    listed.add_argument("--limit", type=values.positive, help="list at most this many processes")
    register = _client_command(actions, "register", "register a process")
    register.add_argument(
        "name", metavar="NAME", help="the process name (letters, digits and . _ : -)"
    )
    register.add_argument(
        "--keys", type=values.positive, help="how many keys it has: its key_set_size (default 10)"
    )
    register.add_argument(
        "--lease-seconds",
        type=values.lease,
        help="the lease of its grants (default: the service's, 3600)",
    )
    register.add_argument(
        "--mode",
        choices=MODES,
        help="rotate hands keys out forever; once stops each pass when every key is done"
        " (default rotate)",
    )
    register.add_argument(
        "--max-attempts",
        type=values.max_attempts,
        help="quarantine a key after this many failed leases in a row (1-1000; default: never)",
    )
    register.add_argument(
        "--retry-backoff",
        type=values.retry_backoff,
        metavar="SECONDS",
        help="hold a failed key back this long, doubling per failure (0-3600; default 0)",
    )
    register.add_argument(
        "--max-failed-keys",
        type=values.max_failed_keys,
        metavar="N",
        help="with --mode once: a pass in which more than N keys are quarantined fails (its"
        f" grants answer pass_failed, `pass wait` exits {statuses.PASS_FAILED}; default: never)",
    )
    delete = _client_command(actions, "delete", "delete a process, ending all of its leases")
    delete.add_argument("name", metavar="NAME", help="the process name")
    purge = _client_command(
        actions,
        "purge",
        "forget a deleted process's history now (admin); it otherwise expires by itself",
    )
    purge.add_argument("name", metavar="NAME", help="the deleted process's name")


def _add_key_commands(commands: Commands[Parser]) -> None:
    keys = _client_command(
        commands,
        "keys",
        "list the state of a process's keys",
        "List a process's keys as they are read, in order, with a summary on stderr. A key is"
        " held while its lease has not ended or expired; done once completed in the current"
        " pass of a `once` process; in backoff until its retry_at after a failed lease;"
        " quarantined after max_attempts failed leases in a row; free (grantable) otherwise.",
    )
    keys.add_argument("name", metavar="NAME", help="the process name")
    keys.add_argument(
        "--state",
        choices=values.KEY_STATE_CHOICES,
        help="only the keys in this state (never: free ones never completed)",
    )
    keys.add_argument("--limit", type=values.positive, help="list at most this many keys")
    keys.add_argument(
        "--after", type=values.key_number, help="start after this key number (to page)"
    )

    acquire = _client_command(commands, "acquire", "lease a key and print it")
    acquire.add_argument("name", metavar="NAME", help="the process name")
    _add_lease_request(acquire)

    renew = _client_command(commands, "renew", "extend a lease from now")
    renew.add_argument("external_id", metavar="EXTERNAL_ID", help="the lease's external_id")
    renew.add_argument(
        "--lease-seconds", type=values.lease, help="the new length (default: the lease's own)"
    )
    release = _client_command(commands, "release", "end a lease")
    release.add_argument("external_id", metavar="EXTERNAL_ID", help="the lease's external_id")
    release.add_argument(
        "--outcome",
        choices=validation.OUTCOMES,
        default="completed",
        help="completed stamps the key's completion time; failed leaves it first in line and"
        " counts an attempt; interrupted gives it back as it was (no attempt, checkpoint kept);"
        " fatal quarantines it at once, whatever max_attempts",
    )
    revoke = _client_command(commands, "revoke", "end anyone's lease now (admin)")
    revoke.add_argument("external_id", metavar="EXTERNAL_ID", help="the lease's external_id")


def _add_pass(commands: Commands[Parser]) -> None:
    passes = _command(commands, "pass", "start, show or wait for a process's passes")
    actions = passes.add_subparsers(dest="action", metavar="COMMAND", required=True)
    start = _client_command(
        actions, "start", "start the next pass now (admin): every key grantable again"
    )
    start.add_argument("name", metavar="NAME", help="the process name")
    show = _client_command(
        actions,
        "show",
        "print the current pass's progress (rate, ETA, quarantined keys), or pass --number N",
    )
    show.add_argument("name", metavar="NAME", help="the process name")
    show.add_argument(
        "--number", type=values.pass_number, help="the pass to show (default: the current one)"
    )
    wait = _client_command(
        actions,
        "wait",
        "wait for the current pass to complete",
        "Wait for the current pass to complete and print it: exit"
        f" {statuses.OK} when every key was done, {statuses.QUARANTINED} when it completed with"
        f" quarantined keys, {statuses.TIMED_OUT} when --timeout passed first,"
        f" {statuses.UNAVAILABLE} when the service stayed unreachable for the whole outage"
        " budget (--outage-budget).",
    )
    wait.add_argument("name", metavar="NAME", help="the process name")
    wait.add_argument(
        "--timeout",
        type=values.seconds,
        help=f"give up after this many seconds, with exit status {statuses.TIMED_OUT}"
        " (default: wait for ever)",
    )


def _add_key(commands: Commands[Parser]) -> None:
    key = _command(commands, "key", "show or retry one key of a process")
    actions = key.add_subparsers(dest="action", metavar="COMMAND", required=True)
    show = _client_command(actions, "show", "print one key, with its attempts and checkpoint")
    retry = _client_command(
        actions,
        "retry",
        "lift quarantine and backoff, resetting attempts (admin): of one key (printed), of"
        f" several (up to {validation.RETRY_KEYS_MAX}), or of every quarantined key; with"
        " several, one line of counts by the state each key was in",
    )
    for parser in (show, retry):
        parser.add_argument("name", metavar="NAME", help="the process name")
    show.add_argument(
        "key", metavar="KEY", type=values.key_number, help="the key number (0 to keys - 1)"
    )
    which = retry.add_mutually_exclusive_group(required=True)
    which.add_argument(
        "key", metavar="KEY", type=values.key_number, nargs="*", default=[],
        help="key numbers (0 to keys - 1)",
    )  # fmt: skip
    which.add_argument(
        "--quarantined", action="store_true", help="every quarantined key of the process"
    )


def _add_lease_request(parser: Parser) -> None:
    """The options of a grant, shared by `acquire` and `run`."""
    parser.add_argument(
        "--machine",
        default=default_machine(),
        help="recorded with the lease (default: this host's name and this process's id, HOST:PID)",
    )
    parser.add_argument(
        "--lease-seconds",
        type=values.lease,
        help="the lease's length (default: the process's)",
    )
    parser.add_argument(
        "--wait",
        type=values.wait,
        default=0,
        help="seconds to wait for a key to free when all are held (up to 60; default 0)",
    )


def _add_events(commands: Commands[Parser]) -> None:
    events = _client_command(commands, "events", "print a process's history")
    events.add_argument("name", metavar="NAME", help="the process name")
    events.add_argument("--after", default="-", help="only events after this event id")
    events.add_argument(
        "--limit", type=values.positive, default=100, help="at most this many (default 100)"
    )
    events.add_argument(
        "--follow", action="store_true", help="keep printing new events until Ctrl-C"
    )


def _add_run(commands: Commands[Parser]) -> None:
    run = _client_command(
        commands,
        "run",
        "hold a key while a command runs",
        "Acquire a key, run COMMAND with BATCH_KEY, KEY_SET_SIZE, FENCING_TOKEN, EXTERNAL_ID"
        " and PROCESS_NAME in its environment, renew the lease while it runs, release it"
        " `completed` on exit 0 and `failed` otherwise; exit with the command's status."
        " SIGINT or SIGTERM is passed to the command, and its key is then released"
        " `interrupted` (no attempt counted, checkpoint kept); if `run` is killed, its"
        " command is killed with it (Linux). An unreachable service is retried for the"
        f" outage budget, then `run` exits {statuses.UNAVAILABLE}. The key it holds is printed"
        " on stderr first. BATCH_CHECKPOINT holds the key's saved checkpoint (empty if"
        " none); what the command writes to the file BATCH_CHECKPOINT_FILE names is saved as"
        " the checkpoint at each renewal and at a failed exit. A `once` process whose pass is"
        " complete exits 0 at once: nothing to run. With --loop, one `run` works key after"
        " key until the pass is complete.",
    )
    run.add_argument("name", metavar="NAME", help="the process name")
    _add_lease_request(run)
    run.add_argument(
        "--loop",
        action="store_true",
        help="run the command under key after key until the pass of a `once` process is"
        " complete (exit 0) or SIGINT/SIGTERM (128 + N); a failed command releases its key"
        " `failed` and the loop goes on; when no key is free, wait (--wait, else 30 s at a"
        " time) and ask again",
    )
    run.add_argument(
        "--fatal-exit-code",
        type=values.exit_status,
        action="append",
        metavar="N",
        help="a command exit status N means the work can never succeed as it is: release the"
        " key `fatal`, which quarantines it at once whatever max_attempts (repeatable)",
    )
    # Not REMAINDER: that would swallow the options after NAME (main() splits off `-- ...`).
    run.add_argument(
        "command_rest",
        nargs="*",
        metavar="-- COMMAND ARGS...",
        help="the command to run, after --",
    )
