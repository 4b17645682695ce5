"""Ctrl-C and SIGTERM that stop a run at a step boundary instead of mid-write.

A driver calls `install()` once (main thread). From then on SIGINT and SIGTERM raise
`Interrupted` (a `KeyboardInterrupt`) wherever the program is, except inside `deferred()`: there
the first signal is only recorded, and the loop that opened the block polls `pending()` at its
step boundary, writes a checkpoint and raises `Interrupted(signum, step=...)` itself. A second
signal inside the block raises at once, so a stuck step can still be stopped.

Without `install()` (a library user's own process) nothing changes: `deferred()` and `pending()`
are no-ops and Ctrl-C raises Python's own `KeyboardInterrupt`.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from typing import Iterator, Optional

EXIT_CODES = {signal.SIGINT: 130, signal.SIGTERM: 143}  # 128 + the signal's number.


class Interrupted(KeyboardInterrupt):
  """A run stopped by a signal; `step` is the last step checkpointed (None outside the loop)."""

  def __init__(self, signum: int, step: Optional[int] = None):
    super().__init__(signum, step)
    self.signum, self.step = signum, step

  @property
  def exit_code(self) -> int:
    return EXIT_CODES.get(self.signum, 130)


class _State:
  installed = False
  deferring = 0  # Nesting depth of `deferred()` blocks.
  signum: Optional[int] = None  # The signal recorded inside a deferred block.


_STATE = _State()


def _handler(signum, frame):  # pylint: disable=unused-argument
  if _STATE.deferring and _STATE.signum is None:
    _STATE.signum = signum
    return
  raise Interrupted(signum)


def install() -> bool:
  """Routes SIGINT and SIGTERM to `Interrupted`; returns False (and does nothing) outside the
  main thread, where Python cannot install signal handlers."""
  if threading.current_thread() is not threading.main_thread():
    return False
  for signum in EXIT_CODES:
    signal.signal(signum, _handler)
  _STATE.installed, _STATE.signum = True, None
  return True


def uninstall() -> None:
  """Restores the default handlers (tests)."""
  signal.signal(signal.SIGINT, signal.default_int_handler)
  signal.signal(signal.SIGTERM, signal.SIG_DFL)
  _STATE.installed, _STATE.deferring, _STATE.signum = False, 0, None


@contextlib.contextmanager
def deferred() -> Iterator[None]:
  """A block in which the first signal waits for `pending()` to be polled."""
  _STATE.deferring += 1
  try:
    yield
  finally:
    _STATE.deferring -= 1


def pending() -> Optional[int]:
  """The signal received inside `deferred()` and not yet acted on, else None."""
  return _STATE.signum


def clear() -> None:
  _STATE.signum = None
