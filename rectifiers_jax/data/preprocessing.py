"""Image preprocessing for the paper's training and test protocols (TensorFlow, for tf.data).

He et al. 2015 (the project's PAPER.md, sections 4-5):
  * training, large models ("scale_jitter"): shorter side s ~ U{scale_min..scale_max}, a
    random image_size x image_size crop, horizontal flip with p = 0.5, AlexNet's PCA colour
    altering, mean subtraction. The 14-layer study ("resize") fixes s = resize_size.
  * testing: centre crop, 10-view (4 corners + centre, and their flips) of the image resized to
    shorter side eval_resize, and the whole resized image for dense evaluation.

Pixels stay in [0, 255] minus the mean (about [-128, 128], the paper's input range); there is
no /255 scaling. Every function takes one encoded image (a scalar string tensor: JPEG, PNG,
GIF, BMP or WebP) and works eagerly and inside `tf.data.Dataset.map`. Training randomness
comes only from a per-example seed through `tf.random.stateless_*` ops, so augmentation is
deterministic.

Speed: the training path never decodes or resizes the whole image. It reads the JPEG's size
from its header, draws the crop in the resized image's coordinates, maps the window back to
the original pixels, decodes only that window (`decode_and_crop_jpeg`, at 1/2, 1/4 or 1/8
scale in the DCT domain when the window is 2, 4 or 8 times S or more) and resizes just the
crop to S x S. Other formats are decoded whole and then cropped. `python -m
benchmarks.input_speed` measures it against plain `decode_jpeg`.

Resizing uses TensorFlow's bilinear filter. The evaluation paths antialias (like PIL's
bilinear); the training path does not, because the antialiasing kernel costs more than the
JPEG decode itself (measured: ~2.6 ms vs ~0.5 ms per crop) and would miss the 70%-of-decode
speed goal. Thanks to the DCT-domain scaling the training resize shrinks by less than 2x,
where plain bilinear aliases only mildly.
"""

from __future__ import annotations

import dataclasses
import functools
import numbers
from collections.abc import Callable
from typing import Any

import numpy as np
import tensorflow as tf

TRAIN_RECIPES = ("resize", "scale_jitter")

# Evaluation decodes with libjpeg's accurate integer IDCT (bit-identical to PIL's decoder).
# Training decodes with the fast one (TensorFlow's default, as in the plain-decode baseline):
# it differs by about one grey level on average, far below the PCA lighting noise
# (std ~ 0.1 * 0.2175 * 255 = 5.5 levels), and saves ~5% of the training decode.
DCT_METHOD = "INTEGER_ACCURATE"
TRAIN_DCT_METHOD = "INTEGER_FAST"
# decode_and_crop_jpeg's DCT-domain downscaling factors (libjpeg supports 1/2, 1/4, 1/8).
_JPEG_RATIOS = (1, 2, 4, 8)

# AlexNet's PCA colour altering: eigen-decomposition of the RGB covariance of ImageNet pixels
# (values in [0, 1]; the eigenvalues are scaled by 255 for our 0..255 pixels). Columns of
# _PCA_EIGVEC are the eigenvectors, rows are R, G, B.
_PCA_EIGVAL = np.array([0.2175, 0.0188, 0.0045], np.float32) * 255.0
_PCA_EIGVEC = np.array(
    [[-0.5675, 0.7192, 0.4009], [-0.5808, -0.0045, -0.8140], [-0.5836, -0.6948, 0.4203]],
    np.float32,
)


def _as_int(name: str, value: Any, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
        raise ValueError(f"{name}={value!r} is not valid; use an integer >= {minimum}")
    return int(value)


@dataclasses.dataclass(frozen=True, eq=False)  # eq=False: `mean` is an array (no ==/hash).
class PreprocessConfig:
    """Preprocessing options; sizes in pixels, `mean` in 0..255 units.

    Attributes:
      image_size: S, the network input side (the crop side).
      train_recipe: "resize" (shorter side = resize_size, the 14-layer study) or "scale_jitter"
        (shorter side ~ U{scale_min, ..., scale_max}, the large models).
      resize_size: training shorter side of the "resize" recipe.
      scale_min, scale_max: inclusive range of the "scale_jitter" shorter side.
      eval_resize: shorter side for centre and 10-view evaluation.
      random_flip: horizontal flip with p = 0.5 in training.
      pca_lighting: std of AlexNet's PCA colour altering; 0 disables it.
      mean: per-pixel [S, S, 3] or per-channel [3] mean in 0..255 units (stored float32,
        read-only); None subtracts nothing.
    """

    image_size: int = 224
    train_recipe: str = "scale_jitter"
    resize_size: int = 256
    scale_min: int = 256
    scale_max: int = 512
    eval_resize: int = 256
    random_flip: bool = True
    pca_lighting: float = 0.1
    mean: np.ndarray | None = None

    def __post_init__(self):
        s = _as_int("data.image_size", self.image_size, 1)
        if self.train_recipe not in TRAIN_RECIPES:
            raise ValueError(
                f"data.train_recipe={self.train_recipe!r} is not valid; use one of {TRAIN_RECIPES}"
            )
        # Every crop must fit inside the resized image, so all shorter sides are >= S.
        resize_min = s if self.train_recipe == "resize" else 1
        _as_int("data.resize_size", self.resize_size, resize_min)
        jitter_min = s if self.train_recipe == "scale_jitter" else 1
        lo = _as_int("data.scale_min", self.scale_min, jitter_min)
        _as_int("data.scale_max", self.scale_max, lo)
        _as_int("data.eval_resize", self.eval_resize, s)
        if not isinstance(self.random_flip, bool | np.bool_):
            raise ValueError(f"data.random_flip={self.random_flip!r} is not valid; use True/False")
        if (
            isinstance(self.pca_lighting, bool)
            or not isinstance(self.pca_lighting, numbers.Real)
            or not np.isfinite(self.pca_lighting)
            or self.pca_lighting < 0
        ):
            raise ValueError(
                f"data.pca_lighting={self.pca_lighting!r} is not valid; use a float >= 0"
            )
        for name in ("image_size", "resize_size", "scale_min", "scale_max", "eval_resize"):
            object.__setattr__(self, name, int(getattr(self, name)))
        object.__setattr__(self, "random_flip", bool(self.random_flip))
        object.__setattr__(self, "pca_lighting", float(self.pca_lighting))
        if self.mean is not None:
            mean = np.array(self.mean, np.float32)  # A private copy, frozen below.
            if mean.shape not in ((3,), (s, s, 3)) or not np.all(np.isfinite(mean)):
                raise ValueError(
                    f"data.mean of shape {mean.shape} is not valid; use a finite per-channel [3] "
                    f"or per-pixel [{s}, {s}, 3] array in 0..255 units, or None"
                )
            mean.setflags(write=False)
            object.__setattr__(self, "mean", mean)

    @classmethod
    def from_config(cls, data_config: Any, mean: np.ndarray | None = None) -> PreprocessConfig:
        """From `config.data` (fields with the same names); `mean` is the array to subtract.

        `config.data.mean` (the kind of mean: "per_pixel", "per_channel", "none") is resolved to
        an array by the caller (`data.mean.load_mean`); here only the array counts.
        """
        fields = (
            "image_size",
            "train_recipe",
            "resize_size",
            "scale_min",
            "scale_max",
            "eval_resize",
            "random_flip",
            "pca_lighting",
        )
        return cls(**{f: data_config[f] for f in fields}, mean=mean)

    @property
    def channel_mean(self) -> np.ndarray | None:
        """The per-channel [3] mean (a per-pixel mean averaged over space), or None."""
        if self.mean is None or self.mean.shape == (3,):
            return self.mean
        return self.mean.mean(axis=(0, 1)).astype(np.float32)


# ----------------------------------------------------------------------------- decoding


def _decode_other(encoded: tf.Tensor) -> tf.Tensor:
    # PNG/GIF/BMP/WebP: channels=3 maps gray and gray+alpha to RGB and drops an alpha channel;
    # 16-bit PNGs are scaled to uint8; an animated GIF gives its first frame.
    image = tf.io.decode_image(encoded, channels=3, dtype=tf.uint8, expand_animations=False)
    return tf.ensure_shape(image, [None, None, 3])


def decode_rgb(encoded: tf.Tensor) -> tf.Tensor:
    """Decodes a JPEG, PNG, GIF, BMP or WebP to uint8 RGB [H, W, 3].

    JPEG: channels=3 turns grayscale into RGB and converts CMYK/YCCK (Adobe) JPEGs to RGB
    (TensorFlow's decoder does the inversion; verified against PIL in the tests).
    """
    encoded = tf.convert_to_tensor(encoded, tf.string)
    image = tf.cond(
        tf.io.is_jpeg(encoded),
        lambda: tf.io.decode_jpeg(encoded, channels=3, dct_method=DCT_METHOD),
        lambda: _decode_other(encoded),
    )
    return tf.ensure_shape(image, [None, None, 3])


# ----------------------------------------------------------------------------- geometry


def _round(x: tf.Tensor) -> tf.Tensor:
    """Round half up to int32 (tf.round rounds half to even; NumPy references use floor+.5)."""
    return tf.cast(tf.floor(x + 0.5), tf.int32)


def resized_shape(height: tf.Tensor, width: tf.Tensor, shorter: int | tf.Tensor) -> tf.Tensor:
    """int32 [2] (H', W'): the size with shorter side `shorter` and the aspect ratio kept.

    The longer side is floor(long * shorter / short + 0.5).
    """
    h = tf.cast(height, tf.float64)
    w = tf.cast(width, tf.float64)
    r = tf.cast(shorter, tf.float64) / tf.minimum(h, w)
    return tf.stack([_round(h * r), _round(w * r)])


def resize_shorter_side(image: tf.Tensor, shorter: int | tf.Tensor) -> tf.Tensor:
    """[H, W, C] (any real dtype) -> float32 [H', W', C] with shorter side `shorter`.

    Bilinear with antialiasing (a triangle filter widened when shrinking, as in PIL).
    """
    shape = tf.shape(image)
    size = resized_shape(shape[0], shape[1], shorter)
    image = tf.cast(image, tf.float32)
    return tf.image.resize(image, size, method="bilinear", antialias=True)


def _dct_level(side: tf.Tensor, size: int) -> tf.Tensor:
    """int32 k in 0..3: a window of `side` px is decoded at 1/2^k scale (k = 0 below 2 size)."""
    return tf.add_n([tf.cast(side >= size * r, tf.int32) for r in _JPEG_RATIOS[1:]])


def _train_draws(
    image_shape: tf.Tensor, seed: tf.Tensor, cfg: PreprocessConfig
) -> tuple[tf.Tensor, tf.Tensor]:
    """(window int32 [4] = (offset_y, offset_x, height, width) in original pixels, flip bool).

    One uniform draw of shape [4] gives the scale, both offsets and the flip: fewer small ops
    (a few microseconds each in tf.data) than one stateless op chain per variable.
    """
    image_shape = tf.convert_to_tensor(image_shape)
    h = tf.cast(image_shape[0], tf.int32)
    w = tf.cast(image_shape[1], tf.int32)
    u = tf.random.stateless_uniform([4], _as_seed(seed), dtype=tf.float64)  # in [0, 1)
    short = tf.cast(tf.minimum(h, w), tf.float64)
    if cfg.train_recipe == "scale_jitter":
        # Uniform over the integers scale_min..scale_max.
        s = cfg.scale_min + tf.floor(u[0] * (cfg.scale_max - cfg.scale_min + 1))
    else:
        s = tf.constant(cfg.resize_size, tf.float64)
    side = tf.clip_by_value(_round(cfg.image_size * short / s), 1, tf.minimum(h, w))
    # Uniform integer offsets in [0, H - side] and [0, W - side] (min() guards rounding).
    span = tf.stack([h - side, w - side])
    offsets = tf.minimum(tf.cast(u[1:3] * tf.cast(span + 1, tf.float64), tf.int32), span)
    # Windows of >= 2S px are decoded at 1/r scale (see _decode_train_crop); snap them to the
    # r-pixel grid (r - 1 px at most, on windows of > 2S px) so that the scaled decode covers
    # exactly this window. Snapping down keeps it inside the image and r unchanged.
    r = tf.bitwise.left_shift(1, _dct_level(side, cfg.image_size))  # 1, 2, 4 or 8
    side = side // r * r
    offsets = offsets // r * r
    window = tf.concat([offsets, tf.stack([side, side])], axis=0)
    return window, u[3] < 0.5


def train_crop_window(
    image_shape: tf.Tensor, seed: tf.Tensor, cfg: PreprocessConfig
) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor, tf.Tensor]:
    """The training crop in ORIGINAL pixels: int32 scalars (offset_y, offset_x, height, width).

    Args:
      image_shape: [H, W] or [H, W, C] of the original (undecoded) image.
      seed: int32/int64 [2] stateless seed (`train_image` uses `crop_seed(its seed)`).
      cfg: the recipe; s = resize_size ("resize") or s ~ U{scale_min, ..., scale_max}.

    An S x S crop of the image resized to shorter side s covers a square of side
    S * short / s original pixels (rounded, clipped to [1, short]); its offset is uniform over
    all positions, which is the uniform offset in resized coordinates mapped back. A window of
    r * S px or more (r = 2, 4, 8) has its side and offsets rounded down to multiples of r,
    the grid of libjpeg's 1/r-scale decoding.
    """
    window, _ = _train_draws(image_shape, seed, cfg)
    return tuple(tf.unstack(window))


@functools.cache
def _tiny_jpeg() -> bytes:
    """A valid 1x1 grey JPEG: what `extract_jpeg_shape` reads when the input is not a JPEG."""
    with tf.init_scope():  # eager even when first called while tracing a tf.data function
        return tf.io.encode_jpeg(tf.zeros([1, 1, 1], tf.uint8)).numpy()


def _decode_train_crop(
    encoded: tf.Tensor, seed: tf.Tensor, cfg: PreprocessConfig
) -> tuple[tf.Tensor, tf.Tensor]:
    """(uint8 [h, w, 3] training window, flip bool); a JPEG's window is decoded alone.

    JPEG: the size comes from the header, and only the window is decoded. When the window is
    at least r = 2, 4 or 8 times S, libjpeg decodes it at 1/r scale in the DCT domain: faster,
    and it leaves the bilinear resize less than a 2x shrink, so large photographs are low-pass
    filtered instead of aliased. `_train_draws` puts such windows on the r-pixel grid: scaled
    pixel k covers original pixels [r k, r k + r), so the crop is exactly the window, [h/r, w/r].
    Other formats (PNG, GIF, BMP, WebP): decoded whole, then sliced.

    The format and the DCT scale select ONE `switch_case` branch rather than a tf.cond around a
    switch: control flow in a tf.data function is not free (measured 0.02-0.2 ms per image
    per construct, depending on what runs inside), against ~1 ms for a 500x375 JPEG decode.
    """
    is_jpeg = tf.io.is_jpeg(encoded)
    # extract_jpeg_shape fails on other formats: give it a valid stand-in so no branch is needed.
    shape = tf.io.extract_jpeg_shape(tf.where(is_jpeg, encoded, _tiny_jpeg()))
    window, flip = _train_draws(shape, seed, cfg)

    def jpeg(r: int) -> Callable[[], tf.Tensor]:
        def decode() -> tf.Tensor:
            w = window if r == 1 else window // r
            return tf.io.decode_and_crop_jpeg(
                encoded, w, channels=3, ratio=r, dct_method=TRAIN_DCT_METHOD
            )

        return decode

    def other() -> tf.Tensor:
        image = _decode_other(encoded)
        win, _ = _train_draws(tf.shape(image), seed, cfg)  # same draws, the real size
        return tf.slice(image, tf.concat([win[:2], [0]], 0), tf.concat([win[2:], [3]], 0))

    level = _dct_level(window[2], cfg.image_size)
    index = tf.where(is_jpeg, level, len(_JPEG_RATIOS))
    crop = tf.switch_case(index, [jpeg(r) for r in _JPEG_RATIOS] + [other])
    return tf.ensure_shape(crop, [None, None, 3]), flip


# ----------------------------------------------------------------------------- photometric


def _add_channel_vector(image: tf.Tensor, vector: tf.Tensor) -> tf.Tensor:
    """float32 [..., H, W, 3] + [3] per channel.

    A plain broadcast over an innermost dimension of 3 runs ~3x slower in TensorFlow's CPU
    kernels than a same-shape add; adding a tiled row to [..., H, W * 3] is as fast as one.
    """
    shape = tf.shape(image)
    rows = tf.reshape(image, tf.concat([shape[:-2], [shape[-2] * 3]], 0))
    rows = rows + tf.tile(tf.cast(vector, tf.float32), [shape[-2]])
    return tf.reshape(rows, shape)


def subtract_mean(image: tf.Tensor, cfg: PreprocessConfig) -> tf.Tensor:
    """float32 image [..., H, W, 3] minus cfg.mean (only a cast when the mean is None).

    A per-pixel mean [S, S, 3] needs H = W = S (a crop); use `cfg.channel_mean` elsewhere.
    """
    image = tf.cast(image, tf.float32)
    if cfg.mean is None:
        return image
    if cfg.mean.ndim == 1:
        return _add_channel_vector(image, -cfg.mean)
    s = cfg.image_size
    if image.shape.rank is not None:
        if image.shape.rank < 3 or not image.shape[-3:-1].is_compatible_with([s, s]):
            raise ValueError(
                f"a per-pixel mean fits only {s}x{s} images, got shape {image.shape}; "
                "use cfg.channel_mean for other sizes"
            )
        image = tf.ensure_shape(image, image.shape[:-3].concatenate([s, s, 3]))
    return image - tf.constant(cfg.mean)


def pca_lighting_shift(seed: tf.Tensor, std: float) -> tf.Tensor:
    """float32 [3]: AlexNet's RGB shift eigvec @ (alpha * eigval), alpha ~ N(0, std^2) [3]."""
    alpha = tf.random.stateless_normal([3], _as_seed(seed), stddev=std, dtype=tf.float32)
    return tf.linalg.matvec(tf.constant(_PCA_EIGVEC), alpha * tf.constant(_PCA_EIGVAL))


# ----------------------------------------------------------------------------- public ops


def train_image(encoded: tf.Tensor, seed: tf.Tensor, cfg: PreprocessConfig) -> tf.Tensor:
    """The paper's training augmentation: float32 [S, S, 3], 0..255 minus the mean.

    Args:
      encoded: scalar string tensor (JPEG, PNG, GIF, BMP or WebP bytes).
      seed: int32/int64 [2]; the only source of randomness (same seed -> same output). It is
        split into a crop seed (scale, offsets and flip; `train_crop_window(shape,
        crop_seed(seed), cfg)` gives the window) and a lighting seed.
      cfg: the recipe.

    Order: decode the crop window, resize it to S x S (bilinear), flip, add the PCA lighting
    shift and subtract the mean (so a pixel's mean is the one at its final, flipped position,
    as in `eval_ten_views`). Values are not clipped after the lighting shift (as in AlexNet
    and fb.resnet.torch), so they may leave [0, 255] - mean by a few levels.
    """
    encoded = tf.convert_to_tensor(encoded, tf.string)
    window_seed, light_seed = _split_seed(seed)
    s = cfg.image_size
    crop, flip = _decode_train_crop(encoded, window_seed, cfg)
    # Casting before resizing is ~2x faster than TF's bilinear kernel on uint8.
    image = tf.image.resize(tf.cast(crop, tf.float32), [s, s], method="bilinear")
    image = tf.ensure_shape(image, [s, s, 3])
    if cfg.random_flip:
        # tf.reverse is a slow generic kernel (~0.15 ms here): a cond runs it only when needed,
        # on the S x S output (the crop is often larger); reversing axes [] instead is slower.
        image = tf.cond(flip, lambda: tf.reverse(image, axis=[1]), lambda: image)
    shift = None
    if cfg.pca_lighting > 0:
        shift = pca_lighting_shift(light_seed, cfg.pca_lighting)
    if cfg.mean is not None and cfg.mean.ndim == 3:
        offset = tf.constant(-cfg.mean)
        if shift is not None:
            offset = _add_channel_vector(offset, shift)
        image = image + offset
    else:
        if cfg.mean is not None:
            shift = -cfg.mean if shift is None else shift - cfg.mean
        if shift is not None:
            image = _add_channel_vector(image, shift)
    return tf.ensure_shape(image, [s, s, 3])


def crop_seed(seed: tf.Tensor) -> tf.Tensor:
    """The part of a `train_image` seed that draws the crop window and the flip."""
    return _split_seed(seed)[0]


def _as_seed(seed: tf.Tensor) -> tf.Tensor:
    # int64 always: stateless ops give different streams for the same int32 and int64 values.
    return tf.cast(tf.convert_to_tensor(seed), tf.int64)


def _split_seed(seed: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
    seeds = tf.random.experimental.stateless_split(_as_seed(seed), 2)
    return seeds[0], seeds[1]


def _center_offsets(size: tf.Tensor, s: int) -> tuple[tf.Tensor, tf.Tensor]:
    return (size[0] - s) // 2, (size[1] - s) // 2


def eval_center(encoded: tf.Tensor, cfg: PreprocessConfig) -> tf.Tensor:
    """float32 [S, S, 3]: the centre S x S crop of the image resized to shorter side
    eval_resize, minus the mean. Offsets are floor((H' - S) / 2), floor((W' - S) / 2)."""
    s = cfg.image_size
    image = resize_shorter_side(decode_rgb(encoded), cfg.eval_resize)
    oy, ox = _center_offsets(tf.shape(image), s)
    crop = image[oy : oy + s, ox : ox + s]
    return tf.ensure_shape(subtract_mean(crop, cfg), [s, s, 3])


def eval_ten_views(
    encoded: tf.Tensor, cfg: PreprocessConfig, resize: int | None = None
) -> tf.Tensor:
    """float32 [10, S, S, 3]: the paper's 10-view test crops, minus the mean.

    Crops of the image resized to shorter side `resize` (default eval_resize), in the order
    top-left, top-right, bottom-left, bottom-right, centre, then the same five flipped
    horizontally. The centre view equals `eval_center` when resize == eval_resize. The mean is
    subtracted after flipping, as in training (a pixel's mean is the one at its final position).
    """
    s = cfg.image_size
    r = cfg.eval_resize if resize is None else _as_int("resize", resize, s)
    image = resize_shorter_side(decode_rgb(encoded), r)
    size = tf.shape(image)
    bottom, right = size[0] - s, size[1] - s
    cy, cx = _center_offsets(size, s)
    offsets = [(0, 0), (0, right), (bottom, 0), (bottom, right), (cy, cx)]
    crops = tf.stack([image[y : y + s, x : x + s] for y, x in offsets])
    views = subtract_mean(tf.concat([crops, tf.reverse(crops, axis=[2])], axis=0), cfg)
    return tf.ensure_shape(views, [10, s, s, 3])


def eval_full(encoded: tf.Tensor, cfg: PreprocessConfig, resize: int) -> tf.Tensor:
    """float32 [H', W', 3]: the whole image resized to shorter side `resize`, for dense
    evaluation, minus the per-channel mean.

    A per-pixel mean only fits S x S crops, so a per-pixel cfg.mean is averaged over space
    (`cfg.channel_mean`) here.
    """
    r = _as_int("resize", resize, cfg.image_size)
    image = resize_shorter_side(decode_rgb(encoded), r)
    mean = cfg.channel_mean
    if mean is not None:
        image = _add_channel_vector(image, -mean)
    return tf.ensure_shape(image, [None, None, 3])
