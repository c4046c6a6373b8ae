"""The paper's models: the 14-layer SPP net (Table 1), its 30-layer extension (Fig. 3) and the
large models A, B and C (Table 3), all as one spec-driven `SPPNet`.

Every model is convolutions and max pools, a spatial pyramid pooling layer, and three fc layers.
Layer names follow the paper's tables (`conv1`, `conv2_1`, ..., `fc1`, `fc2`, `fc3`). Each
activated layer sows its pre-activation response y_l (paper Eqs. 9, 13) as
`intermediates/<layer>/response` (stored only when `apply` makes `intermediates` mutable). With
`probe_gradients=True` it also adds a zero perturbation `perturbations/<layer>/response` whose
gradient is dE/dy_l (Eq. 13); off by default, so `model.init` returns `{"params"}` alone and
parameters made at one image size apply at any other (the point of SPP).

Choices where the paper is open (all are `build` options):
  * net14 padding (`conv_padding`): conv1 unpadded (224 -> 109), pool1 3x3/3 (-> 36), the 2x2
    convs alternate pad 0 / pad 1 (35, 36, 35, 36), pool2 2x2/2 (-> 18), so the stages run at
    36x36 and 18x18 as in model E. `"same"` keeps every 2x2 conv size-preserving instead.
  * pool type (`pool_type`): max, the natural reading of the tables; `"avg"` is offered.
  * dropout (`dropout_rate`): 50% after fc1 and fc2 for every model (the paper states it for
    A/B/C; we use the same for net14 and net30).
  * the last fc layer is initialised like the others unless `fc_std` is given (the paper's large
    models use 0.01, 0.01, 0.001 for fc1..fc3 because their inputs span about [-128, 128]).
  * input scale (`input_scale`): a constant factor on the pixels before conv1. The paper feeds
    0..255 minus the mean; He init carries that scale to the top layer, so with fixed fc stds
    the logits' scale, and the last layer's sharpness (~ input_scale^2 / num_classes), depend
    on it. The configs choose it per family and class count (configs/net14.py, large.py).
  * fixed fc stds at reduced width (`fc_std_scaling`): "fixed" uses them as given; "full_width"
    multiplies each by sqrt(n_full / n), n the fc layer's fan-in, so that n * Var[w] (the factor
    of Eq. 10 that sets a layer's gain) equals the paper's full-width model's. Fixed stds do not
    follow the width the way the conv layers' fan-in rules do: at width 1/16 with an SPP
    {3,2,1}, model B's fc1..fc3 would otherwise shrink the logits' std 136-fold.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from rectifiers_jax import initializers, layers
from rectifiers_jax.layers import ACTIVATIONS, SpatialPyramidPooling, initial_slope, spp_bin_edges


@dataclasses.dataclass(frozen=True)
class Conv:
    """A convolution + activation. `padding` is symmetric pixels per side, or "SAME"."""

    name: str
    features: int
    kernel: int
    stride: int = 1
    padding: int | str = 0


@dataclasses.dataclass(frozen=True)
class Pool:
    """A pooling layer (max unless the model's `pool_type` says otherwise)."""

    name: str
    window: int
    stride: int
    padding: int | str = 0


@dataclasses.dataclass(frozen=True)
class Architecture:
    """Layer list up to the SPP layer, hidden fc widths and the SPP pyramid."""

    name: str
    layers: tuple[Conv | Pool, ...]
    fc_features: tuple[int, ...] = (4096, 4096)
    spp_levels: tuple[int, ...] = (6, 3, 2, 1)
    default_image_size: int = 224


def _output_size(size: int, kernel: int, stride: int, padding: int | str) -> int:
    if padding == "SAME":
        return math.ceil(size / stride)
    return (size + 2 * padding - kernel) // stride + 1


FC_STD_SCALINGS = ("fixed", "full_width")


class SPPNet(nn.Module):
    """Convs/pools -> SPP -> fc1 -> fc2 -> fc3 (logits), as in the paper's Tables 1 and 3.

    Input `[B, H, W, 3]` float images (0..255 minus the mean); output `[B, num_classes]` float32
    logits. `input_scale` multiplies the input before conv1 (1.0: the paper's pixel range).
    The fields mirror `config.model` (see `from_config`); `init_scheme` is `config.model.init`,
    renamed because flax reserves `init` for the method.
    """

    architecture: Architecture
    num_classes: int = 1000
    activation: str = "relu"
    lrelu_slope: float = 0.01
    a_init: float = 0.25
    init_scheme: str = "he_fan_in"
    init_scale: float = 1.0
    layer_scales: tuple[tuple[str, float], ...] = ()
    fc_std: tuple[float, float, float] | None = None
    input_scale: float = 1.0
    dropout_rate: float = 0.5
    spp_bins: str = "spp_net"
    pool_type: str = "max"
    dtype: Any = jnp.float32
    probe_gradients: bool = False

    def kernel_init(self, layer: str, index: int | None = None) -> initializers.Initializer:
        """One layer's kernel initializer: the named scheme times global and per-layer scales."""
        scale = self.init_scale * dict(self.layer_scales).get(layer, 1.0)
        if index is not None and self.fc_std is not None:
            return initializers.fixed_normal(self.fc_std[index], scale)
        slope = initial_slope(self.activation, lrelu_slope=self.lrelu_slope, a_init=self.a_init)
        return initializers.get(self.init_scheme, scale=scale, slope=slope)

    @nn.compact
    def __call__(
        self,
        x: jnp.ndarray,
        train: bool = False,
        window: int | None = None,
        valid_sizes: jnp.ndarray | None = None,
    ) -> jnp.ndarray:
        """Logits `[B, num_classes]`; with `window`, logits of every window of the last conv map.

        `window` (in map pixels) is the paper's multi-view testing on feature maps (Sec. 3.3 of
        SPP-net): the convolutions run once on the whole image, then SPP and the fc layers run
        on every `window x window` sub-map at stride 1, giving `[B, n_rows, n_cols, num_classes]`.

        `valid_sizes` (int32 `[B, L + 1, 2]`, `map_sizes(architecture, h, w)` per image) runs
        images of different sizes placed top-left on one canvas: layer i's input is blanked
        outside rows `[0, valid_sizes[:, i, 0])` and cols `[0, valid_sizes[:, i, 1])` (to 0,
        the zero padding a conv of the bare image sees; to -inf before a padded max pool), so
        each image's valid region of every map equals that of the image run alone.
        """
        if x.ndim != 4:
            raise ValueError(
                f"{self.architecture.name} needs [B, H, W, C] images, got shape {x.shape}"
            )
        check_image_size(self.architecture, x.shape[1], x.shape[2], self.spp_bins)
        act = dict(
            lrelu_slope=self.lrelu_slope, a_init=self.a_init, probe_gradients=self.probe_gradients
        )
        x = x.astype(self.dtype)
        if self.input_scale != 1.0:
            x = x * jnp.asarray(self.input_scale, self.dtype)
        for index, layer in enumerate(self.architecture.layers):
            if valid_sizes is not None:
                padded_max = isinstance(layer, Pool) and self.pool_type == "max"
                fill = -jnp.inf if padded_max and layer.padding != 0 else 0.0
                x = _blank_outside(x, valid_sizes[:, index], fill)
            if isinstance(layer, Conv):
                x = layers.ConvLayer(
                    layer.features,
                    self.kernel_init(layer.name),
                    self.activation,
                    kernel_size=layer.kernel,
                    stride=layer.stride,
                    padding=layer.padding,
                    name=layer.name,
                    **act,
                )(x)
            else:
                x = layers.PoolLayer(
                    layer.window, layer.stride, layer.padding, self.pool_type, name=layer.name
                )(x)
        grid: tuple[int, ...] = ()
        if window is not None:
            x, grid = sliding_windows(x, window)
        x = SpatialPyramidPooling(self.architecture.spp_levels, self.spp_bins, name="spp")(x)
        for i, features in enumerate(self.architecture.fc_features):
            name = f"fc{i + 1}"
            x = layers.DenseLayer(
                features, self.kernel_init(name, i), self.activation, name=name, **act
            )(x)
            x = nn.Dropout(self.dropout_rate, deterministic=not train)(x)
        name = f"fc{len(self.architecture.fc_features) + 1}"
        last = len(self.architecture.fc_features)
        x = layers.DenseLayer(
            self.num_classes, self.kernel_init(name, last), None, name=name, **act
        )(x)
        return x.astype(jnp.float32).reshape(*grid, -1) if grid else x.astype(jnp.float32)


def _blank_outside(x: jnp.ndarray, size: jnp.ndarray, fill: float) -> jnp.ndarray:
    """`x` [B, H, W, C] with positions outside the top-left `size` [B, 2] (rows, cols) = fill."""
    rows = jnp.arange(x.shape[1])[None, :, None] < size[:, 0, None, None]
    cols = jnp.arange(x.shape[2])[None, None, :] < size[:, 1, None, None]
    return jnp.where((rows & cols)[..., None], x, jnp.asarray(fill, x.dtype))


@functools.lru_cache(maxsize=4096)
def map_sizes(architecture: Architecture, height: int, width: int) -> np.ndarray:
    """int32 [L + 1, 2]: (rows, cols) of a `height x width` image (row 0) and of every layer's
    output (`feature_map_size` of the first i layers); the last row is the SPP input."""
    sizes = [
        [
            feature_map_size(dataclasses.replace(architecture, layers=prefix), side)
            for side in (height, width)
        ]
        for prefix in (architecture.layers[:i] for i in range(len(architecture.layers) + 1))
    ]
    out = np.array(sizes, np.int32)
    out.setflags(write=False)
    return out


def sliding_windows(fmap: jnp.ndarray, window: int) -> tuple[jnp.ndarray, tuple[int, int, int]]:
    """Every `window x window` sub-map at stride 1: `[B, H, W, C]` -> `[B*R*S, window, window, C]`.

    Returns the windows and the grid `(B, R, S)`, R = H - window + 1 and S = W - window + 1.
    """
    batch, height, width, _ = fmap.shape
    if min(height, width) < window:
        raise ValueError(f"a {window}x{window} window does not fit a {height}x{width} feature map")
    rows = jnp.arange(height - window + 1)[:, None] + jnp.arange(window)  # [R, window]
    cols = jnp.arange(width - window + 1)[:, None] + jnp.arange(window)  # [S, window]
    patches = fmap[:, rows[:, None, :, None], cols[None, :, None, :]]  # [B, R, S, w, w, C]
    grid = (batch, rows.shape[0], cols.shape[0])
    return patches.reshape(-1, window, window, fmap.shape[-1]), grid


def feature_map_size(architecture: Architecture, image_size: int) -> int:
    """Side of the last conv map (the SPP input) for a square image of `image_size` pixels."""
    size = image_size
    for layer in architecture.layers:
        kernel = layer.kernel if isinstance(layer, Conv) else layer.window
        size = _output_size(size, kernel, layer.stride, layer.padding)
        if size < 1:
            return 0
    return size


def min_image_size(architecture: Architecture) -> int:
    """Smallest square input whose last conv map fits the largest SPP level."""
    largest = max(architecture.spp_levels)
    size = 1
    while feature_map_size(architecture, size) < largest:
        size += 1
    return size


def check_image_size(
    architecture: Architecture, height: int, width: int, bins: str = "spp_net"
) -> None:
    """One-line error naming the smallest input that works when the map is below the SPP levels."""
    for side in (height, width):
        if feature_map_size(architecture, side) < max(architecture.spp_levels):
            raise ValueError(
                f"{architecture.name}: a {height}x{width} image gives a "
                f"{feature_map_size(architecture, side)}-pixel last conv map, smaller than SPP "
                f"level {max(architecture.spp_levels)}; the smallest input image that works is "
                f"{min_image_size(architecture)}x{min_image_size(architecture)}"
            )
    for level in architecture.spp_levels:
        spp_bin_edges(feature_map_size(architecture, min(height, width)), level, bins)


def _scaled(features: int, width: float) -> int:
    return max(1, round(features * width))


def _net_small(
    name: str, extra_stage3: int, width: float, conv_padding: str, spp_levels
) -> Architecture:
    """net14 (Table 1) with `extra_stage3` more 2x2, 256 convs (16 for net30)."""

    def pad(i: int) -> int | str:
        # alternate pad 0 / pad 1 keeps the stages at ~36x36 and ~18x18 (model E)
        if conv_padding == "alternate":
            return i % 2
        if conv_padding == "same":
            return "SAME"
        raise ValueError(f"unknown conv_padding {conv_padding!r}; valid: 'alternate', 'same'")

    stack: list[Conv | Pool] = [Conv("conv1", _scaled(64, width), 7, 2, 0), Pool("pool1", 3, 3)]
    stack += [Conv(f"conv2_{i + 1}", _scaled(128, width), 2, 1, pad(i)) for i in range(4)]
    stack.append(Pool("pool2", 2, 2))
    stack += [
        Conv(f"conv3_{i + 1}", _scaled(256, width), 2, 1, pad(i)) for i in range(6 + extra_stage3)
    ]
    fc = (_scaled(4096, width), _scaled(4096, width))
    return Architecture(name, tuple(stack), fc, tuple(spp_levels or (6, 3, 2, 1)))


def _net_large(
    name: str, depth_per_stage: int, widths: Sequence[int], width: float, spp_levels
) -> Architecture:
    """Models A/B/C (Table 3): conv1 7x7/2, then three 3x3 'same' stages at 56, 28, 14."""
    stack: list[Conv | Pool] = [Conv("conv1", _scaled(96, width), 7, 2, 3), Pool("pool1", 2, 2)]
    for stage, features in enumerate(widths, start=2):
        stack += [
            Conv(f"conv{stage}_{i + 1}", _scaled(features, width), 3, 1, 1)
            for i in range(depth_per_stage)
        ]
        if stage < 1 + len(widths):
            stack.append(Pool(f"pool{stage}", 2, 2))
    fc = (_scaled(4096, width), _scaled(4096, width))
    return Architecture(name, tuple(stack), fc, tuple(spp_levels or (7, 3, 2, 1)))


_ARCHITECTURES = {
    "net14": lambda width, padding, spp: _net_small("net14", 0, width, padding, spp),
    "net30": lambda width, padding, spp: _net_small("net30", 16, width, padding, spp),
    "model_a": lambda width, padding, spp: _net_large("model_a", 5, (256, 512, 512), width, spp),
    "model_b": lambda width, padding, spp: _net_large("model_b", 6, (256, 512, 512), width, spp),
    "model_c": lambda width, padding, spp: _net_large("model_c", 6, (384, 768, 896), width, spp),
}
NAMES: tuple[str, ...] = tuple(_ARCHITECTURES)


def fc_fan_ins(architecture: Architecture) -> tuple[int, ...]:
    """Fan-in of fc1, fc2, ...: last conv channels x SPP bins, then the hidden fc widths."""
    last_conv = [layer for layer in architecture.layers if isinstance(layer, Conv)][-1]
    bins = sum(level * level for level in architecture.spp_levels)
    return (last_conv.features * bins, *architecture.fc_features)


def full_width_fc_std(
    name: str, architecture: Architecture, fc_std: Sequence[float]
) -> tuple[float, ...]:
    """`fc_std` rescaled so each fc layer's fan_in * std^2 equals the paper's width-1 model's.

    The reference is model `name` at width 1.0 with its paper pyramid ({6,3,2,1} or {7,3,2,1}).
    """
    reference = _ARCHITECTURES[name](1.0, "alternate", None)
    return tuple(
        std * math.sqrt(full / actual)
        for std, full, actual in zip(
            fc_std, fc_fan_ins(reference), fc_fan_ins(architecture), strict=True
        )
    )


def build(
    name: str,
    *,
    activation: str = "relu",
    num_classes: int = 1000,
    width: float = 1.0,
    init: str = "he_fan_in",
    conv_padding: str = "alternate",
    spp_levels: Sequence[int] | None = None,
    layer_scales: dict[str, float] | None = None,
    fc_std: Sequence[float] | None = None,
    fc_std_scaling: str = "fixed",
    dtype: Any = jnp.float32,
    **options: Any,
) -> SPPNet:
    """A paper model by name.

    Args:
      name: one of `NAMES` ("net14", "net30", "model_a", "model_b", "model_c").
      activation: "relu", "lrelu" (slope `lrelu_slope`), "prelu" (channel-wise) or
        "prelu_shared".
      num_classes: width of fc3.
      init: initializer name from `initializers.NAMES` for every conv and fc kernel.
      width: multiplier on every conv and hidden fc width (1.0 = the paper's).
      conv_padding: net14/net30 2x2 conv padding, "alternate" (default) or "same".
      spp_levels: SPP pyramid; default {6,3,2,1} (net14/30) or {7,3,2,1} (A/B/C).
      layer_scales: per-layer variance factors on top of `init_scale`, e.g. {"conv1": 2.0}.
      fc_std: fixed Gaussian stds for fc1..fc3 instead of the named init.
      fc_std_scaling: "fixed" (use `fc_std` as given) or "full_width" (rescale it so every fc
        layer's fan_in * std^2 is the paper's full-width model's; see the module docstring).
      dtype: compute dtype of activations (float32 or bfloat16); parameters stay float32.
      **options: further `SPPNet` fields: init_scale, dropout_rate, lrelu_slope, a_init,
        spp_bins ("spp_net" or "adaptive"), pool_type ("max" or "avg"), input_scale (a
        constant factor on the input pixels; 1.0 = the paper's 0..255 minus the mean).
    """
    if name not in _ARCHITECTURES:
        raise ValueError(f"unknown model {name!r}; valid: {', '.join(NAMES)}")
    if activation not in ACTIVATIONS:
        raise ValueError(f"unknown activation {activation!r}; valid: {', '.join(ACTIVATIONS)}")
    fields = {f.name for f in dataclasses.fields(SPPNet)} - {
        "architecture",
        "parent",
        "name",
        "init_scheme",
    }
    unknown = sorted(set(options) - fields)
    if unknown:
        raise ValueError(
            f"unknown model option(s) {', '.join(unknown)}; valid: {', '.join(sorted(fields))}"
        )
    if init not in initializers.NAMES:
        raise ValueError(f"unknown initializer {init!r}; valid: {', '.join(initializers.NAMES)}")
    if options.get("pool_type", "max") not in ("max", "avg"):
        raise ValueError(f"unknown pool_type {options['pool_type']!r}; valid: 'max', 'avg'")
    if fc_std is not None and len(fc_std) != 3:
        raise ValueError(f"fc_std needs 3 stds (fc1, fc2, fc3), got {tuple(fc_std)}")
    if fc_std_scaling not in FC_STD_SCALINGS:
        raise ValueError(
            f"unknown fc_std_scaling {fc_std_scaling!r}; valid: {', '.join(FC_STD_SCALINGS)}"
        )
    if fc_std_scaling == "full_width" and fc_std is None:
        raise ValueError("fc_std_scaling='full_width' rescales fc_std, which is None; set fc_std")
    if not width > 0:
        raise ValueError(f"width multiplier must be > 0, got {width}")
    if not options.get("input_scale", 1.0) > 0:
        raise ValueError(f"model.input_scale must be > 0, got {options['input_scale']}")
    if not 0 <= options.get("dropout_rate", 0.5) < 1:
        raise ValueError(
            f"dropout_rate={options['dropout_rate']} is not valid; use a rate in [0, 1)"
        )
    dtype = compute_dtype(dtype)
    if name.startswith("model_") and conv_padding != "alternate":
        raise ValueError(
            f"conv_padding applies to net14/net30 only; {name}'s 3x3 convs are always 'same'"
        )
    architecture = _ARCHITECTURES[name](width, conv_padding, spp_levels)
    layer_names = {layer.name for layer in architecture.layers} | {"fc1", "fc2", "fc3"}
    bad_layers = sorted(set(layer_scales or {}) - layer_names)
    if bad_layers:
        raise ValueError(f"layer_scales names unknown layer(s) {', '.join(bad_layers)} of {name}")
    if fc_std is not None:
        fc_std = tuple(fc_std)
        if fc_std_scaling == "full_width":
            fc_std = full_width_fc_std(name, architecture, fc_std)
    return SPPNet(
        architecture,
        num_classes=num_classes,
        activation=activation,
        init_scheme=init,
        layer_scales=tuple(sorted((layer_scales or {}).items())),
        fc_std=fc_std,
        dtype=dtype,
        **options,
    )


def compute_dtype(value: Any) -> jnp.dtype:
    """The activations' dtype from a name or dtype: float32, or bfloat16 (parameters stay
    float32); a one-line error for anything else."""
    try:
        dtype = jnp.dtype(value)
    except TypeError:
        dtype = None
    if dtype not in (jnp.float32, jnp.bfloat16):
        raise ValueError(f"model dtype {value!r} is not valid; use float32 or bfloat16")
    return dtype


def init_params(model: SPPNet, key: jax.Array, image_size: int) -> dict:
    """Float32 parameters of `model` for square `image_size` inputs (the `params` collection)."""
    x = jnp.zeros((1, image_size, image_size, 3), jnp.float32)
    return model.init({"params": key}, x, train=False)["params"]


def activated_layers(model: SPPNet) -> list[str]:
    """Names of the layers followed by an activation, in depth order (13 for net14)."""
    convs = [layer.name for layer in model.architecture.layers if isinstance(layer, Conv)]
    return convs + [f"fc{i + 1}" for i in range(len(model.architecture.fc_features))]


def from_config(model_config: Any, num_classes: int | None = None) -> SPPNet:
    """`build(model_config.name, **model_config)`, from a config section or a dict (JSON types).

    The class count is `model_config.num_classes` when set, else `num_classes` (the dataset's,
    or a checkpoint's last fc layer); both given and different is an error.
    """
    options = dict(model_config.to_dict() if hasattr(model_config, "to_dict") else model_config)
    name = options.pop("name")
    configured = options.pop("num_classes", None)
    if configured is not None and num_classes is not None and configured != num_classes:
        raise ValueError(
            f"config.model.num_classes={configured} disagrees with num_classes={num_classes} "
            "(the dataset's, or the checkpoint's last fc layer)"
        )
    classes = configured if configured is not None else num_classes
    if classes is None:
        raise ValueError(
            "number of classes unknown: set config.model.num_classes or pass num_classes "
            "(the dataset's, e.g. data.get_info(config.data).num_classes)"
        )
    if options.get("layer_scales") is not None:
        options["layer_scales"] = dict(options["layer_scales"])
    return build(name, num_classes=int(classes), **options)
