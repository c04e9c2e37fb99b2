"""Checks on the values of options and of the variables that stand in for them.

Each check raises argparse's ArgumentTypeError, whose message argparse prefixes with the
option's name; `from_env` reuses a check for a COORDINATOR_* variable.
"""

from __future__ import annotations

import argparse
import math
import os
from collections.abc import Callable
from typing import TypeVar

from coordinator import validation
from coordinator.config import ConfigError
from coordinator.errors import InvalidField
from coordinator.models import KEY_STATES

T = TypeVar("T")

# `keys --state never`: free keys never released completed (a filter, not a state of its own).
NEVER = "never"
# Every value `keys --state` accepts: the store's own states, then `never`.
KEY_STATE_CHOICES = (*KEY_STATES, NEVER)


def port(text: str) -> int:
    """A TCP port to listen on, 1 to 65535."""
    return _integer(text, 1, 65535, "a port number from 1 to 65535")


def positive(text: str) -> int:
    """An integer of at least 1."""
    return _integer(text, 1, None, "an integer of at least 1")


def key_number(text: str) -> int:
    """A key number: an integer of at least 0."""
    return _integer(text, 0, None, "a key number (an integer of at least 0)")


def seconds(text: str) -> float:
    """A number of seconds, 0 or more."""
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and value >= 0):
        raise argparse.ArgumentTypeError(f"must be a number of seconds (0 or more), not {text!r}")
    return value


def wait(text: str) -> float:
    """Seconds to wait for a free key, within the API's own bounds (0 to 60)."""
    value = seconds(text)
    return _within(validation.wait_seconds, int(value) if value.is_integer() else value)


def lease(text: str) -> int:
    """A lease's length in seconds, within the API's own bounds (1 to a day)."""
    return int(_within(validation.lease_seconds, positive(text)))


def max_attempts(text: str) -> int:
    """A retry budget: failed leases in a row before a key is quarantined (1 to 1000)."""
    top = validation.MAX_ATTEMPTS_MAX
    return _integer(text, 1, top, f"an integer from 1 to {top}")


def max_failed_keys(text: str) -> int:
    """Quarantined keys a `once` pass tolerates before it fails: 0 or more (the service
    checks it against the key set's size)."""
    return _integer(text, 0, None, "a number of keys (an integer of at least 0)")


def exit_status(text: str) -> int:
    """A command's exit status that `run` is told to treat specially: 1 to 255."""
    return _integer(text, 1, 255, "an exit status from 1 to 255")


def retry_backoff(text: str) -> int:
    """The first backoff after a failed lease, in whole seconds (0 to 3600)."""
    return _within(validation.retry_backoff_seconds, _integer(text, 0, None, "whole seconds"))


def pass_number(text: str) -> int:
    """A pass number: an integer of at least 1."""
    return _within(validation.pass_number, positive(text))


def from_env(name: str, check: Callable[[str], T]) -> T | None:
    """The checked value of variable `name`, None when unset or empty; ConfigError if bad."""
    raw = os.environ.get(name, "").strip()
    if not raw:
        return None
    try:
        return check(raw)
    except argparse.ArgumentTypeError as error:
        raise ConfigError(f"{name} {error}") from None


def _within(check: Callable[[object], T], value: object) -> T:
    """`value` passed through one of the API's own checks, its refusal as argparse's."""
    try:
        return check(value)
    except InvalidField as error:
        raise argparse.ArgumentTypeError(str(error).removeprefix(f"'{error.field}' ")) from None


def _integer(text: str, low: int, high: int | None, what: str) -> int:
    try:
        value = int(text.strip())
    except ValueError:
        value = low - 1
    if value < low or (high is not None and value > high):
        raise argparse.ArgumentTypeError(f"must be {what}, not {text!r}")
    return value
