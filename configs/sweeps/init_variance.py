"""Init-variance ablation (paper Sec. 2.2, Figs. 2 and 3) on the offline default run.

    python -m launch.sweep configs/sweeps/init_variance.py --dry_run
    python -m launch.sweep configs/sweeps/init_variance.py --local
    python -m rectifiers_jax.analysis.sweep_table runs/sweeps/init_variance --num_classes=10

Grid: depth (net14, net30) x activation (ReLU, PReLU) x init (He fan-in, Xavier) x variance scale
2^-4 .. 2^4 = 72 trials of configs/default.py (scikit-learn digits, width 0.125, 30 epochs).
Hardware: a 2-core CPU, about 3 minutes per net14 trial and more for net30 (several hours in
all); `--slurm` or `--tpu=NAME` run the trials in parallel instead.
Expected, from the paper's analysis: a per-layer variance factor beta compounds to beta^L, so the
30-layer nets stall near chance (90% error on 10 classes) for small scales and with Xavier (which
is He at scale 1/2) and diverge for large ones, while the 14-layer nets tolerate a wider range.
"""

from __future__ import annotations

import ml_collections


def get_sweep() -> ml_collections.ConfigDict:
    sweep = ml_collections.ConfigDict()
    sweep.base_config = "configs/default.py"
    sweep.sweep_dir = "runs/sweeps/init_variance"
    # Ordered: the first axis varies slowest in the trial list.
    sweep.axes = ml_collections.ConfigDict(
        {
            "model.name": ["net14", "net30"],
            "model.activation": ["relu", "prelu"],
            "model.init": ["he_fan_in", "xavier"],
            "model.init_scale": [2.0**k for k in range(-4, 5)],
        },
        allow_dotted_keys=True,
        sort_keys=False,
    )
    # Options of launch/tpu_pod.sh and launch/gpu_slurm.sh when submitted with --tpu / --slurm.
    sweep.tpu = ml_collections.ConfigDict({"zone": "us-central2-b", "accelerator": "v4-8"})
    sweep.slurm = ml_collections.ConfigDict({"nodes": 1, "gpus_per_node": 1})
    return sweep
