"""Multiply-adds and parameters of `summary.summarize`, and the summary CLI.

The references are hand-written layer tables at 224x224 (PAPER.md Sec. 3): a conv layer costs
H_out * W_out * k * k * C_in * C_out multiply-adds, an fc layer C_in * C_out; Table 3 states
1.90, 2.32 and 5.30 x 10^10 for models A, B and C, and net14 is about 0.9 x 10^9 (derived).
"""

from __future__ import annotations

import functools

import pytest
from support import hand_layers, run_cli

from rectifiers_jax import models, summary

PAPER_MACS = {"model_a": 1.90e10, "model_b": 2.32e10, "model_c": 5.30e10}


def hand_macs(name: str) -> int:
    return sum(h * h * k * k * c_in * c_out for _, k, c_in, c_out, h in hand_layers(name))


@functools.cache
def rows_of(name: str, activation: str = "relu") -> dict[str, summary.LayerRow]:
    rows = summary.summarize(models.build(name, activation=activation), 224)
    return {row.name: row for row in rows}


def test_hand_table_net14_literal_total():
    # 109^2*49*3*64 + (35^2*4*64*128 + 36^2*4*128^2 + 35^2*4*128^2 + 36^2*4*128^2)
    # + (17^2*4*128*256 + 18^2*4*256^2 + 2*17^2*4*256^2 + 2*18^2*4*256^2) + 12800*4096
    # + 4096^2 + 4096*1000
    assert hand_macs("net14") == 919_573_184


def test_net14_macs_exactly_match_hand_computation():
    rows = rows_of("net14")
    weight_layers = {name for name, *_ in hand_layers("net14")}
    for name, k, c_in, c_out, h in hand_layers("net14"):
        assert rows[name].multiply_adds == h * h * k * k * c_in * c_out, name
        expected_shape = (h, h, c_out) if name.startswith("conv") else (c_out,)
        assert rows[name].output_shape == expected_shape, name
    for name, row in rows.items():  # pools and SPP cost no multiply-adds
        if name not in weight_layers:
            assert row.multiply_adds == 0, name
    assert sum(row.multiply_adds for row in rows.values()) == hand_macs("net14")


def test_net14_is_about_0_9_giga_multiply_adds():
    total = sum(row.multiply_adds for row in rows_of("net14").values())
    assert total == pytest.approx(0.9e9, rel=0.05)


@pytest.mark.parametrize("name", sorted(PAPER_MACS))
def test_large_models_match_table_3_complexity(name):
    total = sum(row.multiply_adds for row in rows_of(name).values())
    assert total == pytest.approx(PAPER_MACS[name], rel=0.03)
    assert total == hand_macs(name)


def test_net30_macs_match_hand_computation():
    assert sum(row.multiply_adds for row in rows_of("net30").values()) == hand_macs("net30")


@pytest.mark.parametrize("activation", ["relu", "prelu", "prelu_shared"])
def test_row_parameters_match_hand_counts(activation):
    """Per layer: kernel + bias (+ one `a` per channel channel-wise, one per layer shared)."""
    rows = rows_of("net14", activation)
    for name, k, c_in, c_out, _ in hand_layers("net14"):
        expected = k * k * c_in * c_out + c_out
        if name != "fc3":
            expected += c_out if activation == "prelu" else int(activation == "prelu_shared")
        assert rows[name].params == expected, name
    total = sum(row.params for row in rows.values())
    assert (
        total == {"relu": 74_993_896, "prelu": 75_004_200, "prelu_shared": 74_993_909}[activation]
    )


def test_rows_are_in_depth_order():
    names = list(rows_of("net14"))
    convs = ["conv1", "pool1", *(f"conv2_{i}" for i in range(1, 5)), "pool2"]
    assert names == [*convs, *(f"conv3_{i}" for i in range(1, 7)), "spp", "fc1", "fc2", "fc3"]


def test_format_table_totals():
    table = summary.format_table(list(rows_of("net14").values()))
    total_line = [line for line in table.splitlines() if line.startswith("total")]
    assert len(total_line) == 1
    assert "74,993,896" in total_line[0] and "919,573,184" in total_line[0]
    assert "0.092 x 10^10" in table


# ---------------------------------------------------------------------------------------------
# CLI: python -m rectifiers_jax.summary ... (called in-process)


@pytest.mark.parametrize(
    "argv, total",
    [
        (["net14"], "74,993,896"),
        (["net14", "--activation", "prelu"], "75,004,200"),
        (["net14", "--activation", "prelu_shared"], "74,993,909"),
    ],
)
def test_cli_prints_table_with_total_params(capsys, argv, total):
    assert summary.main(argv) == 0
    out = capsys.readouterr().out
    total_lines = [line for line in out.splitlines() if line.startswith("total")]
    assert len(total_lines) == 1 and total in total_lines[0]
    assert "pool1" in out and "36x36x64" in out


@pytest.mark.parametrize(
    "argv, mentions",
    [
        (["net15"], "net15"),
        (["net14", "--activation", "elu"], "elu"),
        (["net14", "--image-size", "50"], "77"),
    ],
)
def test_cli_bad_input_exits_2_with_one_line_error(capsys, argv, mentions):
    assert run_cli(summary.main, argv) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and mentions in lines[0]
