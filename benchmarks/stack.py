"""The systems under test: start them (or attach to a running one) and stop what was started.

  ours      Triton (continuous, token-level scheduling) behind the Envoy gateway
  static    the same Triton with LLM_SCHEDULING=static (one batch runs to its end before the
            next starts: the foundation's design, kept for this comparison), behind a gateway
  baseline  benchmarks/naive_server.py: one FastAPI/uvicorn worker, model.generate per request
  vllm      vLLM's own OpenAI server on the same model, from .venv-vllm (`make vllm`), direct

Triton and Envoy are launched exactly as `make serve` and the tests launch them (tools/runtime.py
through the tests' harness), on free loopback ports, with their logs, their key store and an
API key of the `benchmark` tier under the results folder.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Optional

from benchmarks.workload import RequestSpec
from textgen.core.config import EngineConfig
from textgen.core.engine_thread import raise_session_priority
from tools import runtime
from tools.processes import (ServerProcess, free_port, gateway_process, http_ok, openai_process,
                             triton_process, triton_settings)

ROOT = Path(__file__).resolve().parent.parent

LABELS = {
    "ours": "ours (continuous batching)",
    "static": "static batching",
    "baseline": "naive baseline (FastAPI + generate)",
    "int8": "ours, int8 weights",
    "openai": "ours via the OpenAI API (/v1/chat/completions)",
    "llamacpp": "llama.cpp server (same model, GGUF f32)",
    "vllm-engine": "ours on the vLLM engine, via the OpenAI API (/v1/chat/completions)",
    "vllm": "vLLM's own OpenAI server (same model, fp32)",
}
STREAM_PATH = "/v2/models/llm/generate_stream"
CHAT_PATH = "/v1/chat/completions"
# The baseline is measured on its JSON route, as the seed design answered: its SSE route would
# hold every reply until the blocked event loop frees up, which only makes it look worse.
JSON_PATH = "/v2/models/llm/generate"


@dataclass
class Target:
    """A system the load generator can reach, and the processes whose memory we sample."""

    name: str
    url: str  # base URL, e.g. http://127.0.0.1:8080
    headers: dict[str, str] = field(default_factory=dict)
    api_key: str = ""
    via_gateway: bool = False
    started: bool = False  # False: an external stack given with --url
    run_dir: Optional[Path] = None
    # role -> pid, re-evaluated on every memory sample (stub processes appear after start-up)
    processes: Callable[[], dict[str, int]] = lambda: {}
    notes: list[str] = field(default_factory=list)
    path: str = STREAM_PATH  # what the load generator posts to
    body: Callable[[RequestSpec], dict[str, Any]] = RequestSpec.body  # ... and what
    # False: a new connection per request, for servers that close idle keep-alive connections
    # under the client's feet (llama-server after a stream: "Can not write request body").
    keep_alive: bool = True
    server: Optional[ServerProcess] = None  # the one process, where a run checks it is alive

    @property
    def label(self) -> str:
        return LABELS.get(self.name, self.name)

    @property
    def request_url(self) -> str:
        return self.url.rstrip("/") + self.path

    @property
    def hostport(self) -> str:
        return self.url.split("://", 1)[-1].rstrip("/")


def _children_stubs(triton_pid: int, backend_dir: Path) -> dict[str, int]:
    """Python-backend stubs of this Triton: children of it, or started from its backend dir."""
    stubs = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
            ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        if not argv or not argv[0].endswith(b"triton_python_backend_stub"):
            continue
        if ppid == triton_pid or argv[0].startswith(str(backend_dir).encode()):
            instance = argv[8].decode() if len(argv) > 8 else entry.name
            stubs[f"triton_python_backend_stub ({instance}, pid {entry.name})"] = int(entry.name)
    return stubs


def _wait_for_key(url: str, key: str, timeout: float = 20.0) -> None:
    """Envoy reloads its key filter from a watched directory; wait until the key works."""
    body = b'{"text_input": "The list", "max_tokens": 1}'
    deadline = time.monotonic() + timeout
    last = ""
    while time.monotonic() < deadline:
        request = urllib.request.Request(url + "/v2/models/llm/generate", data=body,
                                         headers={"X-API-Key": key,
                                                  "Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=10) as reply:
                if reply.status == 200:
                    return
        except urllib.error.HTTPError as exc:
            last = f"HTTP {exc.code}: {exc.read()[:200]!r}"
        except OSError as exc:
            last = str(exc)
        time.sleep(0.2)
    raise RuntimeError(f"the benchmark's API key was not accepted by {url} in {timeout:.0f} s "
                       f"({last})")


@contextmanager
def triton_stack(name: str, run_dir: Path, scheduling: str, model_dir: Path,
                 extra_env: Optional[dict[str, str]] = None,
                 openai: bool = False) -> Iterator[Target]:
    """Triton with `scheduling` behind its own Envoy gateway (and, with `openai`, the OpenAI
    frontend, which the load generator then calls); all stopped on exit."""
    run_dir.mkdir(parents=True, exist_ok=True)
    settings = triton_settings(run_dir, LLM_MODEL_DIR=str(model_dir))
    env = {"LLM_SCHEDULING": scheduling, **(extra_env or {})}
    triton = triton_process(settings, **env)
    frontend = openai_process(settings)
    envoy, gateway = gateway_process(settings)
    started: list[ServerProcess] = []
    try:
        started.append(triton.start())
        triton.wait_until(lambda: http_ok(f"{settings.http_url}/v2/models/llm/ready"),
                          timeout=180)
        if openai:
            started.append(frontend.start())
            frontend.wait_until(
                lambda: http_ok(f"http://127.0.0.1:{settings.openai_port}/health"), timeout=60)
        started.append(envoy.start())
        url = f"http://{gateway.host}:{gateway.port}"
        envoy.wait_until(lambda: http_ok(f"{url}/readyz"), timeout=30)
        # The `benchmark` tier's bucket is far above what one replica serves, so the gateway's
        # rate limits never shape the figures; `premium` where the tier file predates it.
        tier = "benchmark" if "benchmark" in runtime.load_tiers()["tiers"] else "premium"
        key, _ = runtime.KeyStore(gateway.keys_dir).issue(f"bench-{name}", tier)
        _wait_for_key(url, key)
        backend_dir = settings.run_dir / "triton" / "backends"
        assert triton.proc is not None and envoy.proc is not None
        triton_pid, envoy_pid = triton.proc.pid, envoy.proc.pid
        frontend_pid = frontend.proc.pid if openai and frontend.proc else None

        def processes() -> dict[str, int]:
            return {"tritonserver": triton_pid, **_children_stubs(triton_pid, backend_dir),
                    "envoy": envoy_pid,
                    **({"openai_frontend": frontend_pid} if frontend_pid else {})}

        notes = [f"LLM_SCHEDULING={scheduling}", f"Triton log: {triton.log}"]
        if openai:
            model = model_dir.name  # the frontend's model id: the directory's name
            yield Target(name, url, {"Authorization": f"Bearer {key}"}, key, via_gateway=True,
                         started=True, run_dir=run_dir, processes=processes,
                         notes=notes + [f"OpenAI API {CHAT_PATH}, model `{model}`"],
                         path=CHAT_PATH, body=lambda spec: spec.chat_body(model))
            return
        yield Target(name, url, {"X-API-Key": key}, key, via_gateway=True, started=True,
                     run_dir=run_dir, processes=processes, notes=notes)
    finally:
        for process in reversed(started):
            process.stop(grace=30)


@contextmanager
def naive_baseline(run_dir: Path, model_dir: Path) -> Iterator[Target]:
    """benchmarks/naive_server.py on a free port; stopped on exit."""
    run_dir.mkdir(parents=True, exist_ok=True)
    port = free_port()
    command = [sys.executable, "-m", "benchmarks.naive_server",
               "--port", str(port), "--model-dir", str(model_dir)]
    server = ServerProcess("naive_server", command, dict(os.environ), run_dir / "naive.log")
    url = f"http://127.0.0.1:{port}"
    try:
        server.start()
        server.wait_until(lambda: http_ok(f"{url}/health"), timeout=120)
        assert server.proc is not None
        pid = server.proc.pid
        yield Target("baseline", url, {}, "", via_gateway=False, started=True, run_dir=run_dir,
                     processes=lambda: {"naive_server (uvicorn)": pid},
                     notes=[f"direct, no gateway, JSON route {JSON_PATH}",
                            f"log: {server.log}"],
                     path=JSON_PATH)
    finally:
        server.stop(grace=10)


VLLM_PYTHON = runtime.VLLM_VENV / "bin" / "python"
# A first start compiles kernels for ~40 s (cached under ~/.cache/vllm afterwards).
VLLM_START_TIMEOUT_S = 600


def vllm_unavailable() -> str:
    """Why vLLM's server cannot run here, or "" when it can."""
    return "" if VLLM_PYTHON.exists() else f"{VLLM_PYTHON} is missing: run `make vllm` first"


@contextmanager
def bare_vllm(run_dir: Path, model_dir: Path, extra: tuple[str, ...] = (),
              extra_env: Optional[dict[str, str]] = None) -> Iterator[Target]:
    """vLLM's OpenAI server on the model, on loopback, offline, fp32 as this service runs it on
    a CPU, serving it under the directory's name (as the OpenAI frontend does); stopped on
    exit. `extra`: more flags for the server; `extra_env`: more environment."""
    run_dir.mkdir(parents=True, exist_ok=True)
    port = free_port()
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "VLLM_NO_USAGE_STATS": "1",
           "VLLM_CPU_KVCACHE_SPACE": os.environ.get("VLLM_CPU_KVCACHE_SPACE", "1"),
           **(extra_env or {})}
    command = [str(VLLM_PYTHON), "-m", "vllm.entrypoints.openai.api_server",
               "--model", str(model_dir), "--served-model-name", model_dir.name,
               "--host", "127.0.0.1", "--port", str(port), "--max-model-len", "512",
               "--dtype", "float32", *extra]
    server = ServerProcess("vllm", command, env, run_dir / "vllm.log")
    url = f"http://127.0.0.1:{port}"
    try:
        server.start()
        server.wait_until(lambda: http_ok(url + "/health"), timeout=VLLM_START_TIMEOUT_S)
        assert server.proc is not None
        pid = server.proc.pid
        raise_session_priority(EngineConfig.engine_nice, pid)  # the footing of our Triton
        yield Target("vllm", url, {}, "", via_gateway=False, started=True, run_dir=run_dir,
                     processes=lambda: {"vllm api_server": pid},
                     notes=[f"direct, no gateway, {CHAT_PATH}", f"log: {server.log}"],
                     path=CHAT_PATH, body=lambda spec: spec.chat_body(model_dir.name),
                     server=server)
    finally:
        server.stop(grace=30)


def external(url: str, api_key: str) -> Target:
    """A running stack given on the command line (its processes are not ours to sample)."""
    return Target("ours", url.rstrip("/"), {"X-API-Key": api_key} if api_key else {}, api_key,
                  via_gateway=bool(api_key), started=False,
                  notes=[f"running stack at {url} (not started by the benchmark: memory not "
                         f"sampled)"])


def run_quiet(command: list[str], env: dict[str, str], timeout: float,
              log: Path) -> subprocess.CompletedProcess:
    """Run a client tool with its output in `log`; never raises on a non-zero exit."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("wb") as out:
        try:
            return subprocess.run(command, env=env, stdout=out, stderr=subprocess.STDOUT,
                                  timeout=timeout, check=False)
        except subprocess.TimeoutExpired:
            return subprocess.CompletedProcess(command, 124)
