"""Every experiment config loads through the real flag parser and builds its model."""

from __future__ import annotations

import jax
import pytest
from absl import flags
from ml_collections import config_flags

from rectifiers_jax import models, parallel, train

# (config argument, model name, activation, init, num_classes of its dataset)
VARIANTS = [
    ("configs/default.py", "net14", "prelu", "he_fan_in", 10),
    ("configs/net14.py:act=relu", "net14", "relu", "he_prelu", 1000),
    ("configs/net14.py:act=lrelu,slope=0.01", "net14", "lrelu", "he_prelu", 1000),
    ("configs/net14.py:act=lrelu,slope=0.25", "net14", "lrelu", "he_prelu", 1000),
    ("configs/net14.py:act=prelu_shared", "net14", "prelu_shared", "he_prelu", 1000),
    ("configs/net14.py:act=prelu", "net14", "prelu", "he_prelu", 1000),
    ("configs/net14.py:act=relu,init=xavier", "net14", "relu", "xavier", 1000),
    ("configs/net14.py:model=net30,act=relu,init=xavier", "net30", "relu", "xavier", 1000),
    ("configs/net14.py:act=prelu,data=imagenette", "net14", "prelu", "he_prelu", 10),
    (
        "configs/net14.py:model=net30,act=relu,init=he_fan_in,data=photos",
        "net30",
        "relu",
        "he_fan_in",
        10,
    ),
    ("configs/large.py:model=a,act=relu", "model_a", "relu", "he_prelu_fan_out", 1000),
    ("configs/large.py:model=a,act=prelu", "model_a", "prelu", "he_prelu_fan_out", 1000),
    ("configs/large.py:model=b,act=prelu", "model_b", "prelu", "he_prelu_fan_out", 1000),
    ("configs/large.py:model=c,act=prelu,data=photos", "model_c", "prelu", "he_prelu_fan_out", 10),
    ("configs/large.py:model=b,act=relu,init=he_fan_out", "model_b", "relu", "he_fan_out", 1000),
    ("configs/large.py:model=b,act=relu,init=xavier", "model_b", "relu", "xavier", 1000),
    ("configs/cpu.py:model=net30,init=xavier", "net30", "relu", "xavier", 10),
    ("configs/cpu.py:model=model_b,init=he_fan_out", "model_b", "relu", "he_fan_out", 10),
    ("configs/cpu.py:model=net14,act=lrelu,slope=0.25", "net14", "lrelu", "he_fan_in", 10),
]


def load(argument: str):
    flag_values = flags.FlagValues()
    config_flags.DEFINE_config_file("config", None, "", flag_values=flag_values, lock_config=True)
    flag_values(["prog", f"--config={argument}"])
    return flag_values.config


@pytest.mark.parametrize(("argument", "name", "activation", "init", "num_classes"), VARIANTS)
def test_config_loads_and_builds_its_model(argument, name, activation, init, num_classes):
    config = load(argument)
    model = models.from_config(config.model, num_classes)
    assert (model.architecture.name, model.activation, model.init_scheme) == (
        name,
        activation,
        init,
    )
    size = config.data.image_size
    params = jax.eval_shape(lambda: models.init_params(model, jax.random.key(0), size))
    assert params["fc3"]["kernel"].shape[-1] == num_classes
    assert config.eval.protocol in ("center", "10view", "dense")
    assert min(config.eval.scales) >= size


def test_large_models_use_the_papers_fc_stds_and_lrelu_slope_reaches_the_model():
    assert load("configs/large.py:model=c").model.fc_std == (0.01, 0.01, 0.001)
    assert load("configs/net14.py:act=lrelu,slope=0.25").model.lrelu_slope == 0.25


def test_input_scale_follows_the_class_count_and_photos_are_offline():
    # The last layer's sharpness at init scales as input_scale^2 / C (see the configs' docstrings).
    for family, scales in (("net14", (1 / 32, 1 / 256)), ("large", (1.0, 1 / 8))):
        for data, scale in zip(("imagenet", "imagenette"), scales, strict=True):
            assert load(f"configs/{family}.py:data={data}").model.input_scale == scale
        photos = load(f"configs/{family}.py:data=photos")
        assert photos.model.input_scale == scales[1]
        assert (photos.data.name, photos.data.data_dir, photos.data.download) == (
            "photos",
            "data/tfds",
            False,
        )
    assert load("configs/default.py").model.input_scale == 1.0  # the paper's raw pixels


def test_cpu_scale_models_keep_the_full_width_fc_gain():
    # model B at width 1/16, SPP {3,2,1}: fc1 fan-in 32 * 14 = 448 against 512 * 63 = 32256
    # (72-fold), fc2 and fc3 256 against 4096 (16-fold); net30 at 1/8: 8-fold everywhere.
    expected = {"model_b": (0.01 * 72**0.5, 0.04, 0.004), "net30": (0.01, 0.01, 0.001)}
    expected["net30"] = tuple(std * 8**0.5 for std in expected["net30"])
    for name, stds in expected.items():
        model = models.from_config(load(f"configs/cpu.py:model={name}").model, 10)
        assert model.fc_std == pytest.approx(stds, rel=1e-9)
    table2 = models.from_config(load("configs/cpu.py:model=net14,act=prelu").model, 10)
    assert table2.fc_std == (0.01, 0.01, 0.001)  # the main job's recipe


def test_bad_config_arguments_name_the_valid_ones():
    # --config.KEY=VALUE overrides need absl's two-pass parse: tests/test_train.py runs them.
    with pytest.raises(flags.IllegalFlagValueError, match="unknown config argument 'depth'"):
        load("configs/net14.py:depth=30")
    with pytest.raises(flags.IllegalFlagValueError, match="act='elu' is not one of relu"):
        load("configs/net14.py:act=elu")


# Planned pods and clusters: (devices, processes). TPU v4-style hosts of 4 chips up to 256 chips,
# and GPU clusters with one process per GPU.
PLANS = [(1, 1), (8, 1), (8, 8), (16, 4), (32, 8), (32, 32), (64, 16), (64, 64), (128, 32)]
PLANS += [(256, 64)]


@pytest.mark.parametrize(("argument", "name", "activation", "init", "num_classes"), VARIANTS)
def test_every_config_starts_on_every_pod_size_or_is_refused_up_front(
    argument, name, activation, init, num_classes
):
    """The checks the launch scripts run before creating machines (`rectifiers_jax.preflight`):
    a batch that divides passes, one that does not is refused in one line naming the counts."""
    config = load(argument)
    batch = config.train.global_batch_size
    for devices, processes in PLANS:
        plan = dict(devices=devices, processes=processes)

        def check(plan=plan):
            train.check_config(config, num_classes=num_classes, num_train_examples=None, **plan)

        if batch % devices == 0 and batch % processes == 0:
            check()
            eval_batch = parallel.eval_batch_size(
                config.train.eval_batch_size, devices=devices, processes=processes
            )
            assert eval_batch >= config.train.eval_batch_size and eval_batch % devices == 0
        else:
            with pytest.raises(ValueError, match=rf"global_batch_size={batch} does not divide"):
                check()
    if argument.startswith(("configs/net14.py", "configs/large.py")):
        # The paper's batch of 128: every TPU slice and GPU cluster up to 128 chips.
        assert batch == 128
