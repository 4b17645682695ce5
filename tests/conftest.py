"""Test configuration: quiet TensorFlow, make the repository importable without installing, and
compile without XLA's optimisation passes (the tests' arrays are tiny, so compilation is most of
their time: about 30% less wall time; set JAX_DISABLE_MOST_OPTIMIZATIONS=0 to test optimised
code)."""

import os
import shutil
import sys
import tempfile

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("JAX_DISABLE_MOST_OPTIMIZATIONS", "1")  # Also read by driver subprocesses.
# One persistent XLA compilation cache for the whole run, shared by the pytest-xdist workers and
# the driver subprocesses (they inherit the environment): tests and drivers build new closures
# that compile to the same programs, and a program compiled once is then read from disk. Set
# JAX_COMPILATION_CACHE_DIR to keep a cache across runs; otherwise a fresh one per run, removed
# at the end.
_OWN_CACHE = "JAX_COMPILATION_CACHE_DIR" not in os.environ
if _OWN_CACHE:
  os.environ["JAX_COMPILATION_CACHE_DIR"] = tempfile.mkdtemp(prefix="robust_dd_jax_cache_")
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def pytest_unconfigure(config):
  """The run's own compilation cache goes when the run does (the controller, not each worker)."""
  if _OWN_CACHE and not hasattr(config, "workerinput"):
    shutil.rmtree(os.environ["JAX_COMPILATION_CACHE_DIR"], ignore_errors=True)
