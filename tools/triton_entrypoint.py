#!/usr/bin/env python3
"""Entrypoint of the Triton image: start tritonserver exactly as `make serve` does.

  serve [FLAG ...]   (the default) check the model directory, (re)write the gateway's key
                     filter from the key store (`gateway/keys.py sync`), then run
                     tritonserver with the command line from tools/runtime.py (extra flags
                     appended), passing SIGTERM on and exiting if a model process dies
  health             exit 0 when Triton reports ready (the image's HEALTHCHECK)

Settings are the environment variables of tools/runtime.py (see the README's table). The image
sets LLM_TRITON_HOME=/opt/tritonserver (NVIDIA's layout instead of the pip wheel's),
LLM_TRITON_HOST=0.0.0.0 (reachable from the gateway container), LLM_MODEL_DIR=/models/llm and
LLM_KEYS_DIR=/var/lib/llm/keys (the key volume).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Callable

ROOT = Path(__file__).resolve().parent.parent
# NVIDIA's images set up CUDA compatibility libraries in their entrypoint; keep that step.
NVIDIA_ENTRYPOINT = Path("/opt/nvidia/nvidia_entrypoint.sh")


def health() -> int:
    port = os.environ.get("LLM_HTTP_PORT", "8000")
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/v2/health/ready",
                                    timeout=4) as reply:
            return 0 if reply.status == 200 else 1
    except OSError as exc:
        print(f"not ready: {exc}", file=sys.stderr)
        return 1


def check_model_dir(model_dir: Path) -> None:
    """Fail at once with the fix, rather than later inside the model's load."""
    if not (model_dir / "config.json").is_file():
        raise SystemExit(
            f"{model_dir} holds no config.json: mount a save_pretrained model directory "
            f"there (compose: LLM_MODEL_HOST_DIR=/path/to/model), or point LLM_MODEL_DIR at one")


def serve(extra_flags: list[str]) -> int:
    from tools import runtime  # needs PyYAML: imported here so `health` stays cheap

    settings = runtime.Settings.from_env()
    check_model_dir(settings.model_dir)
    store = runtime.KeyStore(runtime.GatewaySettings.from_env().keys_dir)
    # On an empty key volume the gateway needs a (keyless) filter to start; on every later
    # start this brings the filter's code (gateway/auth.lua) up to this image's version.
    first = not store.filter_path.exists()
    store.sync()
    if first:
        print(f"wrote {store.filter_path} (no keys yet: "
              f"`docker compose run --rm keys issue --name NAME`)", flush=True)
    command = runtime.triton_command(settings, ROOT / "model_repository") + extra_flags
    if NVIDIA_ENTRYPOINT.exists():
        command = [str(NVIDIA_ENTRYPOINT), *command]
    return supervise(command, runtime.python_stubs)


def supervise(command: list[str],
              stubs_of: Callable[[int], tuple[set[int], set[int]]]) -> int:
    """Run tritonserver, pass SIGTERM on, and exit 1 if one of its model processes dies.

    Triton never restarts a dead Python-backend stub (it keeps answering "Stub process is not
    healthy"), so the container exits and compose's restart policy brings up a fresh one.
    """
    server = subprocess.Popen(command)
    stopping = []

    def forward(signum: int, _frame: object) -> None:
        stopping.append(signum)  # from now on stubs exit because Triton unloads its models
        server.send_signal(signum)

    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, forward)
    seen = 0
    while server.poll() is None:
        time.sleep(0.5)
        if stopping:
            continue
        alive, dead = stubs_of(server.pid)
        if (dead or len(alive) < seen) and server.poll() is None:
            print(f"a model process died ({len(alive)} alive, {len(dead)} dead); exiting so "
                  f"the restart policy starts a fresh server", file=sys.stderr, flush=True)
            server.kill()
            server.wait()
            return 1
        seen = max(seen, len(alive))
    return server.returncode


def main(argv: list[str]) -> int:
    command, rest = (argv[0], argv[1:]) if argv else ("serve", [])
    if command == "health":
        return health()
    if command == "serve":
        return serve(rest)
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
