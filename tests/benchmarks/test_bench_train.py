"""benchmarks/bench_train.py --tiny: the benchmark's 1-device and 2-rank DDP paths run end to end on CPU."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "bench_train.py"


@pytest.mark.timeout(180)
def test_tiny_benchmark_runs_one_device_and_two_rank_ddp(tmp_path):
    out = tmp_path / "rows.json"
    proc = subprocess.run([sys.executable, str(SCRIPT), "--tiny", "--steps", "2", "--warmup", "0",
                           "--batches", "2", "4", "--ddp-batches", "2", "--precisions", "fp32", "--gpus", "1", "2",
                           "--json", str(out)], capture_output=True, text=True, timeout=170, cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    rows = json.loads(out.read_text())
    assert [(r["gpus"], r["batch_per_gpu"], r["status"]) for r in rows] == [(1, 2, "ok"), (1, 4, "ok"), (2, 2, "ok")]
    assert all(r["iters_per_s"] > 0 and r["samples_per_s"] == pytest.approx(r["iters_per_s"] * r["global_batch"])
               for r in rows)
    text = proc.stdout
    assert "tiny random networks" in text
    assert "Scaling efficiency" in text and "2 GPUs" in text
    assert "50,000 iterations x global batch 4" in text
    assert "1 GPU(s) x batch 4:" in text and "2 GPU(s) x batch 2:" in text
