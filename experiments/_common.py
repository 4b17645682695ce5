"""What the drivers share: absl flags generated from a config dataclass, and one `main`.

Every leaf field of a config (`robust_dd.config`) becomes one flag, with its type, default,
choices and help text taken from the field (`config.flag_specs`), so no flag is written twice.
The flags a user sets first are attributed to the driver module itself, so `--help` (which lists
only the main module's flags) shows them, and `--helpfull` lists them first, then the other config
flags, then absl's.
"""

from __future__ import annotations

import importlib
import os
import sys
from typing import Any, Callable, Iterable

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")  # TensorFlow, if a TFDS load imports it.

from absl import app  # pylint: disable=g-import-not-at-top
from absl import flags
from absl import logging

FLAGS = flags.FLAGS
# The heading of the other config flags in --helpfull; absl sorts headings, and an upper-case
# first letter puts these before absl's own flags.
OTHER_FLAGS = "Config flags (robust_dd.config)"


def _module_name(name: str) -> str:
  return sys.argv[0] if name == "__main__" else name


def define_config_flags(config_cls, *, main: Iterable[str], main_module: str) -> list[str]:
  """Defines one flag per leaf field of `config_cls`; those named in `main` belong to
  `main_module` (pass the driver's `__name__`), the others to OTHER_FLAGS. Returns the names."""
  from robust_dd import config as config_lib  # pylint: disable=g-import-not-at-top
  from robust_dd import presets  # pylint: disable=g-import-not-at-top
  main = set(main)
  names = []
  for spec in config_lib.flag_specs(config_cls, help_suffix=presets.preset_help):
    module = _module_name(main_module) if spec.name in main else OTHER_FLAGS
    help_text = spec.help
    if spec.kind == "bool":
      flags.DEFINE_boolean(spec.name, spec.default, help_text, module_name=module)
    elif spec.kind == "enum":
      flags.DEFINE_enum(spec.name, spec.default, list(spec.choices), help_text,
                        module_name=module)
    else:
      parser = {"int": flags.IntegerParser, "float": flags.FloatParser,
                "str": flags.ArgumentParser, "list": flags.ListParser}[spec.kind]()
      serializer = flags.CsvListSerializer(",") if spec.kind == "list" else None
      default = list(spec.default) if spec.kind == "list" else spec.default
      flags.DEFINE(parser, spec.name, default, help_text, serializer=serializer,
                   module_name=module)
    names.append(spec.name)
  return names


def config_driver(config_cls, *, main: Iterable[str], main_module: str, experiment: str,
                  default_workdir: str, errors=(ValueError,)):
  """Defines a driver's flags (the config's and --workdir) and returns (config_from_flags, main).

  `experiment` is the library function `fn(config, workdir, log=...)` to run, as
  "module.function" (imported when the driver runs, so `--help` starts fast);
  `default_workdir` is a format string of the config `c` used when --workdir is not given.
  """
  names = define_config_flags(config_cls, main=main, main_module=main_module)
  flags.DEFINE_string("workdir", None, f"Output directory (default: {default_workdir}).",
                      module_name=_module_name(main_module))

  def from_flags():
    return config_from_flags(config_cls, names)

  def main_fn(argv):
    config = from_flags()
    workdir = FLAGS.workdir or default_workdir.format(c=config)
    module, name = experiment.rsplit(".", 1)
    fn = getattr(importlib.import_module(module), name)
    run_experiment(argv, lambda w, log: fn(config, w, log=log), workdir=workdir, errors=errors)

  return from_flags, main_fn


def config_from_flags(config_cls, names: Iterable[str]):
  """The config of the parsed flags `names` (lists become tuples)."""
  values = {n: FLAGS[n].value for n in names}
  return config_cls.make(**{n: tuple(v) if isinstance(v, list) else v
                            for n, v in values.items()})


def quiet_logs() -> None:
  """Keeps a CPU run's stderr to our own messages: JAX logs, at INFO, that it found no TPU or
  GPU backend; absl's default verbosity would print that."""
  logging.set_verbosity(logging.WARNING)


HELP_FLAGS = ("--help", "-help", "-h", "-?", "--helpshort", "--helpfull", "--helpxml")


def parse_flags(argv: list[str]) -> list[str]:
  """absl's flag parsing with a one-line error and exit code 2 for any bad flag or value (absl
  prints two lines and exits 1), and exit code 0 after --help (absl exits 1)."""
  try:
    return FLAGS(argv)
  except flags.Error as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(2)
  except SystemExit as e:
    if e.code == 1 and any(a.split("=")[0] in HELP_FLAGS for a in argv[1:]):
      sys.exit(0)
    raise


def run(main: Callable[[list[str]], Any]) -> None:
  """`app.run(main)` for a driver: `parse_flags`, and Ctrl-C / SIGTERM routed to
  `robust_dd.interrupt` (a run stops at its next step boundary with a checkpoint)."""
  app.run(main, flags_parser=parse_flags)


def _interrupted(e: KeyboardInterrupt) -> None:
  from robust_dd import interrupt  # pylint: disable=g-import-not-at-top
  step = getattr(e, "step", None)
  where = f" at step {step}" if step is not None else ""
  print(f"interrupted{where}; rerun the same command to resume", file=sys.stderr, flush=True)
  sys.exit(e.exit_code if isinstance(e, interrupt.Interrupted) else 130)


def run_experiment(argv, experiment: Callable[[str, Callable[[str], None]], Any], *,
                   workdir: str, errors=(ValueError,)) -> None:
  """The drivers' `main`: `experiment(workdir, log)` with progress printed as it comes. Bad input
  (`errors`, and a workdir that cannot be written) ends the process with exit code 2 and a
  one-line message, not a traceback; SIGINT and SIGTERM end it at a step boundary with one line
  and exit code 130 or 143."""
  if len(argv) > 1:
    print(f"error: unexpected arguments {argv[1:]} (flags are written --name=value)",
          file=sys.stderr)
    sys.exit(2)
  quiet_logs()
  from robust_dd import interrupt  # pylint: disable=g-import-not-at-top
  interrupt.install()
  try:
    experiment(workdir, lambda s: print(s, flush=True))
  except KeyboardInterrupt as e:
    _interrupted(e)
  except errors as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(2)
  except PermissionError as e:
    print(f"error: cannot write {e.filename}: {e.strerror}. Choose another --workdir.",
          file=sys.stderr)
    sys.exit(2)
  print(f"Outputs in {workdir}/", flush=True)
