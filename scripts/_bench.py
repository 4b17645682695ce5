"""Helpers shared by the benchmark scripts: mnist5k on device, XLA memory, formatting."""

import json
import resource
import time

import jax
import jax.numpy as jnp
import numpy as np

from robust_dd import data as data_lib
from robust_dd import io


def mnist5k_real():
  """(dataset, preprocessed x_train, the on-device `real` dict the distillation step samples)."""
  ds = data_lib.load_mnist5k()
  prep = data_lib.fit_preprocessing(ds.x_train)
  x = data_lib.apply_preprocessing(ds.x_train, prep)
  table, counts = data_lib.class_index_table(ds.y_train, 10)
  real = {"images": jnp.asarray(x), "labels": data_lib.one_hot_centered(ds.y_train, 10),
          "table": jnp.asarray(table), "counts": jnp.asarray(counts)}
  return ds, x, real


def compiled_bytes(compiled):
  """XLA's estimate for a compiled step: arguments + outputs + temporaries - aliased."""
  mem = compiled.memory_analysis()
  if mem is None:
    return None
  return int(mem.argument_size_in_bytes + mem.output_size_in_bytes + mem.temp_size_in_bytes
             - getattr(mem, "alias_size_in_bytes", 0))


def device_peak_bytes():
  return (jax.devices()[0].memory_stats() or {}).get("peak_bytes_in_use")


def mib(b):
  return "n/a" if b is None else f"{b / 2**20:,.0f}"


def memory_fields(compiled):
  """The memory columns every benchmark records for a compiled step."""
  return {"xla_step_bytes": compiled_bytes(compiled), "device_peak_bytes": device_peak_bytes(),
          "process_peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}


def compile_step(step, state, real, key):
  """Compiles a jitted distillation step; returns (compiled, compile seconds, run), where
  `run()` applies it once more (state threaded through, key folded with the call's index) and
  returns its metrics once they are ready."""
  t0 = time.time()
  compiled = step.lower(state, real, key).compile()
  compile_seconds = time.time() - t0
  calls = [0]

  def run():
    nonlocal state
    state, metrics = compiled(state, real, jax.random.fold_in(key, calls[0]))
    calls[0] += 1
    return jax.block_until_ready(metrics)

  return compiled, compile_seconds, run


def cpu_seconds() -> float:
  """User + system CPU time of this process so far, all threads: stretched much less than wall
  time when the VM's cores are taken away (on the 2-core machine one compiled call's wall time
  moved 2.3 -> 4.1 s within a minute while its CPU time stayed at 3.9-4.8 s)."""
  usage = resource.getrusage(resource.RUSAGE_SELF)
  return usage.ru_utime + usage.ru_stime


def interleave_cpu(fns: dict, *, repeats: int) -> tuple[dict, dict, dict]:
  """Calls each of `fns` (name -> no-argument callable) in turn, `repeats` rounds, so that
  systems compared in one process see the same machine state. Returns ({name: [wall seconds]},
  {name: [CPU seconds]} (`cpu_seconds` around each call), {name: last return value})."""
  wall, cpu, last = {name: [] for name in fns}, {name: [] for name in fns}, {}
  for _ in range(repeats):
    for name, fn in fns.items():
      t0, c0 = time.time(), cpu_seconds()
      last[name] = fn()
      wall[name].append(time.time() - t0)
      cpu[name].append(cpu_seconds() - c0)
  return wall, cpu, last


def interleave(fns: dict, *, repeats: int) -> tuple[dict, dict]:
  """`interleave_cpu` without the CPU times: ({name: [wall seconds]}, {name: last value})."""
  wall, _, last = interleave_cpu(fns, repeats=repeats)
  return wall, last


def time_step(step, state, real, key, *, repeats: int):
  """Compiles a jitted distillation step, then runs it `repeats` times (state threaded through).

  Returns (compiled, compile seconds, per-run seconds, last metrics).
  """
  compiled, compile_seconds, run = compile_step(step, state, real, key)
  times, last = interleave({"step": run}, repeats=repeats)
  return compiled, compile_seconds, times["step"], last["step"]


def run_all(bench_fn, configs, *, out: str) -> list[dict]:
  """Runs `bench_fn(**config)` for each config dict, printing each result as a JSON line and
  rewriting `out` after each (so a crash keeps what finished). A configuration that fails (e.g. out
  of memory) is recorded as the config plus its `error`, and the others still run."""
  results = []
  for config in configs:
    try:
      r = bench_fn(**config)
    except Exception as e:  # pylint: disable=broad-except  # e.g. out of memory: record it.
      r = {**config, "error": repr(e)[:300]}
    results.append(r)
    print(json.dumps(r), flush=True)
    save(out, results)
  return results


def save(out: str, results: list[dict]):
  """Writes `results` with the device, backend and JAX version to the JSON file `out`."""
  io.save_json(out, {"device": str(jax.devices()[0]), "backend": jax.default_backend(),
                     "jax_version": jax.__version__, "results": results})


def run_interleaved(prepare_fn, configs, *, repeats: int, out: str) -> list[dict]:
  """Like `run_all`, with the timed calls of all configurations interleaved: `prepare_fn(**config)`
  returns (row dict, run) with `run()` as `compile_step`'s; every row is compiled and called once
  (its `first_call_seconds`, untimed), then all are called in turn for `repeats` rounds, so that a
  drift in the machine's speed reaches every row alike. Each row gets its `times`, their median
  `seconds_per_step` and minimum `min_seconds`, its `cpu_times` (`cpu_seconds`) and their median
  `cpu_seconds_per_step`, and `loss` (last call); `out` is rewritten after
  compiling and after every round (a crash keeps what finished). A configuration that fails is
  recorded as the config plus its `error`."""
  rows, runs = [], {}
  for config in configs:
    try:
      row, run = prepare_fn(**config)
      start = time.time()
      run()
      row["first_call_seconds"] = time.time() - start
      runs[len(rows)] = run
    except Exception as e:  # pylint: disable=broad-except  # e.g. out of memory: record it.
      row = {**config, "error": repr(e)[:300]}
    rows.append(row)
    print(json.dumps(row), flush=True)
    save(out, rows)
  for i in runs:
    rows[i]["times"], rows[i]["cpu_times"] = [], []
  for _ in range(repeats):
    wall, cpu, last = interleave_cpu(runs, repeats=1)
    for i, t in wall.items():
      rows[i]["times"] += t
      rows[i]["cpu_times"] += cpu[i]
      rows[i]["seconds_per_step"] = float(np.median(rows[i]["times"]))
      rows[i]["min_seconds"] = float(np.min(rows[i]["times"]))
      rows[i]["cpu_seconds_per_step"] = float(np.median(rows[i]["cpu_times"]))
      rows[i]["loss"] = float(last[i]["loss"])
    save(out, rows)
  return rows
