"""One exception type per way an operation can fail; HTTP and direct workers share them."""

from __future__ import annotations


class CoordinatorError(Exception):
    """Base of every failure the coordinator reports to its caller."""

    code = "coordinator_error"


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


class NoFreeKey(CoordinatorError):
    """Every key of the process is under a live lease."""

    code = "no_free_key"

    def __init__(self, process_name: str, retry_after_us: int) -> None:
        super().__init__(f"All keys of process '{process_name}' are leased.")
        self.process_name = process_name
        self.retry_after_us = retry_after_us

    @property
    def retry_after_seconds(self) -> int:
        """Whole seconds until the earliest lease expires, at least 1."""
        return max(1, -(-self.retry_after_us // 1_000_000))


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
    """Redis could not be reached or did not answer in time."""

    code = "store_unavailable"


class UnexpectedReply(CoordinatorError):
    """A script answered with a status code this version does not know."""

    code = "unexpected_reply"


class InvalidField(CoordinatorError):
    """A field is missing, of the wrong type, or out of range."""

    code = "invalid_field"

    def __init__(self, field: str, detail: str) -> None:
        super().__init__(f"'{field}' {detail}")
        self.field = field
