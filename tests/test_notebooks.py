"""Runs every notebook in experiments/notebooks/ top to bottom in SMOKE mode.

Each notebook is executed with nbclient in a python3 kernel started from the repository
root (the kernel inherits this process's environment: conftest's JAX_PLATFORMS=cpu,
XLA flags with 8 fake devices and the shared compilation cache). A cell ``SMOKE = True``
is injected after the cell tagged ``parameters`` (the papermill convention, so the other
parameters keep their defaults), and the test does not depend on the committed default.
Every cell must run without error, and the notebook must display at least one PNG image
(its plots).
"""

import os
import sys
import time

import nbformat
import pytest
from helpers import ROOT

NOTEBOOK_DIR = os.path.join(ROOT, "experiments", "notebooks")
sys.path.insert(0, NOTEBOOK_DIR)
import render_screenshots  # noqa: E402  (runs a notebook with SMOKE injected)

# End to end (README, "The tests"): run by `python -m pytest -m slow` and by CI.
pytestmark = pytest.mark.slow

NOTEBOOKS = sorted(n for n in os.listdir(NOTEBOOK_DIR) if n.endswith(".ipynb"))
COLAB = "https://colab.research.google.com/github/ssl-jax/ssl_jax/blob/main/experiments/notebooks/"


def _read(name):
    return nbformat.read(os.path.join(NOTEBOOK_DIR, name), as_version=4)


def test_notebooks_found():
    assert {
        "quickstart.ipynb",
        "mae.ipynb",
        "evaluate_your_images.ipynb",
        "dino_attention.ipynb",
        "tpu_quickstart.ipynb",
        "gallery.ipynb",  # every method of the README table, one step each
    } <= set(NOTEBOOKS)


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_notebook_committed_clean(name):
    nb = _read(name)
    nbformat.validate(nb)
    assert nb.nbformat == 4 and nb.metadata.kernelspec.name == "python3"
    assert nb.cells[0].cell_type == "markdown" and COLAB + name in nb.cells[0].source
    params = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
    assert len(params) == 1 and "SMOKE = True" in params[0].source
    for cell in nb.cells:
        if cell.cell_type == "code":
            assert not cell.outputs and cell.execution_count is None, "outputs not cleared"
    # On Colab the package goes in beside the runtime's JAX / TF / NumPy, never over them.
    (setup,) = [c.source for c in nb.cells if "google.colab" in c.source]
    assert "experiments/notebooks/colab_install.py" in setup
    assert 'requirements.txt"' not in setup


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_notebook_runs_in_smoke_mode(name):
    start = time.time()
    nb = render_screenshots.execute(name.removesuffix(".ipynb"), smoke=True, timeout=300)
    print(f"{name}: {time.time() - start:.1f} s")
    pngs = [
        png
        for cell in nb.cells
        if cell.cell_type == "code"
        for png in render_screenshots.pngs(cell)
    ]
    assert pngs, f"{name} displayed no image"
