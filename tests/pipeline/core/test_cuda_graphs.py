"""pipeline/core/cuda_graphs.py: replayed graphs give the eager results; off CUDA it is a plain call."""

import pytest
import torch

from pipeline.core.cuda_graphs import GraphedCall


def test_off_cuda_it_is_a_plain_call():
    calls = []

    def fn(x, y):
        calls.append(1)
        return x + y, x * y

    graphed = GraphedCall(fn)
    a, b = torch.randn(3), torch.randn(3)
    out = graphed(a, b)
    assert torch.equal(out[0], a + b) and torch.equal(out[1], a * b)
    assert len(calls) == 1 and graphed.recorded == {}


@pytest.mark.gpu
def test_replay_equals_eager_one_graph_per_signature():
    w = torch.randn(64, 64, device="cuda")

    def fn(x):
        return (torch.relu(x @ w).sum(1),)

    graphed = GraphedCall(fn, max_graphs=2)
    for n in (8, 8, 16, 8):
        x = torch.randn(n, 64, device="cuda")
        assert torch.equal(graphed(x)[0], fn(x)[0])
    assert len(graphed.recorded) == 2
    x = torch.randn(32, 64, device="cuda")                      # past max_graphs: eager, still right
    assert torch.equal(graphed(x)[0], fn(x)[0]) and len(graphed.recorded) == 2
