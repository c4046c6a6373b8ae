"""rectifiers_jax.data: digits as TFDS, reading from metadata, folders, the mean."""

from __future__ import annotations

import collections
import concurrent.futures
import importlib
import logging
import os
import pathlib
import shutil

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds
from support import data_config, encode, make_photo_folder, photo, read_all

from rectifiers_jax.data import (
    digits,
    folder,
    input_pipeline,
    mean,
    preprocessing,
    records,
    sources,
    tfds_source,
)

# ----------------------------------------------------------------------------- TensorFlow


def test_readers_hide_accelerators_from_tensorflow_and_imports_do_not(digits_dir, monkeypatch):
    calls = []
    monkeypatch.setattr(tf.config, "set_visible_devices", lambda d, kind: calls.append((d, kind)))
    records.use_tensorflow_on_cpu_only.cache_clear()
    importlib.reload(input_pipeline)  # importing changes nothing
    assert calls == []
    sources.host_records(data_config(data_dir=digits_dir), "validation")
    assert calls == [([], "GPU"), ([], "TPU")]


def test_too_late_to_hide_accelerators_is_logged_not_swallowed(monkeypatch, caplog):
    def initialised(devices, kind):
        raise RuntimeError("Visible devices cannot be modified after being initialized")

    monkeypatch.setattr(tf.config, "set_visible_devices", initialised)
    records.use_tensorflow_on_cpu_only.cache_clear()
    with caplog.at_level(logging.WARNING):
        records.use_tensorflow_on_cpu_only()
    records.use_tensorflow_on_cpu_only.cache_clear()
    assert "could not hide GPUs" in caplog.text and "could not hide TPUs" in caplog.text


# ----------------------------------------------------------------------------- digits


def test_digits_read_back_through_generic_tfds_path(digits_dir):
    config = data_config(data_dir=digits_dir)
    info = sources.get_info(config)
    assert (info.num_classes, info.class_names) == (10, tuple(str(d) for d in range(10)))
    assert info.num_examples == {"train": 1437, "validation": 360}
    assert (info.num_train_examples, info.num_eval_examples) == (1437, 360)
    assert isinstance(
        tfds_source.open_tfds("sklearn_digits", digits_dir),
        tfds.core.read_only_builder.ReadOnlyBuilder,
    )

    records = sources.host_records(config, "validation")
    examples = read_all(records)
    labels = np.array([label for _, label in examples])
    assert len(examples) == 360 and labels.min() == 0 and labels.max() == 9
    # Stratified: every class has 36 (+-1) validation examples.
    assert np.all(np.abs(np.bincount(labels, minlength=10) - 36) <= 1)
    image = preprocessing.decode_rgb(examples[0][0]).numpy()
    assert image.shape == (8, 8, 3) and image.dtype == np.uint8
    assert image.max() <= 255 and image.max() > 200  # 0..16 was scaled to 0..255.


def test_digits_validation_pixels_match_sklearn(digits_dir):
    from sklearn.datasets import load_digits

    sk = load_digits()
    expected = collections.Counter(
        (np.round(sk.images[i] * 255 / 16).astype(np.uint8).tobytes(), int(sk.target[i]))
        for i in digits.split_indices()["validation"]
    )
    validation = sources.host_records(data_config(data_dir=digits_dir), "validation")
    got = collections.Counter(
        (preprocessing.decode_rgb(encoded).numpy()[..., 0].tobytes(), label)
        for encoded, label in read_all(validation)
    )
    assert got == expected


def test_prepare_digits_concurrent_then_idempotent(tmp_path):
    data_dir = str(tmp_path / "tfds")
    with concurrent.futures.ThreadPoolExecutor(2) as pool:  # Two callers at once: one prepares.
        paths = list(pool.map(digits.prepare_digits, [data_dir, data_dir]))
    assert paths == [os.path.join(data_dir, "sklearn_digits", "1.0.0")] * 2
    info_file = os.path.join(paths[0], "dataset_info.json")
    before = os.stat(info_file).st_mtime_ns
    assert digits.prepare_digits(data_dir) == paths[0]
    assert os.stat(info_file).st_mtime_ns == before


# ----------------------------------------------------------------------------- TFDS reading


def test_tfds_dataset_read_from_metadata_without_builder_code(tiny_photos_dir):
    with pytest.raises(tfds.core.DatasetNotFoundError):
        tfds.builder("tiny_photos")  # The class is not registered: no code path exists.
    builder = tfds_source.open_tfds("tiny_photos", tiny_photos_dir)
    assert isinstance(builder, tfds.core.read_only_builder.ReadOnlyBuilder)
    config = data_config(name="tiny_photos", data_dir=tiny_photos_dir)
    info = sources.get_info(config)
    assert info.class_names == ("chelsea", "coffee", "rocket")
    assert info.num_examples == {"train": 4, "validation": 3}
    got = collections.Counter(
        (tuple(preprocessing.decode_rgb(encoded).shape[:2]), label)
        for encoded, label in read_all(sources.host_records(config, "validation"))
    )
    # rocket (label 2), coffee (1), chelsea (0) at their ImageNet-like sizes.
    assert got == collections.Counter([((400, 300), 2), ((280, 420), 1), ((300, 451), 0)])


def test_missing_imagenet_error_has_preparation_steps(tmp_path):
    with pytest.raises(records.DatasetNotFoundError) as error:
        sources.get_info(data_config(name="imagenet2012", data_dir=str(tmp_path)))
    message = str(error.value)
    for step in (
        "ILSVRC2012_img_train.tar",
        "ILSVRC2012_img_val.tar",
        f"{tmp_path}/downloads/manual/",
        f"tfds build imagenet2012 --data_dir={tmp_path}",
        "gs://",
    ):
        assert step in message


def test_missing_dataset_error_names_dataset_and_contents(tmp_path):
    (tmp_path / "mnist" / "3.0.1").mkdir(parents=True)
    with pytest.raises(records.DatasetNotFoundError, match=r"'my_data'.*holds: mnist"):
        sources.get_info(data_config(name="my_data", data_dir=str(tmp_path)))
    with pytest.raises(records.DatasetNotFoundError, match="'mnist' is not prepared.*no prepared"):
        sources.get_info(data_config(name="mnist", data_dir=str(tmp_path)))


def test_unknown_split_is_a_clear_error(digits_dir):
    with pytest.raises(
        ValueError, match=r"split 'test'.*prepared splits: \['train', 'validation'\]"
    ):
        sources.host_records(data_config(data_dir=digits_dir), "test")


# ----------------------------------------------------------------------------- folders


def test_folder_labels_follow_sorted_class_folders(photo_folder):
    config = data_config(source="folder", folder=str(photo_folder))
    info = sources.get_info(config)
    assert info.class_names == ("cat", "coffee", "portrait")
    assert info.num_examples == {"train": 8, "validation": 4}
    records = sources.host_records(config, "train")
    paths = [bytes(p).decode() for p, _ in records.dataset.as_numpy_iterator()]
    labels = [int(v) for _, v in records.dataset.as_numpy_iterator()]
    assert [info.class_names[v] for v in labels] == [pathlib.Path(p).parent.name for p in paths]
    # The stored order is a fixed shuffle, not class by class.
    assert labels != sorted(labels)
    images = [preprocessing.decode_rgb(tf.io.read_file(p)).numpy() for p in paths]
    assert all(image.ndim == 3 and image.shape[2] == 3 for image in images)
    assert min(min(image.shape[:2]) for image in images) >= 280


def corrupt_folder(root: pathlib.Path) -> tuple[pathlib.Path, list[str]]:
    make_photo_folder(root)
    truncated = root / "train" / "coffee" / "truncated.jpg"
    data = encode(photo("coffee"))
    truncated.write_bytes(data[: len(data) // 2])
    text = root / "train" / "cat" / "notes.txt"
    text.write_text("not an image")
    (root / "train" / "cat" / ".DS_Store").write_bytes(b"\0\0\0\1Bud1")  # Hidden: ignored.
    return root, sorted([str(truncated), str(text)])


def test_corrupt_file_fails_with_its_path(tmp_path):
    root, bad = corrupt_folder(tmp_path / "photos")
    with pytest.raises(ValueError, match="corrupt or non-image file") as error:
        sources.get_info(data_config(source="folder", folder=str(root)))
    assert any(path in str(error.value) for path in bad)
    assert "skip_corrupt" in str(error.value)


def test_corrupt_files_skipped_and_counted(tmp_path):
    root, bad = corrupt_folder(tmp_path / "photos")
    config = data_config(source="folder", folder=str(root), skip_corrupt=True)
    info = sources.get_info(config)
    assert info.num_skipped == {"train": 2, "validation": 0}
    assert info.num_examples["train"] == 8
    paths = {
        bytes(p).decode()
        for p, _ in sources.host_records(config, "train").dataset.as_numpy_iterator()
    }
    assert not paths & set(bad)


def test_image_file_problem_cheap_checks(tmp_path):
    jpeg = encode(photo("chelsea"))
    cases = {
        "ok.jpg": (jpeg, None),
        # Data appended after the end marker (phones do this) is still a valid JPEG.
        "trailing.jpg": (jpeg + os.urandom(4096), None),
        "ok.png": (encode(photo("coffee"), "PNG"), None),
        "truncated.jpg": (jpeg[:-3000], "does not decode"),
        "empty.jpg": (b"", "is empty"),
        "text.jpg": (b"hello, not an image", "is not an image"),
    }
    for name, (content, problem) in cases.items():
        (tmp_path / name).write_bytes(content)
        found = folder.image_file_problem(str(tmp_path / name))
        assert (found is None) if problem is None else (problem in found), (name, found)


def test_folder_without_classes_or_images_is_a_clear_error(tmp_path):
    (tmp_path / "train").mkdir()
    config = data_config(source="folder", folder=str(tmp_path))
    with pytest.raises(ValueError, match="has 0 class subfolder.*at least 2"):
        sources.get_info(config)
    (tmp_path / "train" / "cat").mkdir()
    (tmp_path / "train" / "cat" / "a.jpg").write_bytes(encode(photo("chelsea")))
    with pytest.raises(ValueError, match="has 1 class subfolder.*at least 2"):
        sources.get_info(config)
    (tmp_path / "train" / "dog").mkdir()
    with pytest.raises(ValueError, match=r"class folder .*dog' of the train split holds no images"):
        sources.get_info(config)
    with pytest.raises(records.DatasetNotFoundError, match="no split folder"):
        sources.get_info(data_config(source="folder", folder=str(tmp_path / "missing")))


def test_folder_validation_class_not_in_train_is_an_error(tmp_path):
    root = make_photo_folder(tmp_path / "photos")
    (root / "validation" / "zebra").mkdir()
    (root / "validation" / "zebra" / "z.jpg").write_bytes(encode(photo("rocket")))
    with pytest.raises(ValueError, match=r"\['zebra'\].*not among the train split's classes"):
        sources.get_info(data_config(source="folder", folder=str(root)))


# ----------------------------------------------------------------------------- even splits


@pytest.mark.parametrize("count", [1, 2, 3, 7])
def test_even_range_matches_tfds_even_splits(digits_dir, count):
    builder = tfds_source.open_tfds("sklearn_digits", digits_dir)
    for index, sub in enumerate(tfds.even_splits("validation[:101]", n=count)):
        start, end = records.even_range(101, index, count)
        assert builder.info.splits[sub].num_examples == end - start


# ----------------------------------------------------------------------------- mean


@pytest.mark.slow
def test_mean_written_beside_dataset_and_loaded(digits_dir):
    # Sizes no other test uses, so this test's mean file cannot leak into them.
    config = data_config(
        data_dir=digits_dir, image_size=6, resize_size=6, eval_resize=7, mean="per_pixel"
    )
    path = mean.mean_path(config)
    assert path == os.path.join(digits_dir, "sklearn_digits", "mean_6_7.npz")
    if os.path.exists(path):
        os.remove(path)
    fallback = mean.load_mean(config)  # No file: per-channel fallback from a sample.
    assert fallback.shape == (3,)
    assert mean.write_mean(config) == path
    per_pixel = mean.load_mean(config)
    assert per_pixel.shape == (6, 6, 3) and per_pixel.dtype == np.float32
    per_channel = mean.load_mean(data_config(**{**config.to_dict(), "mean": "per_channel"}))
    np.testing.assert_allclose(per_channel, per_pixel.mean(axis=(0, 1)), rtol=1e-5)
    np.testing.assert_allclose(fallback, per_channel, atol=2.0)  # 1,024 of 1,437 images.
    # The stored mean is the average of all 1,437 train images' eval centre crops.
    cfg = preprocessing.PreprocessConfig.from_config(config)
    crops = np.stack(
        list(
            sources.host_records(config, "train")
            .dataset.map(lambda encoded, label: preprocessing.eval_center(encoded, cfg))
            .as_numpy_iterator()
        )
    )
    assert crops.shape == (1437, 6, 6, 3)
    np.testing.assert_allclose(
        per_pixel, crops.astype(np.float64).mean(axis=0), rtol=1e-5, atol=1e-4
    )
    assert mean.load_mean(data_config(**{**config.to_dict(), "mean": "none"})) is None
    with pytest.raises(ValueError, match="config.data.mean='median'"):
        mean.load_mean(data_config(**{**config.to_dict(), "mean": "median"}))


def test_download_option_prepares_a_missing_registered_dataset(tmp_path, monkeypatch):
    """With config.data.download, a missing dataset is built by its TFDS builder, then read."""
    source = digits.prepare_digits(str(tmp_path / "elsewhere"))  # .../sklearn_digits/1.0.0
    data_dir = tmp_path / "tfds"
    requested = []
    real_builder = tfds_source.tfds.builder

    class Unprepared:  # stands in for a TFDS builder that downloads by itself
        def __init__(self, name):
            self.data_dir = str(data_dir / name / "1.0.0")

        def is_prepared(self):
            return False

        def download_and_prepare(self):
            requested.append("download")
            shutil.copytree(source, self.data_dir)

    def fake_builder(name, data_dir):
        requested.append(name)
        prepared = os.path.exists(os.path.join(data_dir, name, "1.0.0"))
        return real_builder(name, data_dir=data_dir) if prepared else Unprepared(name)

    monkeypatch.setattr(tfds_source.tfds, "builder", fake_builder)
    with pytest.raises(records.DatasetNotFoundError, match="not prepared"):
        tfds_source.open_tfds("fake_digits", str(data_dir))
    with pytest.raises(records.DatasetNotFoundError, match="ILSVRC2012_img_train.tar"):
        tfds_source.open_tfds("imagenet2012", str(data_dir), download=True)
    assert "download" not in requested
    builder = tfds_source.open_tfds("fake_digits", str(data_dir), download=True)
    assert requested[-3:] == ["fake_digits", "download", "fake_digits"]
    assert builder.info.features["label"].num_classes == 10
