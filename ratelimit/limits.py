"""The limits the service enforces, read from the gateway's tiers.yaml (the one place limits
are set: the gateway's local buckets use the same numbers as their first line)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import yaml

TIERS_FILE = Path(__file__).resolve().parent.parent / "gateway" / "tiers.yaml"


@dataclass(frozen=True)
class Bucket:
    """A token bucket: holds at most `capacity`, refills `per_second` every second."""

    capacity: float
    per_second: float

    def seconds_until(self, level: float, amount: float) -> float:
        """How long until a bucket now at `level` holds `amount` (capped at full)."""
        return max(0.0, min(amount, self.capacity) - level) / self.per_second


@dataclass(frozen=True)
class Tier:
    requests: Bucket
    tokens: Optional[Bucket]  # None: no token quota for this tier
    tokens_per_minute: int = 0


@dataclass(frozen=True)
class TierLimits:
    tiers: dict[str, Tier]
    gateway: Bucket

    @classmethod
    def load(cls, path: Path = TIERS_FILE) -> "TierLimits":
        data: dict[str, Any] = yaml.safe_load(path.read_text())
        tiers = {}
        for name, tier in data["tiers"].items():
            per_minute = tier.get("tokens_per_minute")
            if per_minute is not None and (not isinstance(per_minute, int) or per_minute < 1):
                raise SystemExit(f"{path}: tier `{name}`: `tokens_per_minute` must be a "
                                 f"positive integer (or absent: no token quota)")
            tiers[name] = Tier(
                Bucket(tier["burst"], tier["requests_per_second"]),
                Bucket(per_minute, per_minute / 60) if per_minute else None,
                per_minute or 0)
        gateway = data["gateway"]
        return cls(tiers, Bucket(gateway["burst"], gateway["requests_per_second"]))
