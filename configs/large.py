"""The large models A, B and C (Table 3) on ImageNet: Tables 4-6 and Fig. 2.

Variants (`get_config(arg)`), paper's top-1/top-5 % (10-view; multi-scale dense):
    configs/large.py:model=a,act=relu        26.48 / 8.59;  24.02 / 6.51
    configs/large.py:model=a,act=prelu       25.59 / 8.23;  22.97 / 6.28
    configs/large.py:model=b,act=prelu       25.53 / 8.13;  22.85 / 6.27
    configs/large.py:model=c,act=prelu       24.27 / 7.38;  21.59 / 5.71
Fig. 2 (model B, 22 layers, ReLU): both converge, He starts reducing the error earlier:
    configs/large.py:model=b,act=relu,init=he_fan_out
    configs/large.py:model=b,act=relu,init=xavier
`data=imagenette` runs the same family on TFDS Imagenette (10 classes) on one GPU; `data=photos`
on the offline 10-class photos (rectifiers_jax.data.photos), a CPU check that the full-width models
start and train (add --config.train.global_batch_size=8 --config.train.num_steps=100
--config.optim.learning_rate=0.0025, the README's "Full width" rows: 0.01 x sqrt(8/128)).

Command (TPU pod: see launch/tpu_pod.sh; data and workdir on a bucket):
    python -m rectifiers_jax.main --config=configs/large.py:model=a,act=prelu \
        --workdir=gs://B/runs/a_prelu
    python -m rectifiers_jax.evaluate --workdir=gs://B/runs/a_prelu --protocol=dense \
        --scales=256,384,480
Hardware: sized for a TPU v4-32 slice or 4 nodes of 8 GPUs (the paper: 3-4 weeks on 4 K20s/8 K40s).
Recipe (paper Sec. 3-4): He init with the fan-out rule (Eq. 14; its Eq. 15 form for PReLU, see
below) for convs, fc stds 0.01, 0.01, 0.001, dropout 50% on fc1 and fc2, shorter side jittered
in [256, 512], random 224 crop, flip, PCA colour altering, per-pixel mean, batch 128, 80 epochs,
lr 0.01 -> 0.001 -> 0.0001 at epochs 55 and 70 (our choice: the paper switches "when the error
plateaus"; `--config.optim.schedule=plateau` does that).

Choices the paper leaves open (measured with `python -m rectifiers_jax.analysis.init_check`;
the README's "Full width" section has the numbers):
  * init Eq. 15 in its backward form (`he_prelu_fan_out`, the default): 1/2 (1 + a^2) n_hat
    Var[w] = 1, the PReLU version of Eq. 14 as Eq. 15 is of Eq. 10; for ReLU (a = 0) it is Eq. 14
    and draws the same weights as `he_fan_out`. With Eq. 14, PReLU's responses grow by
    sqrt(1 + a^2) per layer, and the last layer's Gauss-Newton sharpness at init times lr 0.01
    is 2.2 / 3.4 / 3.6 for A / B / C (10 classes, input scale 1/8) against 0.80 / 1.01 / 1.11
    with Eq. 15 and 0.97 for ReLU; momentum SGD is unstable above 3.8. `init=he_fan_out`
    restores Eq. 14.
  * input scale (`model.input_scale`): 1.0 on ImageNet (the paper's pixels, 0..255 minus the
    mean, for which its fc stds were chosen); 1/8 on 10-class data. The sharpness scales as
    input_scale^2 / C: model A (ReLU) at scale 1 has sharpness x lr = 1.29 with ImageNet's
    1000 classes but 96 with 10 (the loss went 2.0 -> 370 -> 1e13 in 3 steps on the photos);
    1/8 gives 0.97 at 10 classes, the paper's value. `--config.model.input_scale=1.0` is the
    paper's raw input on any dataset.
"""

from __future__ import annotations

import ml_collections

from configs import common, default

DEFAULTS = {"model": "a", "act": "prelu", "init": "he_prelu_fan_out", "data": "imagenet"}
# model.input_scale by the dataset's class count (see the docstring).
INPUT_SCALE = {1000: 1.0, 10: 1 / 8}


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    args = common.parse_arg(arg, DEFAULTS)
    config = default.get_config()
    dataset = common.choose("data", args["data"], tuple(common.DATASETS))
    common.set_imagenet(config, dataset)
    config.model.input_scale = INPUT_SCALE[common.DATASETS[dataset][1]]
    config.model.name = "model_" + common.choose("model", args["model"], ("a", "b", "c"))
    config.model.activation = common.choose("act", args["act"], ("relu", "prelu", "prelu_shared"))
    config.model.init = args["init"]
    config.model.fc_std = (0.01, 0.01, 0.001)
    config.model.spp_levels = (7, 3, 2, 1)
    config.data.train_recipe = "scale_jitter"
    config.data.scale_min = 256
    config.data.scale_max = 512
    config.optim.schedule = "steps"
    config.optim.boundaries_epochs = (55, 70)
    config.train.num_epochs = 80
    config.eval.protocol = "dense"
    config.eval.scales = (256, 384, 480)
    return config
