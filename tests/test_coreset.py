"""robust_dd.coreset and `python -m experiments.select`: outputs, evaluation against an
independent KRR computation, reuse of a saved selection, LCMat-S warm-up, bad input."""

import dataclasses
import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest

from robust_dd import coreset
from robust_dd import data as data_lib
from robust_dd import distill
from robust_dd import evaluate
from robust_dd import kernels

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BASE = distill.DistillConfig(method="dc", dataset="digits", net_width=8, eval_epochs=5,
                             eval_seeds=1)


def _quiet(_):
  pass


def test_selection_outputs_and_krr_accuracy_match_an_independent_computation(tmp_path):
  config = coreset.SelectConfig(method="herding", fraction=0.02, base=BASE)
  workdir = str(tmp_path / "w")
  metrics = coreset.select_experiment(config, workdir, log=_quiet)
  saved = np.load(os.path.join(workdir, "selection.npz"))
  ds = data_lib.load_dataset("digits")
  idx = saved["indices"]
  # 2% of 1,437 training digits is 29 -> round(2.87) = 3 per class.
  assert metrics["per_class"] == 3 and len(idx) == 30 and len(set(idx.tolist())) == 30
  np.testing.assert_array_equal(ds.y_train[idx], np.repeat(np.arange(10), 3))
  prep = data_lib.fit_preprocessing(ds.x_train)
  x_train = data_lib.apply_preprocessing(ds.x_train, prep)
  x_test = data_lib.apply_preprocessing(ds.x_test, prep)
  acc = evaluate.krr_accuracy(kernels.make_kernel_fn("fc"), x_train[idx],
                              data_lib.one_hot_centered(ds.y_train[idx], 10), x_test, ds.y_test)
  assert metrics["krr"]["test_acc"] == pytest.approx(acc, abs=1e-9)
  assert 0 <= metrics["network"]["test_acc"] <= 1
  on_disk = json.load(open(os.path.join(workdir, "metrics.json")))
  assert on_disk["krr"]["test_acc"] == metrics["krr"]["test_acc"]
  # A second call reuses the saved selection; another config in the same workdir is refused.
  lines = []
  again = coreset.select_experiment(config, workdir, log=lines.append)
  assert any("Reusing the selection" in l for l in lines)
  assert again["krr"]["test_acc"] == metrics["krr"]["test_acc"]
  with pytest.raises(ValueError, match="different config"):
    coreset.select_experiment(dataclasses.replace(config, fraction=0.05), workdir, log=_quiet)
  assert "| 2% | 30 | herding | 1 |" in coreset.coreset_table([metrics])


def test_lcmat_warmup_features_and_probabilities():
  ds = data_lib.load_dataset("digits")
  model = distill.network_model(BASE, 10, ds.x_train.shape[1:])
  z, probs = coreset.lcmat_warmup(jax.random.key(0), model, ds.x_train[:200], ds.y_train[:200],
                                  epochs=1)
  assert z.shape[0] == 200 and probs.shape == (200, 10)
  np.testing.assert_allclose(probs.sum(1), 1.0, rtol=1e-5)


def test_select_config_validation():
  for bad, match in ((dict(method="best"), "method"), (dict(fraction=0.0), "fraction"),
                     (dict(evaluators=("oracle",)), "evaluators")):
    with pytest.raises(ValueError, match=match):
      coreset.validate_config(coreset.SelectConfig(base=BASE, **bad))


def test_select_driver_end_to_end_and_bad_input(tmp_path):
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
  workdir = str(tmp_path / "lcmat")
  cmd = [sys.executable, "-m", "experiments.select", "--method=lcmat", "--dataset=digits",
         "--fraction=0.01", "--warmup_epochs=1", "--net_width=8", "--eval_epochs=2",
         "--eval_seeds=1", "--evaluators=krr", f"--workdir={workdir}"]
  result = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600, env=env)
  assert result.returncode == 0, result.stderr[-3000:]
  assert "LCMat-S warm-up" in result.stdout and "| 1% | 10 | lcmat | 1 |" in result.stdout
  metrics = json.load(open(os.path.join(workdir, "metrics.json")))
  assert set(metrics) >= {"krr", "selection_seconds"} and "network" not in metrics
  bad = subprocess.run(cmd[:3] + ["--dataset=digits", "--fraction=2", f"--workdir={workdir}2"],
                       cwd=REPO, capture_output=True, text=True, timeout=600, env=env)
  assert bad.returncode == 2 and "--fraction must be in (0, 1]" in bad.stderr
