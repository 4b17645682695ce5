"""notebooks/quickstart.ipynb: paired with its .py twin, and runs top to bottom on a CPU."""

import os

import pytest

nbformat = pytest.importorskip("nbformat")
jupytext = pytest.importorskip("jupytext")

NOTEBOOKS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                         "notebooks")
IPYNB, PY = (os.path.join(NOTEBOOKS, f"quickstart.{ext}") for ext in ("ipynb", "py"))


def _cells(notebook):
  return [(c.cell_type, c.source.strip()) for c in notebook.cells]


def test_the_notebook_and_its_plain_text_twin_hold_the_same_cells():
  """Edit either and run `jupytext --sync notebooks/quickstart.ipynb`; this fails until then."""
  assert _cells(jupytext.read(PY)) == _cells(nbformat.read(IPYNB, as_version=4))


@pytest.mark.slow
@pytest.mark.extended  # 90 s; its API calls run in test_experiment, test_readme and test_krr.
def test_the_notebook_runs_top_to_bottom(tmp_path):
  nbclient = pytest.importorskip("nbclient")
  notebook = nbformat.read(IPYNB, as_version=4)
  client = nbclient.NotebookClient(notebook, timeout=600, kernel_name="python3",
                                   resources={"metadata": {"path": str(tmp_path)}})
  client.execute()
  text = "\n".join(o.get("text", "") for c in notebook.cells if c.cell_type == "code"
                   for o in c.get("outputs", []))
  assert "mesh {'data': " in text and "KIP loss after 50 steps" in text
  pngs = [o for c in notebook.cells for o in c.get("outputs", [])
          if "image/png" in o.get("data", {})]
  assert pngs  # The distilled images were shown.
