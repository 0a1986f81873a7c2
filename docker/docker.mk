# Container targets; included by the Makefile. See docker/README.md.
#   make docker-config   regenerate the gateway image's config after changing the gateway
#   make k8s-config      regenerate the Kubernetes gateway's config (deploy/k8s/base/envoy.yaml)
#   make docker-test     build and run the real Dockerfiles and compose.yaml on stand-in bases

# Where docker-test keeps stand-in base images, the engine's data and its build cache.
LLM_DOCKER_CACHE ?= /var/cache/llm-docker-test
DOCKER_TEST_ARGS ?=

.PHONY: docker-config k8s-config docker-test docker-clean

docker-config: venv ## Render gateway/envoy.container.yaml (template + docker/gateway.env), compose's prometheus.yml and dashboard
	@env -i PATH="$$PATH" $$(grep -E '^[A-Z_]+=' docker/gateway.env) \
		$(PY) -m gateway.render --out gateway/envoy.container.yaml
	@$(PY) -m monitoring.prometheus compose --out monitoring/prometheus.compose.yml
	@$(PY) -m monitoring.dashboard --out monitoring/grafana/llm-service.json

k8s-config: venv ## Render deploy/k8s/base/envoy.yaml (template + deploy/k8s/gateway.env), the PrometheusRule
	@env -i PATH="$$PATH" $$(grep -E '^[A-Z_]+=' deploy/k8s/gateway.env) \
		$(PY) -m gateway.render --out deploy/k8s/base/envoy.yaml
	@$(PY) -m monitoring.prometheus k8s-rule --out deploy/k8s/monitoring/prometheusrule.yaml

docker-test: venv ## Build + run the containers on stand-in bases (root; first run ~4 min)
	@$(PY) -m tools.docker_test --cache "$(LLM_DOCKER_CACHE)" $(DOCKER_TEST_ARGS)

docker-clean: ## Delete docker-test's cache (stand-in images, engine data)
	@$(PY) -m tools.docker_test --cache "$(LLM_DOCKER_CACHE)" --clean
