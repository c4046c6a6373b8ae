"""Shared test helpers (imported by the test modules; fixtures live in conftest.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import ml_collections

from configs import default


def tiny_config(data_dir: str | Path, **overrides: Any) -> ml_collections.ConfigDict:
    """The default config shrunk to seconds a run: net14 at width 1/16 on the digits.

    12 steps of batch 16, logged every 2, checkpointed every 4, evaluated at the end.
    `overrides` are "section.field" keys, e.g. `**{"train.num_steps": 4}`.
    """
    config = default.get_config()
    config.data.data_dir = str(data_dir)
    config.model.width = 0.0625
    config.train.global_batch_size = 16
    config.train.eval_batch_size = 128
    config.train.num_steps = 12
    config.train.log_every_steps = 2
    config.train.eval_every_epochs = 0
    config.train.checkpoint_every_steps = 4
    for key, value in overrides.items():
        section, field = key.split(".")
        config[section][field] = value
    return config


def hand_layers(name: str) -> list[tuple[str, int, int, int, int]]:
    """(name, k, c_in, c_out, h_out) of every weight layer; fc layers have k = h_out = 1."""
    if name in ("net14", "net30"):
        # conv1 7x7/2 unpadded: 224 -> 109; pool1 3x3/3 -> 36; 2x2 convs alternate pad 0 / pad 1:
        # 35, 36, 35, 36; pool2 2x2/2 -> 18; then 17, 18, ...; SPP {6,3,2,1}: 50 bins x 256.
        extra = 16 if name == "net30" else 0
        rows = [("conv1", 7, 3, 64, 109)]
        rows += [(f"conv2_{i + 1}", 2, 128 if i else 64, 128, (35, 36)[i % 2]) for i in range(4)]
        rows += [
            (f"conv3_{i + 1}", 2, 256 if i else 128, 256, (17, 18)[i % 2]) for i in range(6 + extra)
        ]
        spp_in = 50 * 256
    else:
        # conv1 7x7/2 -> 112; 2x2 max pools; 3x3 'same' stages at 56, 28, 14; SPP {7,3,2,1}: 63.
        depth, widths = {
            "model_a": (5, (256, 512, 512)),
            "model_b": (6, (256, 512, 512)),
            "model_c": (6, (384, 768, 896)),
        }[name]
        rows, c_in = [("conv1", 7, 3, 96, 112)], 96
        for stage, (c_out, side) in enumerate(zip(widths, (56, 28, 14), strict=True), start=2):
            for i in range(depth):
                rows.append((f"conv{stage}_{i + 1}", 3, c_in, c_out, side))
                c_in = c_out
        spp_in = 63 * c_in
    fcs = [("fc1", 1, spp_in, 4096, 1), ("fc2", 1, 4096, 4096, 1), ("fc3", 1, 4096, 1000, 1)]
    return rows + fcs
