"""The absl drivers as a user runs them (subprocesses, `slow`): flags, `--help`, exit codes, and a
CPU run's stderr holding only our own messages. What the drivers compute is tested in-process in
tests/test_experiment.py and tests/test_coreset.py."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

pytestmark = pytest.mark.slow

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run(module, *flags):
  return subprocess.run([sys.executable, "-m", module, *flags], cwd=REPO, capture_output=True,
                        text=True, timeout=600, env=dict(os.environ))


def test_distill_driver_flags_alias_help_and_exit_codes(tmp_path):
  workdir = str(tmp_path / "w")
  # --target_batch (deprecated, a total) still works: 100 real samples = 10 per class.
  ok = run("experiments.distill", "--dataset=digits", "--ipc=1", "--steps=4", "--log_every=2",
           "--target_batch=100", "--baseline_draws=1", "--norobust_eval", f"--workdir={workdir}")
  assert ok.returncode == 0, ok.stderr[-3000:]
  assert ok.stderr == ""  # No TensorFlow or XLA start-up noise on a CPU run.
  assert "step      2/4" in ok.stdout and f"Outputs in {workdir}/" in ok.stdout
  saved = json.load(open(os.path.join(workdir, "config.json")))
  assert saved["optim"]["real_per_class"] == 10 and saved["optim"]["target_batch"] is None
  assert np.load(os.path.join(workdir, "distilled.npz"))["images"].shape == (10, 8, 8, 1)

  # Re-evaluation flags of every kind (bool, int, str) override the run's: feature clusters.
  cache = str(tmp_path / "cache")
  ev = run("experiments.evaluate", f"--workdir={workdir}", "--robust_eval", "--nobaseline",
           "--feature_cluster_epochs=1", f"--feature_cluster_cache={cache}", "--net_width=8",
           "--eval_epochs=2", "--eval_seeds=1", "--output=features.json")
  assert ev.returncode == 0, ev.stderr[-3000:]
  report = json.load(open(os.path.join(workdir, "features.json")))
  assert "feature_worst_cluster_accuracy" in report["network"]["distilled_robustness"]
  assert len(os.listdir(cache)) == 1

  # The set exported in pixel space; a second export to the same place is refused, nothing lost.
  out = str(tmp_path / "export")
  ex = run("experiments.export", f"--workdir={workdir}", f"--out={out}")
  assert ex.returncode == 0 and ex.stderr == "", ex.stderr[-3000:]
  assert "Exported 10 images (10 classes)" in ex.stdout
  assert len(os.listdir(os.path.join(out, "train"))) == 10
  for args, message in (([f"--workdir={workdir}", f"--out={out}"], "exists"),
                        (["--workdir=/nonexistent"], "does not exist")):
    again = run("experiments.export", *args)
    assert again.returncode == 2 and message in again.stderr
    assert len(again.stderr.strip().splitlines()) == 1

  helped = run("experiments.distill", "--help")
  assert helped.returncode == 0, helped.stderr[-2000:]
  help_text = " ".join(helped.stdout.split())
  for flag in ("--method", "--ipc", "--steps", "--seed", "--dataset", "--workdir"):
    assert flag in help_text
  from robust_dd import data as data_lib  # pylint: disable=g-import-not-at-top
  for name in data_lib.ALL_DATASETS:  # Every dataset, and what --data_dir reads.
    assert name in help_text, name
  assert "IDX files" in help_text and "train-images-idx3-ubyte" in help_text
  assert "--zca_reg" not in help_text  # Only in --helpfull.
  assert "--learning_rate: Learning rate of the synthetic set. Default by method: kip 0.01; dc, " \
         "dsa, lcmat 0.1; mtt 100.0." in help_text
  full = run("experiments.distill", "--helpfull").stdout
  assert full.index("--steps") < full.index("--zca_reg") < full.index("absl.app:")

  # One bad input of each stage (flag parsing, the saved config, the data, the devices) as a
  # subprocess; the others are checked in-process (test_config, test_experiment, test_parallel).
  for flags, message in (
      (["--method=foo"], "--method=foo: value should be one of <kip|dc|dsa|lcmat|mtt>"),
      (["--ipc=two"], "--ipc=two"),
      (["stray"], "unexpected arguments ['stray']"),
      (["--learning_rate=nan"], "--learning_rate=nan is not a finite number"),
      (["--ipc=3", f"--workdir={workdir}"], "different config"),
      (["--robust=cvar", "--num_clusters=100000", "--dataset=digits"], "--num_clusters"),
      (["--mesh=data:1000"], "A mesh of 1000 devices was asked for")):
    bad = run("experiments.distill", *flags, *(["--workdir=" + str(tmp_path / "b")]
                                               if not any("workdir" in f for f in flags) else []))
    assert bad.returncode == 2, bad.stderr[-2000:]
    assert bad.stderr.startswith("error: ") and message in bad.stderr
    assert len(bad.stderr.strip().splitlines()) == 1  # One line, no traceback.
  assert not os.path.exists(tmp_path / "b")  # Refused runs write nothing.


def test_evaluate_and_select_drivers_exit_codes(tmp_path):
  missing = run("experiments.evaluate", "--workdir=/nonexistent")
  assert missing.returncode == 2 and "does not exist" in missing.stderr
  for module, flags, message in (
      ("experiments.experts", ["--num_experts=0"], "--num_experts, --epochs and --expert_batch"),
      ("experiments.distill", ["--method=mtt"], "--expert_dir is required")):
    bad = run(module, *flags, f"--workdir={tmp_path / 'never'}")
    assert bad.returncode == 2 and message in bad.stderr, bad.stderr[-2000:]
    assert len(bad.stderr.strip().splitlines()) == 1
  assert not os.path.exists(tmp_path / "never")
  workdir = str(tmp_path / "lcmat")
  cmd = ["--method=lcmat", "--dataset=digits", "--fraction=0.01", "--warmup_epochs=1",
         "--net_width=8", "--eval_epochs=2", "--eval_seeds=1", "--evaluators=krr",
         f"--workdir={workdir}"]
  result = run("experiments.select", *cmd)
  assert result.returncode == 0, result.stderr[-3000:]
  assert "LCMat-S warm-up" in result.stdout and "| 1% | 10 | lcmat | 1 |" in result.stdout
  metrics = json.load(open(os.path.join(workdir, "metrics.json")))
  assert set(metrics) >= {"krr", "selection_seconds"} and "network" not in metrics
  bad = run("experiments.select", "--dataset=digits", "--fraction=2", f"--workdir={workdir}2")
  assert bad.returncode == 2 and "--fraction must be in (0, 1]" in bad.stderr
  assert not os.path.exists(workdir + "2")
