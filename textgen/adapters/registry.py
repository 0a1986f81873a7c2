"""The adapters one engine serves, those resident in memory, and who runs on each.

Served is a list of names and directories: what requests may name, what listings show and
what the operator's load and unload change. Resident are those whose weights are in memory, at
most `max_loras` (LLM_MAX_LORAS); an idle one, least recently used first, is evicted to make
room, and read again from its directory when a request needs it.

Why counts of users: an adapter that is unloaded or evicted while sequences run on it must let
them finish. A sequence holds its adapter (the weights object) from admission to its end, so
unloading only stops new requests; eviction takes only adapters nobody holds, and a sequence
whose adapter cannot be made resident (every resident one busy) waits in the queue.

Threads: the engine thread acquires and releases; the operator's load and unload come from
Triton's threads. One lock guards the lists; reading a directory happens outside it on load,
so a load never stalls the engine's steps.
"""

from __future__ import annotations

import json
import logging
import os
import threading
from collections import OrderedDict
from pathlib import Path
from typing import Callable, Optional, Sequence

from textgen.adapters.peft_format import AdapterError, LoraAdapter, UnknownAdapter, check_name
from textgen.core.config import EngineConfig
from textgen.core.loading import ModelLoadError

log = logging.getLogger("textgen")

Reader = Callable[[str, Path], LoraAdapter]


class AdapterRegistry:
    def __init__(self, read: Reader, max_loras: int, record: Optional[Path] = None,
                 on_change: Callable[[int, int], None] = lambda served, resident: None
                 ) -> None:
        """`read(name, path)`: reads and checks one adapter (peft_format.read_adapter bound
        to the base model). `record`: the JSON file every load and unload rewrites
        (`starting_adapters` reads it back). `on_change(served, resident)`: told the counts
        after every change (the metrics' gauge)."""
        if max_loras < 1:
            raise ValueError("max_loras must be at least 1")
        self.max_loras = max_loras
        self._read = read
        self._record = record
        self._on_change = on_change
        self._lock = threading.Lock()
        self._paths: dict[str, Path] = {}
        self._resident: OrderedDict[str, LoraAdapter] = OrderedDict()  # least recent first

    # ---- the operator's side (any thread) ---------------------------------------------

    def load(self, name: str, path: Path) -> LoraAdapter:
        """Serve the adapter at `path` as `name` (again, if it is served: new requests get the
        new weights, running ones finish on the old). Raises AdapterError."""
        adapter = self._read(check_name(name), path)
        with self._lock:
            self._paths[name] = path
            self._resident.pop(name, None)
            if self._make_room():
                self._resident[name] = adapter
            self._write_record()
        self._changed()
        log.info("adapter %s loaded from %s: rank %d on %s, %.1f MiB", name, path,
                 adapter.rank, ",".join(adapter.targets), adapter.nbytes / 2**20)
        return adapter

    def unload(self, name: str) -> None:
        """Stop serving `name`; sequences running on it finish. Raises UnknownAdapter."""
        with self._lock:
            if name not in self._paths:
                raise UnknownAdapter(name, sorted(self._paths))
            del self._paths[name]
            self._resident.pop(name, None)
            self._write_record()
        self._changed()
        log.info("adapter %s unloaded", name)

    def served(self) -> dict[str, Path]:
        """Name -> directory of every adapter served, by name."""
        with self._lock:
            return dict(sorted(self._paths.items()))

    def resident(self) -> list[str]:
        with self._lock:
            return list(self._resident)

    def is_resident(self, adapter: LoraAdapter) -> bool:
        """Whether these weights are the ones `adapter.name` has resident (not evicted,
        unloaded or replaced since)."""
        with self._lock:
            return self._resident.get(adapter.name) is adapter

    def check(self, name: str) -> None:
        """Raises UnknownAdapter unless `name` is served (at submission, before queuing)."""
        with self._lock:
            if name not in self._paths:
                raise UnknownAdapter(name, sorted(self._paths))

    # ---- the engine thread --------------------------------------------------------------

    def acquire(self, name: str) -> Optional[LoraAdapter]:
        """The adapter's weights for a sequence about to run, counted as in use; None while
        every resident adapter is in use and none may be added (the sequence waits).

        Raises UnknownAdapter if it was unloaded since the request came, AdapterError if its
        directory can no longer be read."""
        with self._lock:
            adapter = self._resident.get(name)
            if adapter is not None:
                self._resident.move_to_end(name)
                adapter.users += 1
                return adapter
            path = self._paths.get(name)
            if path is None:
                raise UnknownAdapter(name, sorted(self._paths))
            if not self._make_room():
                return None
        adapter = self._read(name, path)  # evicted before: read again, outside the lock
        with self._lock:
            if self._paths.get(name) != path:  # unloaded or replaced meanwhile
                raise AdapterError(f"adapter `{name}` was unloaded or replaced while it loaded")
            self._resident[name] = adapter
            adapter.users += 1
        self._changed()
        log.info("adapter %s made resident again from %s", name, path)
        return adapter

    def hold(self, adapter: LoraAdapter) -> None:
        """One more sequence runs on `adapter` (a fork of one that holds it)."""
        with self._lock:
            adapter.users += 1

    def release(self, adapter: LoraAdapter) -> None:
        """A sequence on `adapter` ended: it may be evicted once nobody else uses it."""
        with self._lock:
            adapter.users -= 1

    def _make_room(self) -> bool:
        """Under the lock: whether one more adapter may be resident, evicting the least
        recently used idle one if the bound is reached."""
        if len(self._resident) < self.max_loras:
            return True
        for name, adapter in self._resident.items():
            if adapter.users == 0:
                del self._resident[name]
                log.info("adapter %s evicted (LLM_MAX_LORAS=%d resident)", name, self.max_loras)
                return True
        return False

    def _changed(self) -> None:
        with self._lock:
            counts = len(self._paths), len(self._resident)
        self._on_change(*counts)

    def _write_record(self) -> None:
        """Under the lock: the served list, written whole and renamed into place."""
        if self._record is None:
            return
        self._record.parent.mkdir(parents=True, exist_ok=True)
        partial = self._record.with_name(self._record.name + f".{os.getpid()}.tmp")
        partial.write_text(json.dumps({name: str(path) for name, path in self._paths.items()},
                                      indent=1) + "\n")
        partial.replace(self._record)


def starting_adapters(configured: Sequence[tuple[str, Path]],
                      record: Optional[Path]) -> list[tuple[str, Path]]:
    """What an engine serves at start: its record when one exists (the loads and unloads since
    the service started, so a restarted replica serves what it served), else the configured
    list (LLM_LORA_ADAPTERS)."""
    if record is not None and record.is_file():
        try:
            saved = json.loads(record.read_text())
        except ValueError as exc:
            raise AdapterError(f"the adapter record {record} is not valid JSON ({exc}); remove "
                               "it to start from LLM_LORA_ADAPTERS") from None
        log.info("adapters from the record %s: %s", record, ", ".join(saved) or "none")
        return [(str(name), Path(path)) for name, path in saved.items()]
    return list(configured)


def start_registry(config: EngineConfig, read: Reader,
                   on_change: Callable[[int, int], None]) -> AdapterRegistry:
    """An engine's registry as it starts (LLM_MAX_LORAS, its record), serving what
    `starting_adapters` says, each read with `read`; one that cannot be served fails the load
    (ModelLoadError naming it)."""
    registry = AdapterRegistry(read, config.max_loras, config.adapter_record, on_change)
    try:
        for name, path in starting_adapters(config.lora_adapters, config.adapter_record):
            registry.load(name, path)
    except AdapterError as exc:
        raise ModelLoadError(str(exc)) from exc
    return registry


def check_served(registry: Optional[AdapterRegistry], name: str) -> None:
    """At submission: raises UnknownAdapter unless `name` is empty (the base model) or served
    (`registry` None: the engine serves no adapters)."""
    if not name:
        return
    if registry is None:
        raise UnknownAdapter(name, [])
    registry.check(name)
