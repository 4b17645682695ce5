"""Test configuration: quiet TensorFlow, make the repository importable without installing, and
compile without XLA's optimisation passes (the tests' arrays are tiny, so compilation is most of
their time: about 30% less wall time; set JAX_DISABLE_MOST_OPTIMIZATIONS=0 to test optimised
code)."""

import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("JAX_DISABLE_MOST_OPTIMIZATIONS", "1")  # Also read by driver subprocesses.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
