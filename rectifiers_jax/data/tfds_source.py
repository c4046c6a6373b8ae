"""Prepared TFDS image-classification datasets (features `image`, `label`) by name and data_dir.

`tfds.builder(name, data_dir=...)` finds the prepared files; when the builder code is not
importable it reads them from their metadata alone (a read-only builder), so any prepared
dataset works by name. Images stay encoded (`tfds.decode.SkipDecoding`); decoding happens in
`preprocessing`. The offline datasets (`sklearn_digits`, `photos`) are prepared on first use; with
`config.data.download`, a dataset whose builder downloads by itself (e.g. imagenette) is
downloaded and prepared first. ImageNet always needs the manual steps in `IMAGENET_STEPS`.
"""

from __future__ import annotations

import functools
import os

import tensorflow as tf
import tensorflow_datasets as tfds
from absl import logging

from rectifiers_jax.data import digits, offline, photos
from rectifiers_jax.data.records import (
    DatasetInfo,
    DatasetNotFoundError,
    Records,
    checked_label,
    listing,
)

IMAGENET_STEPS = (
    "prepare it once: (1) download ILSVRC2012_img_train.tar and ILSVRC2012_img_val.tar "
    "(https://image-net.org, needs an account) into TFDS's manual dir "
    "'{data_dir}/downloads/manual/'; (2) run `tfds build imagenet2012 --data_dir={data_dir}` "
    "(python: tfds.builder('imagenet2012', data_dir='{data_dir}').download_and_prepare()); "
    "for TPU pods build into (or copy the prepared imagenet2012/ folder to) a bucket and set "
    "--config.data.data_dir=gs://BUCKET/tensorflow_datasets"
)
# Datasets this project writes itself, offline, on first use: name -> TFDS builder class.
OFFLINE_DATASETS = {digits.DIGITS_NAME: digits.SklearnDigits, photos.NAME: photos.Photos}


def base_name(name: str) -> str:
    """'name[/config][:version]' -> 'name'."""
    return name.partition(":")[0].partition("/")[0]


def prepare_offline(name: str, data_dir: str) -> str:
    """Write the offline dataset 'name[/config][:version]' (its base name one of
    `OFFLINE_DATASETS`) once under `data_dir`; returns its prepared directory."""
    builder_config = name.partition(":")[0].partition("/")[2]
    return offline.prepare(OFFLINE_DATASETS[base_name(name)], data_dir, builder_config)


def _missing(name: str, data_dir: str, why: str) -> DatasetNotFoundError:
    base = base_name(name)
    if base.startswith("imagenet2012"):
        steps = IMAGENET_STEPS.format(data_dir=data_dir.rstrip("/"))
        return DatasetNotFoundError(
            f"{base} is not prepared in data_dir {data_dir!r} ({why}); {steps}"
        )
    return DatasetNotFoundError(
        f"TFDS dataset {name!r} is not prepared in data_dir {data_dir!r} ({why}); prepare it with "
        f"`tfds build {base} --data_dir={data_dir}`, or set config.data.data_dir to the directory "
        f"that holds {base}/<version>/"
    )


@functools.lru_cache(maxsize=16)
def open_tfds(name: str, data_dir: str, download: bool = False) -> tfds.core.DatasetBuilder:
    """The builder of prepared TFDS dataset `name` ('name[/config][:version]') in `data_dir`.

    Raises DatasetNotFoundError naming data_dir, what it holds, and how to prepare `name`;
    ValueError when the dataset is not image classification.
    """
    if not name:
        raise ValueError("config.data.name is empty; name a TFDS dataset, e.g. imagenet2012")
    base = base_name(name)
    if base in OFFLINE_DATASETS:
        prepare_offline(name, data_dir)
    try:
        builder = tfds.builder(name, data_dir=data_dir)
    except tfds.core.registered.DatasetNotFoundError:
        # TFDS's own message lists every dataset it knows: say what this data_dir holds.
        where = os.path.join(data_dir, base)
        where = where if tf.io.gfile.isdir(where) else data_dir
        raise _missing(name, data_dir, f"{where}: {listing(where)}") from None
    if not builder.is_prepared():
        if not download or base.startswith("imagenet2012"):
            raise _missing(name, data_dir, f"no prepared files under {builder.data_dir}")
        logging.info("downloading and preparing TFDS dataset %s into %s", name, data_dir)
        builder.download_and_prepare()
        builder = tfds.builder(name, data_dir=data_dir)  # read back what was prepared
    features = builder.info.features
    if "image" not in features or "label" not in features:
        raise ValueError(
            f"TFDS dataset {name!r} has features {sorted(features.keys())}; image classification "
            "needs 'image' and 'label'"
        )
    if not isinstance(features["image"], tfds.features.Image):
        raise ValueError(
            f"TFDS dataset {name!r}: feature 'image' is {features['image']!r}, not an Image"
        )
    if not isinstance(features["label"], tfds.features.ClassLabel):
        raise ValueError(
            f"TFDS dataset {name!r}: feature 'label' is {features['label']!r}, not a ClassLabel"
        )
    return builder


def open_configured(data_config) -> tfds.core.DatasetBuilder:
    """`open_tfds` for `config.data` (a `~` in data_dir is the user's home)."""
    data_dir = os.path.expanduser(data_config.data_dir)
    return open_tfds(data_config.name, data_dir, bool(data_config.get("download", False)))


def split_size(builder: tfds.core.DatasetBuilder, split) -> int:
    """Examples in `split` (a name, a slice like 'train[:90%]', or an even sub-split)."""
    try:
        return int(builder.info.splits[split].num_examples)
    except (KeyError, ValueError) as error:
        raise ValueError(
            f"split {split!r} of TFDS dataset {builder.name!r}: {error}; prepared splits: "
            f"{sorted(builder.info.splits.keys())}"
        ) from error


def dataset_info(data_config) -> DatasetInfo:
    """Classes and split sizes of the configured TFDS dataset (0 for a missing split)."""
    builder = open_configured(data_config)
    label = builder.info.features["label"]

    def size(split: str) -> int:
        try:
            return split_size(builder, split)
        except ValueError:
            return 0

    return DatasetInfo(
        name=data_config.name,
        source="tfds",
        num_classes=int(label.num_classes),
        class_names=tuple(label.names),
        num_examples={s: int(i.num_examples) for s, i in builder.info.splits.items()},
        num_train_examples=size(data_config.train_split),
        num_eval_examples=size(data_config.eval_split),
    )


def host_records(
    data_config, split: str, process_index: int, process_count: int, options
) -> Records:
    """Host `process_index`'s even part of `split`: undecoded `(image bytes, label)` records."""
    builder = open_configured(data_config)
    num_classes = int(builder.info.features["label"].num_classes)
    split_size(builder, split)  # Validates the split name with a clear error.
    host_split = tfds.even_splits(split, n=process_count)[process_index]
    num_examples = split_size(builder, host_split)
    description = f"TFDS {data_config.name!r} split {split!r} in {data_config.data_dir!r}"
    if num_examples:
        read_config = tfds.ReadConfig(options=options, try_autocache=False, skip_prefetch=True)
        dataset = builder.as_dataset(
            split=host_split,
            decoders={"image": tfds.decode.SkipDecoding()},
            shuffle_files=False,
            read_config=read_config,
        )
        dataset = dataset.map(
            lambda ex: (ex["image"], checked_label(ex["label"], num_classes, description))
        )
    else:  # More hosts than examples: TFDS refuses an empty sub-split.
        dataset = tf.data.Dataset.from_tensor_slices(
            (tf.zeros([0], tf.string), tf.zeros([0], tf.int64))
        )
    return Records(
        dataset=dataset,
        num_examples=num_examples,
        num_classes=num_classes,
        load=lambda key: key,
        random_access=False,
        description=description,
    )
