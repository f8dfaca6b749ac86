"""benchmarks/profile_block_copies.py on the CPU (aot_eager, tiny networks): it runs, and with the shipped
fast path the only layout copy left at a region boundary is the discriminator's 4x4 head. 8 px keeps it
quick (G's 4 -> 8 boundary, D's one block and its head); the 16 px check with a boundary between D's
blocks is tests/models/test_stylegan2_fast.py's."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "profile_block_copies.py"


@pytest.mark.timeout(180)
def test_profile_block_copies_counts_the_boundary_copies(tmp_path):
    proc = subprocess.run([sys.executable, str(SCRIPT), "--resolution", "8", "--batch", "2", "--device", "cpu",
                           "--backend", "aot_eager", "--channels", "8", "4"],
                          capture_output=True, text=True, timeout=170, cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "--block-gradients layout" in proc.stdout and "copies (aten::copy_) by caller" in proc.stdout
    assert "(aten::contiguous under CompiledFunctionBackward): 1 per step" in proc.stdout
