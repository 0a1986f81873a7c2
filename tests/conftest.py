"""Shared fixtures: one real Triton for the whole test session."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Iterator

import pytest

ROOT = Path(__file__).resolve().parent.parent
# The model's own modules, importable without Triton for the unit tests.
sys.path.insert(0, str(ROOT / "model_repository" / "llm" / "1"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from harness import http_ok, triton_process, triton_settings  # noqa: E402
import runtime  # noqa: E402


@pytest.fixture(scope="session")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("run")


@pytest.fixture(scope="session")
def triton(run_dir: Path) -> Iterator[runtime.Settings]:
    """A real tritonserver serving `llm` with the demo model, on free loopback ports."""
    settings = triton_settings(run_dir)
    server = triton_process(settings)
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

