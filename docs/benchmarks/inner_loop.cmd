python scripts/benchmark_inner_loop.py --rounds=3 --out=docs/benchmarks/inner_loop.json
