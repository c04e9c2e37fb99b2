"""`coordinator ...`: the command line.

`parser` holds every command and option (`service_options` those of the commands that call
the service, `values` their checks); `serve` runs the API; `commands` and `listing` call it,
through `transport`, in the words of `messages`; `run` holds a key while a command runs;
`completion` prints shell completion. `main` runs one command and turns every failure into
one line on stderr and an exit status (`statuses`).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import warnings
from collections.abc import Sequence

from coordinator import extras
from coordinator.auth import TOKEN_PREFIX, new_token
from coordinator.cli import commands, completion, messages, service_options, statuses
from coordinator.cli.parser import UsageError, build_parser
from coordinator.cli.run import CommandNotRunnable
from coordinator.cli.stop import Stopped
from coordinator.config import ConfigError
from coordinator.embedded import EmbeddedError
from coordinator.errors import CoordinatorError, StoreUnavailable

# The commands that do not call the service, so take none of its options.
LOCAL_COMMANDS = ("serve", "token", "completion")


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `coordinator` console script: the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        return _run(argv)
    except KeyboardInterrupt as interrupt:
        # Ctrl-C may land between making a call's coroutine and handing it to the client's
        # loop: it is then never awaited, and Python would say so at exit. The command was
        # stopped on purpose; nothing is lost by not saying it.
        warnings.filterwarnings("ignore", "coroutine .* was never awaited", RuntimeWarning)
        if isinstance(interrupt, Stopped):  # `run`'s SIGINT or SIGTERM, before its command ran
            return statuses.SIGNALLED + interrupt.signum
        return statuses.INTERRUPTED
    except BrokenPipeError:
        # The flush at exit would fail again: send what is left nowhere.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return statuses.BROKEN_PIPE
    except (UsageError, ConfigError, EmbeddedError, CommandNotRunnable, CoordinatorError) as error:
        line, status = _failure(error)
        print(f"coordinator: {_redact(line, argv)}", file=sys.stderr)
        return status


def _failure(error: Exception) -> tuple[str, int]:
    """The one line a failure prints, and the exit status it ends with."""
    if isinstance(error, UsageError):
        return f"{error} (see `{error.prog} --help`)", statuses.USAGE
    if isinstance(error, CommandNotRunnable):
        return str(error), error.status
    if isinstance(error, StoreUnavailable):  # not refused: try again later
        return messages.describe(error), statuses.UNAVAILABLE
    if isinstance(error, CoordinatorError):
        return messages.describe(error), statuses.REFUSED
    return str(error), statuses.USAGE


def _run(argv: list[str]) -> int:
    # Everything after `--` belongs to `coordinator run`'s command, never to our parser.
    command_args: list[str] = []
    if "--" in argv:
        at = argv.index("--")
        argv, command_args = argv[:at], argv[at + 1 :]
    parser = build_parser()
    if not argv:
        parser.print_help()
        return 0
    args = parser.parse_args(argv)
    args.command_args = command_args or getattr(args, "command_rest", [])
    _configure_logging(args.command)
    if args.command in LOCAL_COMMANDS:
        _refuse_client_options(args)
    if args.command == "serve":
        # The server stack is an extra: a worker's install has the CLI without it.
        extras.require("server", "`coordinator serve`")
        from coordinator.cli import serve  # noqa: PLC0415 - imports the server stack

        return serve.serve(args)
    if args.command == "token":
        return _create_token(args)
    if args.command == "completion":
        sys.stdout.write(completion.script(args.shell, parser))
        return 0
    return commands.client_command(args)


def _refuse_client_options(args: argparse.Namespace) -> None:
    for name in service_options.NAMES:
        given = getattr(args, name, None)
        if given is not None and given is not False:  # `--outage-budget 0` was given too
            flag = "--" + name.replace("_", "-")
            raise UsageError(
                f"{flag} is an option of the commands that call the service, not of"
                f" `{args.command}`",
                "coordinator",
            )


def _create_token(args: argparse.Namespace) -> int:
    try:
        token, line = new_token(args.role, args.processes)
    except ConfigError as error:
        raise ConfigError(f"--processes: {error}") from None
    print(f"token: {token}")
    print(f"(shown once: give it to the {args.role}; the service keeps only its hash)")
    print(f"add this line to COORDINATOR_TOKENS_FILE:\n{line}")
    return 0


def _configure_logging(command: str) -> None:
    if command == "serve":
        logging.basicConfig(level=logging.INFO, format="%(levelname)s:     %(message)s")
    else:
        logging.basicConfig(level=logging.WARNING, format="coordinator: %(message)s")
        # `run` reports a lost lease itself, once, with its cause.
        logging.getLogger("coordinator.client").setLevel(logging.ERROR)
        # But an outage is said as it begins and ends: a worker riding one out is not hung.
        logging.getLogger("coordinator.client.outage").setLevel(logging.WARNING)
    # httpx logs every request at INFO: that would break the one-line error contract.
    logging.getLogger("httpx").setLevel(logging.WARNING)


def _redact(text: str, argv: list[str]) -> str:
    """`text` without any token the command line or COORDINATOR_TOKEN holds."""
    secrets = {os.environ.get("COORDINATOR_TOKEN", "").strip()}
    for at, arg in enumerate(argv):
        if arg == "--token" and at + 1 < len(argv):
            secrets.add(argv[at + 1])
        elif arg.startswith("--token="):
            secrets.add(arg.partition("=")[2])
        elif arg.startswith(TOKEN_PREFIX):
            secrets.add(arg)
    for secret in sorted(secrets, key=len, reverse=True):
        if len(secret) >= 4:
            text = text.replace(secret, "****")
    return text
