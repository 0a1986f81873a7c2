"""Fixtures and knobs of the robustness tests (the session's real Triton and Envoy, from
tests/conftest.py), the end-of-session tally, and the log scan that must run last."""

from __future__ import annotations

import os
import uuid
from dataclasses import dataclass
from typing import Any

import pytest

from tests.robustness.fuzz_tally import TALLY

# Every prompt these tests send contains this, so the log scan can prove none was logged.
CANARY = f"Quokka-canary-{uuid.uuid4().hex[:12]}"


@dataclass(frozen=True)
class Campaign:
    """How hard to push: `make test` uses the defaults, `make fuzz` raises them."""

    examples: int  # property-based examples per operation and generation mode
    seed: int
    slow_clients: int  # concurrent clients that never finish their headers
    canary: str

    @classmethod
    def from_env(cls) -> "Campaign":
        return cls(examples=int(os.environ.get("LLM_FUZZ_EXAMPLES", "12")),
                   seed=int(os.environ.get("LLM_FUZZ_SEED", "20261126")),
                   slow_clients=int(os.environ.get("LLM_FUZZ_SLOW_CLIENTS", "6")),
                   canary=CANARY)


@pytest.fixture(scope="session")
def campaign() -> Campaign:
    return Campaign.from_env()


@pytest.fixture(scope="session")
def fuzz_key(gateway: Any) -> str:
    """A premium key of its own, so the campaign never eats another test's bucket."""
    return gateway.issue("robustness", "premium")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "log_scan: reads the logs every other test wrote, "
                                       "so it runs last in the session")


def pytest_collection_modifyitems(session: pytest.Session, config: pytest.Config,
                                  items: list[pytest.Item]) -> None:
    last = [item for item in items if item.get_closest_marker("log_scan")]
    if last:
        items[:] = [item for item in items if item not in last] + last


def pytest_terminal_summary(terminalreporter: Any) -> None:
    lines = TALLY.lines()
    if lines:
        terminalreporter.section("malformed-input campaign: requests tried and 5xx seen")
        for line in lines:
            terminalreporter.write_line(line)
        TALLY.write()
