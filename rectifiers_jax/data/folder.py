"""Folders of class subfolders: `FOLDER/<split>/<class>/<image>` (JPEG, PNG, GIF, BMP, WebP).

Label ids are the sorted class folder names of the train split. Every file is checked once when
a split is opened (magic bytes; a JPEG/PNG without its end marker near the end is decoded to
confirm), so a corrupt or non-image file fails with its path, or is skipped and counted when
`config.data.skip_corrupt` is True. Hidden files (".name") are ignored. A split's files are
stored in a fixed permutation of the sorted paths, so contiguous host parts and shuffle
windows mix the classes.
"""

from __future__ import annotations

import concurrent.futures
import functools
import os

import numpy as np
import tensorflow as tf
from absl import logging

from rectifiers_jax.data.records import (
    DatasetInfo,
    DatasetNotFoundError,
    Records,
    even_range,
    listing,
)

_FOLDER_ORDER_SEED = 0
# JPEG and PNG end markers are looked for in this many trailing bytes (cheap truncation test).
_TAIL_BYTES = 1024
_SCAN_THREADS = 32

_MAGIC = (
    (b"\xff\xd8\xff", "jpeg"),
    (b"\x89PNG\r\n\x1a\n", "png"),
    (b"GIF87a", "gif"),
    (b"GIF89a", "gif"),
    (b"BM", "bmp"),
)


def _is_remote(path: str) -> bool:
    return "://" in path


def _subdirs_and_files(path: str) -> tuple[list[str], list[str]]:
    """Sorted names of the visible subfolders and files of `path` (local or remote)."""
    if _is_remote(path):
        entries = tf.io.gfile.listdir(path)
        dirs = [e.rstrip("/") for e in entries if e.endswith("/")]
        files = [e for e in entries if not e.endswith("/")]
    else:
        with os.scandir(path) as it:
            entries = list(it)
        dirs = [e.name for e in entries if e.is_dir()]
        files = [e.name for e in entries if not e.is_dir()]
    visible = lambda names: sorted(n for n in names if not n.startswith("."))
    return visible(dirs), visible(files)


def image_file_problem(path: str) -> str | None:
    """Why `path` is not a readable JPEG/PNG/GIF/BMP/WebP image, or None if it looks fine.

    Cheap: reads the first bytes and, for JPEG/PNG, the last 1 KiB for the end marker
    (FFD9 / IEND). Only a file that fails that is decoded in full to confirm.
    """
    try:
        with tf.io.gfile.GFile(path, "rb") if _is_remote(path) else open(path, "rb") as f:
            head = f.read(16)
            f.seek(0, 2)  # GFile.seek returns None: ask tell() for the size.
            f.seek(max(0, f.tell() - _TAIL_BYTES))
            tail = f.read()
    except (OSError, tf.errors.OpError) as error:
        return f"cannot be read ({error})"
    if not head:
        return "is empty"
    kind = next((k for magic, k in _MAGIC if head.startswith(magic)), None)
    if kind is None and head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        kind = "webp"
    if kind is None:
        return "is not an image (expected JPEG, PNG, GIF, BMP or WebP content)"
    end_marker = {"jpeg": b"\xff\xd9", "png": b"IEND"}.get(kind)
    if end_marker is None or end_marker in tail:
        return None
    try:  # No end marker near the end: truncated, or trailing data after a valid image.
        tf.io.decode_image(tf.io.read_file(path), channels=3, expand_animations=False)
    except tf.errors.OpError as error:
        return f"does not decode ({error.message.strip()})"
    return None


def _folder_class_names(folder: str, train_split: str, split: str) -> tuple[str, ...]:
    """Sorted class folders of the train split (of `split` when there is no train folder)."""
    train_dir = os.path.join(folder, train_split)
    source_dir = train_dir if tf.io.gfile.isdir(train_dir) else os.path.join(folder, split)
    if not tf.io.gfile.isdir(source_dir):
        raise DatasetNotFoundError(
            f"folder dataset: no split folder {source_dir!r} (config.data.folder={folder!r}: "
            f"{listing(folder)}); expected {folder}/<split>/<class>/<image>"
        )
    classes = _subdirs_and_files(source_dir)[0]
    if len(classes) < 2:
        raise ValueError(
            f"folder dataset: {source_dir!r} has {len(classes)} class subfolder(s) "
            f"({listing(source_dir)}); classification needs at least 2"
        )
    return tuple(classes)


@functools.lru_cache(maxsize=32)
def _scan_folder_split(
    folder: str, split: str, train_split: str, class_names: tuple[str, ...], skip_corrupt: bool
) -> tuple[tuple[str, ...], tuple[int, ...], tuple[str, ...]]:
    """(paths, labels, skipped paths) of a folder split, in the fixed storage order."""
    split_dir = os.path.join(folder, split)
    if not tf.io.gfile.isdir(split_dir):
        raise DatasetNotFoundError(
            f"folder dataset: no split folder {split_dir!r} ({folder!r}: {listing(folder)})"
        )
    split_classes = _subdirs_and_files(split_dir)[0]
    unknown = sorted(set(split_classes) - set(class_names))
    if unknown:
        raise ValueError(
            f"folder dataset: class folders {unknown} in {split_dir!r} are not among the train "
            f"split's classes {list(class_names)}"
        )
    paths, labels = [], []
    for label, name in enumerate(class_names):
        class_dir = os.path.join(split_dir, name)
        if name in split_classes:
            files = _subdirs_and_files(class_dir)[1]
            if not files and split == train_split:
                raise ValueError(
                    f"folder dataset: class folder {class_dir!r} of the train split holds no "
                    "images; remove it or add images"
                )
            paths += [os.path.join(class_dir, f) for f in files]
            labels += [label] * len(files)
    if not paths:
        raise ValueError(f"folder dataset: split {split_dir!r} holds no image files")
    with concurrent.futures.ThreadPoolExecutor(_SCAN_THREADS) as pool:
        problems = list(pool.map(image_file_problem, paths))
    bad = [(p, why) for p, why in zip(paths, problems, strict=True) if why]
    if bad and not skip_corrupt:
        path, why = bad[0]
        raise ValueError(
            f"corrupt or non-image file {path}: {why} ({len(bad)} such files in {split_dir}); "
            "remove them or set config.data.skip_corrupt=True to skip them"
        )
    if bad:
        logging.warning(
            "skipping %d corrupt or non-image files in %s, e.g. %s",
            len(bad),
            split_dir,
            "; ".join(f"{p} {why}" for p, why in bad[:5]),
        )
    keep = [i for i, why in enumerate(problems) if not why]
    if not keep:
        raise ValueError(f"folder dataset: every file in {split_dir!r} is corrupt or not an image")
    order = np.random.default_rng(_FOLDER_ORDER_SEED).permutation(len(keep))
    return (
        tuple(paths[keep[i]] for i in order),
        tuple(labels[keep[i]] for i in order),
        tuple(p for p, _ in bad),
    )


def _folder_split(data_config, split: str):
    folder = data_config.folder
    if not folder:
        raise ValueError("config.data.folder is empty; set it when config.data.source='folder'")
    classes = _folder_class_names(folder, data_config.train_split, split)
    scanned = _scan_folder_split(
        folder, split, data_config.train_split, classes, bool(data_config.skip_corrupt)
    )
    return classes, scanned


def split_size(data_config, split: str) -> int:
    """Examples of `split` after skipping corrupt files."""
    return len(_folder_split(data_config, split)[1][0])


def dataset_info(data_config) -> DatasetInfo:
    """Classes (the train split's sorted class folders) and split sizes of a folder dataset."""
    folder = data_config.folder
    num_examples, num_skipped, classes = {}, {}, None
    for split in (data_config.train_split, data_config.eval_split):
        if folder and tf.io.gfile.isdir(os.path.join(folder, split)):
            classes, (paths, _, skipped) = _folder_split(data_config, split)
            num_examples[split], num_skipped[split] = len(paths), len(skipped)
    if classes is None:
        _folder_split(data_config, data_config.train_split)  # Raises the missing-folder error.
    return DatasetInfo(
        name=os.path.basename(os.path.normpath(folder)),
        source="folder",
        num_classes=len(classes),
        class_names=classes,
        num_examples=num_examples,
        num_train_examples=num_examples.get(data_config.train_split, 0),
        num_eval_examples=num_examples.get(data_config.eval_split, 0),
        num_skipped=num_skipped,
    )


def host_records(
    data_config, split: str, process_index: int, process_count: int, options
) -> Records:
    """Host `process_index`'s contiguous part of `split`: (file path, label) records."""
    classes, (paths, labels, _) = _folder_split(data_config, split)
    start, end = even_range(len(paths), process_index, process_count)
    dataset = tf.data.Dataset.from_tensor_slices(
        (tf.constant(paths[start:end], tf.string), tf.constant(labels[start:end], tf.int64))
    )
    if options is not None:
        dataset = dataset.with_options(options)
    return Records(
        dataset=dataset,
        num_examples=end - start,
        num_classes=len(classes),
        load=tf.io.read_file,
        random_access=True,
        description=f"folder {os.path.join(data_config.folder, split)!r}",
    )
