python scripts/benchmark_mtt.py --syn_steps=10,20 --repeats=2 --out=docs/benchmarks/mtt.json
