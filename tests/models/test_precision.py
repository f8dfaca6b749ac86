"""models.precision: the landmark networks compute in float32 under a caller's bf16 autocast."""

import pytest
import torch
from torch import nn

from models.faceapi import FaceApiLandmarks68, FaceLandmark68Net
from models.human_facemesh import FaceMeshNet, HumanFaceMesh
from models.paper_nets import Landmark106
from models.precision import float32_forward
from models.tiny import TinyLandmarks


class Head(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(16, 4)

    @float32_forward
    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.fc(image)


def bf16_autocast():
    return torch.autocast(device_type="cpu", dtype=torch.bfloat16)


def test_float32_forward_ignores_the_callers_autocast_and_keeps_the_gradient():
    torch.manual_seed(0)
    head, x = Head(), torch.randn(3, 16)
    want = head(x)
    with bf16_autocast():
        plain = head.fc(x)                  # what autocast does to an undecorated layer
        x_grad = x.clone().requires_grad_(True)
        got = head(x_grad)
    assert plain.dtype == torch.bfloat16 and got.dtype == torch.float32
    torch.testing.assert_close(got, want, rtol=0, atol=0)
    got.sum().backward()
    torch.testing.assert_close(x_grad.grad, head.fc.weight.sum(0).expand(3, -1), rtol=0, atol=0)


def test_float32_forward_takes_a_bf16_input():
    head, x = Head(), torch.randn(2, 16)
    with bf16_autocast():
        got = head(x.bfloat16())
    torch.testing.assert_close(got, head(x.bfloat16().float()), rtol=0, atol=0)


LANDMARK_MODELS = {
    "faceapi68": lambda: FaceApiLandmarks68(FaceLandmark68Net()),
    "landmark106": lambda: Landmark106(),
    "facemesh": lambda: HumanFaceMesh(FaceMeshNet()),
    "tiny": lambda: TinyLandmarks({"a": [0, 1], "b": [2]}),
}


@pytest.mark.parametrize("name", sorted(LANDMARK_MODELS))
def test_every_landmark_model_returns_float32_points_under_bf16_autocast(name):
    """The HFLD loss compares coordinates that move ~1e-3; bf16 would round them to 2^-9..2^-8 steps
    (benchmarks/bench_landmark_precision.py). Random weights: the point is the arithmetic, not the faces."""
    torch.manual_seed(0)
    net = LANDMARK_MODELS[name]().eval()
    image = torch.rand(2, 3, 64, 64) * 2 - 1
    with torch.no_grad():
        want = net(image)
        with bf16_autocast():
            got = net(image)
    assert got.dtype == torch.float32, f"{name}: points are {got.dtype} under bf16 autocast"
    torch.testing.assert_close(got, want, rtol=0, atol=0)


def test_float32_forward_keeps_float64():
    head, x = Head().double(), torch.randn(2, 16, dtype=torch.float64)
    with bf16_autocast():
        got = head(x)
    assert got.dtype == torch.float64
