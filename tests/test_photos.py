"""The offline photo dataset (data.photos): splits, classes, sizes, determinism, the pipeline."""

from __future__ import annotations

import io
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image
from support import tiny_config

from rectifiers_jax.data import input_pipeline, photos, sources, tfds_source


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory) -> str:
    """Prepared on first use by `tfds_source.open_tfds`, as a run would."""
    data_dir = str(tmp_path_factory.mktemp("photos_tfds"))
    tfds_source.open_tfds("photos/tiny", data_dir)
    return data_dir


def _examples(data_dir: str, split: str) -> list[tuple[bytes, int]]:
    import tensorflow_datasets as tfds

    builder = tfds_source.open_tfds("photos/tiny", data_dir)
    dataset = builder.as_dataset(
        split=split, decoders={"image": tfds.decode.SkipDecoding()}, shuffle_files=False
    )
    return [(ex["image"], int(ex["label"])) for ex in dataset.as_numpy_iterator()]


def test_sources_are_colour_photographs_that_ship_with_the_packages():
    assert len(photos.CLASS_NAMES) == 10 == len(set(photos.CLASS_NAMES))
    for label in range(len(photos.SOURCES)):
        image = photos.load_photograph(label)
        assert image.mode == "RGB" and min(image.size) >= 300


def test_splits_classes_and_image_sizes(tiny_dir):
    builder = tfds_source.open_tfds("photos/tiny", tiny_dir)
    assert builder.info.features["label"].names == list(photos.CLASS_NAMES)
    config = photos.TINY
    expected = {"train": config.train_per_class, "validation": config.validation_per_class}
    for split, per_class in expected.items():
        examples = _examples(tiny_dir, split)
        assert len(examples) == 10 * per_class
        labels = np.array([label for _, label in examples])
        np.testing.assert_array_equal(np.bincount(labels, minlength=10), per_class)
        for encoded, _ in examples:
            assert encoded[:3] == b"\xff\xd8\xff"  # stored as the JPEG it was written as
            image = Image.open(io.BytesIO(encoded))
            assert image.mode == "RGB"
            assert config.shorter_min <= min(image.size) <= config.shorter_max
            assert max(image.size) <= round(min(image.size) * 4 / 3) + 1


def test_examples_are_deterministic_and_distinct(tiny_dir):
    stored: dict[tuple[str, int], list[bytes]] = {}
    for split in photos.SPLITS:
        for encoded, label in _examples(tiny_dir, split):
            stored.setdefault((split, label), []).append(encoded)
    for (split, label), encoded in stored.items():
        # Regenerating from the seeds gives the same bytes (storage order within a class may
        # differ from index order, so compare as sets).
        again = {
            photos.make_example(
                photos.load_photograph(label),
                photos.TINY,
                photos.example_seed(photos.TINY, split, label, i),
            )
            for i in range(len(encoded))
        }
        assert again == set(encoded)
    all_bytes = [b for encoded in stored.values() for b in encoded]
    assert len(set(all_bytes)) == len(all_bytes)


@pytest.mark.slow
def test_prepare_is_idempotent_and_bad_names_get_one_line(tiny_dir):
    assert photos.prepare_photos(tiny_dir, "tiny").endswith("photos/tiny/1.0.0")
    with pytest.raises(ValueError, match="photos has no builder config 'huge'; valid: full, tiny"):
        photos.prepare_photos(tiny_dir, "huge")
    command = [sys.executable, "-m", "rectifiers_jax.data", "prepare", f"--data_dir={tiny_dir}"]
    done = subprocess.run([*command, "--dataset=photos/tiny"], capture_output=True, text=True)
    assert done.returncode == 0 and done.stdout.strip().endswith("photos/tiny/1.0.0")
    bad = subprocess.run([*command, "--dataset=cifar10"], capture_output=True, text=True)
    assert bad.returncode == 2 and bad.stdout == ""
    assert bad.stderr.strip().splitlines()[-1] == (
        "error: --dataset='cifar10' is not an offline dataset; valid: sklearn_digits, photos"
    )


def test_the_input_pipeline_reads_it(tiny_dir):
    config = tiny_config(tiny_dir)
    config.data.name = "photos/tiny"
    config.data.image_size = 56
    config.data.resize_size = 64
    config.data.eval_resize = 64
    info = sources.get_info(config.data)
    assert (info.num_classes, info.num_train_examples, info.num_eval_examples) == (10, 40, 20)
    batches = input_pipeline.train_iterator(config.data, global_batch_size=8, seed=0, mean=None)
    batch = next(iter(batches))
    assert batch["image"].shape == (8, 56, 56, 3) and batch["label"].shape == (8,)
