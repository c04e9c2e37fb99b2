"""External ids: UUIDv8 values that carry the process and the fencing token of a lease.

An id is ``process_id(name)`` (64 bits of SHA-256 of the name) followed by the 58-bit fencing
token, laid out as an RFC 9562 version 8 UUID. Releasing or renewing therefore needs no
per-lease index: the id names its process, and the token tells a live lease, an ended one
(token issued before), and one never granted (token not issued yet) apart.
"""

from __future__ import annotations

import functools
import hashlib
import re
import uuid

PROCESS_ID_BITS = 64
TOKEN_BITS = 58
MAX_TOKEN = (1 << TOKEN_BITS) - 1
_LOW_62 = (1 << 62) - 1
# The one spelling issued (str(UUID)). uuid.UUID also reads upper case, no hyphens, braces,
# "urn:uuid:" and non-ASCII digits: six names for one lease in logs and in whatever a caller
# keys by the id, each an id never issued. [0-9], unlike \d, is ASCII only.
_CANONICAL = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


@functools.lru_cache(maxsize=4096)
def process_id(name: str) -> int:
    """The 64-bit id of a process name: the leading bits of its SHA-256 (cached: every grant
    of a process hashes the same name)."""
    digest = hashlib.sha256(name.encode()).digest()
    return int.from_bytes(digest[: PROCESS_ID_BITS // 8], "big")


def compose(name: str, token: int) -> uuid.UUID:
    """The external id of the lease with fencing `token` on process `name`."""
    return uuid.UUID(int=_value(name, token))


def external_id(name: str, token: int) -> str:
    """`str(compose(name, token))`, formatted without building the UUID object."""
    h = f"{_value(name, token):032x}"
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


def _value(name: str, token: int) -> int:
    payload = (process_id(name) << TOKEN_BITS) | token  # 122 bits
    high, low = payload >> 62, payload & _LOW_62  # 60 and 62 bits
    return (high >> 12) << 80 | 0x8 << 76 | (high & 0xFFF) << 64 | 0b10 << 62 | low


def parse(external_id: str) -> tuple[int, int] | None:
    """(process id, fencing token) of an id this service issued, or None if it cannot be one
    (any spelling but the canonical lower-case hyphenated one included)."""
    if not _CANONICAL.fullmatch(external_id):
        return None
    value = uuid.UUID(external_id)
    if value.version != 8 or value.variant != uuid.RFC_4122:
        return None
    n = value.int
    high = (n >> 80) << 12 | (n >> 64) & 0xFFF
    payload = high << 62 | n & _LOW_62
    token = payload & MAX_TOKEN
    if token == 0:
        return None
    return payload >> TOKEN_BITS, token
