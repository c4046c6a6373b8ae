"""Datasets: prepared TFDS datasets, folders of class subfolders, scikit-learn's digits, the mean.

Two sources, chosen by `config.data.source`, give the same thing to the input pipeline: a
host's part of a split as `(key, label)` records in a fixed storage order, where `load(key)` is
the encoded image (JPEG/PNG bytes). Decoding and augmentation happen later, in
`rectifiers_jax.preprocessing`.

- `"tfds"`: any prepared TFDS image-classification dataset (features `image`, `label`) under
  `config.data.data_dir`, read from the prepared files' metadata alone
  (`tfds.builder_from_directory`), so the builder code need not be importable. Images stay
  encoded (`tfds.decode.SkipDecoding`). `sklearn_digits` is prepared on first use.
- `"folder"`: `config.data.folder/<split>/<class>/<image>`. Label ids are the sorted class
  folder names of the train split. Every file is checked once when the split is opened (magic
  bytes; a JPEG/PNG without its end marker near the end is decoded to confirm), so a corrupt
  or non-image file fails with its path, or is skipped and counted when
  `config.data.skip_corrupt` is True. Hidden files (".name") are ignored.

Per-host parts follow `tfds.even_splits` (drop_remainder=False): host i of P reads a contiguous
part; the first `n % P` hosts hold one example more.

Command line:
    python -m rectifiers_jax.datasets prepare_digits --data_dir=data/tfds
    python -m rectifiers_jax.datasets mean --config=configs/default.py [--config.data.x=...]
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import dataclasses
import fcntl
import functools
import io
import os
from collections.abc import Callable, Iterator

import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds
from absl import logging

from rectifiers_jax import preprocessing

DIGITS_NAME = "sklearn_digits"
DIGITS_VERSION = "1.0.0"
# Stratified, seeded split of the 1,797 digits: 1,437 train / 360 validation (~20%).
DIGITS_NUM_VALIDATION = 360
DIGITS_SPLIT_SEED = 0
# Training images averaged when the mean file is missing (the per-channel fallback).
MEAN_FALLBACK_EXAMPLES = 1024
MEAN_KINDS = ("per_pixel", "per_channel", "none")
SOURCES = ("tfds", "folder")
# A file's order in a folder split: this fixed permutation of the sorted paths, so that
# contiguous host parts and shuffle windows mix the classes.
_FOLDER_ORDER_SEED = 0
# JPEG and PNG end markers are looked for in this many trailing bytes (cheap truncation test).
_TAIL_BYTES = 1024
_SCAN_THREADS = 32

IMAGENET_STEPS = (
    "prepare it once: (1) download ILSVRC2012_img_train.tar and ILSVRC2012_img_val.tar "
    "(https://image-net.org, needs an account) into TFDS's manual dir "
    "'{data_dir}/downloads/manual/'; (2) run `tfds build imagenet2012 --data_dir={data_dir}` "
    "(python: tfds.builder('imagenet2012', data_dir='{data_dir}').download_and_prepare()); "
    "for TPU pods build into (or copy the prepared imagenet2012/ folder to) a bucket and set "
    "--config.data.data_dir=gs://BUCKET/tensorflow_datasets"
)


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


# --------------------------------------------------------------------------------------------
# scikit-learn's digits as a prepared TFDS dataset.


def _digits_split_indices() -> dict[str, np.ndarray]:
    """Indices into `load_digits()` of the stratified, seeded train/validation split."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    target = load_digits().target
    train, validation = train_test_split(
        np.arange(len(target)),
        test_size=DIGITS_NUM_VALIDATION,
        stratify=target,
        random_state=DIGITS_SPLIT_SEED,
    )
    return {"train": np.sort(train), "validation": np.sort(validation)}


class SklearnDigits(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    """scikit-learn's 1,797 handwritten digits, 8x8 grayscale PNG, 10 classes (offline).

    Pixel values 0..16 are scaled to 0..255. Splits: train 1,437 / validation 360, stratified
    by class with `train_test_split(random_state=0)`. Not registered with TFDS (so importing
    this module twice cannot clash); prepare it with `prepare_digits`.
    """

    VERSION = tfds.core.Version(DIGITS_VERSION)
    # No checksums file to find; TFDS 4.9.10's lookup of one imports the undeclared
    # `importlib_resources` for builders inside a package (tensorflow/datasets#11212).
    code_path = None
    RELEASE_NOTES = {DIGITS_VERSION: "sklearn.datasets.load_digits, 1,437 / 360 stratified."}

    def _info(self) -> tfds.core.DatasetInfo:
        return tfds.core.DatasetInfo(
            builder=self,
            description="scikit-learn's handwritten digits (UCI optical recognition), 8x8.",
            features=tfds.features.FeaturesDict(
                {
                    "image": tfds.features.Image(shape=(8, 8, 1), encoding_format="png"),
                    "label": tfds.features.ClassLabel(names=[str(d) for d in range(10)]),
                }
            ),
            supervised_keys=("image", "label"),
            homepage="https://scikit-learn.org/stable/datasets/toy_dataset.html",
        )

    def _split_generators(self, dl_manager):
        del dl_manager  # The data ships inside scikit-learn: nothing to download.
        return {
            split: self._generate_examples(indices)
            for split, indices in _digits_split_indices().items()
        }

    def _generate_examples(self, indices: np.ndarray):
        from sklearn.datasets import load_digits

        digits = load_digits()
        pixels = np.round(digits.images * (255.0 / 16.0)).astype(np.uint8)[..., None]
        for i in indices:
            yield int(i), {"image": pixels[i], "label": int(digits.target[i])}


@contextlib.contextmanager
def _file_lock(path: str) -> Iterator[None]:
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


def prepare_digits(data_dir: str) -> str:
    """Write scikit-learn's digits once as TFDS `sklearn_digits` under `data_dir`.

    Idempotent; concurrent callers on one machine wait for the first. No network access.
    Returns the prepared dataset directory `<data_dir>/sklearn_digits/1.0.0`.
    """
    target = os.path.join(data_dir, DIGITS_NAME, DIGITS_VERSION)
    if tf.io.gfile.exists(os.path.join(target, "dataset_info.json")):
        return target
    with _file_lock(os.path.join(data_dir, f".{DIGITS_NAME}.lock")):
        builder = SklearnDigits(data_dir=data_dir)
        if not builder.is_prepared():
            logging.info("preparing %s under %s", DIGITS_NAME, data_dir)
            builder.download_and_prepare(
                download_dir=os.path.join(data_dir, "downloads"),
                download_config=tfds.download.DownloadConfig(try_download_gcs=False),
            )
    return target


# --------------------------------------------------------------------------------------------
# Prepared TFDS datasets, read from their files.


def _parse_tfds_name(name: str) -> tuple[str, str | None, str | None]:
    """'name[/config][:version]' -> (name, config, version)."""
    name, _, version = name.partition(":")
    base, _, config = name.partition("/")
    return base, config or None, version or None


def _version_dirs(path: str) -> dict[str, str]:
    """Prepared version folders under `path`: {version string: folder}."""
    found = {}
    for entry in tf.io.gfile.listdir(path):
        entry = entry.rstrip("/")
        if tfds.core.Version.is_valid(entry) and tf.io.gfile.exists(
            os.path.join(path, entry, "dataset_info.json")
        ):
            found[entry] = os.path.join(path, entry)
    return found


def _listing(path: str) -> str:
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


def _missing_tfds_error(name: str, data_dir: str, why: str) -> DatasetNotFoundError:
    base = _parse_tfds_name(name)[0]
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


def _find_tfds_dir(name: str, data_dir: str) -> str:
    """The prepared folder `<data_dir>/<name>[/<config>]/<version>` (newest version by default)."""
    base, config, version = _parse_tfds_name(name)
    root = os.path.join(data_dir, base)
    if not tf.io.gfile.isdir(root):
        raise _missing_tfds_error(name, data_dir, _listing(data_dir))
    if config is None and not _version_dirs(root):
        # A dataset with builder configs keeps its versions one level down; take the only one.
        configs = sorted(
            c.rstrip("/")
            for c in tf.io.gfile.listdir(root)
            if tf.io.gfile.isdir(os.path.join(root, c)) and _version_dirs(os.path.join(root, c))
        )
        if len(configs) > 1:
            raise ValueError(
                f"TFDS dataset {base!r} in {data_dir!r} has configs {configs}; name one in "
                f"config.data.name, e.g. {base}/{configs[0]}"
            )
        config = configs[0] if configs else None
    parent = os.path.join(root, config) if config else root
    versions = _version_dirs(parent) if tf.io.gfile.isdir(parent) else {}
    if version is not None:
        if version not in versions:
            raise _missing_tfds_error(
                name,
                data_dir,
                f"version {version} not found; prepared: {sorted(versions) or 'none'}",
            )
        return versions[version]
    if not versions:
        raise _missing_tfds_error(
            name, data_dir, f"no prepared version in {parent}: {_listing(parent)}"
        )
    return versions[max(versions, key=tfds.core.Version)]


@functools.lru_cache(maxsize=16)
def open_tfds(name: str, data_dir: str, download: bool = False) -> tfds.core.DatasetBuilder:
    """A read-only builder for prepared TFDS dataset `name` ('name[/config][:version]').

    Built from the prepared files' metadata (`tfds.builder_from_directory`), so it works when
    the builder code is not importable. `sklearn_digits` is prepared on first use; with
    `download`, a missing dataset whose TFDS builder downloads by itself (e.g. imagenette) is
    downloaded and prepared first (one process only: its files are not shared-written).
    Raises DatasetNotFoundError naming data_dir, what it holds, and how to prepare `name`.
    """
    if _parse_tfds_name(name)[0] == DIGITS_NAME:
        prepare_digits(data_dir)
    try:
        directory = _find_tfds_dir(name, data_dir)
    except DatasetNotFoundError:
        if not download or _parse_tfds_name(name)[0].startswith("imagenet2012"):
            raise
        logging.info("downloading and preparing TFDS dataset %s into %s", name, data_dir)
        tfds.builder(name, data_dir=data_dir).download_and_prepare()
        directory = _find_tfds_dir(name, data_dir)
    builder = tfds.builder_from_directory(directory)
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


def _open_configured(data_config) -> tfds.core.DatasetBuilder:
    """`open_tfds` for `config.data` (a `~` in data_dir is the user's home)."""
    data_dir = os.path.expanduser(data_config.data_dir)
    return open_tfds(data_config.name, data_dir, bool(data_config.get("download", False)))


def _tfds_split_size(builder: tfds.core.DatasetBuilder, split) -> int:
    """Examples in `split` (a name, a slice like 'train[:90%]', or an even sub-split)."""
    try:
        return int(builder.info.splits[split].num_examples)
    except (KeyError, ValueError) as error:
        raise ValueError(
            f"split {split!r} of TFDS dataset {builder.name!r}: {error}; prepared splits: "
            f"{sorted(builder.info.splits.keys())}"
        ) from error


# --------------------------------------------------------------------------------------------
# Folders of class subfolders.

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
            f"{_listing(folder)}); expected {folder}/<split>/<class>/<image>"
        )
    classes = _subdirs_and_files(source_dir)[0]
    if not classes:
        raise ValueError(
            f"folder dataset: {source_dir!r} has no class subfolders ({_listing(source_dir)})"
        )
    return tuple(classes)


@functools.lru_cache(maxsize=32)
def _scan_folder_split(
    folder: str, split: str, class_names: tuple[str, ...], skip_corrupt: bool
) -> tuple[tuple[str, ...], tuple[int, ...], tuple[str, ...]]:
    """(paths, labels, skipped paths) of a folder split, in the fixed storage order."""
    split_dir = os.path.join(folder, split)
    if not tf.io.gfile.isdir(split_dir):
        raise DatasetNotFoundError(
            f"folder dataset: no split folder {split_dir!r} ({folder!r}: {_listing(folder)})"
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
    return classes, _scan_folder_split(folder, split, classes, bool(data_config.skip_corrupt))


# --------------------------------------------------------------------------------------------
# The common reading API.


def _check_source(data_config) -> str:
    if data_config.source not in SOURCES:
        raise ValueError(f"config.data.source={data_config.source!r}; valid: {', '.join(SOURCES)}")
    return data_config.source


def even_range(num_examples: int, index: int, count: int) -> tuple[int, int]:
    """[start, end) of part `index` of `count` (tfds.even_splits, drop_remainder=False)."""
    per_part, extra = divmod(num_examples, count)
    start = per_part * index + min(index, extra)
    return start, start + per_part + (1 if index < extra else 0)


def split_size(data_config, split: str) -> int:
    """Number of examples in `split` over all hosts."""
    if _check_source(data_config) == "tfds":
        return _tfds_split_size(_open_configured(data_config), split)
    return len(_folder_split(data_config, split)[1][0])


def get_info(data_config) -> DatasetInfo:
    """Classes and split sizes of the dataset `data_config` describes."""
    if _check_source(data_config) == "tfds":
        builder = _open_configured(data_config)
        label = builder.info.features["label"]
        num_examples = {s: int(i.num_examples) for s, i in builder.info.splits.items()}

        def size(split: str) -> int:
            try:
                return _tfds_split_size(builder, split)
            except ValueError:
                return 0

        return DatasetInfo(
            name=data_config.name,
            source="tfds",
            num_classes=int(label.num_classes),
            class_names=tuple(label.names),
            num_examples=num_examples,
            num_train_examples=size(data_config.train_split),
            num_eval_examples=size(data_config.eval_split),
        )
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


def _checked_label(label: tf.Tensor, num_classes: int, description: str) -> tf.Tensor:
    """`label` as int64, failing with `description` when it is outside [0, num_classes)."""
    label = tf.cast(label, tf.int64)
    check = tf.debugging.Assert(
        tf.logical_and(label >= 0, label < num_classes),
        [f"label outside [0, {num_classes}) in {description}: ", label],
    )
    with tf.control_dependencies([check]):
        return tf.identity(label)


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
    if _check_source(data_config) == "tfds":
        builder = _open_configured(data_config)
        num_classes = int(builder.info.features["label"].num_classes)
        _tfds_split_size(builder, split)  # Validates the split name with a clear error.
        host_split = tfds.even_splits(split, n=process_count)[process_index]
        num_examples = _tfds_split_size(builder, host_split)
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
                lambda ex: (ex["image"], _checked_label(ex["label"], num_classes, description))
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
    classes, (paths, labels, _) = _folder_split(data_config, split)
    start, end = even_range(len(paths), process_index, process_count)
    description = f"folder {os.path.join(data_config.folder, split)!r}"
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
        description=description,
    )


# --------------------------------------------------------------------------------------------
# The mean image (paper Sec. 4: the per-pixel mean is subtracted).


# Means already loaded or computed in this process, keyed by the fields they depend on.
_MEAN_CACHE: dict[tuple, np.ndarray] = {}


def mean_path(data_config) -> str:
    """`<dataset dir>/mean_<image_size>_<eval_resize>.npz`, beside the dataset."""
    filename = f"mean_{data_config.image_size}_{data_config.eval_resize}.npz"
    if _check_source(data_config) == "tfds":
        base, config, _ = _parse_tfds_name(data_config.name)
        return os.path.join(
            os.path.expanduser(data_config.data_dir), base, *([config] if config else []), filename
        )
    return os.path.join(data_config.folder, filename)


def compute_mean(
    data_config, max_examples: int | None = None, batch_size: int = 64
) -> tuple[np.ndarray, np.ndarray, int]:
    """(per-pixel mean float32 [S, S, 3], per-channel mean float32 [3], examples used).

    Over the train split's evaluation centre crops (`preprocessing.eval_center` without a
    mean), in 0..255 units; the first `max_examples` in storage order when given.
    """
    cfg = preprocessing.PreprocessConfig.from_config(data_config, mean=None)
    records = host_records(data_config, data_config.train_split)
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
    for key in [k for k in _MEAN_CACHE if k[1] == path]:
        del _MEAN_CACHE[key]  # A fallback loaded before the file existed is now stale.
    return path


def _load_or_compute_mean(data_config, kind: str) -> np.ndarray:
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
    hint = (
        " (per_pixel needs `python -m rectifiers_jax.datasets mean`)" if kind == "per_pixel" else ""
    )
    logging.log(
        logging.WARNING if kind == "per_pixel" else logging.INFO,
        "mean file %s not found: using the per-channel mean %s of the first %d training images%s",
        path,
        np.round(per_channel, 2).tolist(),
        count,
        hint,
    )
    return per_channel


def load_mean(data_config) -> np.ndarray | None:
    """The mean to subtract for `config.data.mean`, float32 in 0..255 units.

    "per_pixel": [image_size, image_size, 3] from the stored mean file; "per_channel": [3]
    from that file; "none": None. Without the file, both fall back to the per-channel mean of
    the first `MEAN_FALLBACK_EXAMPLES` training images (logged).
    """
    kind = data_config.mean
    if kind not in MEAN_KINDS:
        raise ValueError(f"config.data.mean={kind!r}; valid: {', '.join(MEAN_KINDS)}")
    if kind == "none":
        return None
    key = (
        kind,
        mean_path(data_config),
        data_config.source,
        data_config.name,
        data_config.folder,
        data_config.train_split,
        bool(data_config.skip_corrupt),
    )
    if key not in _MEAN_CACHE:
        _MEAN_CACHE[key] = _load_or_compute_mean(data_config, kind)
    return _MEAN_CACHE[key]


# --------------------------------------------------------------------------------------------
# Command line.


def _main(argv: list[str]) -> None:
    from absl import app, flags

    commands = ("prepare_digits", "mean")
    if len(argv) != 2 or argv[1] not in commands:
        raise app.UsageError(
            f"usage: python -m rectifiers_jax.datasets {'|'.join(commands)} [flags]"
        )
    flag_values = flags.FLAGS
    if argv[1] == "prepare_digits":
        print(prepare_digits(flag_values.data_dir))
        return
    config = flag_values.config
    if config is None:
        raise app.UsageError("mean needs --config=configs/FILE.py [--config.data.KEY=VALUE ...]")
    path = write_mean(config.data, flag_values.max_examples)
    with tf.io.gfile.GFile(path, "rb") as f:
        stored = np.load(io.BytesIO(f.read()))
        per_channel = [round(float(v), 3) for v in stored["per_channel"]]
        print(
            f"{path}: per-pixel mean {stored['per_pixel'].shape} over "
            f"{int(stored['num_examples'])} images of split {stored['split']}; "
            f"per-channel {per_channel}"
        )


if __name__ == "__main__":
    from absl import app, flags
    from ml_collections import config_flags

    config_flags.DEFINE_config_file("config", None, "Experiment config file.", lock_config=True)
    flags.DEFINE_string("data_dir", "data/tfds", "prepare_digits: the TFDS data directory.")
    flags.DEFINE_integer("max_examples", None, "mean: average only the first N training images.")
    app.run(_main)
