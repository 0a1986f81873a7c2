"""benchmarks/int8_kernels.py runs every candidate on one product and prints its row (the
figures are not checked: docs/performance.md holds them)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

from tests.textgen.executors.models import needs_cc

ROOT = Path(__file__).resolve().parents[2]


@needs_cc
def test_int8_kernels_times_every_candidate_at_one_and_32_rows():
    run = subprocess.run([sys.executable, "-m", "benchmarks.int8_kernels", "--out", "96",
                          "--width", "64", "--repeats", "1"],
                         capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert run.returncode == 0, run.stderr[-2000:]
    for name in ("torch dynamic int8", "torch _weight_int8pack_mm", "C int8", "C bfloat16"):
        assert re.search(rf"\| {re.escape(name)}[^|]* \| [\d,]+ \| [\d,]+ \| [\d.,]+ \|",
                         run.stdout), run.stdout
