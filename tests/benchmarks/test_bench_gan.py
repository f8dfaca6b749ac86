"""benchmarks/bench_gan.py --tiny: the GAN throughput benchmark runs end to end on CPU."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "bench_gan.py"


@pytest.mark.timeout(300)
def test_tiny_gan_benchmark_runs(tmp_path):
    out = tmp_path / "rows.json"
    proc = subprocess.run([sys.executable, str(SCRIPT), "--tiny", "--batches", "2", "4", "--steps", "16", "--warmup",
                           "1", "--json", str(out)], capture_output=True, text=True, timeout=280, cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    rows = json.loads(out.read_text())["rows"]
    assert [(r["batch"], r["precision"]) for r in rows] == [(2, "fp32"), (4, "fp32")]
    assert all(r["kimg_per_s"] > 0 and r["losses_finite"] and r["steps"] == 16 for r in rows)
    assert "torch" in proc.stdout and "kimg/s" in proc.stdout and "best: batch" in proc.stdout
