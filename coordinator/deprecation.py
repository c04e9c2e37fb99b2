"""How a record's deprecated attribute warns its reader (once per call site, as Python does)."""

from __future__ import annotations

import warnings


def deprecated(old: str, new: str) -> None:
    """Warn that `old` is deprecated for `new`, pointing at the caller of the property."""
    warnings.warn(f"{old} is deprecated; use {new}", DeprecationWarning, stacklevel=3)
