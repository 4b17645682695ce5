"""robust_dd.coreset: outputs, evaluation against an independent KRR computation, reuse of a saved
selection, LCMat-S warm-up, bad input (the driver itself: tests/test_drivers.py)."""

import json
import os

import jax
import numpy as np
import pytest

from robust_dd import coreset
from robust_dd import data as data_lib
from robust_dd import config as config_lib
from robust_dd import methods
from robust_dd import reporting
from robust_dd import evaluate
from robust_dd import kernels

BASE = dict(dataset="digits", net_width=8, eval_epochs=5, eval_seeds=1)


def _quiet(_):
  pass


@pytest.mark.slow
def test_selection_outputs_and_krr_accuracy_match_an_independent_computation(tmp_path):
  config = config_lib.SelectConfig.make(method="herding", fraction=0.02, **BASE)
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
    coreset.select_experiment(config.replace(fraction=0.05), workdir, log=_quiet)
  assert "| 2% | 30 | herding | 1 |" in reporting.coreset_table([metrics])


@pytest.mark.slow
def test_lcmat_warmup_features_and_probabilities():
  ds = data_lib.load_dataset("digits")
  model = methods.network_model(config_lib.SelectConfig.make(**BASE), 10,
                                 ds.x_train.shape[1:])
  z, probs = coreset.lcmat_warmup(jax.random.key(0), model, ds.x_train[:200], ds.y_train[:200],
                                  epochs=1)
  assert z.shape[0] == 200 and probs.shape == (200, 10)
  np.testing.assert_allclose(probs.sum(1), 1.0, rtol=1e-5)


def test_select_config_validation():
  for bad, match in ((dict(method="best"), "method"), (dict(fraction=0.0), "fraction"),
                     (dict(evaluators=("oracle",)), "evaluators")):
    with pytest.raises(ValueError, match=match):
      config_lib.validate_select_config(config_lib.SelectConfig.make(**BASE, **bad))
