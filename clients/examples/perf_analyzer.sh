#!/usr/bin/env bash
# perf_analyzer 2.51 through the gateway, HTTP then gRPC, concurrency 1 to 4.
# Windows end after PA_REQUESTS requests (robust on a busy 2-core machine).
#   LLM_API_KEY=llmk_... clients/examples/perf_analyzer.sh [host:port]
# Use a key of a tier whose rate allows the load: `make key NAME=perf TIER=benchmark` (at
# concurrency 2 this measures more than the premium tier's 100/s: docs/performance.md,
# Fixed workload, gateway overhead, memory, int8).
set -euo pipefail
cd "$(dirname "$0")/../.."
url="${1:-127.0.0.1:8080}"
data="$(mktemp)"
trap 'rm -f "$data"' EXIT
echo '{"data": [{"text_input": ["The list"], "max_tokens": [16]}]}' > "$data"
# perf_analyzer needs libb64 and libcudart, which the Triton wheel ships under hashed names.
export LD_LIBRARY_PATH="$PWD/.run/triton/lib:${LD_LIBRARY_PATH:-}"
.venv/bin/python -c 'import sys; sys.path.insert(0, "tools"); import runtime; runtime.client_lib_dir(runtime.RUN_DIR)'
for protocol in http grpc; do
  .venv/bin/perf_analyzer -m llm -u "$url" -i "$protocol" \
    -H "x-api-key: ${LLM_API_KEY:?export LLM_API_KEY}" --input-data "$data" \
    --concurrency-range "${PA_CONCURRENCY:-1:4:3}" \
    --measurement-mode count_windows --measurement-request-count "${PA_REQUESTS:-50}" \
    --stability-percentage "${PA_STABILITY:-50}"
done
