python scripts/benchmark_kip.py --archs=fc,conv_rf --ipcs=1,10 --batches=100 --target_counts=1000,10000 --out=docs/benchmarks/kip.json
