"""Shared fixtures: one real Triton for the whole test session."""

from __future__ import annotations

import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest

from tools import real_model, runtime
from tools.processes import (gateway_process, http_ok, openai_process, triton_process,
                             triton_settings)

ROOT = Path(__file__).resolve().parent.parent



@pytest.fixture(scope="session")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("run")


@pytest.fixture(scope="session")
def triton(run_dir: Path) -> Iterator[runtime.Settings]:
    """A real tritonserver serving `llm` with the demo model, on free loopback ports, in
    float32: tests compare its answers with float32 HF and lm-eval's `hf` backend exactly,
    on CPUs with and without bfloat16 (`auto` would serve bfloat16 where the CPU computes it:
    tests/textgen/core/test_dtypes.py)."""
    settings = triton_settings(run_dir)
    server = triton_process(settings, LLM_DTYPE="float32")
    server.start()
    try:
        server.wait_until(lambda: http_ok(f"{settings.http_url}/v2/models/llm/ready"))
        yield settings
    finally:
        server.stop()


@pytest.fixture(scope="session")
def triton_log(triton: runtime.Settings) -> Path:
    return triton.run_dir / "tritonserver.log"


@pytest.fixture(scope="session")
def demo_model_dir() -> Path:
    return runtime.DEMO_MODEL


@pytest.fixture(scope="session")
def real_model_dir() -> Path:
    """SmolLM2-135M-Instruct as a save_pretrained directory (`make real-model`, which `make
    test` runs first; built here, ~30 s and a 93 MB download, when it is missing)."""
    return real_model.build(real_model.default_dir())



@dataclass(frozen=True)
class Gateway:
    """The session's Envoy in front of the session's Triton, plus its key store."""

    settings: runtime.GatewaySettings
    keys: runtime.KeyStore

    @property
    def url(self) -> str:
        return f"http://{self.settings.host}:{self.settings.port}"

    @property
    def grpc_url(self) -> str:
        return f"{self.settings.host}:{self.settings.port}"

    @property
    def access_log(self) -> Path:
        return Path(self.settings.access_log)

    def _reloads(self) -> int:
        url = f"http://127.0.0.1:{self.settings.admin_port}/stats?filter=llm.auth.config_reload"
        with urllib.request.urlopen(url, timeout=5) as reply:
            return int(reply.read().decode().rsplit(":", 1)[1])

    def _applied(self, change: Callable[[], Any]) -> Any:
        """Make a key-store change and wait until Envoy has reloaded the key filter."""
        before = self._reloads()
        result = change()
        deadline = time.monotonic() + 10
        while self._reloads() == before:
            assert time.monotonic() < deadline, "Envoy did not reload the key filter"
            time.sleep(0.02)
        time.sleep(0.05)  # the new filter reaches every worker thread
        return result

    def issue(self, name: str, tier: str = "standard") -> str:
        key, _ = self._applied(lambda: self.keys.issue(name, tier))
        return key

    def revoke(self, id_or_name: str) -> None:
        self._applied(lambda: self.keys.revoke(id_or_name))


@pytest.fixture(scope="session")
def openai_frontend(triton: runtime.Settings) -> Iterator[str]:
    """The OpenAI-compatible frontend in front of the session's Triton; its direct URL."""
    process = openai_process(triton)
    process.start()
    url = f"http://127.0.0.1:{triton.openai_port}"
    try:
        process.wait_until(lambda: http_ok(url + "/health"), timeout=60)
        yield url
    finally:
        process.stop()


@pytest.fixture(scope="session")
def gateway(triton: runtime.Settings, openai_frontend: str) -> Iterator[Gateway]:
    process, settings = gateway_process(triton)
    process.start()
    try:
        process.wait_until(lambda: http_ok(f"http://{settings.host}:{settings.port}/readyz"),
                           timeout=30)
        yield Gateway(settings, runtime.KeyStore(settings.keys_dir))
    finally:
        process.stop()


@pytest.fixture(scope="session")
def api_key(gateway: Gateway) -> str:
    """A key of the generous `premium` tier for tests that are not about rate limits."""
    return gateway.issue("tests", "premium")
