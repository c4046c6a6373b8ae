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
