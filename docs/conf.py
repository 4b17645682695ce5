"""Sphinx configuration: MyST Markdown pages, the API from the docstrings, the notebook rendered.

  pip install -e '.[docs]' && sphinx-build -W -b html docs docs/_build/html
"""

import glob
import os
import re
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

with open(os.path.join(ROOT, "robust_dd", "__init__.py"), encoding="utf-8") as f:
  release = version = re.search(r'^__version__ = "([^"]+)"', f.read(), re.M).group(1)

project = "robust_dd"
author = "robust_dd authors"
copyright = "robust_dd authors"  # pylint: disable=redefined-builtin

extensions = ["myst_nb", "sphinx.ext.autodoc", "sphinx.ext.autosummary", "sphinx.ext.mathjax",
              "sphinx.ext.viewcode"]
myst_enable_extensions = ["dollarmath", "amsmath", "colon_fence", "deflist"]
myst_heading_anchors = 3
nb_execution_mode = "off"  # tests/test_notebook.py executes the notebook; the site renders it.
source_suffix = {".md": "myst-nb", ".ipynb": "myst-nb"}
exclude_patterns = ["_build", "_generated", "benchmarks", "methods.md", "**.ipynb_checkpoints"]
# Docstrings are plain text with `code` in backticks: render them as written (see _docstrings).
default_role = "code"
autodoc_member_order = "bysource"
autodoc_typehints = "none"
autodoc_default_options = {"members": True, "undoc-members": False}
suppress_warnings = ["myst.header"]

html_theme = "sphinx_book_theme"
html_title = f"robust_dd {release}"
html_theme_options = {"show_toc_level": 2}


def _literal_docstring(app, what, name, obj, options, lines):  # pylint: disable=unused-argument
  """Docstrings here are written for `help()`, not reStructuredText: show them verbatim."""
  if lines:
    lines[:] = ["::", ""] + ["   " + line for line in lines] + [""]


def _benchmark_tables(app):  # pylint: disable=unused-argument
  """docs/_generated/benchmark_tables.md from the JSON in docs/benchmarks/ (generated, not typed)."""
  sys.path.insert(0, os.path.join(ROOT, "scripts"))
  import benchmark_report  # pylint: disable=g-import-not-at-top
  here = os.path.dirname(os.path.abspath(__file__))
  files = sorted(glob.glob(os.path.join(here, "benchmarks", "*.json")))
  os.makedirs(os.path.join(here, "_generated"), exist_ok=True)
  text = "\n".join(benchmark_report.section(f) for f in files) or "No benchmark JSON yet.\n"
  with open(os.path.join(here, "_generated", "benchmark_tables.md"), "w", encoding="utf-8") as f:
    f.write(text)


def setup(app):
  app.connect("autodoc-process-docstring", _literal_docstring)
  app.connect("builder-inited", _benchmark_tables)
