"""What every data source gives the input pipeline: dataset facts and one host's records."""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable

import tensorflow as tf


class DatasetNotFoundError(FileNotFoundError):
    """A dataset is not prepared where the config points; the message says how to prepare it."""


@dataclasses.dataclass(frozen=True)
class DatasetInfo:
    """What the trainer needs to know about a dataset, from either source.

    `num_examples` maps each split found to its size (after skipping corrupt files);
    `num_train_examples` / `num_eval_examples` are the sizes of `config.data.train_split` /
    `eval_split` (0 when that split does not exist); `num_skipped` counts corrupt files skipped
    per folder split.
    """

    name: str
    source: str
    num_classes: int
    class_names: tuple[str, ...]
    num_examples: dict[str, int]
    num_train_examples: int
    num_eval_examples: int
    num_skipped: dict[str, int] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(frozen=True)
class Records:
    """One host's part of a split, undecoded, in a fixed storage order.

    `dataset` yields `(key: tf.string [], label: tf.int64 [])`; `load(key)` gives the encoded
    image bytes. `random_access` is True when keys are cheap (file paths), so a full per-epoch
    permutation of the keys costs nothing; TFDS keys are the encoded images themselves.
    """

    dataset: tf.data.Dataset
    num_examples: int
    num_classes: int
    load: Callable[[tf.Tensor], tf.Tensor]
    random_access: bool
    description: str


def even_range(num_examples: int, index: int, count: int) -> tuple[int, int]:
    """[start, end) of part `index` of `count` (tfds.even_splits, drop_remainder=False): host i
    of P reads a contiguous part; the first `n % P` hosts hold one example more."""
    per_part, extra = divmod(num_examples, count)
    start = per_part * index + min(index, extra)
    return start, start + per_part + (1 if index < extra else 0)


def listing(path: str) -> str:
    """A short description of what a directory holds, for error messages."""
    if not tf.io.gfile.isdir(path):
        return "the directory does not exist"
    entries = sorted(e.rstrip("/") for e in tf.io.gfile.listdir(path))
    if not entries:
        return "the directory is empty"
    shown = ", ".join(entries[:20]) + (
        f", ... ({len(entries)} entries)" if len(entries) > 20 else ""
    )
    return f"it holds: {shown}"


def checked_label(label: tf.Tensor, num_classes: int, description: str) -> tf.Tensor:
    """`label` as int64, failing with `description` when it is outside [0, num_classes)."""
    label = tf.cast(label, tf.int64)
    check = tf.debugging.Assert(
        tf.logical_and(label >= 0, label < num_classes),
        [f"label outside [0, {num_classes}) in {description}: ", label],
    )
    with tf.control_dependencies([check]):
        return tf.identity(label)


@functools.cache
def use_tensorflow_on_cpu_only() -> None:
    """TensorFlow is only the input pipeline: it must never take the GPU or TPU that JAX uses.

    Called before the first TensorFlow op of every reader (not at import, so importing the
    library has no side effect); a no-op after the first call.
    """
    for kind in ("GPU", "TPU"):
        try:
            tf.config.set_visible_devices([], kind)
        except ValueError:
            pass  # TensorFlow knows no such device type on this machine: nothing to hide.
        except RuntimeError as error:  # TF's devices were already initialised elsewhere.
            tf.get_logger().warning("could not hide %ss from TensorFlow: %s", kind, error)
