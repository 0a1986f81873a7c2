# `make bench` and `make bench-quick` (benchmarks/README.md). Included from the Makefile.
# Extra flags go through BENCH_ARGS, e.g. make bench BENCH_ARGS="--systems ours,baseline".
BENCH_ARGS ?=

.PHONY: bench bench-quick bench-peer bench-real bench-replicas bench-adapters bench-vllm bench-lm-eval aiperf \
	gpu-check gpu-check-dry-run gpu-check-wheels

AIPERF_VENV ?= .venv-aiperf
AIPERF_STAMP := $(AIPERF_VENV)/.installed-$(shell cat benchmarks/aiperf.lock | cksum | cut -d' ' -f1)

bench: venv ## Benchmark ours vs static batching vs the naive baseline, and the OpenAI path (~12 min)
	@$(PY) -m benchmarks.bench $(BENCH_ARGS)

bench-quick: venv ## The same benchmark, fewer levels and requests (~90 s on 2 cores)
	@$(PY) -m benchmarks.bench --quick $(BENCH_ARGS)

bench-adapters: venv real-model ## LoRA adapters: 32 streams over 0, 1, 4 and 16 adapters against the base, memory, load stalls; demo and real model (~15 min)
	@$(PY) -m benchmarks.adapters --rank 8 $(BENCH_ARGS)
	@$(PY) -m benchmarks.adapters --model-dir "$(REAL_MODEL)" --requests 64 $(BENCH_ARGS)

bench-replicas: venv ## Replicas: failover under load, global rate-limit cost, 1 vs 2 replicas (~4 min)
	@$(PY) -m benchmarks.replicas $(BENCH_ARGS)

bench-peer: venv ## The stack vs its engine in-process vs llama.cpp's server, interleaved, median of 3 (~10 min)
	@$(PY) -m benchmarks.cpu_peer $(BENCH_ARGS)

REAL_MODEL = $(shell $(PY) -m tools.real_model --print-dir 2>/dev/null)

bench-real: venv real-model ## The real model (SmolLM2-135M) in float32, bfloat16 and int8: quality, the engine vs llama-batched-bench at 1 and 2 threads, the stack vs llama.cpp's server (~60 min)
	@$(PY) -m benchmarks.dtype_quality
	@$(PY) -m benchmarks.cpu_threads $(BENCH_ARGS)
	@for format in float32 bfloat16 int8; do \
		$(PY) -m benchmarks.cpu_peer --model-dir "$(REAL_MODEL)" --in-process llama \
			--requests-per-client 2 --format $$format $(BENCH_ARGS) || exit 1; done

$(AIPERF_STAMP): benchmarks/aiperf.lock
	@echo "==> creating $(AIPERF_VENV) with AIPerf 0.13 (its own pins: numpy 2, no torch)"
	@test -x $(AIPERF_VENV)/bin/python || $(PYTHON) -m venv $(AIPERF_VENV)
	@$(AIPERF_VENV)/bin/python -m pip install --disable-pip-version-check --progress-bar on \
		--no-deps -r benchmarks/aiperf.lock
	@$(AIPERF_VENV)/bin/python -m pip check --disable-pip-version-check
	@rm -f $(AIPERF_VENV)/.installed-* && touch $@

aiperf: $(AIPERF_STAMP) ## Install AIPerf in .venv-aiperf; `make bench` then drives the OpenAI API with it

bench-vllm: venv vllm ## This service on both engines vs vLLM's own OpenAI server, same model and client, interleaved (~10 min)
	@$(PY) -m benchmarks.vllm_peer $(BENCH_ARGS)

bench-lm-eval: venv lm-eval ## lm-evaluation-harness on the running service (make up) vs its own hf backend, same model (LLM_MODEL_DIR, LLM_API_KEY; ~1 min)
	@$(PY) -m benchmarks.lm_eval_suite --model-dir "$(or $(LLM_MODEL_DIR),demo_model)" $(BENCH_ARGS)

# The GPU check (benchmarks/gpu_check.py): made for a lent GPU machine with no network, so the
# wheels it adds travel with the tree in .gpu-wheels/.
gpu-check-wheels: ## Download what the GPU check adds to a bare GPU machine into .gpu-wheels/ (~43 MiB)
	@python3 -m pip download --disable-pip-version-check -q --no-deps --only-binary=:all: \
		--python-version 3.12 --platform manylinux_2_24_x86_64 --platform any \
		-d .gpu-wheels -r benchmarks/gpu_check.requirements.txt
	@du -sh .gpu-wheels

gpu-check: ## On a GPU machine: the engine suite, correctness, throughput and int8 on CUDA (~5 min)
	@bash benchmarks/gpu_check.sh $(BENCH_ARGS)

gpu-check-dry-run: venv ## The GPU check's steps on this CPU with a tiny model (make test runs it; ~1 min)
	@PYTHON=$(PY) bash benchmarks/gpu_check.sh --cpu-dry-run $(BENCH_ARGS)
