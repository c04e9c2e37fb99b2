"""API tokens: kept only as SHA-256 hashes, each with a role and optionally some processes.

A tokens file (COORDINATOR_TOKENS_FILE) or COORDINATOR_TOKENS holds one token per line
(`;` also separates lines in the variable):

    sha256:<64 hex digits> admin
    sha256:<64 hex digits> worker nightly-invoices,reports-*

`admin` may do everything; `worker` may list, request, renew and release. A third field limits
the token to those process names (shell-style patterns). With no tokens the API is open.
"""

from __future__ import annotations

import fnmatch
import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass

from coordinator.config import ConfigError, Settings
from coordinator.errors import CoordinatorError

ROLES = ("admin", "worker")
# Every token `new_token` makes starts so; the CLI never echoes an argument that does.
TOKEN_PREFIX = "bpc_"  # noqa: S105 - a prefix, not a secret
# A process pattern: the characters of process names, and the shell wildcards * ? [ ] !.
_PROCESS_PATTERN = re.compile(r"[A-Za-z0-9._:*?\[\]!-]+")


class Unauthorized(CoordinatorError):
    """No token, or a token the service does not know."""

    code = "unauthorized"


class Forbidden(CoordinatorError):
    """A known token without the right to this operation or process."""

    code = "forbidden"


@dataclass(frozen=True, slots=True)
class Principal:
    """What a token may do."""

    role: str
    processes: tuple[str, ...] | None = None  # None: every process
    # The lease holder id of this token (hex, from its hash): the leases it is granted can be
    # renewed and released only by it (and by admins). Workers sharing a token share it.
    holder: str = ""

    @property
    def holder_check(self) -> str:
        """The holder a renew or release must match: none for an admin, who may end any."""
        return "" if self.role == "admin" else self.holder

    def may_act_on(self, process_name: str) -> bool:
        """Whether the token covers this process."""
        if self.processes is None:
            return True
        return any(fnmatch.fnmatchcase(process_name, p) for p in self.processes)

    def require(self, role: str, process_name: str | None = None) -> None:
        """Raise Forbidden unless the token has `role` (admin has both) for the process."""
        if role == "admin" and self.role != "admin":
            raise Forbidden("This needs an admin token.")
        if process_name is not None and not self.may_act_on(process_name):
            raise Forbidden(f"This token does not cover process '{process_name}'.")


def digest(token: str) -> bytes:
    """The SHA-256 of a token, the only form in which the service keeps it."""
    return hashlib.sha256(token.encode()).digest()


class TokenTable:
    """The configured tokens; empty means the API is open."""

    def __init__(self, entries: list[tuple[bytes, Principal]] | None = None) -> None:
        self._entries = entries or []

    def __bool__(self) -> bool:
        return bool(self._entries)

    @classmethod
    def parse(cls, text: str, source: str = "tokens") -> TokenTable:
        """Read token lines; a malformed one is a ConfigError naming its line."""
        entries = []
        lines = text.replace(";", "\n").splitlines()
        for number, raw in enumerate(lines, 1):
            line = raw.split("#", 1)[0].strip()
            if not line:
                continue
            fields = line.split()
            kind, _, hexdigest = fields[0].partition(":")
            if kind != "sha256" or len(hexdigest) != 64 or len(fields) not in (2, 3):
                raise ConfigError(
                    f"{source} line {number}: expected 'sha256:<64 hex digits> admin|worker"
                    " [process,...]'"
                )
            try:
                hashed = bytes.fromhex(hexdigest)
            except ValueError:
                raise ConfigError(f"{source} line {number}: the hash is not hex") from None
            if fields[1] not in ROLES:
                raise ConfigError(f"{source} line {number}: the role must be admin or worker")
            processes = None
            if len(fields) == 3:
                try:
                    processes = process_patterns(fields[2])
                except ValueError as error:
                    raise ConfigError(f"{source} line {number}: {error}") from None
            entries.append((hashed, Principal(fields[1], processes, hashed[:8].hex())))
        return cls(entries)

    def __add__(self, other: TokenTable) -> TokenTable:
        return TokenTable([*self._entries, *other._entries])

    def authenticate(self, authorization: str | None) -> Principal:
        """The principal of an `Authorization: Bearer <token>` header, or Unauthorized."""
        scheme, _, token = (authorization or "").partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise Unauthorized("Send an API token as 'Authorization: Bearer <token>'.")
        presented = digest(token.strip())
        found: Principal | None = None
        # Compare with every entry, without stopping early, so timing tells nothing.
        for hashed, principal in self._entries:
            if hmac.compare_digest(hashed, presented):
                found = principal
        if found is None:
            raise Unauthorized("The API token is not valid.")
        return found


def load_tokens(settings: Settings) -> TokenTable:
    """The tokens of COORDINATOR_TOKENS_FILE and COORDINATOR_TOKENS together."""
    # Each source on its own, so an error names the line of that source.
    tokens = TokenTable.parse(settings.tokens or "", "COORDINATOR_TOKENS")
    if settings.tokens_file is not None:
        try:
            text = settings.tokens_file.read_text()
        except OSError as error:
            raise ConfigError(f"cannot read COORDINATOR_TOKENS_FILE: {error.strerror}") from None
        tokens += TokenTable.parse(text, f"COORDINATOR_TOKENS_FILE {settings.tokens_file}")
    return tokens


def process_patterns(field: str) -> tuple[str, ...]:
    """The comma-separated process names or patterns of a token line; ValueError if one could
    match no process name (a space, `#`, `;`, an empty one between commas)."""
    patterns = tuple(field.split(","))
    for pattern in patterns:
        if not _PROCESS_PATTERN.fullmatch(pattern):
            raise ValueError(
                f"{pattern!r} is not a process name or pattern: use letters, digits and"
                " . _ : - with * ? [ ] as wildcards, separated by commas (a,b,reports-*)"
            )
    return patterns


def new_token(role: str, processes: str | None = None) -> tuple[str, str]:
    """A fresh token and the line that grants it (the service stores only the line).

    `processes` is checked as the service checks the line: ConfigError if it would refuse it.
    """
    if role not in ROLES:
        raise ConfigError("the role must be admin or worker")
    limit = ""
    if processes is not None:
        try:
            limit = " " + ",".join(process_patterns(processes.strip()))
        except ValueError as error:
            raise ConfigError(str(error)) from None
    token = TOKEN_PREFIX + secrets.token_urlsafe(32)
    return token, f"sha256:{digest(token).hex()} {role}{limit}"
