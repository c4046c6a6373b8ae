"""notebooks/inspect_run.ipynb runs top to bottom against a tiny real run (nbclient)."""

from __future__ import annotations

from pathlib import Path

import nbclient
import nbformat
import pytest

REPO = Path(__file__).resolve().parents[1]
NOTEBOOK = REPO / "notebooks" / "inspect_run.ipynb"

pytestmark = pytest.mark.slow  # runs a notebook kernel on a trained run


def test_inspect_run_notebook_executes(tiny_run, monkeypatch):
    monkeypatch.setenv("RUN_DIR", str(tiny_run))  # the kernel inherits the environment
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    client = nbclient.NotebookClient(
        notebook,
        timeout=300,
        kernel_name="python3",
        resources={"metadata": {"path": str(NOTEBOOK.parent)}},
    )
    client.execute()  # raises CellExecutionError, with the cell's traceback, on any error
    outputs = [output for cell in notebook.cells for output in cell.get("outputs", [])]
    assert not [o for o in outputs if o.get("output_type") == "error"]
    text = "".join(o.get("text", "") for o in outputs if o.get("name") == "stdout")
    assert f"run: {tiny_run}" in text
    assert "net14, activation prelu, init he_fan_in, width x0.0625" in text
    # The slopes table, with the paper's Table 1 columns, and the (0, 1) verdict.
    assert "layer    a             count" in text and "paper channel-wise" in text
    assert "conv1    channel-wise      4  0.2" in text
    assert "all slopes in (0, 1): yes" in text
    assert "of these 16 correct" in text
    images = [o for o in outputs if "image/png" in o.get("data", {})]
    assert len(images) == 2  # the curves and the classified images
    # The predictor on an image file: three named classes with probabilities.
    predicted = [line.split() for line in text.splitlines() if line.startswith("          ")]
    assert len(predicted) == 3 and all(name in "0123456789" for name, _ in predicted)
    # Outputs go to a temporary directory, never into the run it reads.
    out_dir = Path(next(line for line in text.splitlines() if line.startswith("outputs: "))[9:])
    assert (out_dir / "curves.png").exists() and (out_dir / "picture.png").exists()
    assert not (tiny_run / "curves.png").exists()
