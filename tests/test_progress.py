"""robust_dd.progress: plain lines off a terminal (rate, ETA, only for long phases), a tqdm bar on
one, messages written above it."""

import io as pyio

import pytest

from robust_dd import progress


class Clock:
  """A stand-in for time.time that the test advances."""

  def __init__(self):
    self.now = 1000.0

  def __call__(self):
    return self.now


@pytest.fixture
def clock(monkeypatch):
  c = Clock()
  monkeypatch.setattr(progress.time, "time", c)
  return c


def test_format_seconds():
  assert [progress.format_seconds(s) for s in (0, 9.4, 59.6, 75, 3600)] == [
      "0s", "9s", "1m00s", "1m15s", "60m00s"]


def test_plain_lines_every_period_with_rate_and_eta_and_none_for_a_short_phase(clock):
  lines = []
  bar = progress.Progress(100, desc="3 networks", unit="epoch", log=lines.append, every_s=30,
                          stream=pyio.StringIO())
  clock.now += 10
  bar.update(10)  # 10 s in: too early for a line.
  assert not lines
  clock.now += 20
  bar.update(20, loss=0.125)  # 30 epochs in 30 s: 1 epoch/s, 70 s left.
  assert lines == ["3 networks: 30/100 epoch (30%), 1 epoch/s, elapsed 30s, left≈1m10s, "
                   "loss=0.125"]
  clock.now += 5
  bar.update(70)  # The end prints, since a line came before.
  assert len(lines) == 2 and lines[-1].startswith("3 networks: 100/100 epoch (100%)")
  short = []
  quick = progress.Progress(5, desc="quick", log=short.append, stream=pyio.StringIO())
  quick.update(5)
  quick.close()
  assert not short


def test_a_resumed_phase_counts_only_this_runs_rate(clock):
  bar = progress.Progress(100, desc="distillation", initial=50, log=lambda s: None,
                          stream=pyio.StringIO())
  clock.now += 10
  bar.update(10)
  assert bar.rate == pytest.approx(1.0) and bar.eta_s == pytest.approx(40.0)


class Terminal(pyio.StringIO):
  def isatty(self):
    return True


def test_a_terminal_gets_a_bar_and_messages_above_it():
  stream, lines = Terminal(), []
  with progress.Progress(4, desc="distillation", log=lines.append, stream=stream) as bar:
    assert bar._bar is not None  # pylint: disable=protected-access
    bar._bar.mininterval = 0  # pylint: disable=protected-access  # Redraw on every update.
    bar.update(2, loss=0.5)
    bar.write("step 2/4")
  assert lines == ["step 2/4"]  # Through `log`, not lost to the bar.
  drawn = stream.getvalue()
  assert "distillation" in drawn and "2/4" in drawn and "loss=0.5" in drawn
  plain = progress.Progress(4, desc="x", stream=pyio.StringIO())
  assert plain._bar is None  # pylint: disable=protected-access
