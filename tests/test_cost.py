"""The full-scale cost plan: FLOPs from multiply-adds counted by hand here (the paper's layer
tables), and the chip-hour and dollar arithmetic."""

from __future__ import annotations

import pytest
from support import hand_layers

from rectifiers_jax.analysis import cost


def hand_multiply_adds(name: str) -> int:
    """k * k * c_in * c_out per output position of every conv, c_in * c_out per fc layer."""
    return sum(k * k * c_in * c_out * h * h for _, k, c_in, c_out, h in hand_layers(name))


def test_training_flops_are_six_per_multiply_add_per_image():
    flops = cost.training_flops("model_a", 80)
    assert flops == 6 * hand_multiply_adds("model_a") * 1_281_167 * 80
    assert flops == pytest.approx(1.17e19, rel=0.01)  # 1.906e10 multiply-adds (Table 3)


def test_chip_hours_and_dollars():
    plan = cost.Plan("one A", (("model_a", 1, 80),), "4 K20s")
    [row] = cost.plan_rows([plan], {"x": (100.0, 2.0)}, utilisation=0.5)
    hours = cost.training_flops("model_a", 80) / (100e12 * 0.5) / 3600
    assert row["x chip-h"] == round(hours) and row["x $"] == round(hours * 2.0)
    assert row["EFLOP"] == pytest.approx(11.7, rel=0.01)


def test_the_papers_timing_implies_forty_percent_of_its_gpus():
    per_batch = cost.training_flops("model_a", 1) / cost.IMAGENET_TRAIN * 128
    assert per_batch / 2.6 / (4 * 3.52e12) == pytest.approx(0.40, abs=0.01)
