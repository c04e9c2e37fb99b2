"""The exit statuses of `coordinator`, declared once: `main`, `run`, `pass wait`, the help's
epilog and the tests read them here."""

from __future__ import annotations

OK = 0
REFUSED = 1  # the service refused: one line says why
QUARANTINED = 1  # `pass wait`: the pass completed, but with keys quarantined
USAGE = 2  # a bad option or setting
TIMED_OUT = 3  # `pass wait --timeout` passed first
PASS_FAILED = 4  # `pass wait`: the pass failed (more keys quarantined than max_failed_keys)
# EX_TEMPFAIL (sysexits.h): the service stayed unreachable for the whole outage budget. Nothing
# was refused, so a supervisor or a cron wrapper may start the same command again later.
UNAVAILABLE = 75
NOT_EXECUTABLE = 126  # `run`'s command cannot be executed, as a shell says it
NOT_FOUND = 127  # `run`'s command is not found, as a shell says it
SIGNALLED = 128  # + N: stopped by signal N, as a shell reports it
INTERRUPTED = SIGNALLED + 2  # SIGINT: Ctrl-C
BROKEN_PIPE = SIGNALLED + 13  # SIGPIPE: the reader went away (`coordinator keys x | head`)

# What each status means, in the order `coordinator --help` lists them.
MEANINGS: tuple[tuple[str, str], ...] = (
    (f"{OK}", "done"),
    (
        f"{REFUSED}",
        "the service refused (one line says why), or the pass `pass wait` waited for"
        " completed with quarantined keys",
    ),
    (f"{USAGE}", "a bad option or setting"),
    (f"{TIMED_OUT}", "`pass wait --timeout` passed"),
    (
        f"{PASS_FAILED}",
        "the pass `pass wait` waited for failed: more keys quarantined than its max_failed_keys",
    ),
    (
        f"{UNAVAILABLE}",
        "the service stayed unreachable for the whole outage budget (--outage-budget): try"
        " again later",
    ),
    (f"{NOT_EXECUTABLE} or {NOT_FOUND}", "`run`'s command cannot be run or is not found"),
    (f"{INTERRUPTED}", "interrupted (Ctrl-C)"),
    (f"{SIGNALLED}+N", "`run` stopped by signal N (SIGTERM: 143) before its command ran"),
)


def summary() -> str:
    """The statuses as one sentence, for the help's epilog."""
    listed = "; ".join(f"{status} {meaning}" for status, meaning in MEANINGS)
    return f"Exit status: {listed}; otherwise `run` exits with its command's status."
