"""Dense evaluation (the paper's multi-view testing on feature maps, SPP-net Sec. 3.3).

The whole image, resized to shorter side s, goes through the convolutions once; SPP and the fc
layers run on every window of the last conv map that an image_size x image_size view gives
(`models.feature_map_size(arch, image_size)`: 14 for models A/B/C at 224, 18 for net14); the
softmax is averaged over all windows of the image and of its horizontal flip.

One compiled program per scale: every resized image is placed in the top-left corner of a
fixed square canvas of side ceil(s * max_aspect) (zeros around it, i.e. the mean after mean
subtraction), and a side longer than the canvas is centre-cropped to it (counted as
`cropped_images` and logged; at the default max_aspect 4/3 this is every image whose aspect
ratio exceeds 4:3, e.g. ImageNet's 500x333 photos lose ~5% at each end). The model blanks
every layer's input outside the image's valid region (`SPPNet(valid_sizes=...)`), which is
exactly the zero padding the convolutions would see on the bare image, so the valid part of the
last conv map equals that of the image run alone; only windows lying fully inside it are
averaged.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Iterable, Iterator

import jax
import jax.numpy as jnp
import numpy as np

from rectifiers_jax import models

DEFAULT_MAX_ASPECT = 4 / 3


def canvas_side(scale: int, max_aspect: float) -> int:
    """Side in pixels of the square canvas that holds images of shorter side `scale`."""
    return math.ceil(scale * max_aspect - 1e-9)  # - 1e-9: 3 * (4/3) must stay 4, not 5.


def place_on_canvas(image: np.ndarray, canvas: int) -> tuple[np.ndarray, int, int, bool]:
    """(float32 [canvas, canvas, 3] with `image` top-left and zeros elsewhere, rows, cols,
    cropped): a side longer than the canvas is centre-cropped to it first."""
    height, width = image.shape[:2]
    top, left = max(0, (height - canvas) // 2), max(0, (width - canvas) // 2)
    rows, cols = min(height, canvas), min(width, canvas)
    out = np.zeros((canvas, canvas, image.shape[2]), np.float32)
    out[:rows, :cols] = image[top : top + rows, left : left + cols]
    return out, rows, cols, rows < height or cols < width


def dense_groups(
    batches: Iterable[dict[str, np.ndarray]],
    *,
    group_size: int,
    canvas: int,
    architecture: models.Architecture,
) -> Iterator[dict[str, np.ndarray]]:
    """Fixed-shape batches of `group_size` images from the dense pipeline's one-image batches.

    Yields `{"image": float32 [G, C, C, 3], "sizes": int32 [G, L + 1, 2] (models.map_sizes),
    "label": int32 [G], "mask": bool [G], "cropped": bool [G]}` with C = `canvas`. The last
    group is padded with masked dummies, so a host with n one-image batches yields
    ceil(n / G) groups (the pipeline gives every host the same n).
    """
    full = models.map_sizes(architecture, canvas, canvas)
    rows: list[tuple[np.ndarray, np.ndarray, int, bool, bool]] = []

    def stack() -> dict[str, np.ndarray]:
        while len(rows) < group_size:  # Masked dummies: a blank canvas, every window valid.
            rows.append((np.zeros((canvas, canvas, 3), np.float32), full, 0, False, False))
        image, sizes, label, mask, cropped = zip(*rows, strict=True)
        rows.clear()
        return {
            "image": np.stack(image),
            "sizes": np.stack(sizes),
            "label": np.array(label, np.int32),
            "mask": np.array(mask, bool),
            "cropped": np.array(cropped, bool),
        }

    for batch in batches:
        if batch["image"].shape[0] != 1:
            raise ValueError(f"dense batches hold one image, got {batch['image'].shape}")
        image, height, width, cropped = place_on_canvas(batch["image"][0], canvas)
        mask = bool(batch["mask"][0])
        sizes = models.map_sizes(architecture, height, width) if mask else full
        rows.append((image, sizes, int(batch["label"][0]), mask, cropped and mask))
        if len(rows) == group_size:
            yield stack()
    if rows:
        yield stack()


def _flip_valid(image: jax.Array, width: jax.Array) -> jax.Array:
    """[B, H, C, 3] canvases flipped within their valid width `width` [B] (top-left aligned).

    Column j takes column (w - 1 - j) mod C: the mirror image for j < w, and for j >= w a column
    in [w, C), which is padding (zeros), so the flip stays top-left aligned on zeros.
    """
    cols = (width[:, None] - 1 - jnp.arange(image.shape[2])[None, :]) % image.shape[2]
    return jax.vmap(lambda im, idx: jnp.take(im, idx, axis=1))(image, cols)


def make_dense_probs(model: models.SPPNet, window: int) -> Callable:
    """(params, batch) -> [B, K] softmax averaged over the valid windows of image and flip.

    `batch` as `dense_groups` yields it (image [B, C, C, 3], sizes [B, L + 1, 2]); `window` is
    the last-conv-map side of one image_size view.
    """

    def probs_fn(params, batch):
        image, sizes = batch["image"], batch["sizes"]
        # Stack image and flip on a new axis 1 so each device keeps its own rows (no reshuffle).
        both = jnp.stack([image, _flip_valid(image, sizes[:, 0, 1])], axis=1)
        both = both.reshape(-1, *image.shape[1:])  # [2B, C, C, 3]
        sizes2 = jnp.repeat(sizes, 2, axis=0)
        logits = model.apply(
            {"params": params}, both, window=window, valid_sizes=sizes2
        )  # [2B, R, S, K]
        probs = jax.nn.softmax(logits)
        # Windows lying fully inside the valid last conv map: top-left corner r <= rows - window.
        last = sizes2[:, -1]
        rows = jnp.arange(probs.shape[1])[None, :, None] <= last[:, 0, None, None] - window
        cols = jnp.arange(probs.shape[2])[None, None, :] <= last[:, 1, None, None] - window
        inside = rows & cols  # [2B, R, S]
        total = jnp.sum(jnp.where(inside[..., None], probs, 0.0), axis=(1, 2))
        mean = total / jnp.maximum(jnp.sum(inside, axis=(1, 2)), 1)[:, None]
        return mean.reshape(image.shape[0], 2, -1).mean(axis=1)

    return probs_fn


# ---------------------------------------------------------------------------------------------
# The evaluation loop


@dataclasses.dataclass(frozen=True)
class Regroup:
    """Re-iterable `dense_groups` over re-iterable one-image batches."""

    batches: Iterable[dict[str, np.ndarray]]
    group_size: int
    canvas: int
    architecture: models.Architecture

    def __iter__(self) -> Iterator[dict[str, np.ndarray]]:
        return dense_groups(
            self.batches,
            group_size=self.group_size,
            canvas=self.canvas,
            architecture=self.architecture,
        )
