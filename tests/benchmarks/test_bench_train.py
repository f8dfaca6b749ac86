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


def test_copies_are_listed_by_their_callers():
    """The --profile table of copies names the op chain that made each copy, largest first."""
    import torch
    from torch.profiler import ProfilerActivity, profile
    from benchmarks.bench_train import copies_by_caller
    x = torch.randn(8, 64, 64, 64)
    with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
        for _ in range(3):
            with torch.profiler.record_function("to_nhwc"):
                x.contiguous(memory_format=torch.channels_last)
            with torch.profiler.record_function("small_cast"):
                x[:1, :1].to(torch.float64)
    lines = copies_by_caller(prof, torch.device("cpu"))
    rows = [line for line in lines[2:] if line.strip()]
    assert len(rows) == 2
    assert "to_nhwc" in rows[0] and "[8, 64, 64, 64]" in rows[0] and " 1.0 " in rows[0]
    assert "small_cast" in rows[1]


@pytest.mark.timeout(120)
def test_profile_only_skips_the_timed_rows(tmp_path):
    proc = subprocess.run([sys.executable, str(SCRIPT), "--tiny", "--profile-only", "--no-components",
                           "--precisions", "fp32"], capture_output=True, text=True, timeout=110, cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "--profile: 32 px" in proc.stdout and "copies (aten::copy_) by caller" in proc.stdout
    assert not [line for line in proc.stdout.splitlines() if line.endswith("  ok")]   # no timed row
    assert "Best per-GPU batch" not in proc.stdout


def test_landmark_precision_takes_the_float32_pin_off_for_the_setting_only():
    """--landmark-precision autocast: inside the setting the landmark net runs under the caller's bf16
    autocast (bf16 points); outside it, and with "float32", the shipped float32 pin (float32 points)."""
    import torch
    from benchmarks.bench_train import landmark_precision, tiny_bundle
    net = tiny_bundle(torch.device("cpu")).landmarks
    image = torch.rand(2, 3, 32, 32)

    def points_dtype():
        with torch.autocast("cpu", dtype=torch.bfloat16):
            return net(image).dtype

    with landmark_precision(net, "float32"):
        assert points_dtype() == torch.float32
    with landmark_precision(net, "autocast"):
        assert points_dtype() == torch.bfloat16
    assert points_dtype() == torch.float32 and "forward" not in net.__dict__
    shipped = net.forward = lambda x: torch.zeros(1)     # a wrapped forward (e.g. compiled) comes back as it was
    with landmark_precision(net, "autocast"):
        assert net.forward is not shipped
    assert net.forward is shipped


def test_block_gradients_as_is_takes_the_layout_hand_off_out_for_the_setting_only():
    import torch
    import models.stylegan2_fast as fast
    from benchmarks.bench_train import block_gradient_layout
    shipped = fast.gradient_in_layout_of
    x = torch.randn(2, 4, 3, 3).contiguous(memory_format=torch.channels_last).requires_grad_(True)
    with block_gradient_layout("layout"):
        assert fast.gradient_in_layout_of is shipped
    with block_gradient_layout("as-is"):
        y = fast.gradient_in_layout_of(x)
        assert y is x           # the gradient goes back in whatever layout the consumer makes it
    assert fast.gradient_in_layout_of is shipped
