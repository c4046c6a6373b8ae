"""Figs. 2 and 3 at CPU scale: He vs Xavier over three seeds on the offline digits.

    python -m launch.sweep configs/sweeps/cpu_figures.py:fig2 --local   # model B, 22 layers
    python -m launch.sweep configs/sweeps/cpu_figures.py:fig3 --local   # net30, 30 layers
    python -m rectifiers_jax.analysis.sweep_table runs/sweeps/fig2_cpu --scale_key=seed
    python -m rectifiers_jax.analysis.curves runs/sweeps/fig2_cpu/init=* --splits eval \
        --out runs/fig2_cpu.png

Six trials of `configs/cpu.py` (ReLU, 30 epochs) each: the conv init of the paper's figure (He
fan-out, Eq. 14, for model B as in the paper's large models; He fan-in, Eq. 10, for net30) and
Xavier, for seeds 0, 1 and 2 (the seed sets the init, the data order and dropout). Hardware: a
2-core CPU, about 2 minutes per model B trial and 2.5 per net30 trial. Expected (the README
records the numbers): Fig. 2, both converge and He leaves chance earlier; Fig. 3, He converges
and Xavier stalls at chance (90% error).
"""

from __future__ import annotations

import ml_collections

FIGURES = {
    "fig2": ("model_b", "he_fan_out"),
    "fig3": ("net30", "he_fan_in"),
}


def get_sweep(arg: str = "fig2") -> ml_collections.ConfigDict:
    if arg not in FIGURES:
        raise ValueError(f"cpu_figures argument {arg!r} is not one of {', '.join(FIGURES)}")
    model, he_init = FIGURES[arg]
    sweep = ml_collections.ConfigDict()
    sweep.base_config = f"configs/cpu.py:model={model}"
    sweep.sweep_dir = f"runs/sweeps/{arg}_cpu"
    sweep.axes = ml_collections.ConfigDict(
        {"model.init": [he_init, "xavier"], "seed": [0, 1, 2]},
        allow_dotted_keys=True,
        sort_keys=False,
    )
    return sweep
