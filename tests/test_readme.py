"""The README stays true: its commands exist, its set-up is CI's, its figures regenerate."""

from __future__ import annotations

import importlib.util
import pathlib
import re

import pytest

from rectifiers_jax.analysis import trend, variance

ROOT = pathlib.Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def test_every_python_m_command_in_the_readme_exists():
    modules = sorted(
        set(re.findall(r"python -m ((?:rectifiers_jax|benchmarks|launch)[\w.]*)", README))
    )
    assert len(modules) > 10
    missing = [m for m in modules if importlib.util.find_spec(m) is None]
    assert not missing, missing


def test_ci_runs_the_readme_install_and_test_commands():
    ci = (ROOT / ".ci" / "run").read_text()
    install = 'python3 -m venv .venv && .venv/bin/pip install -c constraints.txt -e ".[test]"'
    test = ".venv/bin/python -m pytest -q -n 2"
    assert install in README and test in README
    assert install.replace("pip install", "pip install -q") in ci and test in ci


def test_every_config_file_named_in_the_readme_exists():
    paths = set(re.findall(r"(configs/[\w/]+\.py)", README))
    assert paths and all((ROOT / p).is_file() for p in paths), paths


@pytest.mark.slow
def test_the_variance_figures_in_the_readme_regenerate():
    # The README's recorded output of
    # `python -m rectifiers_jax.analysis.variance --model net30 --init he_fan_in,xavier`.
    result = variance.measure("net30", ["he_fan_in", "xavier"])
    for line in variance.summary_lines(result):
        assert line in README, line


def test_the_full_width_table_in_the_readme_regenerates(capsys):
    runs = sorted(str(p) for p in (ROOT / "docs" / "experiments" / "fullwidth" / "runs").iterdir())
    assert trend.main([*runs, "--markdown"]) == 0
    table = capsys.readouterr().out.strip()
    assert table.count("\n") == len(runs) + 1
    assert table in README
