"""Markdown tables from metrics files.

Imports no JAX, so table scripts start in well under a second.

Every table takes the dicts that runs write (metrics.json, evaluation.json). A run's settings are
read from its `flags` (the flat flag values, written since v0.2) or, for older runs, from its flat
`config`.
"""

from __future__ import annotations

import json
import os
import statistics
from typing import Any, Iterable, Optional

# Coreset methods in the order tables list them (`robust_dd.select.METHODS`).
SELECT_ORDER = ("random", "kmeans_centers", "herding", "kcenter", "sensitivity",
                "sensitivity_krr", "lcmat")


def flags_of(run: dict[str, Any]) -> dict[str, Any]:
  """The flat flag values of a run's metrics (new runs: `flags`; older runs: `config`)."""
  return run["flags"] if "flags" in run else run["config"]


def _mean_std(values: Iterable[float], scale: float = 100.0) -> Optional[tuple[float, float]]:
  v = [scale * x for x in values if x is not None]
  return (statistics.fmean(v), statistics.pstdev(v)) if v else None


def _cell(values: Iterable[float], empty: str = "-") -> str:
  ms = _mean_std(values)
  return empty if ms is None else f"{ms[0]:.1f} ± {ms[1]:.1f}"


def _table(header: list[str], rows: list[list[Any]]) -> str:
  lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
  lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
  return "\n".join(lines)


def _group(runs, key) -> dict[tuple, list]:
  groups: dict[tuple, list] = {}
  for m in runs:
    groups.setdefault(key(flags_of(m), m), []).append(m)
  return groups


def results_table(runs: list[dict[str, Any]]) -> str:
  """Distilled vs random-subset test accuracy (mean ± std over evaluation seeds), one row a run."""
  rows = []
  for m in runs:
    c = flags_of(m)
    rows.append([c["method"], c["dataset"], c["ipc"], m["steps"], m.get("evaluator", "KRR"),
                 f"{100 * m['distilled_test_acc']:.1f}% ± "
                 f"{100 * m.get('distilled_test_acc_std', 0.0):.1f}",
                 f"{100 * m['random_subset_test_acc_mean']:.1f}% ± "
                 f"{100 * m['random_subset_test_acc_std']:.1f}"])
  return _table(["method", "dataset", "IPC", "steps", "evaluator", "distilled acc",
                 "random subset acc"], rows)


def evaluation_table(report: dict[str, Any]) -> str:
  """The table `experiments.evaluate` prints: one row per evaluator of an evaluation.json."""
  c = flags_of(report)
  rows = []
  for name in ("network", "krr"):
    if name not in report:
      continue
    e = report[name]
    random = (f"{100 * e['random_subset_test_acc_mean']:.1f}% ± "
              f"{100 * e['random_subset_test_acc_std']:.1f}"
              if "random_subset_test_acc_mean" in e else "-")
    rows.append([c["method"], c["dataset"], report["ipc"], e["evaluator"],
                 f"{100 * e['distilled_test_acc']:.1f}% ± "
                 f"{100 * e['distilled_test_acc_std']:.1f}", random])
  return _table(["method", "dataset", "IPC", "evaluator", "distilled acc", "random subset acc"],
                rows)


def _objective(c: dict[str, Any]) -> str:
  """A run's robust objective in words: plain, or the CVaR's settings and placement."""
  if c.get("robust", "none") == "none":
    return "plain"
  extra = "" if c.get("num_clusters", 5) == 5 else f", k={c['num_clusters']}"
  return (f"CVaR α={c['tail_fraction']} λ={c['robust_weight']}{extra} on "
          f"{c.get('robust_on', 'matching')}")


def robustness_table(runs: list[dict[str, Any]]) -> str:
  """Robustness metrics, runs grouped by (dataset, subgroup, method, IPC, objective) and each
  number the mean ± std over the group's runs (e.g. seeds): test accuracy, worst and mean test
  cluster (pixel k-means), worst feature cluster (`--feature_cluster_epochs`; '-' without),
  rare subgroup, common samples, and the random real subsets' accuracy and rare-subgroup accuracy
  under the same evaluator. Runs need `distilled_robustness` (`robust_eval`)."""

  def key(c, _):
    return c["dataset"], c.get("subgroup", "none"), c["method"], c["ipc"], _objective(c)

  rows = []
  for (dataset, subgroup, method, ipc, objective), ms in sorted(
      _group(runs, key).items(), key=lambda kv: (*kv[0][:4], kv[0][4] != "plain", kv[0][4])):
    d = [m["distilled_robustness"] for m in ms]
    r = [m.get("random_subset_robustness", {}) for m in ms]
    rows.append([dataset, subgroup, method, ipc, objective, len(ms), ms[0]["steps"],
                 _cell(x["accuracy"] for x in d), _cell(x["worst_cluster_accuracy"] for x in d),
                 _cell(x["mean_cluster_accuracy"] for x in d),
                 _cell(x.get("feature_worst_cluster_accuracy") for x in d),
                 _cell(x.get("rare_accuracy") for x in d),
                 _cell(x.get("common_accuracy") for x in d), _cell(x.get("accuracy") for x in r),
                 _cell(x.get("rare_accuracy") for x in r)])
  return _table(["dataset", "subgroup", "method", "IPC", "objective", "runs", "steps", "test acc",
                 "worst cluster", "mean cluster", "worst feature cluster", "rare subgroup",
                 "common", "random subset acc", "random subset rare"], rows)


def coreset_table(runs: list[dict[str, Any]]) -> str:
  """Coreset runs grouped by (fraction, method): mean ± std over runs (seeds) of each
  evaluator's mean test accuracy, and the mean selection time."""
  groups = _group(runs, lambda c, m: (c["fraction"], m["num_selected"], c["method"]))
  rows = []
  for (fraction, num, method), ms in sorted(
      groups.items(), key=lambda kv: (kv[0][0], SELECT_ORDER.index(kv[0][2]))):
    cells = [_cell((m[name]["test_acc"] for m in ms if name in m), empty="–")
             for name in ("network", "krr")]
    secs = statistics.fmean(m["selection_seconds"] for m in ms)
    rows.append([f"{fraction * 100:g}%", num, method, len(ms), *cells, f"{secs:.1f}"])
  return _table(["fraction", "selected", "method", "runs", "network acc", "KRR acc",
                 "selection s"], rows)


def init_sampler_table(runs: list[dict[str, Any]]) -> str:
  """KIP runs grouped by (IPC, init, sampler): mean ± std of KRR test accuracy over runs, and the
  mean random-subset accuracy."""
  groups = _group(runs, lambda c, _: (c["ipc"], c["init"], c["sampler"]))
  rows = []
  for (ipc, init, sampler), ms in sorted(groups.items()):
    rnd = _mean_std(m["random_subset_test_acc_mean"] for m in ms)
    rows.append([ipc, init, sampler, len(ms), _cell(m["distilled_test_acc"] for m in ms),
                 f"{rnd[0]:.1f}"])
  return _table(["IPC", "init", "sampler", "runs", "KIP test acc (KRR)", "random subset"], rows)


def load_runs(workdirs: Iterable[str], name: str = "metrics.json"
              ) -> tuple[list[dict[str, Any]], list[str]]:
  """The `name` files of the workdirs that have one, and the workdirs that do not."""
  runs, missing = [], []
  for w in workdirs:
    path = os.path.join(w, name)
    if os.path.exists(path):
      with open(path, encoding="utf-8") as f:
        runs.append(json.load(f))
    else:
      missing.append(w)
  return runs, missing


def eval_nets_table(report: dict[str, Any]) -> str:
  """Cross-architecture evaluation (`--eval_nets`) of a metrics.json or evaluation.json: one row
  per network, the set's accuracy beside random subsets of the same size (mean ± std over
  seeds)."""
  c = flags_of(report)
  rows = []
  for net, e in report.get("eval_nets", {}).items():
    rows.append([c["method"], c["ipc"], net, e["evaluator"],
                 _cell(e["distilled_test_accs"]),
                 _cell(e["random_subset_test_acc"]) if "random_subset_test_acc" in e else "-"])
  return _table(["method", "IPC", "network", "evaluator", "distilled acc", "random subset acc"],
                rows)


def cross_architecture_table(reports: list[dict[str, Any]]) -> str:
  """Cross-architecture evaluations (`--eval_nets`) of several sets side by side: one row per
  set (method, IPC), one column per network (mean ± std over seeds), and per IPC a row of the
  random real subsets of that size (each network's from the first report of that IPC that has
  them). Reports of one set (same workdir, relative paths taken from the current directory, or
  same method and IPC where a report has no workdir),
  e.g. from separate `experiments.evaluate` runs on different networks, are merged."""
  merged: dict[Any, dict[str, Any]] = {}
  for r in reports:
    c = flags_of(r)
    key = os.path.realpath(r["workdir"]) if r.get("workdir") else (c["method"], c["ipc"])
    if key in merged:
      merged[key]["eval_nets"].update(r.get("eval_nets", {}))
    else:
      merged[key] = dict(r, eval_nets=dict(r.get("eval_nets", {})))
  nets: list[str] = []
  for r in merged.values():
    nets += [n for n in r["eval_nets"] if n not in nets]
  rows, random_cells = [], {}
  for r in sorted(merged.values(), key=lambda r: (flags_of(r)["ipc"], flags_of(r)["method"])):
    c, e = flags_of(r), r["eval_nets"]
    rows.append([c["method"], c["ipc"], *(_cell(e[n]["distilled_test_accs"]) if n in e else "-"
                                          for n in nets)])
    for n, v in e.items():
      if "random_subset_test_acc" in v:
        random_cells.setdefault(c["ipc"], {}).setdefault(n, _cell(v["random_subset_test_acc"]))
  random_rows = [["random real subset", ipc, *(cells.get(n, "-") for n in nets)]
                 for ipc, cells in sorted(random_cells.items())]
  return _table(["set", "IPC", *nets], rows + random_rows)
