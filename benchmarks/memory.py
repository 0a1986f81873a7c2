"""Memory figures: peak RSS of the server processes during a run, GPU memory, weight bytes.

Peak RSS is the kernel's own high-water mark (`VmHWM` in /proc/PID/status), read while the
process lives, with /proc sampled every `interval` seconds so processes that appear later (the
Python-backend stubs) are found too. GPU memory comes from `nvidia-smi` when it exists.
"""

from __future__ import annotations

import shutil
import subprocess
import threading
from collections import defaultdict
from pathlib import Path
from typing import Any, Callable, Optional


def _status_kib(pid: int, field: str) -> Optional[int]:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return None


def _gpu_used_mib() -> Optional[int]:
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=memory.used",
                              "--format=csv,noheader,nounits"], capture_output=True, text=True,
                             timeout=5, check=True).stdout
        return sum(int(v) for v in out.split())
    except (OSError, subprocess.SubprocessError, ValueError):
        return None


def current_rss_mib(processes: dict[str, int]) -> dict[str, float]:
    """Each process's resident memory now (VmRSS), where the peak (VmHWM) may be a transient
    of the model's load."""
    return {role: round((_status_kib(pid, "VmRSS") or 0) / 1024, 1)
            for role, pid in sorted(processes.items())}


class PeakMemory:
    """Samples the processes named by `processes()` in a thread until `stop()`."""

    def __init__(self, processes: Callable[[], dict[str, int]], interval: float = 0.5) -> None:
        self._processes = processes
        self._interval = interval
        self._stop = threading.Event()
        self.peak_kib: dict[str, int] = defaultdict(int)
        self.gpu_peak_mib: Optional[int] = None
        self._gpu = shutil.which("nvidia-smi") is not None
        self._thread = threading.Thread(target=self._loop, name="rss-sampler", daemon=True)

    def __enter__(self) -> "PeakMemory":
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    def sample(self) -> None:
        for role, pid in self._processes().items():
            for field in ("VmHWM", "VmRSS"):
                value = _status_kib(pid, field)
                if value is not None:
                    self.peak_kib[role] = max(self.peak_kib[role], value)
        if self._gpu:
            used = _gpu_used_mib()
            if used is not None:
                self.gpu_peak_mib = max(self.gpu_peak_mib or 0, used)

    def _loop(self) -> None:
        while not self._stop.is_set():
            self.sample()
            self._stop.wait(self._interval)

    def stop(self) -> None:
        if not self._stop.is_set():
            self.sample()
            self._stop.set()
            self._thread.join()

    def result(self) -> dict[str, Any]:
        return {"peak_rss_mib": {role: round(kib / 1024, 1)
                                 for role, kib in sorted(self.peak_kib.items())},
                "total_peak_rss_mib": round(sum(self.peak_kib.values()) / 1024, 1),
                "gpu_peak_used_mib": self.gpu_peak_mib}


def weight_bytes(model: Any) -> dict[str, int]:
    """Bytes of the model's weights by dtype, counting shared (tied) tensors once.

    Walks the state dict, so torch's quantized modules (whose int8 weights are packed
    parameters, not `parameters()`) are counted as well.
    """
    import torch

    seen: set[tuple[int, int]] = set()
    totals: dict[str, int] = defaultdict(int)

    def add(tensor: Any) -> None:
        if isinstance(tensor, (tuple, list)):
            for item in tensor:
                add(item)
            return
        if not isinstance(tensor, torch.Tensor):
            return
        if tensor.is_quantized:
            data = tensor.int_repr()
            key = (id(tensor), 0)
            size = data.numel() * data.element_size()
        else:
            key = (tensor.data_ptr(), tensor.numel())
            size = tensor.numel() * tensor.element_size()
        if key in seen:
            return
        seen.add(key)
        totals[str(tensor.dtype).removeprefix("torch.")] += size

    for value in model.state_dict().values():
        add(value)
    return dict(sorted(totals.items()))
