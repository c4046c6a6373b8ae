"""Tests for rectifiers_jax.preprocessing on real photographs shipped in scikit-image.

Images are encoded at ImageNet-like sizes (500x375, 375x500, ...) as JPEG (RGB, grayscale,
CMYK) and PNG (RGB, grayscale, RGBA); references are PIL and NumPy.
"""

from __future__ import annotations

import io

import numpy as np
import pytest
import skimage.data
import tensorflow as tf
from PIL import Image

from configs import default as default_config
from rectifiers_jax.data import preprocessing as pp

S = 224
CHANNEL_MEAN = np.array([123.7, 116.8, 103.9], np.float32)


def _encode(image: Image.Image, fmt: str, **kwargs) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format=fmt, **kwargs)
    return buf.getvalue()


def _photo(name: str, size: tuple[int, int]) -> Image.Image:
    """A scikit-image sample photograph resized to size = (width, height)."""
    return Image.fromarray(getattr(skimage.data, name)()).resize(size, Image.BICUBIC)


@pytest.fixture(scope="module")
def images() -> dict[str, bytes]:
    chelsea = _photo("chelsea", (400, 300))
    alpha = Image.fromarray(np.tile(np.linspace(0, 255, 400, dtype=np.uint8), (300, 1)))
    rgba = chelsea.copy()
    rgba.putalpha(alpha)
    return {
        "jpeg": _encode(_photo("coffee", (500, 375)), "JPEG", quality=90),
        "jpeg_portrait": _encode(_photo("astronaut", (375, 500)), "JPEG", quality=90),
        "jpeg_gray": _encode(_photo("camera", (500, 333)), "JPEG", quality=90),
        "jpeg_cmyk": _encode(_photo("rocket", (500, 333)).convert("CMYK"), "JPEG", quality=90),
        "jpeg_large": _encode(_photo("hubble_deep_field", (1600, 1200)), "JPEG", quality=90),
        "png": _encode(_photo("coffee", (500, 375)), "PNG"),
        "png_gray": _encode(_photo("camera", (333, 500)), "PNG"),
        "png_rgba": _encode(rgba, "PNG"),
    }


def _pil_rgb(encoded: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(encoded)).convert("RGB"))


def _cfg(**kwargs) -> pp.PreprocessConfig:
    base = dict(pca_lighting=0.0, random_flip=False, mean=None)
    base.update(kwargs)
    return pp.PreprocessConfig(**base)


def _seed(i: int, dtype=tf.int64) -> tf.Tensor:
    return tf.constant([7, i], dtype)


# ----------------------------------------------------------------------------- config


def test_from_config_reads_the_data_section():
    data = default_config.get_config().data
    mean = np.full((data.image_size, data.image_size, 3), 100.0)
    cfg = pp.PreprocessConfig.from_config(data, mean=mean)
    assert (cfg.image_size, cfg.train_recipe, cfg.resize_size) == (80, "resize", 88)
    assert cfg.mean.dtype == np.float32 and not cfg.mean.flags.writeable
    np.testing.assert_allclose(cfg.channel_mean, [100.0, 100.0, 100.0])
    assert pp.PreprocessConfig.from_config(data).mean is None


@pytest.mark.parametrize(
    "kwargs, field",
    [
        (dict(train_recipe="random"), "data.train_recipe"),
        (dict(image_size=0), "data.image_size"),
        (dict(scale_min=200), "data.scale_min"),  # below image_size for scale jitter
        (dict(scale_min=300, scale_max=299), "data.scale_max"),
        (dict(train_recipe="resize", resize_size=100), "data.resize_size"),
        (dict(eval_resize=223), "data.eval_resize"),
        (dict(pca_lighting=-0.1), "data.pca_lighting"),
        (dict(random_flip="yes"), "data.random_flip"),
        (dict(mean=np.zeros((256, 256, 3))), "data.mean"),
        (dict(image_size=224.0), "data.image_size"),
    ],
)
def test_invalid_config_raises_one_line_error(kwargs, field):
    with pytest.raises(ValueError, match=field) as info:
        pp.PreprocessConfig(**kwargs)
    assert "\n" not in str(info.value)


# ----------------------------------------------------------------------------- decoding


@pytest.mark.parametrize(
    "name", ["jpeg", "jpeg_gray", "jpeg_cmyk", "png", "png_gray", "png_rgba", "jpeg_large"]
)
def test_decode_rgb_matches_pil(images, name):
    decoded = pp.decode_rgb(images[name]).numpy()
    reference = _pil_rgb(images[name])  # CMYK -> RGB, gray -> RGB, RGBA -> RGB (alpha dropped)
    assert decoded.dtype == np.uint8 and decoded.shape == reference.shape
    # Same accurate IDCT as PIL's libjpeg: identical pixels (allow one level of slack).
    assert np.abs(decoded.astype(int) - reference).max() <= 1
    if "gray" in name:
        assert (decoded == decoded[..., :1]).all()


def test_decode_rgb_in_tf_data(images):
    names = ["jpeg", "jpeg_cmyk", "png_rgba", "png_gray"]
    ds = tf.data.Dataset.from_tensor_slices([images[n] for n in names]).map(pp.decode_rgb)
    assert ds.element_spec.shape.as_list() == [None, None, 3]
    for name, image in zip(names, ds, strict=True):
        np.testing.assert_array_equal(image.numpy(), pp.decode_rgb(images[name]).numpy())


# ----------------------------------------------------------------------------- training


def test_scale_jitter_window_range():
    cfg = _cfg()
    h, w = 375, 500
    lo, hi = round(S * h / cfg.scale_max), round(S * h / cfg.scale_min)  # 164, 328
    windows = tf.data.Dataset.range(300).map(
        lambda i: tf.stack(pp.train_crop_window([h, w, 3], tf.stack([7, i]), cfg))
    )
    sides, offsets = [], []
    for oy, ox, ch, cw in windows.as_numpy_iterator():
        assert ch == cw and lo <= ch <= hi
        assert 0 <= oy <= h - ch and 0 <= ox <= w - cw
        sides.append(ch)
        offsets.append((oy / max(h - ch, 1), ox / max(w - cw, 1)))
    # The implied shorter side s = S * short / side spreads over [scale_min, scale_max].
    implied = S * h / np.array(sides)
    assert implied.min() < 275 and implied.max() > 490
    assert 0.4 < np.mean(implied > 384) < 0.6
    assert np.array(offsets).min() < 0.05 and np.array(offsets).max() > 0.95


def test_resize_recipe_window_is_fixed_scale():
    cfg = _cfg(train_recipe="resize", resize_size=256)
    for i in range(20):
        _, _, ch, cw = (int(v) for v in pp.train_crop_window([500, 375], _seed(i), cfg))
        assert ch == cw == round(S * 375 / 256)


def test_train_image_decodes_exactly_the_window(images):
    """train_image's crop is train_crop_window(shape, crop_seed(seed)) of the original image."""
    cfg = _cfg(scale_min=256, scale_max=512)
    png = pp.decode_rgb(images["png"])
    jpeg_fast = tf.io.decode_jpeg(images["jpeg"], channels=3, dct_method=pp.TRAIN_DCT_METHOD)
    for i in range(5):
        seed = _seed(i)
        for encoded, full in ((images["png"], png), (images["jpeg"], jpeg_fast)):
            oy, ox, ch, cw = pp.train_crop_window(tf.shape(full), pp.crop_seed(seed), cfg)
            crop, _ = pp._decode_train_crop(tf.constant(encoded), pp.crop_seed(seed), cfg)
            assert crop.shape == (ch, cw, 3)  # 164..328 px: decoded at full scale
            want = tf.image.resize(tf.cast(full[oy : oy + ch, ox : ox + cw], tf.float32), [S, S])
            got = pp.train_image(encoded, seed, cfg).numpy()
            diff = np.abs(got - want.numpy())
            if encoded is images["png"]:
                assert diff.max() == 0  # the same ops on the same pixels
            else:
                # decode_and_crop_jpeg upsamples chroma differently at the window's edge only.
                assert diff.mean() < 0.05 and np.mean(diff > 1) < 1e-3


def test_large_jpeg_uses_dct_downscaling(images):
    """1600x1200: windows of >= 2S px are decoded at 1/2 or 1/4 scale, on the r-pixel grid."""
    cfg = _cfg()
    encoded = tf.constant(images["jpeg_large"])
    full = tf.cast(tf.io.decode_jpeg(encoded, channels=3), tf.float32)
    seen = set()
    for i in range(40):
        seed = _seed(i)
        oy, ox, ch, cw = (
            int(v) for v in pp.train_crop_window([1200, 1600], pp.crop_seed(seed), cfg)
        )
        crop, _ = pp._decode_train_crop(encoded, pp.crop_seed(seed), cfg)
        r = 4 if ch >= 4 * S else 2 if ch >= 2 * S else 1
        seen.add(r)
        assert ch == cw and ch % r == 0 and oy % r == 0 and ox % r == 0
        assert crop.shape == (ch // r, ch // r, 3) and ch // r >= S
        if i < 8:
            # Reference: the same window of the full decode, shrunk by r (box filter, like
            # the DCT-domain scaling), then bilinear. A window off by r px gives errors > 5.
            window = full[oy : oy + ch, ox : ox + ch]
            ref = tf.image.resize(tf.image.resize(window, [ch // r] * 2, method="area"), [S, S])
            got = pp.train_image(encoded, seed, cfg).numpy()
            assert np.abs(got - ref.numpy()).mean() < 1.5
    assert seen == {2, 4}  # side = 224 * 1200 / s is 525..1050 px


@pytest.mark.parametrize("name", ["jpeg", "jpeg_gray", "jpeg_cmyk", "png_gray", "png_rgba"])
def test_train_image_shape_and_range(images, name):
    for mean, lo, hi in [
        (None, 0.0, 255.0),
        (CHANNEL_MEAN, -CHANNEL_MEAN, 255.0 - CHANNEL_MEAN),
        (np.full((S, S, 3), 128.0), -128.0, 127.0),
    ]:
        cfg = _cfg(random_flip=True, mean=mean)
        x = pp.train_image(images[name], _seed(3), cfg).numpy()
        assert x.shape == (S, S, 3) and x.dtype == np.float32
        assert (x >= lo - 1e-3).all() and (x <= hi + 1e-3).all()
        assert x.std() > 5  # a real picture, not a constant


def test_train_image_deterministic(images):
    cfg = pp.PreprocessConfig(mean=CHANNEL_MEAN)  # the full paper recipe
    a = pp.train_image(images["jpeg"], _seed(1), cfg).numpy()
    np.testing.assert_array_equal(a, pp.train_image(images["jpeg"], _seed(1), cfg).numpy())
    np.testing.assert_array_equal(
        a, pp.train_image(images["jpeg"], _seed(1, tf.int32), cfg).numpy()
    )
    outputs = [pp.train_image(images["jpeg"], _seed(i), cfg).numpy() for i in range(2, 6)]
    for b in outputs:
        assert not np.array_equal(a, b)


@pytest.mark.slow
def test_flip_about_half_the_time(images):
    on, off = _cfg(random_flip=True), _cfg(random_flip=False)
    x = tf.constant(images["jpeg"])
    ds = tf.data.Dataset.range(60).map(
        lambda i: (
            pp.train_image(x, tf.stack([7, i]), on),
            pp.train_image(x, tf.stack([7, i]), off),
        ),
        num_parallel_calls=2,
    )
    flips = 0
    for a, b in ds.as_numpy_iterator():
        if np.array_equal(a, b[:, ::-1]):
            flips += 1
        else:
            np.testing.assert_array_equal(a, b)  # flipping never changes the crop
    assert 15 <= flips <= 45  # Binomial(60, 0.5): mean 30, std 3.9
    # The flip bit alone, over many seeds.
    draws = tf.data.Dataset.range(1000).map(
        lambda i: pp._train_draws([375, 500], pp.crop_seed(tf.stack([7, i])), on)[1]
    )
    assert 430 <= sum(draws.as_numpy_iterator()) <= 570  # mean 500, std 16


def test_pca_lighting(images):
    plain = pp.train_image(images["jpeg"], _seed(5), _cfg()).numpy()
    lit = pp.train_image(images["jpeg"], _seed(5), _cfg(pca_lighting=0.1)).numpy()
    shift = lit - plain
    # Every pixel moves by the same RGB vector: the lighting seed's eigvec @ (alpha * eigval).
    np.testing.assert_allclose(shift, np.broadcast_to(shift[0, 0], shift.shape), atol=1e-3)
    assert np.abs(shift[0, 0]).max() > 0.1
    light_seed = pp._split_seed(_seed(5))[1]
    np.testing.assert_allclose(shift[0, 0], pp.pca_lighting_shift(light_seed, 0.1), atol=1e-3)
    # alpha ~ N(0, 0.1^2): recover it from many shifts.
    shifts = np.stack([pp.pca_lighting_shift(_seed(i), 0.1).numpy() for i in range(400)])
    alpha = np.linalg.solve(pp._PCA_EIGVEC, shifts.T).T / pp._PCA_EIGVAL
    assert np.all(np.abs(alpha.std(axis=0) - 0.1) < 0.015) and np.all(np.abs(alpha.mean(0)) < 0.02)


def test_train_image_eager_equals_tf_data(images):
    cfg = pp.PreprocessConfig(mean=np.full((S, S, 3), 110.0))  # the full paper recipe
    names = list(images)
    ds = tf.data.Dataset.from_tensor_slices([images[n] for n in names]).enumerate()
    ds = ds.map(lambda i, x: pp.train_image(x, tf.stack([tf.constant(7, tf.int64), i]), cfg))
    assert ds.element_spec.shape.as_list() == [S, S, 3]
    for i, (name, got) in enumerate(zip(names, ds.as_numpy_iterator(), strict=True)):
        want = pp.train_image(images[name], _seed(i), cfg).numpy()
        np.testing.assert_array_equal(got, want, err_msg=name)


# ----------------------------------------------------------------------------- evaluation


def _pil_resize_shorter(encoded: bytes, shorter: int) -> np.ndarray:
    image = Image.open(io.BytesIO(encoded)).convert("RGB")
    w, h = image.size
    size = [int(np.floor(v * shorter / min(w, h) + 0.5)) for v in (w, h)]
    return np.asarray(image.resize(size, Image.BILINEAR), np.float32)


@pytest.mark.parametrize("name", ["jpeg", "jpeg_portrait", "png_rgba", "jpeg_large"])
def test_eval_center_matches_pil(images, name):
    resized = _pil_resize_shorter(images[name], 256)
    oy, ox = (resized.shape[0] - S) // 2, (resized.shape[1] - S) // 2
    reference = resized[oy : oy + S, ox : ox + S]
    got = pp.eval_center(images[name], _cfg()).numpy()
    assert got.shape == (S, S, 3)
    diff = np.abs(got - reference)
    assert diff.max() < 1.01 and diff.mean() < 0.4  # PIL rounds its output to uint8


def test_eval_center_upscales_small_images():
    small = _encode(_photo("chelsea", (240, 180)), "JPEG", quality=90)
    resized = _pil_resize_shorter(small, 256)
    oy, ox = (resized.shape[0] - S) // 2, (resized.shape[1] - S) // 2
    diff = np.abs(pp.eval_center(small, _cfg()).numpy() - resized[oy : oy + S, ox : ox + S])
    assert diff.max() < 1.01 and diff.mean() < 0.4


@pytest.mark.parametrize("name, resize", [("jpeg", None), ("jpeg_portrait", 288), ("png", 384)])
def test_ten_views_against_numpy(images, name, resize):
    mean = np.random.default_rng(0).uniform(90, 140, (S, S, 3)).astype(np.float32)
    cfg = _cfg(mean=mean)
    views = pp.eval_ten_views(images[name], cfg, resize=resize).numpy()
    r = resize or cfg.eval_resize
    image = pp.resize_shorter_side(pp.decode_rgb(images[name]), r).numpy()
    h, w = image.shape[:2]
    assert min(h, w) == r
    corners = [(0, 0), (0, w - S), (h - S, 0), (h - S, w - S), ((h - S) // 2, (w - S) // 2)]
    crops = [image[y : y + S, x : x + S] for y, x in corners]
    want = np.stack(crops + [c[:, ::-1] for c in crops]) - mean
    assert views.shape == (10, S, S, 3)
    np.testing.assert_allclose(views, want, atol=1e-4)
    if resize is None:
        np.testing.assert_allclose(views[4], pp.eval_center(images[name], cfg).numpy(), atol=1e-4)


def test_eval_full(images):
    mean = np.random.default_rng(1).uniform(90, 140, (S, S, 3)).astype(np.float32)
    plain = pp.eval_full(images["jpeg"], _cfg(), resize=384).numpy()
    assert plain.shape == (384, 512, 3) and plain.min() >= 0 and plain.max() <= 255
    # A per-pixel mean only fits S x S crops: the whole image gets its per-channel average.
    got = pp.eval_full(images["jpeg"], _cfg(mean=mean), resize=384).numpy()
    np.testing.assert_allclose(got, plain - mean.mean(axis=(0, 1)), atol=1e-3)
    portrait = pp.eval_full(images["jpeg_portrait"], _cfg(), resize=480)
    assert portrait.shape == (640, 480, 3)


def test_eval_ops_in_tf_data(images):
    cfg = _cfg(mean=CHANNEL_MEAN)
    names = ["jpeg", "jpeg_cmyk", "png_rgba"]
    ds = tf.data.Dataset.from_tensor_slices([images[n] for n in names])
    ds = ds.map(
        lambda x: (pp.eval_center(x, cfg), pp.eval_ten_views(x, cfg), pp.eval_full(x, cfg, 256))
    )
    for name, (center, views, full) in zip(names, ds.as_numpy_iterator(), strict=True):
        np.testing.assert_array_equal(center, pp.eval_center(images[name], cfg).numpy())
        np.testing.assert_array_equal(views, pp.eval_ten_views(images[name], cfg).numpy())
        np.testing.assert_array_equal(full, pp.eval_full(images[name], cfg, 256).numpy())


# ----------------------------------------------------------------------------- mean


def test_subtract_mean():
    x = np.random.default_rng(2).uniform(0, 255, (2, S, S, 3)).astype(np.float32)
    pixel = np.random.default_rng(3).uniform(90, 140, (S, S, 3)).astype(np.float32)
    np.testing.assert_allclose(pp.subtract_mean(x, _cfg(mean=pixel)), x - pixel, atol=1e-4)
    np.testing.assert_allclose(
        pp.subtract_mean(x, _cfg(mean=CHANNEL_MEAN)), x - CHANNEL_MEAN, atol=1e-4
    )
    np.testing.assert_array_equal(pp.subtract_mean(x, _cfg()), x)
    with pytest.raises(ValueError, match="per-pixel mean"):
        pp.subtract_mean(np.zeros((256, 256, 3), np.float32), _cfg(mean=pixel))
