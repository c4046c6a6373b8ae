"""The mean image subtracted from every input (paper Sec. 4: the per-pixel mean).

    python -m rectifiers_jax.data mean --config=configs/net14.py [--config.data.KEY=VALUE ...]

`write_mean` averages the train split's evaluation centre crops (0..255 units) and stores
`mean_<image_size>_<eval_resize>.npz` beside the dataset; `load_mean` reads it once, upstream
of the input pipeline, which takes the array as an argument. Without the file, both kinds fall
back to the per-channel mean of the first `MEAN_FALLBACK_EXAMPLES` training images (logged).
"""

from __future__ import annotations

import io
import os

import numpy as np
import tensorflow as tf
from absl import logging

from rectifiers_jax.data import preprocessing, sources, tfds_source

MEAN_KINDS = ("per_pixel", "per_channel", "none")
# Training images averaged when the mean file is missing (the per-channel fallback).
MEAN_FALLBACK_EXAMPLES = 1024


def mean_path(data_config) -> str:
    """`<dataset dir>/mean_<image_size>_<eval_resize>.npz`, beside the prepared dataset."""
    filename = f"mean_{data_config.image_size}_{data_config.eval_resize}.npz"
    if sources.check_source(data_config) == "tfds":
        version_dir = tfds_source.open_configured(data_config).data_dir
        return os.path.join(os.path.dirname(str(version_dir).rstrip("/")), filename)
    return os.path.join(data_config.folder, filename)


def compute_mean(
    data_config, max_examples: int | None = None, batch_size: int = 64
) -> tuple[np.ndarray, np.ndarray, int]:
    """(per-pixel mean float32 [S, S, 3], per-channel mean float32 [3], examples used).

    Over the train split's evaluation centre crops (`preprocessing.eval_center` without a
    mean), in 0..255 units; the first `max_examples` in storage order when given.
    """
    cfg = preprocessing.PreprocessConfig.from_config(data_config, mean=None)
    records = sources.host_records(data_config, data_config.train_split)
    dataset = records.dataset
    if max_examples is not None:
        dataset = dataset.take(max_examples)
    dataset = dataset.map(
        lambda key, label: preprocessing.eval_center(records.load(key), cfg),
        num_parallel_calls=tf.data.AUTOTUNE,
    )
    total, count = np.zeros((cfg.image_size, cfg.image_size, 3), np.float64), 0
    for images in dataset.batch(batch_size).prefetch(2).as_numpy_iterator():
        total += images.astype(np.float64).sum(axis=0)
        count += images.shape[0]
    if count == 0:
        raise ValueError(f"no training images to average in {records.description}")
    per_pixel = (total / count).astype(np.float32)
    return per_pixel, per_pixel.mean(axis=(0, 1), dtype=np.float64).astype(np.float32), count


def write_mean(data_config, max_examples: int | None = None) -> str:
    """Compute the mean over the train split and store it at `mean_path`; returns the path."""
    per_pixel, per_channel, count = compute_mean(data_config, max_examples)
    path = mean_path(data_config)
    buffer = io.BytesIO()
    np.savez(
        buffer,
        per_pixel=per_pixel,
        per_channel=per_channel,
        num_examples=count,
        split=data_config.train_split,
        image_size=data_config.image_size,
        eval_resize=data_config.eval_resize,
    )
    tf.io.gfile.makedirs(os.path.dirname(path) or ".")
    with tf.io.gfile.GFile(path + ".tmp", "wb") as f:
        f.write(buffer.getvalue())
    tf.io.gfile.rename(path + ".tmp", path, overwrite=True)
    return path


def check_kind(data_config) -> str:
    """`config.data.mean`, refused with the valid kinds when unknown."""
    if data_config.mean not in MEAN_KINDS:
        raise ValueError(f"config.data.mean={data_config.mean!r}; valid: {', '.join(MEAN_KINDS)}")
    return data_config.mean


def load_mean(data_config) -> np.ndarray | None:
    """The mean to subtract for `config.data.mean`, float32 in 0..255 units.

    "per_pixel": [image_size, image_size, 3] from the stored mean file; "per_channel": [3]
    from that file; "none": None. Without the file, both fall back to the per-channel mean of
    the first `MEAN_FALLBACK_EXAMPLES` training images (logged).
    """
    kind = check_kind(data_config)
    if kind == "none":
        return None
    path = mean_path(data_config)
    if tf.io.gfile.exists(path):
        with tf.io.gfile.GFile(path, "rb") as f:
            stored = np.load(io.BytesIO(f.read()))
            if str(stored["split"]) != data_config.train_split:
                logging.warning(
                    "mean %s was computed on split %s, not config.data.train_split=%s",
                    path,
                    stored["split"],
                    data_config.train_split,
                )
            return np.asarray(stored[kind], np.float32)
    _, per_channel, count = compute_mean(data_config, MEAN_FALLBACK_EXAMPLES)
    hint = " (per_pixel needs `python -m rectifiers_jax.data mean`)" if kind == "per_pixel" else ""
    logging.log(
        logging.WARNING if kind == "per_pixel" else logging.INFO,
        "mean file %s not found: using the per-channel mean %s of the first %d training images%s",
        path,
        np.round(per_channel, 2).tolist(),
        count,
        hint,
    )
    return per_channel
