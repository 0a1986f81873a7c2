"""Start the real servers on loopback, for the tests and the benchmarks: free ports, readiness
polling, log dumps, clean teardown (on tools/runtime.py's process supervision)."""

from __future__ import annotations

import os
import re
import socket
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

from tools import runtime

ROOT = runtime.ROOT


def env_file(path: Path) -> dict[str, str]:
    """The KEY=VALUE lines of a settings file (docker/gateway.env, deploy/k8s/gateway.env)."""
    lines = path.read_text().splitlines()
    return dict(line.split("=", 1) for line in lines if re.match(r"^[A-Z_]+=", line))


_HANDED_OUT: set[int] = set()


def free_port() -> int:
    """A loopback port nothing listens on, never one this process handed out before: the OS
    may offer a released port again, and a stack takes a dozen before any process binds."""
    while True:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        if port not in _HANDED_OUT:
            _HANDED_OUT.add(port)
            return port


def http_ok(url: str, headers: Optional[dict[str, str]] = None) -> bool:
    try:
        request = urllib.request.Request(url, headers=headers or {})
        with urllib.request.urlopen(request, timeout=2) as reply:
            return reply.status == 200
    except OSError:
        return False


class ServerProcess(runtime.ManagedProcess):
    """One real server process for a test, with readiness polling and log dumps."""

    def log_tail(self, lines: int = 40) -> str:
        text = self.log.read_text(errors="replace") if self.log.exists() else ""
        return "\n".join(text.splitlines()[-lines:])

    def wait_until(self, ready: Callable[[], bool], timeout: float = 120.0) -> None:
        """Poll `ready`; fail fast with the log when the process dies, or on timeout."""
        deadline = time.monotonic() + timeout
        while not ready():
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited with code {self.proc.returncode}:\n"
                                   f"{self.log_tail()}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"{self.name} not ready after {timeout:.0f} s:\n"
                                   f"{self.log_tail()}")
            time.sleep(0.25)

    def wait_exit(self, timeout: float) -> int:
        assert self.proc is not None
        return self.proc.wait(timeout)


def triton_settings(run_dir: Path, **env: str) -> runtime.Settings:
    """Settings on free loopback ports, writing everything under `run_dir`."""
    values = {"LLM_RUN_DIR": str(run_dir), "LLM_HTTP_PORT": str(free_port()),
              "LLM_GRPC_PORT": str(free_port()), "LLM_METRICS_PORT": str(free_port()),
              "LLM_OPENAI_PORT": str(free_port()), "LLM_OPENAI_METRICS_PORT": str(free_port()),
              "LLM_LOG_LEVEL": "info", **env}
    return runtime.Settings.from_env(values)


def triton_process(settings: runtime.Settings, name: str = "tritonserver",
                   **env: str) -> ServerProcess:
    process_env = runtime.triton_env(settings.run_dir, {
        **os.environ, "LLM_MODEL_DIR": str(settings.model_dir), **env})
    return ServerProcess(name, runtime.triton_command(settings), process_env,
                         settings.run_dir / f"{name}.log")


def openai_process(settings: runtime.Settings, name: str = "openai") -> ServerProcess:
    """The OpenAI-compatible frontend as `make serve` runs it, in front of `settings`' Triton."""
    return ServerProcess(name, runtime.openai_command(settings), dict(os.environ),
                         settings.run_dir / f"{name}.log", cwd=ROOT)


def gateway_process(settings: runtime.Settings, name: str = "envoy",
                    **env: str) -> tuple[ServerProcess, runtime.GatewaySettings]:
    """A real Envoy running the rendered gateway config in front of `settings`' Triton."""
    values = dict(os.environ)
    values.update(GATEWAY_PORT=str(free_port()), GATEWAY_ADMIN_PORT=str(free_port()),
                  GATEWAY_METRICS_PORT=str(free_port()),
                  LLM_KEYS_DIR=str(settings.run_dir / "keys"),
                  GATEWAY_ACCESS_LOG=str(settings.run_dir / name / "access.log"), **env)
    gateway = runtime.gateway_settings(settings, values)
    config = runtime.prepare_gateway(gateway, settings.run_dir / name)
    process = ServerProcess(name, runtime.envoy_command(config), dict(os.environ),
                            settings.run_dir / name / "envoy.log")
    return process, gateway


@dataclass
class RunnerStack:
    """The whole service as `make serve` runs it (tools/serve.py), on free ports."""

    runner: ServerProcess
    settings: runtime.Settings
    gateway: runtime.GatewaySettings
    key: str

    @property
    def url(self) -> str:
        return f"http://{self.gateway.host}:{self.gateway.port}"

    def triton_pid(self) -> int:
        """The tritonserver the runner supervises right now."""
        return runtime.find_process(b"tritonserver",
                                    f"--http-port={self.settings.http_port}".encode())


def runner_stack(run_dir: Path, **env: str) -> RunnerStack:
    """Start tools/serve.py with its own ports, run dir and a premium-tier key."""
    values = {**os.environ, "LLM_RUN_DIR": str(run_dir), "LLM_HTTP_PORT": str(free_port()),
              "LLM_GRPC_PORT": str(free_port()), "LLM_METRICS_PORT": str(free_port()),
              "LLM_OPENAI_PORT": str(free_port()), "LLM_OPENAI_METRICS_PORT": str(free_port()),
              "GATEWAY_PORT": str(free_port()), "GATEWAY_ADMIN_PORT": str(free_port()),
              "GATEWAY_METRICS_PORT": str(free_port()), "LLM_KEYS_DIR": str(run_dir / "keys"),
              **env}
    values.pop("GATEWAY_ACCESS_LOG", None)
    settings = runtime.Settings.from_env(values)
    gateway = runtime.gateway_settings(settings, values)
    key, _ = runtime.KeyStore(gateway.keys_dir).issue("reliability", "premium")
    runtime.KeyStore(gateway.keys_dir).issue("dev", "standard")  # so the runner prints none
    runner = ServerProcess("runner", [sys.executable, "-m", "tools.serve", "serve"],
                           values, run_dir / "runner.log")
    runner.start()
    stack = RunnerStack(runner, settings, gateway, key)
    runner.wait_until(lambda: http_ok(f"{stack.url}/readyz"), timeout=120)
    return stack
