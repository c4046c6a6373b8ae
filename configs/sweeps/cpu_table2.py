"""Table 2 at CPU scale: net14's six rectifier/init rows on the offline digits, five seeds each.

    python -m launch.sweep configs/sweeps/cpu_table2.py:lr=0.01 --local    # the first sweep
    python -m launch.sweep configs/sweeps/cpu_table2.py:lr=0.005 --local   # the rerun, below
    python -m rectifiers_jax.analysis.sweep_table runs/sweeps/table2_cpu_lr0.005 \
        --replicate_key=seed

30 trials of `configs/cpu.py:model=net14` (the main job's recipe, width 1/8, 30 epochs, centre
evaluation on the 360 held-out digits), one per row and seed 0-4: ReLU, Leaky ReLU 0.01 and 0.25,
PReLU channel-shared and channel-wise, ReLU with Xavier's init. Every row keeps the main job's
recipe (fc stds tuned on channel-wise PReLU): the other rows are not tuned. Without an argument
the sweep runs at the main job's learning rate into `runs/sweeps/table2_cpu`. Hardware: a 2-core
CPU, about 1.5 minutes a trial.

Criterion, fixed before the runs: each claim below is the ordering of the paper's Table 2
(ImageNet, 10-view top-1 error); a claim "reproduces" when the Welch 95% interval of the
difference of the two rows' mean final top-1 errors (over the five seeds) lies on the paper's
side of 0, "contradicts" when it lies on the other side, and is "inconclusive" otherwise
(`rectifiers_jax.analysis.replicates`). The Leaky ReLU rows have no paper numbers here: they are
reported, not judged.

The first sweep ran at lr 0.01, the main job's rate then (recorded as `runs/sweeps/table2_cpu`;
`:lr=0.01` reruns it into `table2_cpu_lr0.01`): 8 of its 30 trials diverged (PReLU channel-wise 3
of 5, LReLU 0.25 4 of 5, channel-shared 1 of 5), which left every claim inconclusive. The rerun
at half the rate (`:lr=0.005`, chosen after seeing that; now the main job's rate too) has the
same six rows, seeds and criterion; the first sweep stays reported beside it.
"""

from __future__ import annotations

import ml_collections

SEEDS = [0, 1, 2, 3, 4]
ROWS = {
    "relu": {"model.activation": "relu", "model.init": "he_fan_in"},
    "lrelu_0.01": {"model.activation": "lrelu", "model.lrelu_slope": 0.01},
    "lrelu_0.25": {"model.activation": "lrelu", "model.lrelu_slope": 0.25},
    "prelu_shared": {"model.activation": "prelu_shared"},
    "prelu": {"model.activation": "prelu"},
    "relu_xavier": {"model.activation": "relu", "model.init": "xavier"},
}


def _claim(text: str, lower: str, higher: str) -> dict:
    return {"claim": text, "metric": "top1_error", "lower": ROWS[lower], "higher": ROWS[higher]}


def get_sweep(arg: str = "") -> ml_collections.ConfigDict:
    sweep = ml_collections.ConfigDict()
    sweep.base_config = "configs/cpu.py:model=net14"
    sweep.sweep_dir = "runs/sweeps/table2_cpu"
    if arg:
        key, _, value = arg.partition("=")
        if key != "lr" or not value:
            raise ValueError(f"cpu_table2 argument {arg!r}: give lr=RATE, e.g. lr=0.005")
        sweep.sweep_dir += f"_lr{float(value)}"
        sweep.fixed = ml_collections.ConfigDict(
            {"optim.learning_rate": float(value)}, allow_dotted_keys=True
        )
    sweep.variants = ml_collections.ConfigDict(
        {
            name: ml_collections.ConfigDict(keys, allow_dotted_keys=True)
            for name, keys in ROWS.items()
        },
        allow_dotted_keys=True,
        sort_keys=False,
    )
    sweep.axes = ml_collections.ConfigDict({"seed": SEEDS}, allow_dotted_keys=True)
    sweep.claims = [
        _claim("PReLU channel-wise is better than ReLU (32.64 vs 33.82)", "prelu", "relu"),
        _claim("PReLU channel-shared is better than ReLU (32.71 vs 33.82)", "prelu_shared", "relu"),
        _claim(
            "PReLU channel-wise is better than channel-shared (32.64 vs 32.71)",
            "prelu",
            "prelu_shared",
        ),
        _claim("He init is better than Xavier's for ReLU (33.82 vs 33.90)", "relu", "relu_xavier"),
    ]
    return sweep
