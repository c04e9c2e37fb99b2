"""The one line a failure prints, in the words of the command line: the flag the user typed
(`--wait`), not the API's field (`wait_seconds`), and what to do next."""

from __future__ import annotations

from coordinator.auth import Unauthorized
from coordinator.errors import CoordinatorError, InvalidField, NoFreeKey, ServiceUnreachable
from coordinator.validation import WAIT_SECONDS_MAX

# The API's field names, as the options or arguments that carry them.
FLAGS = {
    "wait_seconds": "--wait",
    "lease_seconds": "--lease-seconds",
    "key_set_size": "--keys",
    "machine": "--machine",
    "outcome": "--outcome",
    "limit": "--limit",
    "after": "--after",
    "process_name": "the process name",
    "external_id": "the external id",
}


def describe(error: CoordinatorError) -> str:
    """The failure as one line (without the `coordinator: ` that precedes it)."""
    if isinstance(error, InvalidField):
        detail = str(error).removeprefix(f"'{error.field}' ")
        return f"{FLAGS.get(error.field, repr(error.field))} {detail}"
    if isinstance(error, NoFreeKey):
        return (
            f"All keys of process '{error.process_name}' are leased: pass --wait SECONDS"
            f" (up to {WAIT_SECONDS_MAX}) to wait for a release."
        )
    if isinstance(error, Unauthorized):
        return (
            f"{error} Pass a token with --token or COORDINATOR_TOKEN (an admin makes one with"
            " `coordinator token create`)."
        )
    if isinstance(error, ServiceUnreachable):
        return f"{error} (choose the service with --url or COORDINATOR_URL)"
    return " ".join(str(error).split())  # one line, whatever the service said
