"""Entry point: parse flags, start jax.distributed when needed, train.

    python -m rectifiers_jax.main --config=configs/default.py --workdir=runs/default \
        [--config.train.num_epochs=10 ...]

Everything else lives in importable modules (`rectifiers_jax.train.train_and_evaluate`).
"""

from __future__ import annotations

import os
import sys

from absl import app, flags, logging
from ml_collections import config_flags

from rectifiers_jax import checkpoints, cli, parallel

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
flags.mark_flags_as_required(["config", "workdir"])


def main(argv: list[str]) -> int:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # TensorFlow's C++ start-up notices
    parallel.initialize_distributed(_COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value)
    # Imported after distributed start-up: train pulls in TensorFlow and touches devices.
    from rectifiers_jax import train

    result = train.train_and_evaluate(_CONFIG.value, _WORKDIR.value)
    return {"done": 0, "preempted": 0, "diverged": 3}[result["status"]]


def run() -> None:
    logging.set_verbosity(logging.INFO)
    cli.quiet_library_logs()
    try:
        app.run(main)
    except (ValueError, FileNotFoundError, checkpoints.CheckpointError) as error:
        # Bad input: one line naming the field or file, not a stack of internals.
        sys.exit(cli.fail(error))


if __name__ == "__main__":
    run()
