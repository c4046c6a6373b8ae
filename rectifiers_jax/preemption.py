"""Stopping a run cleanly: SIGTERM (a scheduler's preemption notice) and Ctrl-C (SIGINT).

The first SIGTERM or SIGINT asks the training loop to finish its step, save a checkpoint and
exit with status "preempted"; the signal handlers stay installed until that save is written,
so a second SIGTERM cannot cut it short. A second Ctrl-C stops at once (KeyboardInterrupt),
for a user who does not want to wait for the save.

All processes of a multi-host run stop at the same step. There, SIGTERM is left to JAX's
preemption service (installed by `jax.distributed.initialize`): a notice to any one process
reaches all of them, and `multihost_utils.reached_preemption_sync_point` (through orbax's
`reached_preemption`) turns True at the same agreed step everywhere. Ctrl-C on one process is
forwarded to that service as a SIGTERM to itself.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Callable
from types import FrameType

import jax
from absl import logging


class StopRequests:
    """Handles SIGTERM and SIGINT while a run trains (use as a context manager)."""

    def __init__(self) -> None:
        self.requested: str | None = None
        self._multi_process = jax.process_count() > 1
        self._previous: dict[int, Callable | int | None] = {}

    def __enter__(self) -> StopRequests:
        signals = [signal.SIGINT] if self._multi_process else [signal.SIGTERM, signal.SIGINT]
        for signum in signals:
            self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc_info) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous.clear()

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        name = signal.Signals(signum).name
        if self.requested is None:
            self.requested = name
            logging.warning("%s received: saving a checkpoint and stopping", name)
            if self._multi_process:
                os.kill(os.getpid(), signal.SIGTERM)  # JAX's preemption service takes it on
        elif signum == signal.SIGINT:
            raise KeyboardInterrupt(f"second {name}: stopping without saving")
        else:
            logging.warning("%s received again: still saving the checkpoint", name)

    def should_stop(self, step: int, reached_preemption: Callable[[int], bool]) -> bool:
        """Whether to save and stop before step `step + 1`; every process must call it at every
        step (`reached_preemption` is the checkpoint manager's, agreed across processes)."""
        if self._multi_process:
            return reached_preemption(step)
        return self.requested is not None or reached_preemption(step)
