"""rectifiers_jax.evaluate and evaluators: every protocol against an independent NumPy computation.

Runs are made without training: a config.json and a checkpoint of freshly initialised tiny
net14 params (width 1/16, image_size 80) whose last layer is rescaled so the softmax is far from
uniform (no near-ties in the top-k ranks). Centre evaluation uses the digits upscaled to 80;
10-view and dense use a folder of scikit-image photographs at ImageNet-like sizes, two of them
wider than the 4:3 dense canvas, plus a split holding one photo of exactly 80x80.
"""

from __future__ import annotations

import collections
import dataclasses
import functools
import json
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from support import encode, photo, run_cli

from configs.default import get_config
from rectifiers_jax import checkpoints, evaluate, models, train
from rectifiers_jax.data import input_pipeline, mean, preprocessing, sources
from rectifiers_jax.evaluators import dense

STEP = 7
CLASSES = ("cat", "coffee", "rocket")
# split -> [(class, photo, (W, H) or None for its PHOTOS size)]
PHOTO_LAYOUT = {
    "train": [("cat", "chelsea", None), ("coffee", "coffee", None), ("rocket", "rocket", None)],
    "validation": [
        ("cat", "chelsea", None),  # 451x300: 3:2, wider than the 4:3 canvas -> cropped.
        ("coffee", "coffee", None),  # 420x280: 3:2 -> cropped.
        ("rocket", "rocket", None),  # 300x400: portrait 3:4, fits.
        ("cat", "astronaut", None),  # 400x300: 4:3, fits exactly.
        ("coffee", "colorwheel", None),  # 371x370: square-ish.
    ],
    "square": [("coffee", "coffee", (80, 80))],
}


@functools.partial(jax.jit, static_argnums=0, static_argnames="window")
def apply(model: models.SPPNet, params, images, window: int | None = None) -> jax.Array:
    """Logits of one image batch (the model alone: no mesh, canvas or masks)."""
    return model.apply({"params": params}, images, window=window)


def make_run(
    workdir: pathlib.Path, data_overrides: dict, num_classes: int, probe_batch: int
) -> pathlib.Path:
    """A run directory: config.json and checkpoint STEP of He-initialised params.

    The params are drawn in NumPy (flax's eager init compiles op by op: a minute here) and the
    last layer is rescaled to logits of std ~2 on a `probe_batch` of inputs in the pipeline's
    range (the batch size a reference below uses, so the probe's compile is reused).
    """
    config = get_config()
    config.model.width = 0.0625
    config.data.update(data_overrides)
    workdir.mkdir(parents=True)
    (workdir / "config.json").write_text(config.to_json(indent=2))
    model = models.from_config(config.model, num_classes)
    shapes = jax.eval_shape(lambda: models.init_params(model, jax.random.key(0), 80))
    rng = np.random.default_rng(0)

    def draw(path, leaf: jax.ShapeDtypeStruct) -> np.ndarray:
        name = path[-1].key
        if name == "kernel":
            std = np.sqrt(2.0 / np.prod(leaf.shape[:-1]))
            return (std * rng.standard_normal(leaf.shape)).astype(np.float32)
        return np.full(leaf.shape, 0.25 if name == "a" else 0.0, np.float32)

    params = jax.tree_util.tree_map_with_path(draw, shapes)
    images = 60.0 * rng.standard_normal((probe_batch, 80, 80, 3)).astype(np.float32)
    params["fc3"]["kernel"] *= 2.0 / float(np.std(apply(model, params, images)))
    state = train.TrainState(jnp.array(STEP), params, {"momentum": jnp.zeros(())})
    with checkpoints.Checkpointer(str(workdir), save_every_steps=1, keep=1, async_save=False) as c:
        c.save(STEP, jax.tree.map(jnp.asarray, state), {}, force=True)
    return workdir


@pytest.fixture(scope="module")
def digits_run(tmp_path_factory, digits_dir) -> pathlib.Path:
    overrides = dict(data_dir=digits_dir, eval_resize=88, mean="per_channel")
    return make_run(tmp_path_factory.mktemp("eval") / "digits_run", overrides, 10, 100)


@pytest.fixture(scope="module")
def photo_run(tmp_path_factory) -> pathlib.Path:
    root = tmp_path_factory.mktemp("eval_photos")
    for split, files in PHOTO_LAYOUT.items():
        for i, (label, name, size) in enumerate(files):
            (root / split / label).mkdir(parents=True, exist_ok=True)
            image = photo(name)
            if image.ndim == 2:
                image = np.stack([image] * 3, axis=-1)
            if size is not None:
                image = np.asarray(jax.image.resize(image, (*size[::-1], 3), "linear"), np.uint8)
            (root / split / label / f"{i}.png").write_bytes(encode(image, "PNG"))
    overrides = dict(source="folder", folder=str(root), eval_resize=88, mean="none")
    return make_run(tmp_path_factory.mktemp("eval") / "photo_run", overrides, len(CLASSES), 10)


# ----------------------------------------------------------------------------- references


def load(run: pathlib.Path):
    config = checkpoints.load_config(run)
    model, variables = checkpoints.load_model(run)
    cfg = preprocessing.PreprocessConfig.from_config(config.data, mean=mean.load_mean(config.data))
    return config, model, variables, cfg


def records(config, split: str) -> list[tuple[bytes, int]]:
    """(encoded image, label) of every example of `split`, in storage order, read directly."""
    recs = sources.host_records(config.data, split)
    return [
        (bytes(key), int(label))
        for key, label in recs.dataset.map(lambda k, y: (recs.load(k), y)).as_numpy_iterator()
    ]


def softmax(logits) -> np.ndarray:
    z = np.asarray(logits, np.float64)
    z = np.exp(z - z.max(axis=-1, keepdims=True))
    return z / z.sum(axis=-1, keepdims=True)


def reference_metrics(probs: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """Top-1/top-5 error (%) and NLL of [N, K] probabilities; ties count as correct."""
    p_label = probs[np.arange(len(labels)), labels]
    rank = np.sum(probs > p_label[:, None], axis=1)
    return {
        "top1_error": 100.0 * np.mean(rank >= 1),
        "top5_error": 100.0 * np.mean(rank >= min(5, probs.shape[1])),
        "loss": float(np.mean(-np.log(p_label + 1e-12))),
        "num_examples": len(labels),
    }


def assert_metrics(got: dict, expected: dict) -> None:
    assert got["num_examples"] == expected["num_examples"]
    assert got["top1_error"] == pytest.approx(expected["top1_error"], abs=1e-6)
    assert got["top5_error"] == pytest.approx(expected["top5_error"], abs=1e-6)
    assert got["loss"] == pytest.approx(expected["loss"], rel=1e-4)


def dense_reference(model, params, image: np.ndarray, canvas: int, window: int) -> np.ndarray:
    """[K] softmax averaged over every window of the bare (centre-cropped) image and its flip."""
    height, width = image.shape[:2]
    top, left = max(0, (height - canvas) // 2), max(0, (width - canvas) // 2)
    image = image[top : top + canvas, left : left + canvas]
    views = [image, image[:, ::-1]]
    probs = [softmax(apply(model, params, v[None], window=window))[0] for v in views]
    return np.mean([p.reshape(-1, p.shape[-1]).mean(axis=0) for p in probs], axis=0)


# ----------------------------------------------------------------------------- protocols


def evaluate_cli(run: pathlib.Path, *args: str) -> dict:
    """`python -m rectifiers_jax.evaluate --workdir=RUN ARGS...`; the eval JSON it wrote."""
    assert evaluate.main([f"--workdir={run}", *args]) == 0
    protocol = next(a.split("=", 1)[1] for a in args if a.startswith("--protocol="))
    return json.loads((run / f"eval_{protocol}.json").read_text())


@pytest.mark.slow
def test_center_two_scales_match_direct_computation(digits_run):
    split = "validation[:100]"  # 100: not a multiple of the batch of 16.
    result = evaluate_cli(
        digits_run, "--protocol=center", "--scales=88,96", f"--split={split}", "--batch_size=16"
    )
    config, model, variables, cfg = load(digits_run)
    examples = records(config, split)
    labels = np.array([label for _, label in examples])
    per_scale = {}
    for scale in (88, 96):
        scaled = dataclasses.replace(cfg, eval_resize=scale)
        images = np.stack([preprocessing.eval_center(key, scaled).numpy() for key, _ in examples])
        per_scale[scale] = softmax(apply(model, variables["params"], images))
        assert_metrics(result["per_scale"][str(scale)], reference_metrics(per_scale[scale], labels))
    assert_metrics(result, reference_metrics((per_scale[88] + per_scale[96]) / 2, labels))
    saved = result
    assert {k: saved[k] for k in ("protocol", "scales", "split", "step", "num_examples")} == {
        "protocol": "center",
        "scales": [88, 96],
        "split": split,
        "step": STEP,
        "num_examples": 100,
    }
    assert set(saved["per_scale"]) == {"88", "96"}


@pytest.mark.slow
def test_ten_views_match_numpy_average(photo_run):
    # Defaults from the run: the split (validation, 5 photos: a batch of 8 pads 3).
    result = evaluate_cli(photo_run, "--protocol=10view", "--scales=96", "--batch-size=8")
    config, model, variables, cfg = load(photo_run)
    examples = records(config, "validation")
    probs = np.stack(
        [
            softmax(
                apply(
                    model,
                    variables["params"],
                    preprocessing.eval_ten_views(key, cfg, resize=96).numpy(),
                )
            ).mean(axis=0)
            for key, _ in examples
        ]
    )
    assert_metrics(result, reference_metrics(probs, np.array([y for _, y in examples])))
    assert "per_scale" not in result
    saved = json.loads((photo_run / "eval_10view.json").read_text())
    assert (saved["scales"], saved["split"], saved["num_examples"]) == ([96], "validation", 5)


@pytest.mark.slow
def test_dense_matches_every_window_of_the_bare_image(photo_run):
    result = evaluate_cli(photo_run, "--protocol=dense", "--scales=80")
    config, model, variables, cfg = load(photo_run)
    examples = records(config, "validation")
    window = models.feature_map_size(model.architecture, 80)
    canvas = dense.canvas_side(80, 4 / 3)
    assert (window, canvas) == (6, 107)
    probs = np.stack(
        [
            dense_reference(
                model,
                variables["params"],
                preprocessing.eval_full(key, cfg, 80).numpy(),
                canvas,
                window,
            )
            for key, _ in examples
        ]
    )
    expected = reference_metrics(probs, np.array([y for _, y in examples]))
    assert_metrics(result, expected)
    assert result["loss"] == pytest.approx(expected["loss"], rel=1e-5)  # Windows exact, too.
    assert result["cropped_images"] == 2  # The two 3:2 photos exceed the 107-pixel canvas.
    saved = json.loads((photo_run / "eval_dense.json").read_text())
    assert (saved["window"], saved["canvas"], saved["num_examples"]) == (6, {"80": 107}, 5)


def test_dense_of_an_exact_view_is_the_centre_view_and_its_flip(photo_run):
    # One 80x80 photo: its last conv map is one 6x6 window, but the 107-pixel canvas around it
    # must not leak into the map (net14's padded 2x2 convs read one pixel past the image).
    result = evaluate_cli(photo_run, "--protocol=dense", "--scales=80", "--split=square")
    config, model, variables, cfg = load(photo_run)
    [(key, label)] = records(config, "square")
    views = preprocessing.eval_ten_views(key, cfg, resize=80).numpy()
    p = softmax(apply(model, variables["params"], views))[[4, 9]].mean(axis=0)  # Centre, flipped.
    assert result["num_examples"] == 1
    assert result["loss"] == pytest.approx(-np.log(p[label]), rel=1e-5)


@pytest.mark.parametrize("process_count", [1, 2, 3])
def test_dense_groups_count_every_example_once(photo_run, process_count):
    config = checkpoints.load_config(photo_run)
    arch = models.from_config(config.model, 3).architecture
    counts, group_counts = collections.Counter(), set()
    for index in range(process_count):
        batches, steps = input_pipeline.eval_iterator(
            config.data,
            global_batch_size=process_count,
            mean=None,
            protocol="dense",
            resize=80,
            process_index=index,
            process_count=process_count,
        )
        groups = list(dense.dense_groups(batches, group_size=2, canvas=107, architecture=arch))
        group_counts.add(len(groups))
        for g in groups:
            assert g["image"].shape == (2, 107, 107, 3) and g["sizes"].shape == (
                2,
                len(arch.layers) + 1,
                2,
            )
            counts.update(g["label"][g["mask"]].tolist())
            assert not g["image"][~g["mask"]].any()
    assert len(group_counts) == 1  # The same number of steps on every host.
    assert counts == collections.Counter(CLASSES.index(c) for c, _, _ in PHOTO_LAYOUT["validation"])


def test_valid_sizes_follow_the_bare_image():
    arch = models.build("net14", width=0.0625).architecture
    sizes = models.map_sizes(arch, 80, 107)
    assert sizes.shape == (len(arch.layers) + 1, 2) and tuple(sizes[0]) == (80, 107)
    assert tuple(sizes[-1]) == (6, models.feature_map_size(arch, 107))
    assert dense.canvas_side(256, 4 / 3) == 342 and dense.canvas_side(3, 4 / 3) == 4


# ----------------------------------------------------------------------------- bad input


def assert_one_error_line(stderr: str, message: str) -> None:
    """stderr holds no traceback and ends with one `error: ...` line containing `message`."""
    lines = stderr.strip().splitlines()
    assert "Traceback" not in stderr and lines, stderr
    assert [line for line in lines if line.startswith("error:")] == lines[-1:], stderr
    assert message in lines[-1], stderr


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--protocol=multi"], "--protocol='multi' is not one of center, 10view, dense"),
        (["--scales=abc"], "'abc' is not an integer"),
        (["--scales="], "give comma-separated shorter sides"),
        (["--scales=64"], "scale 64 is below config.data.image_size=80"),
        (["--scales=88,88"], "repeats a scale"),
        (["--step=3"], "no checkpoint for step 3"),
        (["--batch_size=12"], "does not divide by the 8 devices"),
        (["--max_aspect=0.5"], "--max_aspect=0.5 must be a number >= 1"),
        (["--bogus=1"], "unrecognized arguments: --bogus=1"),
    ],
)
def test_bad_arguments_give_one_line(digits_run, capsys, args, message):
    assert run_cli(evaluate.main, [f"--workdir={digits_run}", *args]) == 2
    assert_one_error_line(capsys.readouterr().err, message)


def test_bad_run_directories_give_one_line(tmp_path, capsys):
    no_checkpoint = tmp_path / "no_checkpoint"
    no_checkpoint.mkdir()
    (no_checkpoint / "config.json").write_text(get_config().to_json())
    (tmp_path / "empty").mkdir()
    cases = [
        ([f"--workdir={tmp_path / 'missing'}"], "no such run directory"),
        ([f"--workdir={tmp_path / 'empty'}"], "is not a run directory (no config.json"),
        ([f"--workdir={no_checkpoint}"], "has no checkpoints yet (status: not started)"),
        ([], "the following arguments are required: --workdir"),
    ]
    for args, message in cases:
        assert run_cli(evaluate.main, args) == 2
        assert_one_error_line(capsys.readouterr().err, message)
