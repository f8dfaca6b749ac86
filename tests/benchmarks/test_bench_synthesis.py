"""benchmarks/bench_synthesis.py --tiny: the benchmark's rows, parity and profile run end to end on CPU."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "bench_synthesis.py"


@pytest.mark.timeout(300)
def test_tiny_benchmark_prints_rows_parity_and_profile(tmp_path):
    out = tmp_path / "report.json"
    proc = subprocess.run([sys.executable, str(SCRIPT), "--tiny", "--profile", "--json", str(out)],
                          capture_output=True, text=True, timeout=290, cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    report = json.loads(out.read_text())
    rows = {(r["row"], r["batch"]) for r in report["results"] if r["status"] == "ok"}
    assert rows == {(row, b) for row in ("ref-fp32", "ref-bf16", "fast-fp32", "fast-eager") for b in (2, 4)}
    parity = {p["row"]: p for p in report["parity"]}
    assert parity["fast-fp32"]["max_abs"] < 1e-4          # the fast path in fp32 is the reference function
    assert parity["fast-eager"]["psnr_db"] > 40           # bf16 within the documented tolerance
    assert "Best batch per row" in proc.stdout and "torch=" in proc.stdout
    assert "--profile: ref-bf16" in proc.stdout and "--profile: fast-eager" in proc.stdout
