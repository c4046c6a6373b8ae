"""A 4-trial sweep that checks the sweep machinery end to end on a CPU.

    python -m launch.sweep configs/sweeps/cpu_smoke.py --local
    python -m rectifiers_jax.analysis.sweep_table runs/sweeps/cpu_smoke --num_classes=10

He fan-in vs Xavier at variance scales 1/2 and 2 on a tiny net14 for 6 steps: about a minute per
trial on 2 cores, nearly all of it start-up and compilation. The numbers mean little (at scale 2
He may already diverge); the point is four workdirs with status.json, metrics.jsonl and a table.
"""

from __future__ import annotations

import ml_collections


def get_sweep() -> ml_collections.ConfigDict:
    sweep = ml_collections.ConfigDict()
    sweep.base_config = "configs/default.py"
    sweep.sweep_dir = "runs/sweeps/cpu_smoke"
    sweep.axes = ml_collections.ConfigDict(
        {"model.init": ["he_fan_in", "xavier"], "model.init_scale": [0.5, 2.0]},
        allow_dotted_keys=True,
        sort_keys=False,
    )
    sweep.fixed = ml_collections.ConfigDict(
        {
            "model.width": 0.0625,
            "train.num_steps": 6,
            "train.log_every_steps": 2,
            "train.checkpoint_every_steps": 3,
        },
        allow_dotted_keys=True,
        sort_keys=False,
    )
    return sweep
