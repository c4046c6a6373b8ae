"""What every command-line entry shares: a readable log and one-line errors for bad input."""

from __future__ import annotations

import logging
import sys


class _QuietLibraries(logging.Filter):
    """Drops library records below `level`: orbax logs every save and restore, TFDS every split."""

    PATHS = ("/orbax/", "/tensorflow_datasets/", "/jax/_src/xla_bridge")

    def __init__(self, level: int):
        super().__init__()
        self.level = level

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno >= self.level or not any(p in record.pathname for p in self.PATHS)


def fail(error: BaseException | str) -> int:
    """Print `error: <first line>` to stderr; the CLIs' exit status for bad input (2)."""
    lines = str(error).strip().splitlines()
    print(f"error: {lines[0] if lines else type(error).__name__}", file=sys.stderr)
    return 2


def quiet_library_logs(level: int = logging.WARNING) -> None:
    """Keep orbax/TFDS/JAX records below `level` out of absl's log, whichever handler is active."""
    logging.getLogger("absl").addFilter(_QuietLibraries(level))
