python scripts/benchmark_matching.py --methods=dc,dsa --ipcs=1 --repeats=3 --nocompare_loop --out=docs/benchmarks/matching_ipc1.json
