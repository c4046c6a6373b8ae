"""Entry point: parse flags, start jax.distributed when needed, train.

    python -m rectifiers_jax.main --config=configs/default.py --workdir=runs/default \
        [--config.train.num_epochs=10 ...]

Everything else lives in importable modules (`rectifiers_jax.train.train_and_evaluate`).
"""

from __future__ import annotations

from absl import app, flags
from ml_collections import config_flags

from rectifiers_jax import cli, parallel, train

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

EXIT_CODES = {
    "done": cli.EXIT_DONE,
    "preempted": cli.EXIT_DONE,
    "diverged": cli.EXIT_DIVERGED,
}


def main(argv: list[str]) -> int:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    parallel.initialize_distributed(_COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value)
    result = train.train_and_evaluate(_CONFIG.value, _WORKDIR.value)
    return EXIT_CODES[result["status"]]


if __name__ == "__main__":
    cli.run_absl(main)
