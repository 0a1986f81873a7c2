"""Counts of the malformed-input campaign: requests tried and 5xx seen, per category.

The tests record every answer here; `conftest.py` prints the table at the end of the session
(and writes it as JSON to $LLM_FUZZ_REPORT when set, for the README's figures).
"""

from __future__ import annotations

import json
import os
from collections import Counter, defaultdict
from pathlib import Path
from typing import Optional


class Tally:
    def __init__(self) -> None:
        self.tried: Counter[str] = Counter()
        self.server_errors: Counter[str] = Counter()
        self.statuses: dict[str, Counter[str]] = defaultdict(Counter)

    def record(self, category: str, status: object) -> None:
        """`status`: an HTTP status (int), a gRPC status name, or None for a closed socket."""
        self.tried[category] += 1
        self.statuses[category][str(status)] += 1
        if (isinstance(status, int) and status >= 500) or status in ("INTERNAL", "UNKNOWN"):
            self.server_errors[category] += 1

    def lines(self) -> list[str]:
        if not self.tried:
            return []
        rows = [f"{'category':<28} {'tried':>7} {'5xx':>5}  answers"]
        for category in sorted(self.tried):
            answers = ", ".join(f"{s}: {n}" for s, n in sorted(self.statuses[category].items()))
            rows.append(f"{category:<28} {self.tried[category]:>7} "
                        f"{self.server_errors[category]:>5}  {answers}")
        rows.append(f"{'total':<28} {sum(self.tried.values()):>7} "
                    f"{sum(self.server_errors.values()):>5}")
        return rows

    def write(self, path: Optional[str] = os.environ.get("LLM_FUZZ_REPORT")) -> None:
        if not path or not self.tried:
            return
        Path(path).write_text(json.dumps({
            "tried": dict(self.tried), "server_errors": dict(self.server_errors),
            "statuses": {k: dict(v) for k, v in self.statuses.items()},
            "total_tried": sum(self.tried.values()),
            "total_server_errors": sum(self.server_errors.values())}, indent=1) + "\n")


TALLY = Tally()
