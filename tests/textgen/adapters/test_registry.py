"""Served and resident adapters: the LRU bound, users finishing on an unloaded adapter, and
the record a restarted replica reads back."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from textgen.adapters.peft_format import AdapterError, LoraAdapter, UnknownAdapter
from textgen.adapters.registry import (AdapterRegistry, check_served, start_registry,
                                       starting_adapters)
from textgen.core.config import EngineConfig
from textgen.core.loading import ModelLoadError


class Reads:
    """A reader that counts what it read from disk (the weights are not the point here)."""

    def __init__(self) -> None:
        self.count: dict[str, int] = {}

    def __call__(self, name: str, path: Path) -> LoraAdapter:
        self.count[name] = self.count.get(name, 0) + 1
        pair = (torch.zeros(1, 1), torch.zeros(1, 1))
        return LoraAdapter(name=name, path=path, rank=1, scaling=1.0, weights={"m": pair})


def test_the_least_recently_used_idle_adapter_is_evicted_and_read_again_on_demand(tmp_path):
    reads = Reads()
    registry = AdapterRegistry(reads, max_loras=2)
    for name in ("a", "b"):
        registry.load(name, tmp_path / name)
    registry.release(registry.acquire("a"))  # a is now the most recently used
    registry.load("c", tmp_path / "c")
    assert registry.resident() == ["a", "c"]  # b went
    assert list(registry.served()) == ["a", "b", "c"]  # but is still served
    held = registry.acquire("b")
    assert held is not None and reads.count["b"] == 2 and registry.resident() == ["c", "b"]


def test_a_sequence_waits_while_every_resident_adapter_is_in_use(tmp_path):
    registry = AdapterRegistry(Reads(), max_loras=1)
    registry.load("a", tmp_path / "a")
    registry.load("b", tmp_path / "b")  # a evicted (idle): b is resident
    b = registry.acquire("b")
    assert b is not None
    assert registry.acquire("a") is None  # no room: b runs
    registry.release(b)
    assert registry.acquire("a") is not None


def test_unloading_stops_new_requests_while_running_ones_keep_their_weights(tmp_path):
    registry = AdapterRegistry(Reads(), max_loras=2)
    registry.load("a", tmp_path / "a")
    registry.load("b", tmp_path / "b")
    running = registry.acquire("a")
    registry.unload("a")
    assert running is not None and running.weights  # the running sequence still computes
    with pytest.raises(UnknownAdapter, match="'a' is not served here; the adapters served: `b`"):
        registry.check("a")
    with pytest.raises(UnknownAdapter):
        registry.acquire("a")
    with pytest.raises(UnknownAdapter):
        registry.unload("a")
    registry.release(running)


def test_every_change_is_recorded_and_a_restart_serves_the_record(tmp_path):
    record = tmp_path / "state" / "adapters.json"
    registry = AdapterRegistry(Reads(), max_loras=2, record=record)
    registry.load("a", tmp_path / "a")
    registry.load("b", tmp_path / "b")
    registry.unload("a")
    assert json.loads(record.read_text()) == {"b": str(tmp_path / "b")}
    configured = [("a", tmp_path / "a")]
    assert starting_adapters(configured, record) == [("b", tmp_path / "b")]
    assert starting_adapters(configured, tmp_path / "none.json") == configured


def test_weights_stay_resident_until_evicted_unloaded_or_replaced(tmp_path):
    registry = AdapterRegistry(Reads(), max_loras=1)
    a = registry.load("a", tmp_path / "a")
    assert registry.is_resident(a)
    replaced = registry.load("a", tmp_path / "a")
    assert registry.is_resident(replaced) and not registry.is_resident(a)
    registry.load("b", tmp_path / "b")  # evicts a (idle)
    assert not registry.is_resident(replaced)
    b = registry.acquire("b")
    assert b is not None
    registry.unload("b")
    assert not registry.is_resident(b)


def test_an_engine_starts_serving_its_configured_adapters_and_a_bad_one_fails_the_load(
        tmp_path, demo_model_dir):
    config = EngineConfig(model_dir=demo_model_dir, enable_lora=True, max_loras=3,
                          lora_adapters=(("a", tmp_path / "a"), ("b", tmp_path / "b")))
    changes: list[tuple[int, int]] = []
    registry = start_registry(config, Reads(), lambda *counts: changes.append(counts))
    assert list(registry.served()) == ["a", "b"] and changes[-1] == (2, 2)
    check_served(registry, "a")
    check_served(registry, "")  # the base model
    with pytest.raises(UnknownAdapter, match="`a`, `b`"):
        check_served(registry, "c")
    with pytest.raises(UnknownAdapter):
        check_served(None, "a")  # LoRA off

    def refuse(name: str, path: Path) -> LoraAdapter:
        raise AdapterError(f"adapter `{name}`: broken")

    with pytest.raises(ModelLoadError, match="adapter `a`: broken"):
        start_registry(config, refuse, lambda *counts: None)
