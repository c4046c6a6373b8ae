"""Prepare an offline dataset (digits, photos), or store a dataset's mean image beside it.

python -m rectifiers_jax.data prepare --dataset=photos --data_dir=data/tfds
python -m rectifiers_jax.data mean --config=configs/default.py [--config.data.KEY=VALUE ...]
    [--max_examples=N]
"""

from __future__ import annotations

import io

import numpy as np
import tensorflow as tf
from absl import app, flags
from ml_collections import config_flags

from rectifiers_jax import cli
from rectifiers_jax.data import mean, tfds_source

COMMANDS = ("prepare", "mean")
_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Experiment config file.", lock_config=True
)
_DATASET = flags.DEFINE_string(
    "dataset",
    "sklearn_digits",
    "prepare: NAME[/CONFIG] of an offline dataset: "
    + ", ".join(tfds_source.OFFLINE_DATASETS)
    + " (photos/tiny: the tests' size).",
)
_DATA_DIR = flags.DEFINE_string("data_dir", "data/tfds", "prepare: the TFDS data dir.")
_MAX_EXAMPLES = flags.DEFINE_integer(
    "max_examples", None, "mean: average only the first N training images."
)


def main(argv: list[str]) -> None:
    if len(argv) != 2 or argv[1] not in COMMANDS:
        raise app.UsageError(f"usage: python -m rectifiers_jax.data {'|'.join(COMMANDS)} [flags]")
    if argv[1] == "prepare":
        name = tfds_source.base_name(_DATASET.value)
        if name not in tfds_source.OFFLINE_DATASETS:
            valid = ", ".join(tfds_source.OFFLINE_DATASETS)
            raise ValueError(f"--dataset={name!r} is not an offline dataset; valid: {valid}")
        print(tfds_source.prepare_offline(_DATASET.value, _DATA_DIR.value))
        return
    if _CONFIG.value is None:
        raise app.UsageError("mean needs --config=configs/FILE.py [--config.data.KEY=VALUE ...]")
    path = mean.write_mean(_CONFIG.value.data, _MAX_EXAMPLES.value)
    with tf.io.gfile.GFile(path, "rb") as f:
        stored = np.load(io.BytesIO(f.read()))
    per_channel = [round(float(v), 3) for v in stored["per_channel"]]
    print(
        f"{path}: per-pixel mean {stored['per_pixel'].shape} over "
        f"{int(stored['num_examples'])} images of split {stored['split']}; "
        f"per-channel {per_channel}"
    )


if __name__ == "__main__":
    cli.run_absl(main)
