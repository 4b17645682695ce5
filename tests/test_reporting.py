"""robust_dd.reporting: tables from metrics (new `flags` and old flat `config`), without JAX."""

import os
import subprocess
import sys

from robust_dd import reporting
from robust_dd import select

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_reporting_imports_no_jax():
  code = "import sys; import robust_dd.reporting; print('jax' in sys.modules)"
  out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True)
  assert out.stdout.strip() == "False", out.stderr


def test_robustness_table_groups_runs_and_averages_over_seeds():
  def run(robust, seed_acc, new, robust_on="matching"):
    rob = {"accuracy": seed_acc, "worst_cluster_accuracy": seed_acc / 2,
           "mean_cluster_accuracy": seed_acc, "rare_accuracy": seed_acc / 4,
           "common_accuracy": seed_acc}
    if new:
      rob["feature_worst_cluster_accuracy"] = seed_acc / 3
    flags = {"method": "kip", "dataset": "mnist5k", "subgroup": "invert", "ipc": 1,
             "robust": robust, "tail_fraction": 0.2, "robust_weight": 0.5,
             "robust_on": robust_on}
    return {("flags" if new else "config"): flags, "config": {} if new else flags, "steps": 10,
            "distilled_robustness": rob, "random_subset_robustness": rob}

  table = reporting.robustness_table([run("cvar", 0.6, True), run("cvar", 0.8, False),
                                      run("cvar", 0.9, True, "network"),
                                      run("none", 0.5, True)])
  lines = table.splitlines()
  assert len(lines) == 5
  row = "| mnist5k | invert | kip | 1 |"
  assert lines[2].startswith(f"{row} plain | 1 | 10 | 50.0 ± 0.0 | 25.0 ± 0.0 | 50.0 ± 0.0 | "
                             "16.7 ± 0.0 |")
  assert lines[3].startswith(f"{row} CVaR α=0.2 λ=0.5 on matching | 2 | 10 | 70.0 ± 10.0 | "
                             "35.0 ± 5.0 | 70.0 ± 10.0 | 20.0 ± 0.0 | 17.5 ± 2.5 |")
  assert lines[4].startswith(f"{row} CVaR α=0.2 λ=0.5 on network | 1 | 10 | 90.0 ± 0.0 |")


def test_coreset_results_and_evaluation_tables():
  assert reporting.SELECT_ORDER == select.METHODS
  runs = [{"flags": {"fraction": 0.01, "method": m}, "num_selected": 10, "selection_seconds": s,
           "network": {"test_acc": a}} for m, s, a in (("lcmat", 2.0, 0.5), ("random", 1.0, 0.4),
                                                       ("random", 3.0, 0.6))]
  lines = reporting.coreset_table(runs).splitlines()
  assert lines[2] == "| 1% | 10 | random | 2 | 50.0 ± 10.0 | – | 2.0 |"
  assert lines[3] == "| 1% | 10 | lcmat | 1 | 50.0 ± 0.0 | – | 2.0 |"
  m = {"flags": {"method": "kip", "dataset": "digits", "ipc": 2}, "steps": 5, "evaluator": "KRR",
       "distilled_test_acc": 0.9, "distilled_test_acc_std": 0.0,
       "random_subset_test_acc_mean": 0.5, "random_subset_test_acc_std": 0.25}
  assert reporting.results_table([m]).splitlines()[2] == (
      "| kip | digits | 2 | 5 | KRR | 90.0% ± 0.0 | 50.0% ± 25.0 |")
  report = {"flags": m["flags"], "ipc": 2,
            "krr": {"evaluator": "KRR", "distilled_test_acc": 0.9, "distilled_test_acc_std": 0.1}}
  assert reporting.evaluation_table(report).splitlines()[2] == (
      "| kip | digits | 2 | KRR | 90.0% ± 10.0 | - |")
  init = dict(m, flags={"ipc": 2, "init": "random", "sampler": "uniform"})
  assert reporting.init_sampler_table([init, init]).splitlines()[2] == (
      "| 2 | random | uniform | 2 | 90.0 ± 0.0 | 50.0 |")


def test_cross_architecture_table_lines_up_networks_and_random_subsets():
  def report(method, ipc, nets):
    return {"flags": {"method": method, "ipc": ipc},
            "eval_nets": {n: {"distilled_test_accs": [a, a + 0.02],
                              "random_subset_test_acc": [a / 2]} for n, a in nets.items()}}

  table = reporting.cross_architecture_table([
      report("kip", 10, {"convnet": 0.9, "vit": 0.5}), report("dc", 10, {"convnet": 0.8}),
      report("dc", 1, {"alexnet": 0.4})])
  lines = table.splitlines()
  assert lines[0] == "| set | IPC | convnet | vit | alexnet |"
  assert lines[2] == "| dc | 1 | - | - | 41.0 ± 1.0 |"
  assert lines[3] == "| dc | 10 | 81.0 ± 1.0 | - | - |"
  assert lines[4] == "| kip | 10 | 91.0 ± 1.0 | 51.0 ± 1.0 | - |"
  assert lines[5] == "| random real subset | 1 | - | - | 20.0 ± 0.0 |"
  assert lines[6] == "| random real subset | 10 | 40.0 ± 0.0 | 25.0 ± 0.0 | - |"
  # One set evaluated on different networks in two runs (same workdir): one row, merged.
  first, second = report("kip", 10, {"convnet": 0.9}), report("kip", 10, {"vit": 0.5})
  first["workdir"], second["workdir"] = "runs/x", os.path.abspath("runs/x")
  lines = reporting.cross_architecture_table([first, second]).splitlines()
  assert lines[2:] == ["| kip | 10 | 91.0 ± 1.0 | 51.0 ± 1.0 |",
                       "| random real subset | 10 | 45.0 ± 0.0 | 25.0 ± 0.0 |"]


def test_load_runs_splits_finished_and_unfinished(tmp_path):
  (tmp_path / "a").mkdir()
  (tmp_path / "a" / "metrics.json").write_text('{"x": 1}')
  runs, missing = reporting.load_runs([str(tmp_path / "a"), str(tmp_path / "b")])
  assert runs == [{"x": 1}] and missing == [str(tmp_path / "b")]
