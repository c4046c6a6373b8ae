"""A small offline photo dataset at ImageNet-like sizes, written once as the TFDS dataset `photos`.

One class per colour photograph that ships inside scikit-image (astronaut, chelsea, coffee,
hubble_deep_field, ihc, motorcycle_left, retina, rocket) and scikit-learn (china, flower): 10
classes. Each example is a random crop of its class's photograph (area 20-100% of the
photograph, aspect ratio in [3/4, 4/3]), resized so its shorter side is drawn from [256, 320]
pixels (ImageNet's typical size; the paper's preprocessing then resizes and crops to 224), flipped
with p = 0.5, colour-jittered (brightness, contrast and saturation factors in [0.7, 1.3]) and
re-encoded as JPEG (quality 85). Every draw comes from a NumPy generator seeded with
(split, class, index), so a dataset prepared twice is byte-identical (same Pillow/libjpeg).

Splits (config `full`, the default): 80 train and 20 validation examples per class, 1,000
images, about 25 MB. Train and validation crops come from the same photographs (they differ in
crop, scale, flip and colour): the dataset tests that full-size models train on real
photographs at 224x224, not generalisation. Config `tiny` (4 + 2 per class, shorter side 64..80)
is for tests.

    python -m rectifiers_jax.data prepare --dataset=photos --data_dir=data/tfds
    python -m rectifiers_jax.main --config=configs/net14.py:act=prelu,data=photos --workdir=runs/x

`tfds_source.open_tfds` prepares it on first use, like `sklearn_digits`.
"""

from __future__ import annotations

import dataclasses
import functools
import io
import os
import zlib

import numpy as np
import tensorflow_datasets as tfds

from rectifiers_jax.data import offline

NAME = "photos"
VERSION = "1.0.0"
# (class name, package, path inside the package). Colour photographs only.
SOURCES: tuple[tuple[str, str, str], ...] = (
    ("astronaut", "skimage", "data/astronaut.png"),
    ("chelsea", "skimage", "data/chelsea.png"),
    ("china", "sklearn", "datasets/images/china.jpg"),
    ("coffee", "skimage", "data/coffee.png"),
    ("flower", "sklearn", "datasets/images/flower.jpg"),
    ("hubble_deep_field", "skimage", "data/hubble_deep_field.jpg"),
    ("ihc", "skimage", "data/ihc.png"),
    ("motorcycle", "skimage", "data/motorcycle_left.png"),
    ("retina", "skimage", "data/retina.jpg"),
    ("rocket", "skimage", "data/rocket.jpg"),
)
CLASS_NAMES: tuple[str, ...] = tuple(name for name, _, _ in SOURCES)
SPLITS = ("train", "validation")


@dataclasses.dataclass(eq=False)
class PhotosConfig(tfds.core.BuilderConfig):
    """Size of the prepared dataset.

    Attributes:
      train_per_class, validation_per_class: examples per class in each split.
      shorter_min, shorter_max: inclusive range of an example's shorter side, pixels.
      area_min: smallest crop area as a fraction of the photograph's.
      jpeg_quality: quality of the re-encoded JPEGs.
      seed: base of every example's seed.
    """

    train_per_class: int = 80
    validation_per_class: int = 20
    shorter_min: int = 256
    shorter_max: int = 320
    area_min: float = 0.2
    jpeg_quality: int = 85
    seed: int = 0


FULL = PhotosConfig(
    name="full", description="80 train / 20 validation per class, shorter side 256-320 px."
)
TINY = PhotosConfig(
    name="tiny",
    description="4 train / 2 validation per class, shorter side 64-80 px (tests).",
    train_per_class=4,
    validation_per_class=2,
    shorter_min=64,
    shorter_max=80,
)


def source_path(package: str, relative: str) -> str:
    """Absolute path of a photograph shipped inside an installed package."""
    module = __import__(package)
    return os.path.join(os.path.dirname(module.__file__), relative)


@functools.lru_cache(maxsize=len(SOURCES))
def load_photograph(label: int):
    """Class `label`'s photograph as an RGB PIL image (cached; callers must not modify it)."""
    from PIL import Image

    _, package, relative = SOURCES[label]
    with Image.open(source_path(package, relative)) as image:
        return image.convert("RGB")


def example_seed(config: PhotosConfig, split: str, label: int, index: int) -> int:
    """The seed of one example: a stable hash of (config.seed, split, class, index)."""
    return zlib.crc32(f"{config.seed}/{split}/{CLASS_NAMES[label]}/{index}".encode())


def make_example(photograph, config: PhotosConfig, seed: int) -> bytes:
    """One augmented view of `photograph` (RGB PIL image) as JPEG bytes.

    Crop of area U[area_min, 1] x the photograph's and aspect ratio exp(U[ln 3/4, ln 4/3])
    (shrunk to fit), shorter side U{shorter_min..shorter_max}, flip p = 0.5, then brightness,
    contrast and saturation factors U[0.7, 1.3] each (PIL's ImageEnhance).
    """
    from PIL import Image, ImageEnhance

    rng = np.random.default_rng(seed)
    width, height = photograph.size
    area = rng.uniform(config.area_min, 1.0) * width * height
    aspect = float(np.exp(rng.uniform(np.log(3 / 4), np.log(4 / 3))))  # width / height
    crop_w = min(width, max(1, round(np.sqrt(area * aspect))))
    crop_h = min(height, max(1, round(np.sqrt(area / aspect))))
    left = int(rng.integers(0, width - crop_w + 1))
    top = int(rng.integers(0, height - crop_h + 1))
    shorter = int(rng.integers(config.shorter_min, config.shorter_max + 1))
    scale = shorter / min(crop_w, crop_h)
    size = (max(shorter, round(crop_w * scale)), max(shorter, round(crop_h * scale)))
    image = photograph.resize(
        size, Image.Resampling.BILINEAR, box=(left, top, left + crop_w, top + crop_h)
    )
    if rng.uniform() < 0.5:
        image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    for enhance in (ImageEnhance.Brightness, ImageEnhance.Contrast, ImageEnhance.Color):
        image = enhance(image).enhance(float(rng.uniform(0.7, 1.3)))
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=config.jpeg_quality)
    return buffer.getvalue()


class Photos(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    """Random crops of 10 packaged colour photographs, one class each, as JPEGs (offline)."""

    name = NAME
    VERSION = tfds.core.Version(VERSION)
    BUILDER_CONFIGS = [FULL, TINY]
    # No checksums file to look up (see digits.SklearnDigits).
    code_path = None
    RELEASE_NOTES = {str(VERSION): "10 classes of crops of scikit-image/scikit-learn photographs."}

    def _info(self) -> tfds.core.DatasetInfo:
        return tfds.core.DatasetInfo(
            builder=self,
            description=__doc__.split("\n\n")[1],
            features=tfds.features.FeaturesDict(
                {
                    "image": tfds.features.Image(shape=(None, None, 3), encoding_format="jpeg"),
                    "label": tfds.features.ClassLabel(names=list(CLASS_NAMES)),
                }
            ),
            supervised_keys=("image", "label"),
            homepage="https://scikit-image.org/docs/stable/api/skimage.data.html",
        )

    def _split_generators(self, dl_manager):
        del dl_manager  # The photographs ship inside scikit-image and scikit-learn.
        return {split: self._generate_examples(split) for split in SPLITS}

    def _generate_examples(self, split: str):
        config: PhotosConfig = self.builder_config
        count = config.train_per_class if split == "train" else config.validation_per_class
        for label in range(len(SOURCES)):
            photograph = load_photograph(label)
            for index in range(count):
                seed = example_seed(config, split, label, index)
                # Encoded bytes go in as they are (TFDS keeps JPEG bytes without re-encoding).
                jpeg = make_example(photograph, config, seed)
                yield f"{CLASS_NAMES[label]}_{index:04d}", {"image": jpeg, "label": label}


def prepare_photos(data_dir: str, config: str = "") -> str:
    """Write the `photos` dataset (builder config `full` by default, or `tiny`) once under
    `data_dir`; returns `<data_dir>/photos/<config>/1.0.0`. No network access."""
    return offline.prepare(Photos, data_dir, config)
