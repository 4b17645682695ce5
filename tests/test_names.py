"""robust_dd.names: one source of every choice list, and a config that loads without the library."""

import subprocess
import sys

from robust_dd import cluster
from robust_dd import config as config_lib
from robust_dd import convolutions
from robust_dd import curvature
from robust_dd import data
from robust_dd import distill
from robust_dd import kernels
from robust_dd import krr
from robust_dd import matching
from robust_dd import methods
from robust_dd import models
from robust_dd import names
from robust_dd import select


def test_the_implementing_modules_use_the_names_and_the_method_table_follows_them():
  assert tuple(methods.METHODS) == names.METHODS
  pairs = [(kernels.ARCHITECTURES, names.ARCHITECTURES), (kernels.KERNELS, names.KERNELS),
           (models.NETWORKS, names.NETWORKS), (models.EVAL_NETWORKS, names.EVAL_NETWORKS),
           (models.PADDINGS, names.PADDINGS), (convolutions.CONV_IMPLS, names.CONV_IMPLS),
           (matching.METRICS, names.METRICS), (curvature.HVP_MODES, names.HVP_MODES),
           (distill.OPTIMIZERS, names.OPTIMIZERS), (distill.CLUSTER_MASSES, names.CLUSTER_MASSES),
           (cluster.FEATURES, names.CLUSTER_FEATURES), (krr.LOSSES, names.KRR_LOSSES),
           (data.SUBGROUPS, names.SUBGROUPS), (select.METHODS, names.SELECT_METHODS)]
  for implemented, listed in pairs:
    assert implemented is listed
  method_field = {s.name: s for s in config_lib.flag_specs(config_lib.DistillConfig)}["method"]
  assert method_field.choices == names.METHODS


def test_loading_a_config_loads_neither_jax_nor_neural_tangents_nor_any_model_code():
  code = ("import sys, robust_dd.config as c; c.DistillConfig.make(method='dc'); "
          "print(sorted(m for m in sys.modules if m.split('.')[0] in "
          "('jax', 'neural_tangents', 'flax', 'robust_dd')))")
  out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
  assert out.stdout.strip() == "['robust_dd', 'robust_dd.config', 'robust_dd.names']"
