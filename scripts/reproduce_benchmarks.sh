#!/usr/bin/env bash
# Reruns the benchmarks the docs' Benchmarks page shows: each writes docs/benchmarks/NAME.json and
# the command beside it (NAME.cmd); the page's tables are generated from them at build time
# (scripts/benchmark_report.py). About 40 minutes on a 2-core CPU, most of it PyTorch's IPC-10
# outer iteration; on a GPU, minutes. ONLY=name1,name2 reruns some; OUT=DIR writes elsewhere.
# The PyTorch comparisons need `pip install torch` (not a dependency; skipped without it).
set -euo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-docs/benchmarks}"
mkdir -p "$OUT"
run() {
  local name=$1; shift
  if [[ -n "${ONLY:-}" && ",$ONLY," != *",$name,"* ]]; then return; fi
  echo "== $name: python $*"
  echo "python $* --out=$OUT/$name.json" > "$OUT/$name.cmd"
  python "$@" --out="$OUT/$name.json"
}
run matching_ipc1 scripts/benchmark_matching.py --methods=dc,dsa --ipcs=1 --repeats=3 --nocompare_loop
run matching_ipc10 scripts/benchmark_matching.py --methods=dc --ipcs=10 --repeats=1 --nocompare_loop --noinner_share
run inner_loop scripts/benchmark_inner_loop.py --rounds=3
run robust scripts/benchmark_robust.py --methods=kip,dc --repeats=3 --loop_max_clusters=0
run mtt scripts/benchmark_mtt.py --syn_steps=10,20 --repeats=2
run eval scripts/benchmark_eval.py --repeats=2
run kip scripts/benchmark_kip.py --archs=fc,conv_rf --ipcs=1,10 --batches=100 --target_counts=1000,10000
python scripts/benchmark_report.py "$OUT"/*.json
