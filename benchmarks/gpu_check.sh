#!/usr/bin/env bash
# One prepared check of the GPU path (benchmarks/gpu_check.py says what it runs), for the GPU
# machine this project can borrow: its own Python (torch with CUDA, transformers), this tree,
# and the wheels `make gpu-check-wheels` put in .gpu-wheels/ (pytest, bitsandbytes), installed
# into a scratch folder because that machine has no network.
#
#   bash benchmarks/gpu_check.sh                  on the GPU machine; results in $OUT
#   bash benchmarks/gpu_check.sh --cpu-dry-run    the same steps on a CPU (make gpu-check-dry-run)
#
# PYTHON picks the interpreter (default python3); OUT the results folder (default
# .run/gpu-check); LLM_COMMIT names the commit where there is no .git.
set -euo pipefail
cd "$(dirname "$0")/.."
python="${PYTHON:-python3}"
if [ -d .gpu-wheels ]; then
    scratch="$(mktemp -d)"
    trap 'rm -rf "$scratch"' EXIT
    "$python" -m pip install --quiet --disable-pip-version-check --no-index --no-deps \
        --find-links .gpu-wheels --target "$scratch/site" -r benchmarks/gpu_check.requirements.txt
    export PYTHONPATH="$scratch/site${PYTHONPATH:+:$PYTHONPATH}"
fi
"$python" -m benchmarks.gpu_check --out "${OUT:-.run/gpu-check}" "$@"
