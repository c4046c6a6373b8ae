"""The paper's numbers as data (`../shared/PAPER.md` sections 3 and 5): Table 1's learned slopes
and the ImageNet 2012 validation errors, keyed so a run's config finds its row.

    paper.table1_slope("conv1", "prelu")      # 0.596 (channel-wise mean)
    paper.find_result("net14", "prelu", "he_fan_in", "10view", (256,))

A result row is keyed by model name (`models.NAMES`), activation (`layers.ACTIVATIONS`), init
family ("he" for every `he_*` scheme, "xavier" for `xavier` and `glorot_uniform`), protocol
("10view" or "dense", as in `evaluators.evaluator.PROTOCOLS`) and test scales (shorter sides; None:
the paper gives none). Leaky ReLU and the 6-model ensemble have no row here.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

TABLE1_LAYERS: tuple[str, ...] = (
    "conv1",
    *(f"conv2_{i}" for i in range(1, 5)),
    *(f"conv3_{i}" for i in range(1, 7)),
    "fc1",
    "fc2",
)
# Table 1: mean learned `a` of the 14-layer model, (channel-shared, channel-wise).
TABLE1_SLOPES: dict[str, tuple[float, float]] = dict(
    zip(
        TABLE1_LAYERS,
        [
            (0.681, 0.596),
            (0.103, 0.321),
            (0.099, 0.204),
            (0.228, 0.294),
            (0.561, 0.464),
            (0.126, 0.196),
            (0.089, 0.152),
            (0.124, 0.145),
            (0.062, 0.124),
            (0.008, 0.134),
            (0.210, 0.198),
            (0.063, 0.074),
            (0.031, 0.075),
        ],
        strict=True,
    )
)
TABLE1_MODEL = "net14"
PRELU_ACTIVATIONS = ("prelu", "prelu_shared")


def table1_slope(layer: str, activation: str) -> float | None:
    """Table 1's mean `a` of `layer` for "prelu_shared" (channel-shared) or "prelu"
    (channel-wise); None for other layers or activations."""
    if activation not in PRELU_ACTIVATIONS or layer not in TABLE1_SLOPES:
        return None
    shared, channel_wise = TABLE1_SLOPES[layer]
    return shared if activation == "prelu_shared" else channel_wise


@dataclasses.dataclass(frozen=True)
class PaperResult:
    """One row of PAPER.md section 5: top-1 / top-5 error (%) on ImageNet 2012 validation."""

    label: str
    model: str
    activation: str
    init: str
    protocol: str
    scales: tuple[int, ...] | None
    top1_error: float
    top5_error: float

    @property
    def protocol_label(self) -> str:
        """E.g. "10-view s=256" or "dense s=256,384,480"."""
        name = {"10view": "10-view", "dense": "dense"}.get(self.protocol, self.protocol)
        return name + (f" s={','.join(map(str, self.scales))}" if self.scales else "")


MULTI_SCALES = (256, 384, 480)  # the multi-scale set is [open] in the paper; most likely these


def _large(model: str, activation: str, top1: float, top5: float, protocol: str, scales, label):
    name = f"{model[-1].upper()} {'PReLU' if activation == 'prelu' else 'ReLU'}"
    return PaperResult(f"{name}, {label}", model, activation, "he", protocol, scales, top1, top5)


RESULTS: tuple[PaperResult, ...] = (
    PaperResult("14-layer ReLU", "net14", "relu", "he", "10view", (256,), 33.82, 13.34),
    PaperResult(
        "14-layer ReLU, Xavier init", "net14", "relu", "xavier", "10view", (256,), 33.90, 13.44
    ),
    PaperResult(
        "14-layer PReLU channel-shared",
        "net14",
        "prelu_shared",
        "he",
        "10view",
        (256,),
        32.71,
        12.87,
    ),
    PaperResult(
        "14-layer PReLU channel-wise", "net14", "prelu", "he", "10view", (256,), 32.64, 12.75
    ),
    PaperResult("30-layer ReLU", "net30", "relu", "he", "10view", (256,), 38.56, 16.59),
    _large("model_a", "relu", 26.48, 8.59, "10view", None, "10-view"),
    _large("model_a", "prelu", 25.59, 8.23, "10view", None, "10-view"),
    _large("model_b", "prelu", 25.53, 8.13, "10view", None, "10-view"),
    _large("model_c", "prelu", 24.27, 7.38, "10view", None, "10-view"),
    _large("model_a", "relu", 26.25, 8.25, "dense", (256,), "dense s=256"),
    _large("model_a", "prelu", 25.81, 8.08, "dense", (256,), "dense s=256"),
    _large("model_a", "relu", 24.77, 7.26, "dense", (384,), "dense s=384"),
    _large("model_a", "prelu", 24.20, 7.03, "dense", (384,), "dense s=384"),
    _large("model_a", "relu", 25.46, 7.63, "dense", (480,), "dense s=480"),
    _large("model_a", "prelu", 24.83, 7.39, "dense", (480,), "dense s=480"),
    _large("model_a", "relu", 24.02, 6.51, "dense", MULTI_SCALES, "multi-scale dense"),
    _large("model_a", "prelu", 22.97, 6.28, "dense", MULTI_SCALES, "multi-scale dense"),
    _large("model_b", "prelu", 22.85, 6.27, "dense", MULTI_SCALES, "multi-scale dense"),
    _large("model_c", "prelu", 21.59, 5.71, "dense", MULTI_SCALES, "multi-scale dense"),
)


def init_family(init: str) -> str:
    """ "xavier" for the Xavier/Glorot schemes, "he" for the He ones, else the name itself."""
    if init in ("xavier", "glorot_uniform"):
        return "xavier"
    return "he" if init.startswith("he") else init


def find_result(
    model: str,
    activation: str,
    init: str,
    protocol: str | None = None,
    scales: Sequence[int] | None = None,
) -> tuple[PaperResult | None, bool]:
    """(the paper's row for this run, whether its protocol and scales match exactly).

    Model, activation and init family must match. Among those rows: the one with the same
    protocol and scales, else the same protocol, else the paper's first (its 10-view number);
    the flag is False unless the first choice was found. (None, False) when the paper has no row.
    """
    candidates = [
        r
        for r in RESULTS
        if (r.model, r.activation, r.init) == (model, activation, init_family(init))
    ]
    if not candidates:
        return None, False
    wanted = tuple(int(s) for s in scales) if scales else None
    for row in candidates:
        if row.protocol == protocol and (row.scales is None or row.scales == wanted):
            return row, True
    same_protocol = [r for r in candidates if r.protocol == protocol]
    return (same_protocol or candidates)[0], False
