"""config.data -> the dataset's facts and each host's undecoded records, from either source.

`config.data.source` chooses `"tfds"` (any prepared TFDS image-classification dataset,
`tfds_source`) or `"folder"` (class subfolders of images, `folder`). Both give the input
pipeline the same thing: a host's part of a split as `(key, label)` records in a fixed storage
order, where `load(key)` is the encoded image (JPEG/PNG bytes). Decoding and augmentation happen
later, in `preprocessing`. Per-host parts follow `tfds.even_splits` (drop_remainder=False).
"""

from __future__ import annotations

import tensorflow as tf

from rectifiers_jax.data import folder, tfds_source
from rectifiers_jax.data.records import DatasetInfo, Records, use_tensorflow_on_cpu_only

SOURCES = ("tfds", "folder")


def check_source(data_config) -> str:
    """`config.data.source`, refused with the valid values when unknown."""
    if data_config.source not in SOURCES:
        raise ValueError(f"config.data.source={data_config.source!r}; valid: {', '.join(SOURCES)}")
    return data_config.source


def split_size(data_config, split: str) -> int:
    """Number of examples in `split` over all hosts."""
    if check_source(data_config) == "tfds":
        return tfds_source.split_size(tfds_source.open_configured(data_config), split)
    return folder.split_size(data_config, split)


def get_info(data_config) -> DatasetInfo:
    """Classes and split sizes of the dataset `data_config` describes."""
    if check_source(data_config) == "tfds":
        return tfds_source.dataset_info(data_config)
    return folder.dataset_info(data_config)


def host_records(
    data_config,
    split: str,
    *,
    process_index: int = 0,
    process_count: int = 1,
    options: tf.data.Options | None = None,
) -> Records:
    """This host's part of `split`: undecoded `(key, label)` records in storage order."""
    if not 0 <= process_index < process_count:
        raise ValueError(
            f"process_index={process_index} is outside [0, process_count={process_count})"
        )
    use_tensorflow_on_cpu_only()
    read = tfds_source.host_records if check_source(data_config) == "tfds" else folder.host_records
    return read(data_config, split, process_index, process_count, options)
