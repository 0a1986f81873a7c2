# The OpenAI-compatible frontend (openai_frontend/): a small ASGI app that calls Triton over
# gRPC, on the official slim Python image. It loads only the model's tokenizer and chat
# template (from the same model volume as Triton), never the weights: no torch here.
#
#   docker build -f docker/openai.Dockerfile -t llm-openai .      (or `docker compose build`)
#
# The base is a build argument so a mirror or a stand-in can be used; it must provide python3
# with pip (the official image does).
ARG PYTHON_IMAGE=python:3.11.7-slim-bookworm
FROM ${PYTHON_IMAGE}

# The frontend's complete dependency closure, exactly pinned, installed as it is.
COPY openai_frontend/requirements.txt /opt/llm/openai_frontend/requirements.txt
RUN python3 -m pip install --no-cache-dir --disable-pip-version-check --no-deps \
        -r /opt/llm/openai_frontend/requirements.txt \
    && useradd --uid 1000 --user-group --no-create-home --shell /usr/sbin/nologin llm

# The app and the one definition of error types it shares with the gateway.
COPY openai_frontend /opt/llm/openai_frontend
COPY contracts /opt/llm/contracts
COPY monitoring /opt/llm/monitoring

ENV LLM_OPENAI_HOST=0.0.0.0 \
    LLM_OPENAI_PORT=8003 \
    LLM_TRITON_GRPC=triton:8001 \
    LLM_MODEL_DIR=/models/llm \
    HF_HOME=/tmp/huggingface \
    HF_HUB_OFFLINE=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1

USER 1000:1000
WORKDIR /opt/llm
# For the gateway on the internal network only: compose.yaml publishes nothing here.
EXPOSE 8003 8004
# Healthy once it answers and Triton's streaming model is ready.
HEALTHCHECK --interval=10s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python3", "-c", "import urllib.request as u; u.urlopen('http://127.0.0.1:8003/health', timeout=4)"]
ENTRYPOINT ["python3", "-m", "openai_frontend"]
