# The model server: NVIDIA's Triton image plus this project's model repository, the demo model
# and the key tool. One Dockerfile, two images (see docker/README.md):
#
#   CPU (default)  tritonserver:24.10-pyt-python-py3: server 2.51, Python 3.10, NVIDIA's PyTorch;
#                  the transformers engine.
#                    docker build -f docker/triton.Dockerfile -t llm-triton .
#   GPU            tritonserver:26.08-py3: server 2.72, Python 3.12, CUDA 13, no PyTorch; vLLM
#                  0.32.0 with its CUDA PyTorch, so both engines (compose.gpu.yaml builds it).
#                    docker build -f docker/triton.Dockerfile -t llm-triton-gpu \
#                      --build-arg TRITON_IMAGE=nvcr.io/nvidia/tritonserver:26.08-py3 \
#                      --build-arg "REQUIREMENTS=requirements-gpu-vllm.txt requirements-gpu-model.txt" .
#
# The base is a build argument so another registry, a mirror or a stand-in can be used; the
# base must provide /opt/tritonserver/{bin/tritonserver,backends/python,caches} and python3
# with pip, as NVIDIA's images do, and PyTorch unless a requirements layer brings it.
ARG TRITON_IMAGE=nvcr.io/nvidia/tritonserver:24.10-pyt-python-py3
FROM ${TRITON_IMAGE}

# The model's Python dependencies, exactly pinned, in layers: the files under docker/ that
# REQUIREMENTS names, installed in that order. Together they are the complete closure for the
# base's Python (`make docker-test` proves it with pip's resolver), so each is installed as it
# is: --no-deps, nothing re-resolved, each wheel downloaded once.
#   CPU: requirements-triton.txt, for Python 3.10 (no torch: the base carries it).
#   GPU: requirements-gpu-vllm.txt (vLLM, its CUDA PyTorch and what only they need), then
#        requirements-gpu-model.txt (transformers, PyYAML), for Python 3.12 (tools/gpu_lock.py).
# The check fails the build when transformers would not use the PyTorch it finds.
ARG REQUIREMENTS=requirements-triton.txt
COPY docker/requirements-*.txt /opt/llm/docker/
RUN for layer in ${REQUIREMENTS}; do \
        python3 -m pip install --no-cache-dir --disable-pip-version-check --no-deps \
            -r "/opt/llm/docker/${layer}" || exit 1; \
    done \
    && python3 -c "import sys, torch, transformers; from transformers.utils import is_torch_available as ok; ok() or sys.exit('transformers ' + transformers.__version__ + ' does not accept torch ' + torch.__version__)"

# The project's packages the model processes import by name (pyproject.toml): the engine
# (`textgen`), the Triton side (`triton_llm`), the contracts both speak (`contracts`), and
# `ratelimit`, whose descriptor contract the key tool's renderer (gateway/render.py) reads.
COPY pyproject.toml /opt/llm/src/pyproject.toml
COPY contracts /opt/llm/src/contracts
COPY textgen /opt/llm/src/textgen
COPY triton_llm /opt/llm/src/triton_llm
COPY ratelimit /opt/llm/src/ratelimit
COPY monitoring /opt/llm/src/monitoring
RUN python3 -m pip install --no-cache-dir --disable-pip-version-check --no-deps \
        --no-build-isolation /opt/llm/src \
    && rm -rf /opt/llm/src

# Runs as triton-server (uid 1000), the user NVIDIA's image already has; other bases get it.
# The gateway container runs as the same uid so both can use the key volume.
RUN if ! id -u triton-server >/dev/null 2>&1; then \
        useradd --uid 1000 --user-group --create-home --shell /usr/sbin/nologin triton-server; \
    fi \
    && mkdir -p /var/lib/llm/keys/envoy /var/lib/llm/run \
    && chown -R 1000:1000 /var/lib/llm \
    && chmod 0700 /var/lib/llm/keys

# The same files `make serve` runs: the Triton command line comes from tools/runtime.py. The
# packages `tools` and `gateway` run from the working directory, /opt/llm (`python3 -m`), where
# tools/runtime.py also finds the model repository.
COPY model_repository /opt/llm/model_repository
COPY gateway /opt/llm/gateway
COPY tools /opt/llm/tools
# The bundled demo model; mount your own save_pretrained directory over /models/llm.
COPY demo_model /models/llm

ENV LLM_TRITON_HOME=/opt/tritonserver \
    LLM_TRITON_HOST=0.0.0.0 \
    LLM_MODEL_DIR=/models/llm \
    LLM_KEYS_DIR=/var/lib/llm/keys \
    LLM_RUN_DIR=/var/lib/llm/run \
    HF_HOME=/tmp/huggingface \
    HF_HUB_OFFLINE=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1

USER 1000:1000
WORKDIR /opt/llm
# HTTP, gRPC and metrics, for the gateway and operators on the internal network only:
# compose.yaml publishes none of them.
EXPOSE 8000 8001 8002
# Ready means the model is loaded; loading a large model can take minutes.
HEALTHCHECK --interval=10s --timeout=5s --start-period=600s --retries=3 \
    CMD ["python3", "-m", "tools.triton_entrypoint", "health"]
ENTRYPOINT ["python3", "-m", "tools.triton_entrypoint"]
CMD ["serve"]
