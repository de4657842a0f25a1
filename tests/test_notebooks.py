"""The example notebooks in docs/examples run in a real Jupyter kernel (nbclient + ipykernel), as
a user's would: no cell raises, and every cell tagged ``figure`` leaves a plotly figure or HTML in
its outputs. SmolLM2 appears in one notebook only; the others use a tiny random model."""

from __future__ import annotations

import shutil

import nbformat
import pytest
from nbclient import NotebookClient

from tests.conftest import REPO

EXAMPLES = REPO / "docs" / "examples"
NOTEBOOKS = sorted(path.name for path in EXAMPLES.glob("*.ipynb"))
SHOWN = ("application/vnd.plotly.v1+json", "text/html")
NEEDS_SMOLLM2 = {"route_explorer.ipynb"}


def test_the_examples_are_there():
    assert {"route_explorer.ipynb", "bertviz_attention.ipynb", "attribution.ipynb", "route_check.ipynb",
            "dataset.ipynb"} <= set(NOTEBOOKS)  # fmt: skip


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_example_notebook_runs_and_draws(name, tmp_path, request):
    if name in NEEDS_SMOLLM2:
        request.getfixturevalue("smollm2")  # skips with the reason when the package cannot be fetched
    for path in EXAMPLES.iterdir():  # run in a copy: the notebooks write files beside themselves
        if path.suffix in (".ipynb", ".py"):
            shutil.copy(path, tmp_path / path.name)
    notebook = nbformat.read(tmp_path / name, as_version=4)
    assert all(not cell.get("outputs") for cell in notebook.cells if cell.cell_type == "code"), "commit notebooks without outputs"
    NotebookClient(notebook, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}).execute()
    figures = 0
    for cell in notebook.cells:
        if cell.cell_type != "code":
            continue
        assert not [o for o in cell.outputs if o.output_type == "error"], cell.source
        if "figure" in cell.metadata.get("tags", []):
            kinds = {kind for output in cell.outputs for kind in output.get("data", {})}
            assert kinds & set(SHOWN), f"no figure or HTML from:\n{cell.source}\n(outputs: {kinds})"
            figures += 1
    assert figures >= 2
