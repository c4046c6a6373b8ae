"""Writing the project's own offline TFDS datasets (digits, photos) once per data_dir.

Each is a `tfds.core.GeneratorBasedBuilder` whose examples come from files inside installed
packages (no network). `prepare` writes it on first use; concurrent callers on one machine wait
for the first (a file lock), later ones return at once.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Iterator

import tensorflow as tf
import tensorflow_datasets as tfds
from absl import logging


@contextlib.contextmanager
def file_lock(path: str) -> Iterator[None]:
    """An exclusive lock between processes on one machine; no-op for remote paths."""
    if "://" in path:
        yield
        return
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def prepare(builder_class: type[tfds.core.DatasetBuilder], data_dir: str, config: str = "") -> str:
    """Write `builder_class` (builder config `config`, '' for the default) once under `data_dir`.

    Returns the prepared directory `<data_dir>/<name>[/<config>]/<version>`. Raises ValueError
    naming the valid builder configs when `config` is not one of them.
    """
    name = builder_class.name
    configs = [c.name for c in builder_class.BUILDER_CONFIGS]
    if config and config not in configs:
        valid = ", ".join(configs) if configs else "none (use the bare name)"
        raise ValueError(f"{name} has no builder config {config!r}; valid: {valid}")
    config = config or (configs[0] if configs else "")
    version = str(builder_class.VERSION)
    target = (
        os.path.join(data_dir, name, config, version)
        if config
        else os.path.join(data_dir, name, version)
    )
    if tf.io.gfile.exists(os.path.join(target, "dataset_info.json")):
        return target
    with file_lock(os.path.join(data_dir, f".{name}.lock")):
        builder = builder_class(data_dir=data_dir, config=config or None)
        if not builder.is_prepared():
            logging.info("preparing %s under %s", os.path.relpath(target, data_dir), data_dir)
            builder.download_and_prepare(
                download_dir=os.path.join(data_dir, "downloads"),
                download_config=tfds.download.DownloadConfig(try_download_gcs=False),
            )
    return target
