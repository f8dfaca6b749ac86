"""benchmarks/bench_invert.py --smoke: the timing rows (with and without the candidate start) on CPU."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "bench_invert.py"


@pytest.mark.timeout(180)
def test_smoke_times_both_starts(tmp_path):
    out = tmp_path / "invert.json"
    proc = subprocess.run([sys.executable, str(SCRIPT), "--smoke", "--starts", "mean", "pool", "both",
                           "--start-candidates", "16", "--json", str(out)],
                          capture_output=True, text=True, timeout=170, cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    rows = json.loads(out.read_text())["results"]
    assert [(r["start"], r["start_candidates"]) for r in rows] == [("mean", None), ("pool", 16), ("both", 16)]
    assert all(r["faces_per_s"] > 0 for r in rows)
    assert rows[0]["pool_seconds"] is None and rows[1]["pool_seconds"] > 0 and rows[1]["pool_cached"]
    assert "start pool" in proc.stdout and "start both" in proc.stdout
