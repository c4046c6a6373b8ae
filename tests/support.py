"""Shared test helpers (imported by the test modules; fixtures live in conftest.py)."""

from __future__ import annotations

import io
import json
import math
import pathlib
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from PIL import Image
from skimage import data as skdata

from configs import default
from rectifiers_jax import checkpoints, cli, models


def tiny_config(data_dir: str | Path, **overrides: Any) -> ml_collections.ConfigDict:
    """The default config shrunk to seconds a run: net14 at width 1/16 on the digits.

    12 steps of batch 16, logged every 2, checkpointed every 4, evaluated at the end.
    `overrides` are "section.field" keys, e.g. `**{"train.num_steps": 4}`.
    """
    config = default.get_config()
    config.data.data_dir = str(data_dir)
    config.model.width = 0.0625
    config.train.global_batch_size = 16
    config.train.eval_batch_size = 128
    config.train.num_steps = 12
    config.train.log_every_steps = 2
    config.train.eval_every_epochs = 0
    config.train.checkpoint_every_steps = 4
    for key, value in overrides.items():
        section, field = key.split(".")
        config[section][field] = value
    return config


def hand_layers(name: str) -> list[tuple[str, int, int, int, int]]:
    """(name, k, c_in, c_out, h_out) of every weight layer; fc layers have k = h_out = 1."""
    if name in ("net14", "net30"):
        # conv1 7x7/2 unpadded: 224 -> 109; pool1 3x3/3 -> 36; 2x2 convs alternate pad 0 / pad 1:
        # 35, 36, 35, 36; pool2 2x2/2 -> 18; then 17, 18, ...; SPP {6,3,2,1}: 50 bins x 256.
        extra = 16 if name == "net30" else 0
        rows = [("conv1", 7, 3, 64, 109)]
        rows += [(f"conv2_{i + 1}", 2, 128 if i else 64, 128, (35, 36)[i % 2]) for i in range(4)]
        rows += [
            (f"conv3_{i + 1}", 2, 256 if i else 128, 256, (17, 18)[i % 2]) for i in range(6 + extra)
        ]
        spp_in = 50 * 256
    else:
        # conv1 7x7/2 -> 112; 2x2 max pools; 3x3 'same' stages at 56, 28, 14; SPP {7,3,2,1}: 63.
        depth, widths = {
            "model_a": (5, (256, 512, 512)),
            "model_b": (6, (256, 512, 512)),
            "model_c": (6, (384, 768, 896)),
        }[name]
        rows, c_in = [("conv1", 7, 3, 96, 112)], 96
        for stage, (c_out, side) in enumerate(zip(widths, (56, 28, 14), strict=True), start=2):
            for i in range(depth):
                rows.append((f"conv{stage}_{i + 1}", 3, c_in, c_out, side))
                c_in = c_out
        spp_in = 63 * c_in
    fcs = [("fc1", 1, spp_in, 4096, 1), ("fc2", 1, 4096, 4096, 1), ("fc3", 1, 4096, 1000, 1)]
    return rows + fcs


def run_cli(main: Callable[[Sequence[str] | None], int | None], argv: Sequence[str]) -> int:
    """Exit code of a tool's `main(argv)` run as its command line runs it (`cli.run`)."""
    with pytest.raises(SystemExit) as exit_info:
        cli.run(main, argv)
    return exit_info.value.code


# Real photographs shipped with scikit-image, resized to ImageNet-like sizes (W x H).
PHOTOS = {
    "astronaut": (skdata.astronaut, (400, 300)),
    "chelsea": (skdata.chelsea, (451, 300)),
    "coffee": (skdata.coffee, (420, 280)),
    "rocket": (skdata.rocket, (300, 400)),
    "camera": (skdata.camera, (320, 320)),  # Grayscale.
    "colorwheel": (skdata.colorwheel, (371, 370)),
}


def photo(name: str, flip: bool = False) -> np.ndarray:
    """A scikit-image photo as uint8 [H, W, 3] (grayscale stays [H, W]) at an ImageNet-like size."""
    load, size = PHOTOS[name]
    image = Image.fromarray(load()).resize(size, Image.BILINEAR)
    if flip:
        image = image.transpose(Image.FLIP_LEFT_RIGHT)
    return np.asarray(image)


def encode(array: np.ndarray, fmt: str = "JPEG") -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format=fmt, quality=90)
    return buffer.getvalue()


# class -> [(file name, photo, flip, format)]; labels follow the sorted class names.
FOLDER_LAYOUT = {
    "train": {
        "cat": [
            ("a.jpg", "chelsea", False, "JPEG"),
            ("b.jpg", "chelsea", True, "JPEG"),
            ("c.png", "chelsea", False, "PNG"),
        ],
        "coffee": [("a.jpg", "coffee", False, "JPEG"), ("b.jpg", "coffee", True, "JPEG")],
        "portrait": [
            ("a.jpg", "astronaut", False, "JPEG"),
            ("b.jpg", "camera", False, "JPEG"),
            ("c.jpg", "astronaut", True, "JPEG"),
        ],
    },
    "validation": {
        "cat": [("v.jpg", "chelsea", True, "JPEG")],
        "coffee": [("v.jpg", "coffee", False, "JPEG"), ("w.jpg", "colorwheel", False, "JPEG")],
        "portrait": [("v.jpg", "rocket", False, "JPEG")],
    },
}


def make_photo_folder(root: pathlib.Path) -> pathlib.Path:
    """Writes FOLDER_LAYOUT under root/<split>/<class>/ and returns root."""
    for split, classes in FOLDER_LAYOUT.items():
        for name, files in classes.items():
            (root / split / name).mkdir(parents=True, exist_ok=True)
            for filename, source, flip, fmt in files:
                (root / split / name / filename).write_bytes(encode(photo(source, flip), fmt))
    return root


def data_config(**overrides) -> ml_collections.ConfigDict:
    config = default.get_config().data
    config.update(overrides)
    return config


def read_all(records) -> list[tuple[bytes, int]]:
    """Every (encoded image, label) of `data.records.Records`, in storage order."""
    return [
        (bytes(k), int(v))
        for k, v in records.dataset.map(
            lambda key, label: (records.load(key), label)
        ).as_numpy_iterator()
    ]


def tiny_photos_builder():
    """A test-only TFDS builder class of 7 photographs in 3 classes; never registered, so
    reading it back must use the prepared files alone."""
    import tensorflow_datasets as tfds

    class TinyPhotos(tfds.core.GeneratorBasedBuilder, skip_registration=True):
        """A test-only builder: never registered, so reading must use the prepared files alone."""

        VERSION = tfds.core.Version("0.1.0")
        code_path = None  # No checksums file (see digits.SklearnDigits).

        def _info(self):
            return tfds.core.DatasetInfo(
                builder=self,
                features=tfds.features.FeaturesDict(
                    {
                        "image": tfds.features.Image(shape=(None, None, 3), encoding_format="jpeg"),
                        "label": tfds.features.ClassLabel(names=["chelsea", "coffee", "rocket"]),
                    }
                ),
            )

        def _split_generators(self, dl_manager):
            return {
                "train": self._generate_examples(["chelsea", "coffee", "rocket", "chelsea"]),
                "validation": self._generate_examples(["rocket", "coffee", "chelsea"]),
            }

        def _generate_examples(self, names):
            classes = ["chelsea", "coffee", "rocket"]
            for i, name in enumerate(names):
                yield i, {"image": photo(name, flip=i % 2 == 1), "label": classes.index(name)}

    return TinyPhotos


def write_run(workdir: str, status: str | None, metrics: list[dict], num_classes: int | None):
    """A fabricated run directory: status.json, a config naming its class count, metrics."""
    path = Path(workdir)
    path.mkdir(parents=True, exist_ok=True)
    if status:
        (path / "status.json").write_text(json.dumps({"status": status, "step": 0, "message": ""}))
    (path / "config.json").write_text(json.dumps({"model": {"num_classes": num_classes}}))
    (path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in metrics))


def history(epochs: list[float], errors: list[float], losses: list[float]) -> list[dict]:
    """Train lines every half epoch (20 steps per epoch) and an eval line at each of `epochs`."""
    records = []
    for epoch, error, loss in zip(epochs, errors, losses, strict=True):
        step = int(epoch * 20)
        records.append({"step": step - 10, "epoch": epoch - 0.5, "train/loss": loss + 0.1})
        records.append({"step": step, "epoch": epoch, "train/loss": loss})
        records.append(
            {"step": step, "epoch": epoch, "eval/top1_error": error, "eval/top5_error": error / 3}
        )
    return records


def synthetic_params(model: models.SPPNet, image_size: int = 80, seed: int = 0) -> dict:
    """He-normal kernels, zero biases, `a` = 0.25, from the shapes alone (no init compile)."""
    shapes = jax.eval_shape(
        lambda: models.init_params(model, jax.random.key(0, impl="rbg"), image_size)
    )
    rng = np.random.default_rng(seed)

    def fill(path, leaf):
        name = path[-1].key
        if name == "kernel":
            std = math.sqrt(2.0 / math.prod(leaf.shape[:-1]))
            return rng.normal(0.0, std, leaf.shape).astype(np.float32)
        return np.full(leaf.shape, 0.25 if name == "a" else 0.0, np.float32)

    return jax.tree_util.tree_map_with_path(fill, shapes)


def fabricate_run(
    workdir: Path,
    config: ml_collections.ConfigDict,
    params: dict | None = None,
    metrics: list[dict] = (),
    status: dict | None = None,
    step: int = 10,
) -> Path:
    """A run directory as training leaves it; the checkpoint holds {"params": params}."""
    workdir.mkdir(parents=True)
    (workdir / "config.json").write_text(config.to_json())
    (workdir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in metrics))
    if status is not None:
        (workdir / "status.json").write_text(json.dumps(status))
    if params is not None:
        with checkpoints.Checkpointer(
            workdir, save_every_steps=1, keep=1, async_save=False
        ) as ckpt:
            ckpt.save(step, {"params": jax.tree.map(jnp.asarray, params)}, {}, force=True)
    return workdir


def write_sweep_config(
    tmp_path: Path, axes: dict, *, base: str, fixed: dict | None = None, claims=None,
    tpu: dict | None = None, name: str = "sweep_config.py",
) -> str:  # fmt: skip
    """A sweep config file (launch.sweep's format) whose trials go to `tmp_path/sweep`."""
    path = tmp_path / name
    lines = [
        "import ml_collections",
        "",
        "def get_sweep():",
        "    s = ml_collections.ConfigDict()",
        f"    s.base_config = {base!r}",
        f"    s.sweep_dir = {str(tmp_path / 'sweep')!r}",
        f"    s.axes = ml_collections.ConfigDict({axes!r}, allow_dotted_keys=True,"
        " sort_keys=False)",
    ]
    if fixed is not None:
        lines.append(
            f"    s.fixed = ml_collections.ConfigDict({fixed!r}, allow_dotted_keys=True,"
            " sort_keys=False)"
        )
    if claims is not None:
        lines.append(f"    s.claims = {claims!r}")
    if tpu is not None:
        lines.append(f"    s.tpu = ml_collections.ConfigDict({tpu!r})")
    path.write_text("\n".join([*lines, "    return s", ""]))
    return str(path)
