"""The clients' one retry policy: ride out an outage of the service, up to a budget.

A transient failure (StoreUnavailable, and its ServiceUnreachable: a refused or reset
connection, a timeout, a 5xx) is retried after a capped exponential backoff with full jitter,
so workers that lost the service together do not come back in step. One call gives up when
its outage has lasted the budget, with OutageTooLong; the client says once that the service
went away and once that it came back, however many calls retry meanwhile.
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
import time
from urllib.parse import urlsplit, urlunsplit

from coordinator.config import ConfigError
from coordinator.errors import OutageTooLong, StoreUnavailable

# A logger of its own, so a program can show outages while quieting the client's other warnings
# (the CLI does: `run` reports a lost lease itself).
logger = logging.getLogger("coordinator.client.outage")

# Long enough for an API deploy or a Valkey failover (seconds to a minute), short enough
# that a worker whose service is gone for good says so while someone is still looking.
OUTAGE_BUDGET_SECONDS = 300.0
OUTAGE_BUDGET_ENV = "COORDINATOR_OUTAGE_BUDGET_SECONDS"
BACKOFF_FIRST_SECONDS = 0.1
BACKOFF_CAP_SECONDS = 5.0


def outage_budget(seconds: float | None = None) -> float:
    """The budget a client rides outages for: `seconds`, else the environment's, else 300 s."""
    if seconds is None:
        configured = os.environ.get(OUTAGE_BUDGET_ENV, "").strip()
        if not configured:
            return OUTAGE_BUDGET_SECONDS
        try:
            seconds = float(configured)
        except ValueError:
            raise ConfigError(
                f"{OUTAGE_BUDGET_ENV} must be a number of seconds, not {configured!r}"
            ) from None
    if not seconds >= 0:  # also refuses NaN
        raise ConfigError(f"the outage budget must be 0 or more seconds, not {seconds}")
    return seconds


def backoff_seconds(retry: int) -> float:
    """How long to wait before retry number `retry` (0 first): full jitter under a doubling cap."""
    ceiling = min(BACKOFF_CAP_SECONDS, BACKOFF_FIRST_SECONDS * 2 ** min(retry, 32))
    return random.uniform(0, ceiling)  # noqa: S311 - spreading retries, not a secret


def without_credentials(url: str) -> str:
    """`url` as it may be logged: no user or password."""
    parts = urlsplit(url)
    host = parts.netloc.rpartition("@")[2]
    return urlunsplit(parts._replace(netloc=host))


class OutageLog:
    """One client's view of the service: one line when it stops answering, one when it is back."""

    def __init__(self, where: str, budget: float) -> None:
        self.where = where  # "the service at http://…", "Redis at redis://…"
        self.budget = budget
        self._since: float | None = None

    def failed(self, error: StoreUnavailable) -> None:
        """A call failed transiently: the first since the service last answered is logged."""
        if self._since is None:
            self._since = time.monotonic()
            logger.warning(
                "%s unreachable, retrying for up to %g s: %s", self.where, self.budget, error
            )

    def answered(self) -> None:
        """A call was answered: if an outage had been logged, say that it is over."""
        if self._since is not None:
            lasted, self._since = time.monotonic() - self._since, None
            logger.warning("%s answers again, after %.1f s", self.where, lasted)


class Retrying:
    """One call's retries: waits out a transient failure, or raises OutageTooLong."""

    def __init__(self, log: OutageLog) -> None:
        self._log = log
        self._first_failure: float | None = None
        self._retries = 0

    @property
    def retried(self) -> bool:
        """Whether an earlier attempt of this call failed (its answer may have been lost)."""
        return self._retries > 0

    async def after(self, error: StoreUnavailable) -> None:
        """Wait before the next attempt; raise OutageTooLong once the budget is spent."""
        self._log.failed(error)
        now = time.monotonic()
        if self._first_failure is None:
            self._first_failure = now
        left = self._log.budget - (now - self._first_failure)
        if left <= 0:
            raise OutageTooLong(self._log.where, self._log.budget, error) from error
        delay = min(backoff_seconds(self._retries), left)
        logger.debug("retrying in %.2f s after %r", delay, error)
        self._retries += 1
        await asyncio.sleep(delay)

    def answered(self) -> None:
        """The call was answered (a result or a definite error)."""
        self._log.answered()
