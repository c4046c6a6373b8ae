"""Check a config against a planned pod or cluster before any machine is created.

    python -m rectifiers_jax.preflight --config=configs/large.py:model=a --devices=16 \
        --processes=4 [--config.KEY=VALUE ...]

Runs every check of the training command that needs neither the dataset nor the workdir
(`train.check_config`): the model builds at its input size, the optimiser and schedule fields
are valid, and the global batch divides by the planned devices and processes (the evaluation
batch is rounded up to a multiple of them, as training does). Prints one line and exits 0, or
prints one `error:` line and exits 2. launch/tpu_pod.sh and launch/gpu_slurm.sh run it first.
"""

from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import app, flags  # noqa: E402
from ml_collections import config_flags  # noqa: E402

from rectifiers_jax import cli, parallel, train  # noqa: E402

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Experiment config file.", lock_config=True
)
_DEVICES = flags.DEFINE_integer("devices", None, "Accelerator devices (chips) of the run.")
_PROCESSES = flags.DEFINE_integer("processes", None, "Processes (hosts, or one per GPU).")
flags.mark_flags_as_required(["config", "devices", "processes"])
# Classes of the dataset when the config does not say (the data is not read here).
DEFAULT_NUM_CLASSES = 1000


def main(argv: list[str]) -> int:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    config, devices, processes = _CONFIG.value, _DEVICES.value, _PROCESSES.value
    if devices < 1 or processes < 1 or devices % processes:
        raise ValueError(
            f"--devices={devices} and --processes={processes}: need >= 1 each and the devices "
            "spread evenly over the processes"
        )
    classes = config.model.get("num_classes") or DEFAULT_NUM_CLASSES
    train.check_config(
        config, num_classes=classes, num_train_examples=None, devices=devices, processes=processes
    )
    batch = config.train.global_batch_size
    eval_batch = parallel.eval_batch_size(
        config.train.eval_batch_size, devices=devices, processes=processes
    )
    print(
        f"ok: {config.model.name} on {devices} devices in {processes} processes: global batch "
        f"{batch} ({batch // devices} per device), evaluation batch {eval_batch}"
    )
    return cli.EXIT_DONE


if __name__ == "__main__":
    cli.run_absl(main)
