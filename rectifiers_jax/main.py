"""Entry point: parse flags, start jax.distributed when needed, train.

    python -m rectifiers_jax.main --config=configs/default.py --workdir=runs/default \
        [--config.train.num_epochs=10 ...]

Everything else lives in importable modules (`rectifiers_jax.train.train_and_evaluate`).
"""

from __future__ import annotations

import os

# Before TensorFlow is imported (through train): its C++ start-up notices stay out of the log.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import jax  # noqa: E402
from absl import app, flags  # noqa: E402
from ml_collections import config_flags  # noqa: E402

from rectifiers_jax import checkpoints, cli, parallel, train  # noqa: E402

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Experiment config file.", lock_config=True
)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints, metrics and status.")
_COORDINATOR = flags.DEFINE_string(
    "coordinator_address",
    None,
    "host:port of process 0 for multi-process GPU runs (else from env).",
)
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "Number of processes (else from env).")
_PROCESS_ID = flags.DEFINE_integer("process_id", None, "This process's id (else from env).")
_HEARTBEAT_TIMEOUT = flags.DEFINE_integer(
    "heartbeat_timeout_seconds",
    60,
    "Multi-process: seconds without a peer's heartbeat before the other processes end.",
)
flags.mark_flags_as_required(["config", "workdir"])

EXIT_CODES = {
    "done": cli.EXIT_DONE,
    "preempted": cli.EXIT_PREEMPTED,
    "diverged": cli.EXIT_DIVERGED,
}
# How long orbax's threads get to finish after a failed checkpoint write, and the other
# threads after a peer failed, before the process ends with its one-line error.
FAILURE_SETTLE_SECONDS = 10.0
PEER_FAILURE_SETTLE_SECONDS = 1.0


def main(argv: list[str]) -> int:
    """Exit codes (cli): 0 done, 75 preempted (run again to resume), 3 diverged, 2 bad input,
    1 failure (e.g. a checkpoint that cannot be written), 130 a second Ctrl-C."""
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    parallel.initialize_distributed(
        _COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value, _HEARTBEAT_TIMEOUT.value
    )
    try:
        result = train.train_and_evaluate(_CONFIG.value, _WORKDIR.value)
    except checkpoints.CheckpointSaveError as error:
        cli.fail_and_exit(error, cli.EXIT_FAILURE, settle_seconds=FAILURE_SETTLE_SECONDS)
    except KeyboardInterrupt as error:
        cli.fail(error)
        return cli.EXIT_INTERRUPTED
    except Exception as error:
        if jax.process_count() == 1 or isinstance(error, cli.BAD_INPUT):
            raise
        # A peer died or a collective failed: this process cannot go on, and JAX's shutdown
        # barrier at exit would wait for the dead peer.
        cli.fail_and_exit(
            f"process {jax.process_index()} stops: another process failed ({error})",
            cli.EXIT_FAILURE,
            settle_seconds=PEER_FAILURE_SETTLE_SECONDS,
        )
    return EXIT_CODES[result["status"]]


if __name__ == "__main__":
    cli.run_absl(main)
