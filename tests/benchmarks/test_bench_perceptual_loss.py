"""benchmarks/bench_perceptual_loss.py --smoke: every formulation of the perceptual loss is timed on CPU."""

from __future__ import annotations

import pytest
import torch

from benchmarks import bench_perceptual_loss
from models.losses import perceptual_loss


@pytest.mark.timeout(300)
def test_smoke_run_times_every_formulation(capsys):
    assert bench_perceptual_loss.main(["--smoke"]) == 0
    printed = capsys.readouterr().out
    for name in ("shipped", "4d", "float32"):
        assert f"{name}: loss only" in printed
    assert "strides" in printed


def test_the_candidate_formulations_compute_the_shipped_loss():
    gen = torch.Generator().manual_seed(0)
    a = [torch.randn(2, 4, 6, 6, generator=gen), torch.randn(2, 8, 3, 3, generator=gen)]
    b = [torch.randn(2, 4, 6, 6, generator=gen).contiguous(memory_format=torch.channels_last),
         torch.randn(2, 8, 3, 3, generator=gen)]
    want = perceptual_loss(a, b)
    torch.testing.assert_close(bench_perceptual_loss.four_d_loss(a, b), want)
    torch.testing.assert_close(bench_perceptual_loss.float32_copy_loss(a, b), want)
