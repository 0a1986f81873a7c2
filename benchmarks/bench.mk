# `make bench` and `make bench-quick` (benchmarks/README.md). Included from the Makefile.
# Extra flags go through BENCH_ARGS, e.g. make bench BENCH_ARGS="--systems ours,baseline".
BENCH_ARGS ?=

.PHONY: bench bench-quick

bench: venv ## Benchmark ours vs static batching vs the naive baseline (~10 min); see benchmarks/results/latest
	@$(PY) benchmarks/bench.py $(BENCH_ARGS)

bench-quick: venv ## The same benchmark, fewer levels and requests (~90 s on 2 cores)
	@$(PY) benchmarks/bench.py --quick $(BENCH_ARGS)
