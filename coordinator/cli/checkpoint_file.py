"""`$BATCH_CHECKPOINT_FILE`: the file `coordinator run`'s command writes its checkpoint to."""

from __future__ import annotations

import sys
from pathlib import Path

from coordinator.validation import CHECKPOINT_BYTES_MAX


class CheckpointFile:
    """The command's checkpoint file, read at each renewal: its text, or None to send none."""

    def __init__(self, path: Path) -> None:
        self._path = path
        self._warned = False

    def read(self) -> str | None:
        """The file's text; None when empty, gone, or unusable (said once on stderr)."""
        try:
            data = self._path.read_bytes()
        except OSError:  # the command removed it: nothing to save
            return None
        if not data:
            return None
        if len(data) <= CHECKPOINT_BYTES_MAX:
            try:
                return data.decode()
            except UnicodeDecodeError:
                pass
        if not self._warned:
            self._warned = True
            print(
                f"coordinator: $BATCH_CHECKPOINT_FILE must hold at most {CHECKPOINT_BYTES_MAX}"
                " bytes of UTF-8 text; the checkpoint is not saved while it does not",
                file=sys.stderr,
            )
        return None
