"""What every command-line entry shares: a readable log."""

from __future__ import annotations

import logging


class _QuietLibraries(logging.Filter):
    """Drops library records below `level`: orbax logs every save and restore, TFDS every split."""

    PATHS = ("/orbax/", "/tensorflow_datasets/", "/jax/_src/xla_bridge")

    def __init__(self, level: int):
        super().__init__()
        self.level = level

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno >= self.level or not any(p in record.pathname for p in self.PATHS)


def quiet_library_logs(level: int = logging.WARNING) -> None:
    """Keep orbax/TFDS/JAX records below `level` out of absl's log, whichever handler is active."""
    logging.getLogger("absl").addFilter(_QuietLibraries(level))
