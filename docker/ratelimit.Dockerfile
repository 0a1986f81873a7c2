# The global rate-limit service (ratelimit/): Envoy's rate-limit protocol over Redis, so limits
# and token quotas hold across every gateway. Stateless; small; on the official slim Python
# image.
#
#   docker build -f docker/ratelimit.Dockerfile -t llm-ratelimit .   (or `docker compose build`)
ARG PYTHON_IMAGE=python:3.11.7-slim-bookworm
FROM ${PYTHON_IMAGE}

COPY ratelimit/requirements.txt /opt/llm/ratelimit/requirements.txt
RUN python3 -m pip install --no-cache-dir --disable-pip-version-check --no-deps \
        -r /opt/llm/ratelimit/requirements.txt \
    && useradd --uid 1000 --user-group --no-create-home --shell /usr/sbin/nologin llm

# The service and the limits it enforces (the same tiers file as the gateway's).
COPY ratelimit /opt/llm/ratelimit
COPY contracts /opt/llm/contracts
COPY gateway/tiers.yaml /opt/llm/gateway/tiers.yaml

ENV LLM_RATELIMIT_BIND=0.0.0.0 \
    LLM_RATELIMIT_PORT=8081 \
    LLM_RATELIMIT_REDIS_URL=redis://redis:6379/0 \
    LLM_TIERS_FILE=/opt/llm/gateway/tiers.yaml \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1

USER 1000:1000
WORKDIR /opt/llm
# For the gateways on the internal network only.
EXPOSE 8081 8082
HEALTHCHECK --interval=10s --timeout=5s --start-period=10s --retries=3 \
    CMD ["python3", "-m", "ratelimit.health"]
ENTRYPOINT ["python3", "-m", "ratelimit"]
