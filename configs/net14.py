"""The 14-layer SPP model (Table 1/2) and its 30-layer extension (Fig. 3) on ImageNet.

Variants (`get_config(arg)`), Table 2 rows, 10-view test at s=256 (paper's top-1/top-5 %):
    configs/net14.py:act=relu                     33.82 / 13.34
    configs/net14.py:act=lrelu,slope=0.01         (Leaky ReLU, Maas et al.'s slope)
    configs/net14.py:act=lrelu,slope=0.25         (Leaky ReLU at PReLU's initial slope)
    configs/net14.py:act=prelu_shared             32.71 / 12.87
    configs/net14.py:act=prelu                    32.64 / 12.75
    configs/net14.py:act=relu,init=xavier         33.90 / 13.44
Fig. 3 (ReLU, 27 conv + 3 fc): He converges (38.56 / 16.59), Xavier stalls:
    configs/net14.py:model=net30,act=relu,init=he_fan_in
    configs/net14.py:model=net30,act=relu,init=xavier
`data=imagenette` runs the same family on TFDS Imagenette (10 classes) on one GPU.

Command (one host or a pod; add `--config.data.data_dir=gs://...` on TPU):
    python -m rectifiers_jax.main --config=configs/net14.py:act=prelu --workdir=runs/net14_prelu
    python -m rectifiers_jax.evaluate --workdir=runs/net14_prelu --protocol=10view
Hardware: sized for one 8-device host (8 GPUs or a TPU v4-8): 75 epochs of 10,009 steps at batch
128; the paper trained it in 3-4 days on one K40-class GPU. Imagenette: about 2 hours on one GPU.
Recipe: shorter side 256 for training and testing, random 224 crop, flip, per-pixel mean, PCA
lighting 0.1 (our choice; the paper names only the resize), lr 0.01 -> 0.001 -> 0.0001 at
epochs 50 and 65 (the paper switches "when the error plateaus";
`--config.optim.schedule=plateau` does that).
"""

from __future__ import annotations

import ml_collections

from configs import common, default

DEFAULTS = {
    "act": "prelu",
    "slope": "0.01",
    "init": "he_fan_in",
    "model": "net14",
    "data": "imagenet",
}


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    args = common.parse_arg(arg, DEFAULTS)
    config = default.get_config()
    common.set_imagenet(config, common.choose("data", args["data"], ("imagenet", "imagenette")))
    config.model.name = common.choose("model", args["model"], ("net14", "net30"))
    config.model.activation = common.choose(
        "act", args["act"], ("relu", "lrelu", "prelu", "prelu_shared")
    )
    config.model.lrelu_slope = float(args["slope"])
    config.model.init = args["init"]
    config.model.spp_levels = (6, 3, 2, 1)
    config.data.train_recipe = "resize"
    config.data.resize_size = 256
    config.optim.schedule = "steps"
    config.optim.boundaries_epochs = (50, 65)
    config.train.num_epochs = 75
    config.eval.protocol = "10view"
    config.eval.scales = (256,)
    return config
