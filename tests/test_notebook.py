"""Runs notebooks/ramachandran.ipynb top to bottom (nbclient) on a tiny model made here (tests/tiny_model.py)."""

from __future__ import annotations

from pathlib import Path

import pytest
from tiny_model import make_tiny_model

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")

NOTEBOOK = Path(__file__).resolve().parent.parent / "notebooks" / "ramachandran.ipynb"


def _executed_outputs(directory: Path) -> list:
    """The outputs of the notebook's code cells, run top to bottom in ``directory``; none may be an error."""
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    nbclient.NotebookClient(notebook, timeout=300, kernel_name="python3",
                            resources={"metadata": {"path": str(directory)}}).execute()
    outputs = [output for cell in notebook.cells if cell.cell_type == "code" for output in cell.outputs]
    assert not [output for output in outputs if output.output_type == "error"]
    return outputs


def test_notebook_runs_and_shows_its_figures(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    model = make_tiny_model(tmp_path)
    monkeypatch.setenv("TRADE_MD_MODEL", str(model))
    monkeypatch.setenv("TRADE_MD_REFERENCE", "")              # the shipped reference of alanine dipeptide
    monkeypatch.setenv("TRADE_MD_N_SAMPLES", "200")
    outputs = _executed_outputs(tmp_path)
    images = [output for output in outputs
              if output.output_type == "display_data" and "image/png" in output.get("data", {})]
    assert len(images) == 2                                   # Ramachandran grid and ΔF(T)
    text = "".join(output.get("text", "") for output in outputs if output.output_type == "stream")
    assert f"model: {model}" in text and "Kish ESS" in text and "P(phi>0) ref" in text
    assert "1000 K: Jensen-Shannon divergence" in text


@pytest.mark.slow
def test_notebook_runs_on_the_shipped_model_by_default(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TRADE_MD_MODEL", raising=False)
    monkeypatch.delenv("TRADE_MD_N_SAMPLES", raising=False)
    monkeypatch.setenv("TRADE_MD_REFERENCE", "")
    outputs = _executed_outputs(tmp_path)
    text = "".join(output.get("text", "") for output in outputs if output.output_type == "stream")
    assert "model: alanine-dipeptide" in text and text.count("Kish ESS") == 5
