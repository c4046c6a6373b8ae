"""scikit-learn's 1,797 handwritten digits as a prepared TFDS dataset: the offline default.

    python -m rectifiers_jax.data prepare_digits --data_dir=data/tfds

Written once under `DATA_DIR/sklearn_digits/1.0.0` (no network) and then read through the same
TFDS path as ImageNet; `tfds_source.open_tfds` prepares it on first use.
"""

from __future__ import annotations

import numpy as np
import tensorflow_datasets as tfds

from rectifiers_jax.data import offline

DIGITS_NAME = "sklearn_digits"
DIGITS_VERSION = "1.0.0"
# Stratified, seeded split of the 1,797 digits: 1,437 train / 360 validation (~20%).
DIGITS_NUM_VALIDATION = 360
DIGITS_SPLIT_SEED = 0


def split_indices() -> dict[str, np.ndarray]:
    """Indices into `load_digits()` of the stratified, seeded train/validation split."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    target = load_digits().target
    train, validation = train_test_split(
        np.arange(len(target)),
        test_size=DIGITS_NUM_VALIDATION,
        stratify=target,
        random_state=DIGITS_SPLIT_SEED,
    )
    return {"train": np.sort(train), "validation": np.sort(validation)}


class SklearnDigits(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    """scikit-learn's 1,797 handwritten digits, 8x8 grayscale PNG, 10 classes (offline).

    Pixel values 0..16 are scaled to 0..255. Splits: train 1,437 / validation 360, stratified
    by class with `train_test_split(random_state=0)`. Not registered with TFDS (so importing
    this module twice cannot clash); prepare it with `prepare_digits`.
    """

    name = DIGITS_NAME
    VERSION = tfds.core.Version(DIGITS_VERSION)
    # No checksums file to find; TFDS 4.9.10's lookup of one imports the undeclared
    # `importlib_resources` for builders inside a package (tensorflow/datasets#11212).
    code_path = None
    RELEASE_NOTES = {DIGITS_VERSION: "sklearn.datasets.load_digits, 1,437 / 360 stratified."}

    def _info(self) -> tfds.core.DatasetInfo:
        return tfds.core.DatasetInfo(
            builder=self,
            description="scikit-learn's handwritten digits (UCI optical recognition), 8x8.",
            features=tfds.features.FeaturesDict(
                {
                    "image": tfds.features.Image(shape=(8, 8, 1), encoding_format="png"),
                    "label": tfds.features.ClassLabel(names=[str(d) for d in range(10)]),
                }
            ),
            supervised_keys=("image", "label"),
            homepage="https://scikit-learn.org/stable/datasets/toy_dataset.html",
        )

    def _split_generators(self, dl_manager):
        del dl_manager  # The data ships inside scikit-learn: nothing to download.
        return {
            split: self._generate_examples(indices) for split, indices in split_indices().items()
        }

    def _generate_examples(self, indices: np.ndarray):
        from sklearn.datasets import load_digits

        digits = load_digits()
        pixels = np.round(digits.images * (255.0 / 16.0)).astype(np.uint8)[..., None]
        for i in indices:
            yield int(i), {"image": pixels[i], "label": int(digits.target[i])}


def prepare_digits(data_dir: str) -> str:
    """Write scikit-learn's digits once as TFDS `sklearn_digits` under `data_dir`.

    Idempotent; concurrent callers on one machine wait for the first. No network access.
    Returns the prepared dataset directory `<data_dir>/sklearn_digits/1.0.0`.
    """
    return offline.prepare(SklearnDigits, data_dir)
