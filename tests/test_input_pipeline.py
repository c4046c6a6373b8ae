"""rectifiers_jax.data.input_pipeline: shapes, determinism, resume, host splits, exact eval.

Digits (8x8) keep the pipeline cheap; with image_size = resize_size = 8 and no flip, lighting or
mean, a training image is exactly its decoded pixels, so examples can be identified by value.
"""

from __future__ import annotations

import collections
import itertools

import numpy as np
import pytest
from support import data_config

from rectifiers_jax.data import input_pipeline, mean, preprocessing, records, sources


def identity_config(data_dir: str, **overrides):
    """Digits with augmentation that leaves each 8x8 image unchanged (see module docstring)."""
    fields = dict(
        image_size=8, resize_size=8, eval_resize=8, random_flip=False, pca_lighting=0.0, mean="none"
    )
    return data_config(data_dir=data_dir, **{**fields, **overrides})


def augment_config(data_dir: str, **overrides):
    """Digits with random crops of a 12-pixel image, flips and PCA lighting."""
    fields = dict(
        image_size=8, resize_size=12, eval_resize=8, random_flip=True, pca_lighting=0.1, mean="none"
    )
    return data_config(data_dir=data_dir, **{**fields, **overrides})


def take(iterator, count: int) -> list[dict[str, np.ndarray]]:
    return list(itertools.islice(iterator, count))


def example_keys(images: np.ndarray, labels: np.ndarray) -> collections.Counter:
    """Multiset of (pixels, label): identifies identity-preprocessed digits."""
    return collections.Counter(
        (np.asarray(image, np.uint8).tobytes(), int(label))
        for image, label in zip(images, labels, strict=True)
    )


def split_keys(config, split: str, process_index: int = 0, process_count: int = 1):
    """The multiset of decoded examples of a host's part, read directly (no pipeline)."""
    records = sources.host_records(
        config, split, process_index=process_index, process_count=process_count
    )
    decoded = records.dataset.map(lambda key, label: (preprocessing.decode_rgb(key), label))
    return collections.Counter(
        (image.tobytes(), int(label)) for image, label in decoded.as_numpy_iterator()
    )


@pytest.mark.slow
def test_train_batch_shapes_and_dtypes(digits_dir):
    # The mean falls back to the per-channel mean of (here all 200) training images.
    config = augment_config(digits_dir, mean="per_channel", train_split="train[:200]")
    batch = next(
        input_pipeline.train_iterator(
            config,
            mean=mean.load_mean(config),
            global_batch_size=16,
            seed=0,
            process_index=0,
            process_count=1,
        )
    )
    assert set(batch) == {"image", "label"}
    assert batch["image"].shape == (16, 8, 8, 3) and batch["image"].dtype == np.float32
    assert batch["label"].shape == (16,) and batch["label"].dtype == np.int32
    assert batch["label"].min() >= 0 and batch["label"].max() < 10
    assert np.isfinite(batch["image"]).all()
    assert -256 < batch["image"].min() < 0 < batch["image"].max() < 256  # 0..255 minus a mean.


@pytest.mark.slow
def test_same_seed_same_batches_other_seed_different(digits_dir):
    config = augment_config(digits_dir, train_split="train[:40]", shuffle_buffer=16)
    run = lambda seed: take(
        input_pipeline.train_iterator(
            config, mean=None, global_batch_size=8, seed=seed, process_index=0, process_count=1
        ),
        7,
    )
    first, second, other = run(3), run(3), run(4)
    for a, b in zip(first, second, strict=True):
        np.testing.assert_array_equal(a["image"], b["image"])
        np.testing.assert_array_equal(a["label"], b["label"])
    assert not all(
        np.array_equal(a["image"], b["image"]) for a, b in zip(first, other, strict=True)
    )


@pytest.mark.slow
def test_resume_at_step_k_is_bit_identical(digits_dir):
    # Host 1 of 2 holds 25 of 50 examples; host batch 8, so epochs end mid-batch. Step 2 resumes
    # inside epoch 0 (example 16), step 7 inside epoch 2 (example 56 = 2 * 25 + 6). Windows of
    # 10 records exercise the windowed shuffle.
    config = augment_config(digits_dir, train_split="train[:50]", shuffle_buffer=10)
    kwargs = dict(global_batch_size=16, seed=11, process_index=1, process_count=2)
    straight = take(input_pipeline.train_iterator(config, mean=None, **kwargs), 10)
    for start_step in (2, 7):
        resumed = take(
            input_pipeline.train_iterator(config, mean=None, start_step=start_step, **kwargs),
            10 - start_step,
        )
        for step, batch in enumerate(resumed, start=start_step):
            np.testing.assert_array_equal(
                batch["image"], straight[step]["image"], err_msg=f"step {step}"
            )
            np.testing.assert_array_equal(batch["label"], straight[step]["label"])


@pytest.mark.slow
@pytest.mark.parametrize("process_count", [1, 2, 3])
def test_per_host_parts_are_disjoint_and_cover_the_split(digits_dir, process_count):
    config = identity_config(digits_dir, train_split="train[:101]", shuffle_buffer=32)
    whole = split_keys(config, "train[:101]")
    host_batch, union = 5, collections.Counter()
    for index in range(process_count):
        part = split_keys(config, "train[:101]", index, process_count)
        n = sum(part.values())
        batches = take(
            input_pipeline.train_iterator(
                config,
                mean=None,
                global_batch_size=host_batch * process_count,
                seed=0,
                process_index=index,
                process_count=process_count,
            ),
            2 * n // host_batch + 1,
        )
        images = np.concatenate([b["image"] for b in batches])
        labels = np.concatenate([b["label"] for b in batches])
        epoch0 = example_keys(images[:n], labels[:n])
        assert epoch0 == part  # Each epoch is a permutation of exactly this host's part...
        assert example_keys(images[n : 2 * n], labels[n : 2 * n]) == part
        assert not np.array_equal(images[:n], images[n : 2 * n])  # ...in a new order.
        union += part
    assert union == whole and sum(union.values()) == 101


@pytest.mark.slow
def test_folder_train_batches(photo_folder):
    config = data_config(
        source="folder",
        folder=str(photo_folder),
        image_size=32,
        train_recipe="scale_jitter",
        scale_min=36,
        scale_max=48,
        random_flip=True,
        pca_lighting=0.1,
        mean="per_channel",
    )
    batches = take(
        input_pipeline.train_iterator(
            config,
            global_batch_size=4,
            seed=0,
            mean=mean.load_mean(config),
            process_index=0,
            process_count=1,
        ),
        4,
    )
    assert all(b["image"].shape == (4, 32, 32, 3) for b in batches)
    # Two epochs of the 8 training photos: each label as often as its class has photos.
    labels = collections.Counter(np.concatenate([b["label"] for b in batches]).tolist())
    assert labels == {0: 6, 1: 4, 2: 6}


@pytest.mark.slow
@pytest.mark.parametrize(("process_count", "global_batch_size"), [(1, 16), (3, 24)])
def test_eval_counts_every_example_once(digits_dir, process_count, global_batch_size):
    config = identity_config(digits_dir)
    split = "validation[:100]"  # 100: not a multiple of the batch; 34/33/33 on 3 hosts.
    expected = split_keys(config, split)
    got, steps = collections.Counter(), set()
    for index in range(process_count):
        batches, num_steps = input_pipeline.eval_iterator(
            config,
            mean=None,
            global_batch_size=global_batch_size,
            split=split,
            process_index=index,
            process_count=process_count,
        )
        listed = list(batches)
        steps |= {num_steps, len(listed), len(batches)}
        for batch in listed:
            assert batch["image"].shape == (global_batch_size // process_count, 8, 8, 3)
            assert batch["mask"].dtype == bool and batch["label"].dtype == np.int32
            got += example_keys(batch["image"][batch["mask"]], batch["label"][batch["mask"]])
        again = list(batches)  # Re-iterable: a second pass restarts and repeats the first.
        assert len(again) == len(listed)
        np.testing.assert_array_equal(again[-1]["image"], listed[-1]["image"])
    assert len(steps) == 1  # The same number of steps on every host.
    assert got == expected and sum(got.values()) == 100


@pytest.mark.slow
def test_eval_protocols_on_photos(tiny_photos_dir):
    config = data_config(
        name="tiny_photos", data_dir=tiny_photos_dir, image_size=32, eval_resize=40, mean="none"
    )
    cfg = preprocessing.PreprocessConfig.from_config(config)
    encoded = [
        key for key, _ in sources.host_records(config, "validation").dataset.as_numpy_iterator()
    ]
    # 3 images on 2 hosts: parts of 2 and 1, so 2 steps each and host 1 pads its second.
    for index, part in ((0, encoded[:2]), (1, encoded[2:])):
        kwargs = dict(global_batch_size=2, process_index=index, process_count=2)
        center, steps = input_pipeline.eval_iterator(config, mean=None, protocol="center", **kwargs)
        batches = list(center)
        assert steps == 2 and [b["mask"].tolist() for b in batches] == [[True], [index == 0]]
        for batch, key in zip(batches, part, strict=False):
            np.testing.assert_allclose(
                batch["image"][0], preprocessing.eval_center(key, cfg).numpy()
            )
        views, _ = input_pipeline.eval_iterator(
            config, mean=None, protocol="10view", resize=48, **kwargs
        )
        first = next(iter(views))
        assert first["image"].shape == (1, 10, 32, 32, 3)
        np.testing.assert_allclose(
            first["image"][0], preprocessing.eval_ten_views(part[0], cfg, resize=48).numpy()
        )
        dense, steps = input_pipeline.eval_iterator(
            config, mean=None, protocol="dense", resize=36, **kwargs
        )
        batches = list(dense)
        assert (
            steps == 2 and len(batches) == 2 and sum(b["mask"].sum() for b in batches) == len(part)
        )
        for batch in batches:
            assert batch["image"].shape[0] == 1 and min(batch["image"].shape[1:3]) == 36


def test_steps_per_epoch(digits_dir):
    info = sources.get_info(identity_config(digits_dir))
    assert input_pipeline.steps_per_epoch(info, 64) == 1437 // 64


def test_indivisible_global_batch_is_refused(digits_dir):
    config = identity_config(digits_dir)
    with pytest.raises(
        ValueError, match="global_batch_size=10 must be a positive multiple of the process count 3"
    ):
        input_pipeline.train_iterator(
            config, mean=None, global_batch_size=10, seed=0, process_index=0, process_count=3
        )
    with pytest.raises(ValueError, match="multiple of the process count 4"):
        input_pipeline.eval_iterator(
            config, mean=None, global_batch_size=6, process_index=0, process_count=4
        )


def test_batch_larger_than_host_split_is_refused(digits_dir):
    config = identity_config(digits_dir, train_split="train[:10]")
    with pytest.raises(ValueError, match="host 1 of 2 holds 5 examples.*fewer than its batch of 8"):
        input_pipeline.train_iterator(
            config, mean=None, global_batch_size=16, seed=0, process_index=1, process_count=2
        )


def test_missing_dataset_stops_with_preparation_steps(tmp_path):
    config = data_config(name="imagenet2012", data_dir=str(tmp_path))
    with pytest.raises(
        records.DatasetNotFoundError, match="ILSVRC2012_img_train.tar.*tfds build imagenet2012"
    ):
        input_pipeline.train_iterator(
            config, mean=None, global_batch_size=8, seed=0, process_index=0, process_count=1
        )


def test_unknown_protocol_is_refused(digits_dir):
    with pytest.raises(ValueError, match="eval protocol 'multi'; valid: center, 10view, dense"):
        input_pipeline.eval_iterator(
            identity_config(digits_dir), global_batch_size=8, mean=None, protocol="multi"
        )
