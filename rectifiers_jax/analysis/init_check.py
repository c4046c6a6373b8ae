"""Response stds, logit std and initial loss of any config's model at initialisation, no training.

    python -m rectifiers_jax.analysis.init_check --config=configs/net14.py:act=prelu \
        [--config.KEY=VALUE ...] [--batch_size=8] [--images=photos|gaussian] [--num_classes=N] \
        [--photos_dir=data/tfds] [--json=PATH]

Builds the config's model at its configured width (1.0 for the ImageNet configs), initialises
it exactly as training does (`config.seed`, the same PRNG), feeds one batch and prints, per
activated layer, the std of its pre-activation response y_l (paper Eqs. 9-10; the model sows it
as `intermediates/<layer>/response`), then the std of the logits and the initial loss.

Images (`--images`):
  * `photos` (default): the first `batch_size` images of the evaluation split, preprocessed as
    the config's evaluation does (resize to `data.eval_resize`, centre `data.image_size` crop,
    mean subtracted). From the config's own dataset when it is prepared on this machine (its
    `data.mean`; labels are then real); otherwise from the offline `photos` dataset
    (rectifiers_jax.data.photos, under `--photos_dir`, prepared on first use) minus the per-channel
    mean of its train split. The output says which.
  * `gaussian`: i.i.d. N(0, pixel_std^2) pixels, pixel_std = `--pixel_std` (default 60, about
    the std of mean-subtracted photographs in 0..255 units).

Initial loss (nats, averaged over the batch):
  * `uniform labels`: the expected cross-entropy when each example's label is drawn uniformly
    from the C classes, E_y[-log softmax(z)_y] = logsumexp(z) - mean_c(z_c). It is >= ln C, with
    equality exactly when an example's logits are all equal, so `loss - ln C` measures how far
    the init is from the "knows nothing" start. This is the number compared with ln C.
  * `real labels`: -log softmax(z)_y with the batch's own labels, when they are the config's
    dataset's (with photos standing in for ImageNet the labels mean nothing and are not used).

Stability at the config's learning rate: the top eigenvalue of the loss's Gauss-Newton Hessian
in the last layer's weights (`last_layer_sharpness`, a lower bound on the whole network's),
times `optim.learning_rate`. Above 2 (1 + momentum) = 3.8 momentum SGD cannot be stable at init.
It grows with the square of the last hidden features and shrinks as 1/C, so 10 classes are
100 times stiffer than ImageNet's 1000 for the same features.

C is the config's dataset's class count (`model.num_classes`, else the prepared dataset's, else
1000 for imagenet2012 and 10 for imagenette); `--num_classes` overrides it. Full-width model C
takes about a minute on a 2-core CPU at batch 8 (inference only).
"""

from __future__ import annotations

import json
import math
import os
import time
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import flags
from ml_collections import config_flags

from rectifiers_jax import cli, models, train
from rectifiers_jax.data import input_pipeline, mean, sources, tfds_source
from rectifiers_jax.data.records import DatasetNotFoundError

IMAGES = ("photos", "gaussian")
# Class counts of datasets that may be absent here (the ImageNet configs' datasets).
KNOWN_CLASSES = {"imagenet2012": 1000, "imagenette": 10}
DEFAULT_PIXEL_STD = 60.0


def _data_copy(data_config: ml_collections.ConfigDict, **changes: Any) -> ml_collections.ConfigDict:
    data = ml_collections.ConfigDict(data_config.to_dict())
    for key, value in changes.items():
        data[key] = value
    return data


def _own_dataset_info(config: ml_collections.ConfigDict):
    """The config's dataset's DatasetInfo when it is prepared here (never downloads), else None."""
    data = _data_copy(config.data, download=False)
    try:
        return sources.get_info(data)
    except (DatasetNotFoundError, FileNotFoundError):
        return None


def photo_batch(
    config: ml_collections.ConfigDict,
    batch_size: int,
    photos_dir: str,
    photos_name: str = "photos",
) -> tuple[np.ndarray, np.ndarray | None, str, int | None]:
    """(images float32 [B, S, S, 3], labels int32 [B] or None, description, dataset classes).

    Labels and classes are None when the photos (TFDS `photos_name` under `photos_dir`) stand in
    for an absent dataset.
    """
    info = _own_dataset_info(config)
    if info is not None:
        data = _data_copy(config.data, download=False)
        where = (
            f"{batch_size} images of {info.name!r} split {data.eval_split!r} (the config's "
            f"dataset, real labels), mean {data.mean}"
        )
        classes = info.num_classes
        subtract = mean.load_mean(data)
    else:
        data = _data_copy(
            config.data,
            source="tfds",
            name=photos_name,
            data_dir=photos_dir,
            download=False,
            eval_split="validation",
            train_split="train",
            mean="per_channel",
        )
        subtract = mean.load_mean(data)
        where = (
            f"{batch_size} images of the offline 'photos' dataset (validation split) standing in "
            f"for {config.data.name!r}, which is not prepared here; minus the photos' per-channel "
            f"mean {[round(float(m), 1) for m in subtract]} (train split)"
        )
        classes = None
    batches, _ = input_pipeline.eval_iterator(data, global_batch_size=batch_size, mean=subtract)
    batch = next(iter(batches))
    where += (
        f"; centre {data.image_size} crop of shorter side {data.eval_resize}, as the config's "
        "evaluation"
    )
    labels = batch["label"] if info is not None else None
    return np.asarray(batch["image"], np.float32), labels, where, classes


def num_classes_for(config: ml_collections.ConfigDict, override: int | None, found: int | None):
    """C: `--num_classes`, else config.model.num_classes, the dataset's, or the known count."""
    if override is not None:
        if override < 2:
            raise ValueError(f"--num_classes={override} is not valid; use an integer >= 2")
        return override
    if config.model.get("num_classes") is not None:
        return int(config.model.num_classes)
    if found is not None:
        return found
    base = tfds_source.base_name(config.data.name)
    if base in KNOWN_CLASSES:
        return KNOWN_CLASSES[base]
    raise ValueError(
        f"number of classes of config.data.name={config.data.name!r} is unknown here (not "
        "prepared on this machine); pass --num_classes"
    )


def _logsumexp(z: np.ndarray) -> np.ndarray:
    top = z.max(axis=-1, keepdims=True)
    return np.log(np.exp(z - top).sum(axis=-1)) + top[..., 0]


def uniform_label_loss(logits: np.ndarray) -> np.ndarray:
    """[B] expected cross-entropy for a uniformly drawn label: logsumexp(z) - mean_c(z_c)."""
    z = np.asarray(logits, np.float64)
    return _logsumexp(z) - z.mean(axis=-1)


def label_loss(logits: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """[B] cross-entropy -log softmax(z)_y of the given labels."""
    z = np.asarray(logits, np.float64)
    return _logsumexp(z) - np.take_along_axis(z, np.asarray(labels)[:, None], axis=-1)[:, 0]


def last_layer_sharpness(features: np.ndarray, logits: np.ndarray, iterations: int = 100) -> float:
    """Top eigenvalue of the Gauss-Newton Hessian of the mean loss in the last layer's weights.

    H = (1/B) sum_i (x~_i x~_i^T) kron (diag(p_i) - p_i p_i^T), x~_i = (x_i, 1) the last layer's
    input `features` [B, n] with a 1 for the bias, p_i = softmax(logits_i) [B, C]. It is a
    lower bound on the whole network's Gauss-Newton sharpness, and at a uniform p it is
    lambda_max(X~^T X~ / B) / C: the class count divides it. Heavy-ball momentum SGD with rate
    lr and momentum mu is unstable along a direction of curvature lambda when
    lr * lambda > 2 (1 + mu) (3.8 at mu = 0.9).
    """
    x = np.concatenate([features, np.ones((features.shape[0], 1))], axis=1).astype(np.float64)
    z = np.asarray(logits, np.float64)
    p = np.exp(z - z.max(axis=1, keepdims=True))
    p /= p.sum(axis=1, keepdims=True)
    rng = np.random.default_rng(0)
    v = rng.standard_normal((x.shape[1], z.shape[1]))
    value = 0.0
    for _ in range(iterations):  # power iteration on V -> (1/B) sum_i x_i (x_i^T V A_i)
        v /= np.linalg.norm(v)
        u = x @ v  # [B, C]: x_i^T V
        au = p * u - p * np.sum(p * u, axis=1, keepdims=True)  # A_i applied to each row
        hv = x.T @ au / x.shape[0]
        value = float(np.sum(v * hv))
        v = hv
    return value


def check(
    config: ml_collections.ConfigDict,
    *,
    batch_size: int = 8,
    images: str = "photos",
    num_classes: int | None = None,
    photos_dir: str = "data/tfds",
    pixel_std: float = DEFAULT_PIXEL_STD,
    photos_name: str = "photos",
) -> dict[str, Any]:
    """Measures the config's model at initialisation; returns the numbers `main` prints.

    Keys: model, activation, init, fc_std, width, image_size, num_classes, input, input_std,
    layers [L], response_std [L], logit_std, logit_std_per_example, loss_uniform, ln_classes,
    loss_real (or None), last_layer_sharpness (see `last_layer_sharpness`), learning_rate,
    momentum, seconds.
    """
    if images not in IMAGES:
        raise ValueError(f"--images={images!r} is not one of {', '.join(IMAGES)}")
    if batch_size < 1:
        raise ValueError(f"--batch_size={batch_size} is not valid; use an integer >= 1")
    start = time.perf_counter()
    size = int(config.data.image_size)
    labels, found = None, None
    if images == "photos":
        x, labels, where, found = photo_batch(config, batch_size, photos_dir, photos_name)
    else:
        if not pixel_std > 0:
            raise ValueError(f"--pixel_std={pixel_std} is not valid; use a float > 0")
        rng = np.random.default_rng(config.seed)
        x = (rng.standard_normal((batch_size, size, size, 3)) * pixel_std).astype(np.float32)
        where = f"{batch_size} images of i.i.d. N(0, {pixel_std:g}^2) pixels"
        info = _own_dataset_info(config)
        found = info.num_classes if info is not None else None
    classes = num_classes_for(config, num_classes, found)
    if labels is not None and num_classes is not None and num_classes != found:
        labels = None  # An override that disagrees with the dataset makes its labels meaningless.
    model = models.from_config(config.model, classes)

    @jax.jit
    def forward(x: jax.Array):
        key = jax.random.key(config.seed, impl=train.PRNG_IMPL)  # the training run's draws
        params = models.init_params(model, key, size)
        logits, state = model.apply({"params": params}, x, train=False, mutable=["intermediates"])
        inter = state["intermediates"]
        names = models.activated_layers(model)
        stds = jnp.stack([jnp.std(inter[n]["response"][0].astype(jnp.float32)) for n in names])
        # The last layer's input: the last hidden response through the activation at init.
        top = inter[names[-1]]["response"][0].astype(jnp.float32)
        return logits, stds, jnp.where(top > 0, top, slope * top)

    slope = models.initial_slope(
        model.activation, lrelu_slope=model.lrelu_slope, a_init=model.a_init
    )
    logits, stds, features = jax.device_get(forward(jnp.asarray(x)))
    sharpness = last_layer_sharpness(features, logits)
    loss_uniform = float(uniform_label_loss(logits).mean())
    loss_real = float(label_loss(logits, labels).mean()) if labels is not None else None
    return {
        "config": config.model.name,
        "model": model.architecture.name,
        "activation": model.activation,
        "init": model.init_scheme,
        "fc_std": list(model.fc_std) if model.fc_std is not None else None,
        "width": float(config.model.width),
        "image_size": size,
        "num_classes": classes,
        "input": where,
        "input_std": float(np.std(x)),
        "layers": models.activated_layers(model),
        "response_std": [float(s) for s in stds],
        "logit_std": float(np.std(logits)),
        "logit_std_per_example": float(np.mean(np.std(logits, axis=-1))),
        "loss_uniform": loss_uniform,
        "ln_classes": math.log(classes),
        "loss_real": loss_real,
        "last_layer_sharpness": sharpness,
        "learning_rate": float(config.optim.learning_rate),
        "momentum": float(config.optim.momentum),
        "seconds": time.perf_counter() - start,
    }


def format_result(result: dict[str, Any]) -> str:
    """The printed report of `check`'s result."""
    fc = f", fc stds {result['fc_std']}" if result["fc_std"] else ""
    lines = [
        f"{result['model']} {result['activation']}, init {result['init']}{fc}, width "
        f"{result['width']:g}, {result['image_size']}x{result['image_size']}, "
        f"{result['num_classes']} classes",
        f"input: {result['input']}; input std {result['input_std']:.2f}",
        f"{'layer':<10} {'response std':>12}",
    ]
    for layer, std in zip(result["layers"], result["response_std"], strict=True):
        lines.append(f"{layer:<10} {std:>12.4g}")
    excess = result["loss_uniform"] - result["ln_classes"]
    lines += [
        f"logits: std {result['logit_std']:.4g} over batch and classes, "
        f"{result['logit_std_per_example']:.4g} across classes (mean over examples)",
        f"initial loss, uniform labels (logsumexp(z) - mean(z)): {result['loss_uniform']:.3f} "
        f"nats vs ln({result['num_classes']}) = {result['ln_classes']:.3f} "
        f"(+{excess:.3f}; {'within' if excess <= 1.0 else 'NOT within'} 1 nat)",
    ]
    if result["loss_real"] is not None:
        lines.append(f"initial loss, real labels: {result['loss_real']:.3f} nats")
    limit = 2 * (1 + result["momentum"])
    kappa = result["learning_rate"] * result["last_layer_sharpness"]
    lines.append(
        f"last-layer sharpness (Gauss-Newton lambda_max): {result['last_layer_sharpness']:.4g}; "
        f"x lr {result['learning_rate']:g} = {kappa:.3g} (momentum SGD is unstable above "
        f"2 (1 + mu) = {limit:.2g}: {'unstable' if kappa > limit else 'stable'} at init)"
    )
    lines.append(f"({result['seconds']:.1f} s)")
    return "\n".join(lines)


_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Experiment config file.", lock_config=True
)
_BATCH_SIZE = flags.DEFINE_integer("batch_size", 8, "Images in the batch.")
_IMAGES = flags.DEFINE_enum("images", "photos", list(IMAGES), "Photographs or Gaussian pixels.")
_NUM_CLASSES = flags.DEFINE_integer("num_classes", None, "Override the class count C.")
_PHOTOS_DIR = flags.DEFINE_string("photos_dir", "data/tfds", "TFDS data dir of the photos.")
_PIXEL_STD = flags.DEFINE_float("pixel_std", DEFAULT_PIXEL_STD, "Std of Gaussian pixels.")
_JSON = flags.DEFINE_string("json", None, "Also write the numbers to this JSON file.")


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise cli.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    if _CONFIG.value is None:
        raise cli.UsageError("--config=configs/FILE.py[:ARGS] is required")
    result = check(
        _CONFIG.value,
        batch_size=_BATCH_SIZE.value,
        images=_IMAGES.value,
        num_classes=_NUM_CLASSES.value,
        photos_dir=_PHOTOS_DIR.value,
        pixel_std=_PIXEL_STD.value,
    )
    print(format_result(result))
    if _JSON.value:
        os.makedirs(os.path.dirname(os.path.abspath(_JSON.value)), exist_ok=True)
        with open(_JSON.value, "w") as handle:
            json.dump(result, handle, indent=1)


if __name__ == "__main__":
    cli.run_absl(main)
