"""Interrupts and bad files as a user meets them (subprocesses, `slow`): a second run on a locked
workdir, Ctrl-C and SIGTERM mid-run, corrupt data files, unusable workdirs and a rerun asking for
fewer steps than were checkpointed. Each ends in one line and exit code 2 (130/143 for signals),
and after each the same command completes bit-identical to an uninterrupted run."""

import gzip
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from robust_dd import interrupt

pytestmark = pytest.mark.slow

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# KIP on the embedded digits: about 8 s of loop, so a signal sent at the first log line (step 100)
# lands in the loop even on a loaded machine; a log line every 100 steps.
FLAGS = ["--dataset=digits", "--ipc=1", "--steps=6000", "--log_every=100", "--baseline_draws=1",
         "--norobust_eval"]


def command(workdir, *extra, module="experiments.distill"):
  return [sys.executable, "-m", module, *FLAGS, f"--workdir={workdir}", *extra]


def run(workdir, *extra, module="experiments.distill"):
  return subprocess.run(command(workdir, *extra, module=module), cwd=REPO, capture_output=True,
                        text=True, timeout=600, check=False)


def start(workdir, *extra):
  """The driver in the background, returned once it has printed its first step line."""
  proc = subprocess.Popen(command(workdir, *extra), cwd=REPO, stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True)
  for line in proc.stdout:
    if line.startswith("step "):
      return proc
  raise AssertionError(f"no step line: {proc.wait()} {proc.stderr.read()[-2000:]}")


def one_line_error(result, code=2):
  assert result.returncode == code, result.stderr[-3000:]
  lines = result.stderr.strip().splitlines()
  assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr[-3000:]
  return lines[0]


def listing(directory):
  """Every file under `directory` with its size and modification time."""
  out = {}
  for root, _, files in os.walk(directory):
    for name in files:
      path = os.path.join(root, name)
      out[path] = (os.path.getsize(path), os.stat(path).st_mtime_ns)
  return out


def distilled(workdir):
  with np.load(os.path.join(workdir, "distilled.npz")) as f:
    return {k: f[k] for k in f.files}


def assert_same_set(a, b):
  sa, sb = distilled(a), distilled(b)
  assert sorted(sa) == sorted(sb)
  for k in sa:
    np.testing.assert_array_equal(sa[k], sb[k], err_msg=k)


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
  """An uninterrupted run of FLAGS."""
  workdir = str(tmp_path_factory.mktemp("reference") / "w")
  result = run(workdir)
  assert result.returncode == 0, result.stderr[-3000:]
  return workdir


@pytest.mark.parametrize("signum, code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_a_signal_stops_at_a_step_boundary_with_a_checkpoint_and_the_rerun_matches(
    reference, tmp_path, signum, code):
  workdir = str(tmp_path / "w")
  proc = start(workdir)
  proc.send_signal(signum)
  out, err = proc.communicate(timeout=600)
  result = subprocess.CompletedProcess(proc.args, proc.returncode, out, err)
  line = one_line_error(result, code)
  assert line.startswith("interrupted at step ") and line.endswith(
      "; rerun the same command to resume"), line
  step = int(line.split()[3].rstrip(";"))
  assert 100 <= step < 6000
  assert not os.path.exists(os.path.join(workdir, "distilled.npz"))
  again = run(workdir)
  assert again.returncode == 0, again.stderr[-3000:]
  assert f"Resuming from step {step} " in again.stdout
  assert_same_set(workdir, reference)


def test_a_second_run_on_a_workdir_in_use_stops_at_once_and_writes_nothing(reference, tmp_path):
  """A run interrupted part-way leaves a workdir; a process holding its lock (as a running run
  does) makes a second run stop at once, naming it, with nothing written; once that process is
  killed its lock is taken over and the rerun resumes to the uninterrupted set."""
  workdir = str(tmp_path / "w")
  first = start(workdir)
  first.send_signal(signal.SIGINT)
  assert first.wait(timeout=600) == 130
  holder = subprocess.Popen(
      [sys.executable, "-c", "import sys, time; from robust_dd import io; "
       f"io.WorkdirLock({workdir!r}).acquire(); print('locked', flush=True); time.sleep(600)"],
      cwd=REPO, stdout=subprocess.PIPE, text=True)
  try:
    assert holder.stdout.readline().strip() == "locked"
    before = listing(workdir)
    line = one_line_error(run(workdir))
    assert f"is in use by a running process (pid {holder.pid})" in line
    assert listing(workdir) == before  # Nothing written, nothing removed.
  finally:
    holder.kill()  # A lock whose process died ...
    holder.wait()
  again = run(workdir)  # ... is taken over, and the run resumes from its checkpoint.
  assert again.returncode == 0, again.stderr[-3000:]
  assert "Resuming from step" in again.stdout
  assert_same_set(workdir, reference)


def test_a_rerun_asking_for_fewer_steps_than_saved_is_refused(reference, tmp_path):
  config = os.path.join(reference, "config.json")
  saved = open(config, encoding="utf-8").read(), listing(reference)
  line = one_line_error(run(reference, "--steps=20"))
  assert "checkpointed at step 6000, past --steps=20" in line
  assert (open(config, encoding="utf-8").read(), listing(reference)) == saved


def _idx_dir(tmp_path, images: bytes):
  """A --data_dir holding the four Fashion-MNIST IDX files, the training images replaced."""
  directory = tmp_path / "idx"
  directory.mkdir()
  labels = b"\x00\x00\x08\x01" + (3).to_bytes(4, "big") + bytes([0, 1, 2])
  t10k = b"\x00\x00\x08\x03" + b"".join(n.to_bytes(4, "big") for n in (3, 2, 2)) + bytes(12)
  (directory / "train-images-idx3-ubyte.gz").write_bytes(images)
  (directory / "train-labels-idx1-ubyte.gz").write_bytes(gzip.compress(labels))
  (directory / "t10k-images-idx3-ubyte.gz").write_bytes(gzip.compress(t10k))
  (directory / "t10k-labels-idx1-ubyte.gz").write_bytes(gzip.compress(labels))
  return directory


@pytest.mark.parametrize("kind", ["truncated_gzip", "random_bytes", "truncated_idx"])
def test_a_corrupt_idx_file_is_one_line_naming_it(tmp_path, kind):
  images = b"\x00\x00\x08\x03" + b"".join(n.to_bytes(4, "big") for n in (3, 2, 2)) + bytes(12)
  data = {"truncated_gzip": gzip.compress(images)[:-12],
          "random_bytes": np.random.default_rng(0).bytes(200),
          "truncated_idx": gzip.compress(images[:-5])}[kind]
  directory = _idx_dir(tmp_path, data)
  workdir = tmp_path / "w"
  line = one_line_error(run(str(workdir), "--dataset=fashion_mnist", f"--data_dir={directory}"))
  assert str(directory / "train-images-idx3-ubyte.gz") in line, line
  assert not workdir.exists()


def test_a_corrupt_npz_is_one_line_naming_it(tmp_path):
  path = tmp_path / "data.npz"
  np.savez(path, x_train=np.zeros((4, 2, 2)), y_train=np.arange(4), x_test=np.zeros((2, 2, 2)),
           y_test=np.arange(2))
  path.write_bytes(path.read_bytes()[:100])
  workdir = tmp_path / "w"
  line = one_line_error(run(str(workdir), "--dataset=npz", f"--data_path={path}"))
  assert str(path) in line and "cannot be read" in line
  assert not workdir.exists()


@pytest.mark.parametrize("workdir", ["/proc/robust_dd_run", "/dev/null/run", "FILE/run", "FILE"])
def test_an_unusable_workdir_is_one_line(tmp_path, workdir):
  afile = tmp_path / "a_file"
  afile.write_text("not a directory")
  workdir = workdir.replace("FILE", str(afile))
  line = one_line_error(run(workdir))
  assert line.startswith("error: ") and ("--workdir" in line or workdir in line), line
  assert afile.read_text() == "not a directory"


def test_the_handlers_defer_a_signal_to_the_step_boundary_and_a_second_one_raises():
  """In-process: inside `deferred()` the first SIGINT is only recorded; a second raises."""
  assert interrupt.install()
  try:
    with interrupt.deferred():
      os.kill(os.getpid(), signal.SIGINT)
      time.sleep(0.01)
      assert interrupt.pending() == signal.SIGINT
      with pytest.raises(interrupt.Interrupted) as e:
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(1)
      assert e.value.signum == signal.SIGTERM and e.value.exit_code == 143
    interrupt.clear()
    with pytest.raises(interrupt.Interrupted):  # Outside the block: at once.
      os.kill(os.getpid(), signal.SIGINT)
      time.sleep(1)
  finally:
    interrupt.uninstall()
