"""Shared pieces of the experiment configs: `get_config(arg)` argument parsing and datasets.

Every experiment config starts from `configs/default.py` (the complete schema) and overrides
what its family changes, so one schema serves every run and `--config.x.y=v` works everywhere.
"""

from __future__ import annotations

import ml_collections


def parse_arg(arg: str | None, defaults: dict[str, str]) -> dict[str, str]:
    """`"act=prelu,init=xavier"` -> defaults updated with those keys; unknown keys are refused."""
    values = dict(defaults)
    for item in filter(None, (arg or "").split(",")):
        key, sep, value = item.partition("=")
        if not sep:
            raise ValueError(
                f"config argument {item!r} is not KEY=VALUE; valid keys: {', '.join(defaults)}"
            )
        if key not in defaults:
            raise ValueError(f"unknown config argument {key!r}; valid keys: {', '.join(defaults)}")
        values[key] = value
    return values


def choose(name: str, value: str, valid: tuple[str, ...]) -> str:
    if value not in valid:
        raise ValueError(f"config argument {name}={value!r} is not one of {', '.join(valid)}")
    return value


# `data=` choices of the ImageNet families: TFDS name and class count.
DATASETS = {
    "imagenet": ("imagenet2012", 1000),
    "imagenette": ("imagenette/full-size-v2", 10),
    "photos": ("photos", 10),
}


def set_imagenet(config: ml_collections.ConfigDict, dataset: str) -> None:
    """ImageNet 2012 (1000 classes), Imagenette (10 classes, for one-GPU users) or the offline
    photos (10 classes at ImageNet sizes, rectifiers_jax.data.photos, prepared on first use under
    data/tfds; for CPU checks of the full-width models) through TFDS."""
    config.data.source = "tfds"
    config.data.name = DATASETS[dataset][0]
    config.data.data_dir = "data/tfds" if dataset == "photos" else "~/tensorflow_datasets"
    config.data.download = dataset == "imagenette"
    config.data.train_split = "train"
    config.data.eval_split = "validation"
    config.data.image_size = 224
    config.data.eval_resize = 256
    config.data.random_flip = True
    config.data.pca_lighting = 0.1
    # The photos have no stored per-pixel mean (`python -m rectifiers_jax.data mean` writes
    # one); per_channel says so instead of falling back with a warning.
    config.data.mean = "per_channel" if dataset == "photos" else "per_pixel"
    config.data.shuffle_buffer = 16384
    config.model.width = 1.0
    config.model.dropout_rate = 0.5
    config.optim.learning_rate = 0.01
    config.optim.momentum = 0.9
    config.optim.weight_decay = 5e-4
    config.train.global_batch_size = 128
    config.train.eval_batch_size = 200
    config.train.log_every_steps = 100
    config.train.checkpoint_every_steps = 2000
    config.train.keep_checkpoints = 3
    config.train.keep_every_epoch = True
