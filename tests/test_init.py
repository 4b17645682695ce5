"""robust_dd/__init__.py: every public name resolves, lazily, to its module's object."""

import glob
import importlib
import os
import subprocess
import sys

import robust_dd

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_every_public_name_is_its_modules_object_and_listed_once():
  assert len(robust_dd.__all__) == len(set(robust_dd.__all__))
  where, submodules = robust_dd._WHERE, robust_dd._SUBMODULES  # pylint: disable=protected-access
  for name in robust_dd.__all__:
    module = importlib.import_module(f"robust_dd.{where[name]}")
    assert getattr(robust_dd, name) is getattr(module, name), name
  modules = {os.path.basename(p)[:-3] for p in glob.glob(os.path.join(REPO, "robust_dd", "*.py"))}
  assert set(submodules) == modules - {"__init__", "_nt_compat"}
  assert robust_dd.models is importlib.import_module("robust_dd.models")


def test_import_is_lazy():
  code = "import sys, robust_dd; print(sorted(m for m in ('jax', 'flax', 'neural_tangents', " \
         "'tensorflow') if m in sys.modules))"
  out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True)
  assert out.stdout.strip() == "[]", out.stderr
