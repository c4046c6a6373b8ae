"""The tf.data input pipeline: per-host, deterministic, resumable training batches and exact eval.

Training (`train_iterator`) is one continuous stream over epochs on each host. Epoch e of host h
is the host's records (`sources.host_records`) permuted window by window: windows of
`config.data.shuffle_buffer` consecutive records for TFDS (whose prepared files are already
shuffled once, at preparation), one window of the whole host part for folders (the keys are
paths, so a full permutation is cheap). Each window's permutation and each example's
augmentation seed are stateless functions of (seed, host, epoch, window or index in epoch), so:

- the same seed gives the same examples, order and augmentation on every run;
- resuming at step k starts at epoch (k * B_host) // n_host and skips the first
  (k * B_host) % n_host records of that epoch *before* decoding, giving exactly batches k, k+1,
  ... of an uninterrupted run;
- changing the number of hosts changes each host's part, hence the order (and so the run).

Evaluation (`eval_iterator`) gives each host a disjoint part of the split, pads every host to the
same number of steps with masked dummies (`mask` False), and so counts every example once.

Both take the mean image to subtract as an argument (`mean.load_mean`, loaded once upstream).
TensorFlow only runs on the CPU here: `sources.host_records` hides every accelerator from it.
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Callable, Iterable, Iterator

import numpy as np
import tensorflow as tf
from absl import logging

from rectifiers_jax.data import preprocessing, sources
from rectifiers_jax.data.records import DatasetInfo

PROTOCOLS = ("center", "10view", "dense")
# Epochs of the train stream: effectively infinite.
_MAX_EPOCHS = 2**40
# Salts that separate the shuffle and augmentation random streams of one host and epoch.
_SHUFFLE_SALT, _AUGMENT_SALT = 1, 2


def _options() -> tf.data.Options:
    """Deterministic tf.data options tuned for input hosts (TPU VMs, GPU servers)."""
    options = tf.data.Options()
    options.deterministic = True
    options.experimental_optimization.map_parallelization = True
    options.experimental_optimization.parallel_batch = True
    # A private pool per pipeline (as Flax's ImageNet example) keeps train and eval pipelines
    # from starving each other; one thread per op avoids oversubscription while decoding.
    options.threading.private_threadpool_size = max(os.cpu_count() or 1, 2)
    options.threading.max_intra_op_parallelism = 1
    # No autotuning thread: destroying an iterator joins it, and at the end of a training run
    # that join blocked for 39 and 49 s (py-spy: RootDataset::Iterator's destructor waiting for
    # its own logical thread) against 0.6 and 0.7 s with autotuning off, at the same step rate
    # (default run, loaded 2-core machine). The maps run one call per pool thread instead
    # (`_parallel_calls`); prefetch buffers still grow on demand (prefetch's own autotuner).
    options.autotune.enabled = False
    return options


def _parallel_calls(options: tf.data.Options) -> int:
    """Concurrent calls of a pipeline's map: one per thread of its private pool."""
    return options.threading.private_threadpool_size


def _process(process_index: int | None, process_count: int | None) -> tuple[int, int]:
    if process_index is None or process_count is None:
        import jax

        process_index = jax.process_index() if process_index is None else process_index
        process_count = jax.process_count() if process_count is None else process_count
    if process_count < 1 or not 0 <= process_index < process_count:
        raise ValueError(
            f"process_index={process_index} must be in [0, process_count={process_count})"
        )
    return process_index, process_count


def _host_batch_size(global_batch_size: int, process_count: int, field: str) -> int:
    if global_batch_size < 1 or global_batch_size % process_count:
        raise ValueError(
            f"{field}={global_batch_size} must be a positive multiple of the process count "
            f"{process_count} (each host feeds global_batch_size / process_count examples)"
        )
    return global_batch_size // process_count


def _fold(key: tf.Tensor, data) -> tf.Tensor:
    """A new int64 [2] key from `key` ([2]) and an integer: a stateless hash (Philox)."""
    full = dict(minval=None, maxval=None, dtype=tf.int64)
    head = tf.random.stateless_uniform([], seed=key, **full)
    return tf.random.stateless_uniform([2], seed=tf.stack([head, tf.cast(data, tf.int64)]), **full)


def _host_key(seed: int, process_index: int) -> tf.Tensor:
    return _fold(tf.constant([seed, 0], tf.int64), process_index)


def steps_per_epoch(info: DatasetInfo, global_batch_size: int) -> int:
    """Full global batches in one pass over the train split: num_train_examples // batch."""
    if info.num_train_examples < global_batch_size:
        raise ValueError(
            f"the train split of {info.name!r} has {info.num_train_examples} examples, fewer "
            f"than one global batch of {global_batch_size}"
        )
    return info.num_train_examples // global_batch_size


def _numpy_batches(dataset: tf.data.Dataset, description: str) -> Iterator[dict[str, np.ndarray]]:
    """NumPy batches of `dataset`; a failing read or decode names the data it came from."""
    iterator = dataset.as_numpy_iterator()
    while True:
        try:
            batch = next(iterator)
        except StopIteration:
            return
        except tf.errors.OpError as error:
            raise RuntimeError(f"reading {description} failed: {error.message.strip()}") from error
        yield batch


def _permuted_windows(records: tf.data.Dataset, window: int, key: tf.Tensor) -> tf.data.Dataset:
    """`records` with each run of `window` consecutive elements permuted by a stateless key."""

    def permute(index: tf.Tensor, window_records: tuple[tf.Tensor, tf.Tensor]):
        keys, labels = window_records
        order = tf.random.experimental.stateless_shuffle(
            tf.range(tf.shape(keys)[0]), seed=_fold(key, index)
        )
        return tf.gather(keys, order), tf.gather(labels, order)

    # prefetch(1): the next window is read while this one is decoded.
    return records.batch(window).enumerate().map(permute).prefetch(1).unbatch()


def train_iterator(
    data_config,
    *,
    global_batch_size: int,
    seed: int,
    mean: np.ndarray | None,
    start_step: int = 0,
    process_index: int | None = None,
    process_count: int | None = None,
) -> Iterator[dict[str, np.ndarray]]:
    """Endless augmented training batches of this host, starting at batch `start_step`.

    Yields `{"image": float32 [B_host, S, S, 3], "label": int32 [B_host]}` with
    B_host = global_batch_size / process_count and S = config.data.image_size; images are in
    0..255 units minus `mean` (`mean.load_mean(config.data)`; `preprocessing.train_image`).
    Bit-identical for the same seed, host count and start_step (see the module docstring).
    """
    process_index, process_count = _process(process_index, process_count)
    batch_size = _host_batch_size(global_batch_size, process_count, "train.global_batch_size")
    if start_step < 0:
        raise ValueError(f"start_step={start_step} must be >= 0")
    options = _options()
    records = sources.host_records(
        data_config,
        data_config.train_split,
        process_index=process_index,
        process_count=process_count,
        options=options,
    )
    num_examples = records.num_examples
    if num_examples < batch_size:
        raise ValueError(
            f"host {process_index} of {process_count} holds {num_examples} examples of "
            f"{records.description}, fewer than its batch of {batch_size} "
            f"(train.global_batch_size={global_batch_size})"
        )
    if records.random_access:
        window = num_examples
    else:
        if data_config.shuffle_buffer < 1:
            raise ValueError(
                f"config.data.shuffle_buffer={data_config.shuffle_buffer} must be >= 1"
            )
        window = min(int(data_config.shuffle_buffer), num_examples)
    cfg = preprocessing.PreprocessConfig.from_config(data_config, mean)
    start_epoch, start_offset = divmod(start_step * batch_size, num_examples)
    host_key = _host_key(seed, process_index)
    shuffle_key, augment_key = _fold(host_key, _SHUFFLE_SALT), _fold(host_key, _AUGMENT_SALT)

    def epoch_stream(epoch: tf.Tensor) -> tf.data.Dataset:
        stream = _permuted_windows(records.dataset, window, _fold(shuffle_key, epoch)).enumerate()
        # Resume: drop the epoch's first records before anything is decoded.
        stream = stream.skip(tf.where(epoch == start_epoch, tf.constant(start_offset, tf.int64), 0))
        return stream.map(lambda index, record: (epoch, index, record))

    def preprocess(epoch: tf.Tensor, index: tf.Tensor, record: tuple[tf.Tensor, tf.Tensor]):
        key, label = record
        example_seed = _fold(_fold(augment_key, epoch), index)
        image = preprocessing.train_image(records.load(key), example_seed, cfg)
        return {"image": image, "label": tf.cast(label, tf.int32)}

    dataset = tf.data.Dataset.range(start_epoch, _MAX_EPOCHS).flat_map(epoch_stream)
    dataset = dataset.map(
        preprocess, num_parallel_calls=_parallel_calls(options), deterministic=True
    )
    dataset = dataset.batch(batch_size, drop_remainder=True).prefetch(tf.data.AUTOTUNE)
    dataset = dataset.with_options(options)
    logging.info(
        "train input: %s, host %d/%d: %d examples, batch %d, shuffle window %d, from step %d "
        "(epoch %d + %d examples)",
        records.description,
        process_index,
        process_count,
        num_examples,
        batch_size,
        window,
        start_step,
        start_epoch,
        start_offset,
    )
    return _numpy_batches(dataset, records.description)


@dataclasses.dataclass(frozen=True)
class EvalBatches:
    """Re-iterable evaluation batches: each `iter()` restarts from the first batch."""

    dataset: tf.data.Dataset
    num_steps: int
    description: str

    def __iter__(self) -> Iterator[dict[str, np.ndarray]]:
        return _numpy_batches(self.dataset, self.description)

    def __len__(self) -> int:
        return self.num_steps


def _eval_view_fn(
    cfg: preprocessing.PreprocessConfig, protocol: str, resize: int | None
) -> tuple[Callable[[tf.Tensor], tf.Tensor], list[int]]:
    """(encoded bytes -> image(s), the shape of a padding dummy) for a protocol."""
    size = cfg.image_size
    if protocol == "center":
        if resize is not None:
            cfg = dataclasses.replace(cfg, eval_resize=resize)
        return (lambda encoded: preprocessing.eval_center(encoded, cfg)), [size, size, 3]
    if protocol == "10view":
        return (
            lambda encoded: preprocessing.eval_ten_views(encoded, cfg, resize=resize),
            [10, size, size, 3],
        )
    side = int(resize if resize is not None else cfg.eval_resize)
    return (lambda encoded: preprocessing.eval_full(encoded, cfg, side)), [side, side, 3]


def eval_iterator(
    data_config,
    *,
    global_batch_size: int,
    mean: np.ndarray | None,
    split: str | None = None,
    protocol: str = "center",
    resize: int | None = None,
    process_index: int | None = None,
    process_count: int | None = None,
) -> tuple[Iterable[dict[str, np.ndarray]], int]:
    """This host's evaluation batches of `split` (default config.data.eval_split), and the steps.

    Batches are `{"image", "label": int32 [B], "mask": bool [B]}`; `image` is float32
    [B, S, S, 3] ("center"), [B, 10, S, S, 3] ("10view": corners, centre and their flips) or
    [1, H', W', 3] ("dense": the whole image with shorter side `resize`, one per host per step).
    `resize` overrides config.data.eval_resize; `mean` is subtracted (`mean.load_mean`). Every
    host runs the same number of steps; padding examples have mask False, so the masked
    examples over all hosts are the split, once each.
    """
    if protocol not in PROTOCOLS:
        raise ValueError(f"eval protocol {protocol!r}; valid: {', '.join(PROTOCOLS)}")
    split = split or data_config.eval_split
    process_index, process_count = _process(process_index, process_count)
    if protocol == "dense":
        batch_size = 1  # Whole images differ in size: one per host per step.
    else:
        batch_size = _host_batch_size(global_batch_size, process_count, "eval global_batch_size")
    total = sources.split_size(data_config, split)
    if total == 0:
        source = data_config.folder if data_config.source == "folder" else data_config.name
        raise ValueError(f"split {split!r} of {source!r} is empty: nothing to evaluate")
    # The largest host part (even splits: the first hosts hold one more) sets the step count.
    num_steps = math.ceil(math.ceil(total / process_count) / batch_size)
    options = _options()
    records = sources.host_records(
        data_config,
        split,
        process_index=process_index,
        process_count=process_count,
        options=options,
    )
    cfg = preprocessing.PreprocessConfig.from_config(data_config, mean)
    view, dummy_shape = _eval_view_fn(cfg, protocol, resize)

    def preprocess(key: tf.Tensor, label: tf.Tensor):
        return {"image": view(records.load(key)), "label": tf.cast(label, tf.int32), "mask": True}

    dataset = records.dataset.map(
        preprocess, num_parallel_calls=_parallel_calls(options), deterministic=True
    )
    num_padding = num_steps * batch_size - records.num_examples
    padding = tf.data.Dataset.from_tensors(
        {
            "image": tf.zeros(dummy_shape, tf.float32),
            "label": tf.constant(0, tf.int32),
            "mask": False,
        }
    ).repeat(num_padding)
    dataset = dataset.concatenate(padding).batch(batch_size, drop_remainder=True)
    dataset = dataset.prefetch(tf.data.AUTOTUNE).with_options(options)
    description = f"{records.description} ({protocol} evaluation)"
    return EvalBatches(dataset, num_steps, description), num_steps
