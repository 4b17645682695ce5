python scripts/benchmark_matching.py --methods=dc --ipcs=10 --repeats=1 --nocompare_loop --noinner_share --out=docs/benchmarks/matching_ipc10.json
