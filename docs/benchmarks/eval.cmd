python scripts/benchmark_eval.py --repeats=2 --out=docs/benchmarks/eval.json
