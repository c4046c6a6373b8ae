"""PyTorch twins of the paper's models, the speed reference of `benchmarks.run --compare-torch`.

Built from the same spec as the JAX models (`models.build(name).architecture`): the same convs
(kernels, strides, paddings, net14's alternating pad 0 / pad 1 2x2 convs included), max pools,
SPP-net bins (`layers.spp_bin_edges`), fc 4096-4096-classes with 50% dropout after fc1 and fc2,
and the same activations (ReLU, channel-wise or shared PReLU with `a` = 0.25, leaky ReLU). The
SPP output keeps the JAX layer's order (level by level, bins row-major, channels innermost), so
`load_flax_params` makes a twin compute the same logits as the JAX model.

Training is the usual PyTorch loop: cross-entropy, `torch.optim.SGD` with momentum 0.9 and
weight decay 5e-4 on everything but the PReLU slopes. Either memory format works: put the model
and its inputs in `torch.channels_last` for NHWC kernels.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from rectifiers_jax import models
from rectifiers_jax.layers import spp_bin_edges


def _activation(kind: str, channels: int, *, lrelu_slope: float, a_init: float) -> nn.Module:
    if kind == "relu":
        return nn.ReLU()
    if kind == "lrelu":
        return nn.LeakyReLU(lrelu_slope)
    if kind == "prelu":
        return nn.PReLU(channels, a_init)
    if kind == "prelu_shared":
        return nn.PReLU(1, a_init)
    raise ValueError(f"unknown activation {kind!r}; valid: {', '.join(models.ACTIVATIONS)}")


def _regular(edges: list[tuple[int, int]]) -> tuple[int, int] | None:
    """(window, stride) when the bins are a plain strided window (no bin cut at the edge)."""
    window = edges[0][1] - edges[0][0]
    stride = edges[1][0] - edges[0][0] if len(edges) > 1 else window
    if all(edge == (i * stride, i * stride + window) for i, edge in enumerate(edges)):
        return window, stride
    return None


class SpatialPyramidPooling(nn.Module):
    """Max-pooled pyramid: `[B, C, H, W]` -> `[B, sum(n*n) * C]`, in the JAX layer's order."""

    def __init__(self, levels: Sequence[int], bins: str = "spp_net"):
        super().__init__()
        self.levels = tuple(levels)
        self.bins = bins

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        height, width = x.shape[-2:]
        pooled = []
        for n in self.levels:
            rows, cols = spp_bin_edges(height, n, self.bins), spp_bin_edges(width, n, self.bins)
            row_pool, col_pool = _regular(rows), _regular(cols)
            if row_pool and col_pool:
                grid = F.max_pool2d(x, (row_pool[0], col_pool[0]), (row_pool[1], col_pool[1]))
                grid = grid[:, :, :n, :n]
            else:  # a bin cut at the edge: separable max over the bins, as the JAX layer does
                grid = torch.stack([x[:, :, a:b].amax(2) for a, b in rows], 2)
                grid = torch.stack([grid[..., a:b].amax(-1) for a, b in cols], -1)
            pooled.append(grid.permute(0, 2, 3, 1).flatten(1))
        return torch.cat(pooled, 1)


class SPPNet(nn.Module):
    """Convs/pools -> SPP -> fc1 -> fc2 -> fc3 from a `models.Architecture`; NCHW logits out.

    Submodules are named after the spec's layers (`conv1`, ..., `fc3`); each activated layer is
    `Sequential(conv or linear, activation[, dropout])`.
    """

    def __init__(
        self,
        architecture: models.Architecture,
        *,
        num_classes: int = 1000,
        activation: str = "relu",
        lrelu_slope: float = 0.01,
        a_init: float = 0.25,
        dropout_rate: float = 0.5,
        spp_bins: str = "spp_net",
        pool_type: str = "max",
    ):
        super().__init__()
        act = dict(lrelu_slope=lrelu_slope, a_init=a_init)
        self.features = nn.Sequential()
        channels = 3
        for layer in architecture.layers:
            if isinstance(layer, models.Conv):
                padding = "same" if layer.padding == "SAME" else layer.padding
                conv = nn.Conv2d(channels, layer.features, layer.kernel, layer.stride, padding)
                block = nn.Sequential(conv, _activation(activation, layer.features, **act))
                channels = layer.features
            elif isinstance(layer.padding, int):
                pool = {"max": nn.MaxPool2d, "avg": nn.AvgPool2d}[pool_type]
                block = pool(layer.window, layer.stride, layer.padding)
            else:
                raise ValueError(f"{layer.name}: padding {layer.padding!r} has no torch twin")
            self.features.add_module(layer.name, block)
        self.spp = SpatialPyramidPooling(architecture.spp_levels, spp_bins)
        fan_in = channels * sum(n * n for n in architecture.spp_levels)
        self.classifier = nn.Sequential()
        for i, width in enumerate(architecture.fc_features):
            self.classifier.add_module(
                f"fc{i + 1}",
                nn.Sequential(
                    nn.Linear(fan_in, width),
                    _activation(activation, width, **act),
                    nn.Dropout(dropout_rate),
                ),
            )
            fan_in = width
        self.classifier.add_module(
            f"fc{len(architecture.fc_features) + 1}", nn.Linear(fan_in, num_classes)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.spp(self.features(x)))


def twin(model: models.SPPNet) -> SPPNet:
    """The PyTorch twin of a JAX model (its architecture and options; fresh PyTorch init)."""
    return SPPNet(
        model.architecture,
        num_classes=model.num_classes,
        activation=model.activation,
        lrelu_slope=model.lrelu_slope,
        a_init=model.a_init,
        dropout_rate=model.dropout_rate,
        spp_bins=model.spp_bins,
        pool_type=model.pool_type,
    )


def _tensor(array) -> torch.Tensor:
    return torch.from_numpy(np.array(array, np.float32))


@torch.no_grad()
def load_flax_params(net: SPPNet, params: dict) -> None:
    """Copy a JAX model's float32 `params` (HWIO convs, (in, out) fc kernels) into its twin."""
    layers = dict(net.features.named_children()) | dict(net.classifier.named_children())
    for name, leaves in params.items():
        if name == "spp":
            continue
        block = layers[name]
        weight_layer = block[0] if isinstance(block, nn.Sequential) else block
        kernel = _tensor(leaves["kernel"])
        kernel = kernel.permute(3, 2, 0, 1) if kernel.ndim == 4 else kernel.T
        weight_layer.weight.copy_(kernel)
        weight_layer.bias.copy_(_tensor(leaves["bias"]))
        if "a" in leaves.get("act", {}):
            block[1].weight.copy_(_tensor(leaves["act"]["a"]).reshape(-1))


def make_optimizer(
    net: SPPNet, learning_rate: float = 0.01, momentum: float = 0.9, weight_decay: float = 5e-4
) -> torch.optim.SGD:
    """Momentum SGD with weight decay on every parameter except the PReLU slopes."""
    slopes = {id(m.weight) for m in net.modules() if isinstance(m, nn.PReLU)}
    params = list(net.parameters())
    return torch.optim.SGD(
        [
            {"params": [p for p in params if id(p) not in slopes]},
            {"params": [p for p in params if id(p) in slopes], "weight_decay": 0.0},
        ],
        lr=learning_rate,
        momentum=momentum,
        weight_decay=weight_decay,
    )


def _autocast(dtype: torch.dtype, device: torch.device) -> contextlib.AbstractContextManager:
    if dtype == torch.float32:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=dtype)


def make_train_step(
    net: SPPNet, optimizer: torch.optim.Optimizer, dtype: torch.dtype = torch.float32
) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """(images, labels) -> loss: one SGD step on the mean cross-entropy (autocast if not fp32)."""
    device = next(net.parameters()).device

    def step(images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        net.train()
        optimizer.zero_grad(set_to_none=True)
        with _autocast(dtype, device):
            loss = F.cross_entropy(net(images), labels)
        loss.backward()
        optimizer.step()
        return loss.detach()

    return step


def make_eval_step(
    net: SPPNet, dtype: torch.dtype = torch.float32
) -> Callable[[torch.Tensor], torch.Tensor]:
    """images -> softmax probabilities `[B, num_classes]`, in eval mode without autograd."""
    device = next(net.parameters()).device

    def step(images: torch.Tensor) -> torch.Tensor:
        net.eval()
        with torch.inference_mode(), _autocast(dtype, device):
            return F.softmax(net(images).float(), dim=-1)

    return step
