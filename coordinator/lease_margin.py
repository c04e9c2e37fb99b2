"""How long before its expiry a lease stops being worth holding, for workers and the server.

A worker believes a lease held until the instant its grant or renewal was *sent*, plus the
lease's length, minus a safety margin (`coordinator.client.lease`). The server applies the
same margin to a grant whose answer came back late: a lease that a worker would not believe
held for even a moment after receiving it is given back instead of handed out.
"""

from __future__ import annotations

import time

# The margin covers the rate difference between this clock and the Redis server's over one
# lease (NTP slews at most 0.05 %), small steps of the server's wall clock (Redis TIME), and a
# pause (GC, a descheduled VM) between a passing check() and the write it guards. A tenth of
# the lease, at least half a second, but never over a quarter: a 1 s lease renewed every third
# must keep room for a slow round trip.
MARGIN_FRACTION = 0.1
MARGIN_FLOOR_SECONDS = 0.5


def safety_margin(length: float) -> float:
    """How long before a lease of `length` seconds expires it stops being believed held."""
    return min(max(MARGIN_FLOOR_SECONDS, length * MARGIN_FRACTION), length / 4)


def over_on_arrival(lease_ms: int, sent: float, arrived: float | None = None) -> bool:
    """Whether a lease of `lease_ms`, granted by a call sent at `sent` (monotonic seconds),
    may be over, or within its safety margin of over, when its answer `arrived`.

    The script ran at the earliest at `sent`, so at worst the lease started then.
    """
    length = lease_ms / 1000
    elapsed = (time.monotonic() if arrived is None else arrived) - sent
    return length - elapsed <= safety_margin(length)
