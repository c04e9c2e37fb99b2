"""One exception type per way an operation can fail; HTTP and direct workers share them."""

from __future__ import annotations


class CoordinatorError(Exception):
    """Base of every failure the coordinator reports to its caller."""

    code = "coordinator_error"
    """The stable word the HTTP API answers in its problem document's `code` for this failure."""


class UnknownProcess(CoordinatorError):
    """No process of this name is registered."""

    code = "unknown_process"

    def __init__(self, process_name: str) -> None:
        super().__init__(f"No process named '{process_name}' is registered.")
        self.process_name = process_name


class ProcessExists(CoordinatorError):
    """A process of this name is already registered."""

    code = "process_exists"

    def __init__(self, process_name: str, detail: str | None = None) -> None:
        super().__init__(detail or f"A process named '{process_name}' is already registered.")
        self.process_name = process_name


# The longest a 409 no_free_key tells a client to wait before asking again: a release can come
# any moment, and a wait for one (wait_seconds) is the way to learn of it at once.
RETRY_AFTER_MAX_SECONDS = 10


class NoFreeKey(CoordinatorError):
    """Every key of the process is under a live lease."""

    code = "no_free_key"

    def __init__(self, process_name: str, retry_after_us: int) -> None:
        # validation imports this module, so its bound is read here rather than at the top.
        from coordinator.validation import WAIT_SECONDS_MAX  # noqa: PLC0415

        super().__init__(
            f"All keys of process '{process_name}' are leased; send wait_seconds (up to"
            f" {WAIT_SECONDS_MAX}) to wait for a release instead of polling."
        )
        self.process_name = process_name
        self.retry_after_us = retry_after_us  # until the earliest lease expires

    @property
    def retry_after_seconds(self) -> int:
        """When to ask again: whole seconds until the earliest lease expires, at least 1 and
        at most RETRY_AFTER_MAX_SECONDS (a release may free a key sooner)."""
        until_expiry = -(-self.retry_after_us // 1_000_000)
        return max(1, min(RETRY_AFTER_MAX_SECONDS, until_expiry))


class UnknownKey(CoordinatorError):
    """The process has no key of this number: its keys are 0 to key_set_size - 1."""

    code = "unknown_key"

    def __init__(self, process_name: str, key: int, key_set_size: int | None = None) -> None:
        known = "" if key_set_size is None else f": its keys are 0 to {key_set_size - 1}"
        super().__init__(f"Process '{process_name}' has no key {key}{known}.")
        self.process_name = process_name
        self.key = key


class PassComplete(CoordinatorError):
    """A `once` process whose current pass is complete: there is nothing left to do."""

    code = "pass_complete"

    def __init__(self, process_name: str) -> None:
        super().__init__(
            f"The current pass of process '{process_name}' is complete: every key is done or"
            " quarantined. Start the next pass to work again."
        )
        self.process_name = process_name


class PassFailed(PassComplete):
    """A `once` pass that ended as failed: more keys were quarantined than the process's
    max_failed_keys. A complete pass too, so whatever stops on one stops on the other."""

    code = "pass_failed"

    def __init__(self, process_name: str) -> None:
        CoordinatorError.__init__(
            self,
            f"The current pass of process '{process_name}' failed: more keys were quarantined"
            " than its max_failed_keys. Retry the quarantined keys or start the next pass.",
        )
        self.process_name = process_name


class AllQuarantined(CoordinatorError):
    """Nothing is grantable, held or in backoff: every other key is quarantined."""

    code = "all_quarantined"

    def __init__(self, process_name: str) -> None:
        super().__init__(
            f"Every key of process '{process_name}' that is not held is quarantined: retry"
            " them or start the next pass."
        )
        self.process_name = process_name


class UnknownPass(CoordinatorError):
    """The pass number was never started, or is too old to be kept."""

    code = "unknown_pass"

    def __init__(self, process_name: str, number: int) -> None:
        super().__init__(f"Process '{process_name}' has no pass {number} (the last 100 are kept).")
        self.process_name = process_name
        self.number = number


class UnknownLease(CoordinatorError):
    """No lease with this external id was ever granted."""

    code = "unknown_lease"

    def __init__(self, external_id: str) -> None:
        super().__init__(f"No lease '{external_id}' was ever granted.")
        self.external_id = external_id


class LeaseGone(CoordinatorError):
    """The lease was granted and has ended: released, expired, or its process deleted."""

    code = "lease_gone"

    def __init__(self, external_id: str) -> None:
        super().__init__(
            f"Lease '{external_id}' has ended (released, expired, or its process was deleted)."
        )
        self.external_id = external_id


class NotLeaseHolder(CoordinatorError):
    """The lease is held by another API token: only its holder or an admin may end or extend it."""

    code = "not_lease_holder"

    def __init__(self, external_id: str) -> None:
        super().__init__(
            f"Lease '{external_id}' was granted to another token; only its holder or an admin"
            " token may renew or release it."
        )
        self.external_id = external_id


class StoreUnavailable(CoordinatorError):
    """Redis could not be reached or did not answer in time: try again later.

    The base of every "try again later" failure, so `except StoreUnavailable` catches them all.
    """

    code = "store_unavailable"


class ServiceUnreachable(StoreUnavailable):
    """The coordinator's HTTP API did not answer (refused, timed out, or a proxy's 5xx)."""

    code = "service_unreachable"


class OutageTooLong(StoreUnavailable):
    """A client retried a transient failure for its whole outage budget and gave up."""

    code = "outage_too_long"

    def __init__(self, where: str, budget_seconds: float, last_error: BaseException) -> None:
        super().__init__(
            f"{where} stayed unreachable for {budget_seconds:g} s (the outage budget; set"
            f" COORDINATOR_OUTAGE_BUDGET_SECONDS or --outage-budget): {last_error}"
        )
        self.budget_seconds = budget_seconds
        self.last_error = last_error


class UnexpectedReply(CoordinatorError):
    """A script answered with a status code this version does not know."""

    code = "unexpected_reply"


class InvalidField(CoordinatorError):
    """A field is missing, of the wrong type, or out of range."""

    code = "invalid_field"

    def __init__(self, field: str, detail: str) -> None:
        super().__init__(f"'{field}' {detail}")
        self.field = field
