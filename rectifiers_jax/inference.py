"""Classify new images with a trained run, without its dataset and without TensorFlow.

    from rectifiers_jax import inference
    predictor = inference.Predictor.from_workdir("runs/default")
    probs = predictor(["cat.jpg", image_array])         # [B, num_classes], rows sum to 1
    for name, p in predictor.top_k(probs[0], 5): ...

The run directory holds what the preprocessing needs: config.json (image size, evaluation
resize), mean.npy (the mean image the run subtracted) and class_names.json (run_files). Each
image goes through exactly the evaluation's centre protocol (`data.preprocessing.eval_center`):
shorter side resized to `config.data.eval_resize` (bilinear with antialiasing, the longer side
floor(long * eval_resize / short + 0.5)), the centre `image_size` crop (offsets floored), the
mean subtracted. Here the resize is `jax.image.resize`, which matches TensorFlow's
`tf.image.resize(antialias=True)` to about 1e-3 of a grey level.
"""

from __future__ import annotations

import dataclasses
import functools
import os
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from PIL import Image

from rectifiers_jax import checkpoints, models, run_files

ImageLike = np.ndarray | str | os.PathLike


def load_image(path: str | os.PathLike) -> np.ndarray:
    """uint8 [H, W, 3] RGB from an image file (grey is replicated; alpha is dropped)."""
    with Image.open(path) as image:
        return np.asarray(image.convert("RGB"))


def _rgb(image: ImageLike) -> np.ndarray:
    if isinstance(image, str | os.PathLike):
        return load_image(image)
    array = np.asarray(image)
    if array.ndim == 2:
        array = np.stack([array] * 3, axis=-1)
    if array.ndim != 3 or array.shape[-1] not in (3, 4):
        raise ValueError(f"an image must be [H, W, 3] (or [H, W] grey), got shape {array.shape}")
    return array[..., :3]


def resized_shape(height: int, width: int, shorter: int) -> tuple[int, int]:
    """(H', W') with shorter side `shorter`, the longer floor(long * shorter / short + 0.5)."""
    ratio = shorter / min(height, width)
    return int(np.floor(height * ratio + 0.5)), int(np.floor(width * ratio + 0.5))


@dataclasses.dataclass(frozen=True)
class Predictor:
    """A run's model and parameters with its evaluation preprocessing (see the module docstring).

    Attributes:
      model: the flax module; params: its parameters (on the default JAX device).
      image_size, eval_resize: the crop side and the shorter side before cropping, in pixels.
      mean: per-pixel [S, S, 3] or per-channel [3] mean in 0..255 units, or None.
      class_names: one name per output.
    """

    model: models.SPPNet
    params: Any
    image_size: int
    eval_resize: int
    mean: np.ndarray | None
    class_names: tuple[str, ...]

    @classmethod
    def from_workdir(
        cls,
        workdir: str | os.PathLike,
        step: int | None = None,
        *,
        mean: np.ndarray | None = None,
    ) -> Predictor:
        """The run's checkpoint `step` (None: the latest). `mean` replaces the saved mean (runs
        saved before mean.npy existed need it unless their config subtracts none)."""
        config = run_files.load_config(workdir)
        model, variables = checkpoints.load_model(workdir, step)
        if mean is None and config.data.mean != "none":
            mean = run_files.read_mean(workdir)
            if mean is None:
                raise FileNotFoundError(
                    f"{workdir} has no {run_files.MEAN_FILE} (a run saved before it was "
                    "written): pass the mean, e.g. Predictor.from_workdir(run, mean=...)"
                )
        names = run_files.read_class_names(workdir) or tuple(
            str(i) for i in range(model.num_classes)
        )
        return cls(
            model=model,
            params=jax.device_put(variables["params"]),
            image_size=int(config.data.image_size),
            eval_resize=int(config.data.eval_resize),
            mean=None if mean is None else np.asarray(mean, np.float32),
            class_names=tuple(names),
        )

    def preprocess(self, image: ImageLike) -> np.ndarray:
        """float32 [S, S, 3]: the centre crop of the resized image minus the mean."""
        rgb = _rgb(image).astype(np.float32)
        height, width = resized_shape(rgb.shape[0], rgb.shape[1], self.eval_resize)
        resized = np.asarray(
            jax.image.resize(rgb, (height, width, 3), method="linear", antialias=True)
        )
        s = self.image_size
        top, left = (height - s) // 2, (width - s) // 2
        crop = resized[top : top + s, left : left + s]
        return crop if self.mean is None else crop - self.mean

    def __call__(self, images: Sequence[ImageLike] | np.ndarray) -> np.ndarray:
        """Class probabilities float32 [B, num_classes] of uint8 images [B, H, W, 3] (any sizes,
        as a sequence) or image file paths."""
        batch = np.stack([self.preprocess(image) for image in images])
        return np.asarray(_probabilities(self.model, self.params, batch))

    def top_k(self, probs: np.ndarray, k: int = 5) -> list[tuple[str, float]]:
        """The `k` most probable (class name, probability) of one image's [K] probabilities."""
        order = np.argsort(-probs)[:k]
        return [(self.class_names[i], float(probs[i])) for i in order]


@functools.partial(jax.jit, static_argnums=0)
def _probabilities(model: models.SPPNet, params: Any, images: jax.Array) -> jax.Array:
    return jax.nn.softmax(model.apply({"params": params}, images.astype(jnp.float32)))
