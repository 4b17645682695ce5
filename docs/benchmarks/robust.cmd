python scripts/benchmark_robust.py --methods=kip,dc --repeats=3 --loop_max_clusters=0 --out=docs/benchmarks/robust.json
