# `make fuzz`: the long malformed-input campaign (included from the top-level Makefile).
# The same file as in `make test` (tests/robustness/test_malformed_inputs.py) against a fresh
# Triton and Envoy, with many more property-based examples and slow clients. Knobs:
#   FUZZ_EXAMPLES      property-based examples per operation and generation mode (test: 12)
#   FUZZ_SLOW_CLIENTS  clients that never finish their headers, all at once (test: 6)
#   FUZZ_SEED          Hypothesis seed: the same seed sends the same requests
#   FUZZ_REPORT        where the figures (requests tried, answers, 5xx) are written as JSON
FUZZ_EXAMPLES ?= 1000
FUZZ_SLOW_CLIENTS ?= 64
FUZZ_SEED ?= 20261126
FUZZ_REPORT ?= .run/fuzz-report.json

.PHONY: fuzz

fuzz: venv ## Long malformed-input campaign against a live gateway (5 to 8 minutes)
	@mkdir -p "$(dir $(FUZZ_REPORT))"
	@LLM_FUZZ_EXAMPLES=$(FUZZ_EXAMPLES) LLM_FUZZ_SLOW_CLIENTS=$(FUZZ_SLOW_CLIENTS) \
		LLM_FUZZ_SEED=$(FUZZ_SEED) LLM_FUZZ_REPORT="$(FUZZ_REPORT)" \
		$(PY) -m pytest tests/robustness/test_malformed_inputs.py -q $(PYTEST_ARGS)
	@echo "==> figures written to $(FUZZ_REPORT)"
