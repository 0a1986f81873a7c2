"""benchmarks/engine_only.py runs both policies end to end (its numbers are not checked)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_engine_only_reports_tokens_per_second_for_both_policies():
    run = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "engine_only.py"),
                          "--requests", "6", "--clients", "3", "--repeats", "1"],
                         capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert run.returncode == 0, run.stderr[-2000:]
    for policy in ("continuous", "static"):
        assert re.search(rf"{policy}\s+[\d,]+ tokens/s \(min [\d,]+, max [\d,]+\)\s+TTFT p50\s+\d+ ms",
                         run.stdout), run.stdout
