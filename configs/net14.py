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
`data=imagenette` runs the same family on TFDS Imagenette (10 classes) on one GPU; `data=photos`
on the offline 10-class photos (rectifiers_jax.data.photos), a CPU check that the full-width models
start and train (add --config.train.global_batch_size=16 --config.train.num_steps=100; for net30
also --config.optim.learning_rate=0.00125 = 0.01 x 16/128: it collapsed at 0.01 and 0.0035, see the
README's "Full width").

Command (one host or a pod; add `--config.data.data_dir=gs://...` on TPU):
    python -m rectifiers_jax.main --config=configs/net14.py:act=prelu --workdir=runs/net14_prelu
    python -m rectifiers_jax.evaluate --workdir=runs/net14_prelu --protocol=10view
Hardware: sized for one 8-device host (8 GPUs or a TPU v4-8): 75 epochs of 10,009 steps at batch
128; the paper trained it in 3-4 days on one K40-class GPU. Imagenette: about 2 hours on one GPU.
Recipe: shorter side 256 for training and testing, random 224 crop, flip, per-pixel mean, PCA
lighting 0.1 (our choice; the paper names only the resize), lr 0.01 -> 0.001 -> 0.0001 at
epochs 50 and 65 (the paper switches "when the error plateaus";
`--config.optim.schedule=plateau` does that).

Choices the paper leaves open, made so that every variant starts at the chance loss ln C and
trains at lr 0.01 at full width (measured with `python -m rectifiers_jax.analysis.init_check`
on photographs; the README's "Full width" section has the numbers):
  * init Eq. 15 (`he_prelu`, the default): 1/2 (1 + a^2) n Var[w] = 1 with each activation's
    initial slope a (0.25 for PReLU and LReLU 0.25, 0.01, 0 for ReLU, where it is Eq. 10 and
    draws the same weights as `he_fan_in`). With Eq. 10 instead, PReLU's responses grow by
    sqrt(1 + a^2) per layer: conv3_6's std is 1.40x ReLU's, and the last layer's sharpness at
    init 2.4x. `init=he_fan_in` restores Eq. 10.
  * input scale (`model.input_scale`): pixels, 0..255 minus the mean as in the paper, are
    multiplied by 1/256 (10-class data) or 1/32 (ImageNet) before conv1. Eq. 10 carries the
    input's scale to the top (conv3_6 response std 166 on photographs at scale 1, PReLU), so
    with the fixed fc stds the logits start at std 4.7 (initial loss 15.3 nats against
    ln 1000 = 6.9), and the last layer's Gauss-Newton sharpness times lr 0.01 is 1.3e4 (ReLU,
    1000 classes) to 6e4 (PReLU, 10 classes) where momentum SGD needs < 3.8: on the photos the
    loss reached 1.9e5 at step 2. At 1/256 it is 0.13 (ReLU) / 0.16 (PReLU) at 10 classes and
    the loss falls. Sharpness scales as scale^2 / C, so 1/32 gives ImageNet about the same
    (0.11 / 0.14); that value is not trained here. `--config.model.input_scale=1.0` is the
    paper's raw input.
"""

from __future__ import annotations

import ml_collections

from configs import common, default

DEFAULTS = {
    "act": "prelu",
    "slope": "0.01",
    "init": "he_prelu",
    "model": "net14",
    "data": "imagenet",
}
# model.input_scale by the dataset's class count (see the docstring): the last layer's sharpness
# at init scales as input_scale^2 / C.
INPUT_SCALE = {1000: 1 / 32, 10: 1 / 256}


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    args = common.parse_arg(arg, DEFAULTS)
    config = default.get_config()
    dataset = common.choose("data", args["data"], tuple(common.DATASETS))
    common.set_imagenet(config, dataset)
    config.model.input_scale = INPUT_SCALE[common.DATASETS[dataset][1]]
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
