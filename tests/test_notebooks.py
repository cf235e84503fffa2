"""Execute every teaching notebook and check each .ipynb matches its jupytext .py source.

What it does: one test per `notebooks/*.ipynb` (new notebooks are picked up automatically). Each test
1. regenerates the notebook from its `.py` (jupytext percent format, the source of truth) in memory and
   compares cell types and sources with the committed `.ipynb`, which must store no outputs and declare
   the `python3` kernel;
2. runs the `.ipynb` top to bottom with nbclient, working directory `notebooks/`, in a `python3` kernel
   launched with this interpreter (`sys.executable`, the venv's Python), offline (`HF_HUB_OFFLINE=1`), with
   the project root on `PYTHONPATH` and `RLHF_WORKBENCH_SOLUTIONS=1` (the exercises use the reference
   solutions in `notebooks/solutions/`, and the notebooks' own assertions grade them). Any failing cell fails the test; the notebooks end with
   `assert_close(mine, core_value)` checks.

What it leaves out: judging the teaching text. Regenerate a notebook after editing its source with
`.venv/bin/jupytext --to ipynb notebooks/NN_name.py`.

    .venv/bin/python -m pytest tests/test_notebooks.py -q
"""
from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")
jupytext = pytest.importorskip("jupytext")
nbclient = pytest.importorskip("nbclient")

from jupyter_client.kernelspec import KernelSpecManager  # noqa: E402
from jupyter_client.manager import KernelManager  # noqa: E402

PROJECT_ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS_DIR = PROJECT_ROOT / "notebooks"
NOTEBOOKS = sorted(NOTEBOOKS_DIR.glob("*.ipynb"))
CELL_TIMEOUT_S = 600  # generous: the notebooks take seconds per cell, but CI machines can be shared and slow


class _ThisPythonKernelSpecs(KernelSpecManager):
    """Kernel specs whose argv runs ipykernel with this interpreter, whatever `python` is on PATH."""

    def get_kernel_spec(self, kernel_name):
        spec = super().get_kernel_spec(kernel_name)
        spec.argv = [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"]
        return spec


def _cells(nb):
    return [(cell.cell_type, cell.source.strip()) for cell in nb.cells]


def test_notebooks_found():
    assert NOTEBOOKS, f"no notebooks in {NOTEBOOKS_DIR}"
    for path in NOTEBOOKS_DIR.glob("*.py"):
        assert path.with_suffix(".ipynb").is_file(), f"{path.name} has no generated .ipynb; run jupytext --to ipynb"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_in_sync_and_runs(path, monkeypatch):
    source = path.with_suffix(".py")
    assert source.is_file(), f"{path.name} has no jupytext source {source.name}"
    committed = nbformat.read(path, as_version=4)
    regenerated = jupytext.read(source)
    assert _cells(committed) == _cells(regenerated), (
        f"{path.name} is out of sync with {source.name}; run `.venv/bin/jupytext --to ipynb notebooks/{source.name}`")
    assert committed.metadata.get("kernelspec", {}).get("name") == "python3"
    for cell in committed.cells:
        if cell.cell_type == "code":
            assert not cell.outputs and cell.execution_count is None, f"{path.name} stores outputs; strip them"

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("RLHF_WORKBENCH_SOLUTIONS", "1")  # the exercises are filled in with notebooks/solutions/
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(PROJECT_ROOT), os.environ.get("PYTHONPATH")])))
    km = KernelManager(kernel_name="python3", kernel_spec_manager=_ThisPythonKernelSpecs())
    assert km.kernel_spec.argv[0] == sys.executable
    client = nbclient.NotebookClient(committed, km=km, timeout=CELL_TIMEOUT_S, kernel_name="python3",
                                     resources={"metadata": {"path": str(NOTEBOOKS_DIR)}})
    start = time.perf_counter()
    client.execute()  # raises CellExecutionError, with the failing cell and traceback, if any cell fails
    print(f"{path.name}: executed in {time.perf_counter() - start:.1f} s")
