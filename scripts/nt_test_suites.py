r"""Runs neural-tangents' own test files against the installed NT, with robust_dd's layer applied.

NT's wheel installs its test files as a top-level `tests` package (`tests/batching_test.py`,
`tests/predict_test.py`, `tests/stax/stax_test.py`, `tests/test_utils.py`, ...), so the tests of
exactly the installed release run here, offline. Before importing them this script

- applies `robust_dd._nt_compat` (what makes NT work on current JAX; the thing under test);
- adds `jax.tree_map` back (as `jax.tree.map`) when JAX lacks it: JAX removed it in 0.6, and NT's
  test utilities (`assertAllClose`) and one predict test call it; NT's library code does not;
- turns `jax_threefry_partitionable` off: JAX made it the default in 0.5, which changes what
  `random.normal(key, shape)` draws. NT's batching tests draw `x_self` (8 rows) and `x_other`
  (2 rows) from one key; with partitionable Threefry `x_other` equals the first two rows of
  `x_self`, NT's batched kernels then (correctly) detect `x1 is x2` for that block, and the tests'
  expected `x1_is_x2=False` fails. With the old draw the data are what the tests were written for.

Both changes are made in this process only; neither is part of the library.

Each test method counts once (a method whose subtests fail counts as failed). The last line is a
summary; `--out` writes every test's outcome and seconds as JSON.

  python scripts/nt_test_suites.py                      # the three NT test files we rely on
  python scripts/nt_test_suites.py --one_per_family     # the fast subset: one case per family
  python scripts/nt_test_suites.py --modules=tests.empirical_test --filter=testNTKAgainstDirect
"""

from __future__ import annotations

import importlib
import json
import os
import re
import sys
import time
import unittest

from absl import app
from absl import flags

DEFAULT_MODULES = ("tests.batching_test", "tests.predict_test", "tests.stax.stax_test")

flags.DEFINE_list("modules", list(DEFAULT_MODULES), "NT test modules to run.")
flags.DEFINE_list("filter", [], "Run only tests whose id contains one of these strings.")
flags.DEFINE_list("tests", [], "Run only these tests, named exactly as module.Class.method "
                  "(with the parameterised case number, without the parameters).")
flags.DEFINE_bool("one_per_family", False,
                  "Run one parameterisation of each test family (the method name without its "
                  "trailing case number): its first case that --filter admits.")
flags.DEFINE_string("out", None, "Write per-test outcomes (JSON) here.")

FLAGS = flags.FLAGS


def prepare() -> dict:
  """Applies the compatibility layer and the two test-environment changes; returns versions."""
  from robust_dd import _nt_compat
  _nt_compat.apply()
  import jax
  if not hasattr(jax, "tree_map"):
    jax.tree_map = jax.tree.map
  jax.config.update("jax_threefry_partitionable", False)
  nt = importlib.import_module("neural_tangents")
  return {"jax": jax.__version__, "neural_tangents": nt.__version__}


def family(test_id: str) -> str:
  """`tests.stax.stax_test.StaxTest.test_pool3` -> `tests.stax.stax_test.StaxTest.test_pool`."""
  return re.sub(r"\d+$", "", test_id)


def iter_tests(suite):
  for item in suite:
    if isinstance(item, unittest.TestSuite):
      yield from iter_tests(item)
    else:
      yield item


def method_id(test) -> str:
  """`tests.batching_test.BatchTest.testSerial1 (batch_size=2, ...)` -> without the parameters."""
  return test.id().split(" ")[0]


def select(tests, *, substrings=(), exact=(), one_per_family=False):
  tests = [t for t in tests if not substrings or any(s in t.id() for s in substrings)]
  if exact:
    missing = set(exact) - {method_id(t) for t in tests}
    if missing:
      raise ValueError(f"No such NT tests: {sorted(missing)}")
    tests = [t for t in tests if method_id(t) in set(exact)]
  if not one_per_family:
    return tests
  chosen = {}
  for t in tests:
    chosen.setdefault(family(method_id(t)), t)
  return list(chosen.values())


class _Result(unittest.TestResult):
  """Records one outcome per test method: failed if it or any of its subtests failed."""

  def __init__(self):
    super().__init__()
    self.outcomes: dict[str, dict] = {}
    self._start = 0.0

  def _set(self, test, outcome, detail=""):
    record = self.outcomes.setdefault(test.id(), {"outcome": "passed", "detail": ""})
    if outcome != "passed" or record["outcome"] == "passed":
      record.update(outcome=outcome, detail=detail[-2000:])

  def startTest(self, test):
    super().startTest(test)
    self._start = time.perf_counter()
    self._set(test, "passed")

  def stopTest(self, test):
    super().stopTest(test)
    self.outcomes[test.id()]["seconds"] = round(time.perf_counter() - self._start, 2)

  def addError(self, test, err):
    super().addError(test, err)
    self._set(test, "failed", self._exc_info_to_string(err, test))

  def addFailure(self, test, err):
    super().addFailure(test, err)
    self._set(test, "failed", self._exc_info_to_string(err, test))

  def addSkip(self, test, reason):
    super().addSkip(test, reason)
    self._set(test, "skipped", reason)

  def addSubTest(self, test, subtest, err):
    super().addSubTest(test, subtest, err)
    if err is not None:
      self._set(test, "failed", self._exc_info_to_string(err, test))


def run(modules, *, substrings=(), exact=(), one_per_family=False, stream=sys.stdout) -> dict:
  """Runs the selected tests of `modules`; returns the summary with per-test outcomes."""
  versions = prepare()
  loader = unittest.TestLoader()
  tests = []
  for name in modules:
    tests += list(iter_tests(loader.loadTestsFromModule(importlib.import_module(name))))
  families = sorted({family(method_id(t)) for t in tests})
  tests = select(tests, substrings=substrings, exact=exact, one_per_family=one_per_family)
  result = _Result()
  for i, test in enumerate(tests):
    test.run(result)
    record = result.outcomes[test.id()]
    print(f"[{i + 1}/{len(tests)}] {record['outcome']:7s} {record['seconds']:7.2f}s {test.id()}",
          file=stream, flush=True)
  counts = {k: sum(r["outcome"] == k for r in result.outcomes.values())
            for k in ("passed", "failed", "skipped")}
  summary = {**versions, "modules": list(modules), "families": families, "tests": len(tests),
             **counts,
             "run": counts["passed"] + counts["failed"], "outcomes": result.outcomes}
  for test_id, record in result.outcomes.items():
    if record["outcome"] == "failed":
      print(f"FAILED {test_id}\n{record['detail']}", file=stream)
  return summary


def summary_line(summary: dict) -> str:
  return (f"neural-tangents {summary['neural_tangents']} tests on jax {summary['jax']}: "
          f"{summary['tests']} tests, {summary['run']} run, {summary['passed']} passed, "
          f"{summary['failed']} failed, {summary['skipped']} skipped")


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
  os.environ.setdefault("NT_NUM_GENERATED_CASES", "4")
  try:
    summary = run(FLAGS.modules, substrings=FLAGS.filter, exact=FLAGS.tests,
                  one_per_family=FLAGS.one_per_family)
  except (ImportError, ValueError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  if FLAGS.out:
    tmp = FLAGS.out + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
      json.dump(summary, f, indent=1)
    os.replace(tmp, FLAGS.out)
  print(summary_line(summary), flush=True)
  return 1 if summary["failed"] else 0


if __name__ == "__main__":
  app.run(main)
