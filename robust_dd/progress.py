"""Progress of long phases: a bar with rate and ETA on a terminal, plain periodic lines otherwise.

    with progress.Progress(300, desc="evaluation networks", unit="epoch") as bar:
      for _ in range(30):
        ...  # ten epochs
        bar.update(10)

On a terminal (`stream.isatty()`) it draws a `tqdm` bar on stderr, removed when the phase ends;
elsewhere (CI logs, files, notebooks' captured output) it calls `log` with a line like
`3 networks: 150/300 epoch (50%), 2.1 epoch/s, elapsed 1m11s, left≈1m11s` every `every_s`
seconds, and at the end if it printed one before: a phase shorter than `every_s` prints nothing,
so logs stay short. Messages printed while a bar is open go
through `write` so they do not break it.
"""

from __future__ import annotations

import sys
import time
from typing import Any, Callable, Optional


def format_seconds(seconds: float) -> str:
  """`75` -> `1m15s`, `9.4` -> `9s`."""
  seconds = int(round(seconds))
  return f"{seconds // 60}m{seconds % 60:02d}s" if seconds >= 60 else f"{seconds}s"


class Progress:
  """Counts `total` units of a phase; see the module docstring.

  Args:
    total: units in the phase (steps, epochs, selections); `initial` of them already done (a
      resumed run), so rate and ETA count only this run's.
    bar: True/False force the tqdm bar on or off; None (default) draws it when `stream` is a
      terminal.
    log: where plain lines go (default `print`); every_s: seconds between them.
    lines: False for none (a caller that prints its own, such as the distillation loop, and wants
      only the bar on a terminal).
  """

  def __init__(self, total: int, *, desc: str, unit: str = "step", initial: int = 0,
               bar: Optional[bool] = None, log: Callable[[str], None] = print,
               every_s: float = 30.0, lines: bool = True, stream: Any = None):
    self.total, self.desc, self.unit, self.done = int(total), desc, unit, int(initial)
    self._initial, self._log, self._every_s, self._lines = int(initial), log, every_s, lines
    self._stream = stream if stream is not None else sys.stderr
    self._t0 = time.time()
    self._last_line = self._t0
    self._printed = False
    self._bar = None
    if bar if bar is not None else _isatty(self._stream):
      from tqdm import tqdm  # Imported here: plain lines need no tqdm.
      self._bar = tqdm(total=self.total, initial=self.done, desc=desc, unit=unit,
                       file=self._stream, dynamic_ncols=True, leave=False)

  def __enter__(self) -> "Progress":
    return self

  def __exit__(self, *exc) -> None:
    self.close()

  @property
  def rate(self) -> float:
    """Units per second in this run so far."""
    elapsed = time.time() - self._t0
    return (self.done - self._initial) / elapsed if elapsed > 0 else 0.0

  @property
  def eta_s(self) -> float:
    """Seconds left at the current rate (0 before the first unit)."""
    rate = self.rate
    return (self.total - self.done) / rate if rate > 0 else 0.0

  def line(self) -> str:
    """The plain progress line for the current count."""
    pct = 100.0 * self.done / self.total if self.total else 100.0
    return (f"{self.desc}: {self.done}/{self.total} {self.unit} ({pct:.0f}%), "
            f"{self.rate:.3g} {self.unit}/s, elapsed {format_seconds(time.time() - self._t0)}, "
            f"left≈{format_seconds(self.eta_s)}")

  def update(self, n: int = 1, **postfix: Any) -> None:
    """`n` more units done; `postfix` (e.g. loss=0.12) shows beside the bar."""
    self.done = min(self.done + n, self.total)
    if self._bar is not None:
      if postfix:
        self._bar.set_postfix(postfix, refresh=False)
      self._bar.update(n)
      return
    if not self._lines:
      return
    now = time.time()
    if now - self._last_line >= self._every_s or (self._printed and self.done == self.total):
      self._last_line, self._printed = now, True
      extra = "".join(f", {k}={v:.4g}" if isinstance(v, float) else f", {k}={v}"
                      for k, v in postfix.items())
      self._log(self.line() + extra)

  def write(self, message: str) -> None:
    """`log(message)`, above the bar when one is drawn."""
    if self._bar is not None:
      with self._bar.external_write_mode():
        self._log(message)
    else:
      self._log(message)

  def close(self) -> None:
    if self._bar is not None:
      self._bar.close()
      self._bar = None


def _isatty(stream) -> bool:
  try:
    return bool(stream.isatty())
  except (AttributeError, ValueError):
    return False
