"""pipeline/core/streams.py: branches give the serial results, gradients included, eager and captured."""

import pytest
import torch

from pipeline.core.streams import StreamSet


def test_off_cuda_branches_run_in_order_on_the_calling_thread():
    order = []
    streams = StreamSet(torch.device("cpu"))
    assert not streams.enabled
    out = streams.run({"b": lambda: order.append("b") or 2, "a": lambda: order.append("a") or 1})
    assert out == {"b": 2, "a": 1} and list(out) == ["b", "a"] and order == ["b", "a"]


def branch_losses(streams: StreamSet, x: torch.Tensor, weights: list[torch.Tensor]) -> torch.Tensor:
    """x -> h on the current stream, then three judges of h on their branches (forward and backward)."""
    h = torch.tanh(x @ weights[0])
    judged = streams.run({f"j{k}": (lambda w=w: (torch.relu(h @ w) ** 2).mean()) for k, w in enumerate(weights[1:])})
    return sum(judged.values())


@pytest.mark.gpu
def test_parallel_branches_equal_serial_values_and_gradients():
    torch.manual_seed(0)
    weights = [torch.randn(256, 256, device="cuda") / 16 for _ in range(4)]
    x = torch.randn(64, 256, device="cuda")
    results = {}
    for enabled in (False, True):
        leaf = x.clone().requires_grad_(True)
        loss = branch_losses(StreamSet(torch.device("cuda"), enabled), leaf, weights)
        loss.backward()
        results[enabled] = (loss.detach(), leaf.grad)
    torch.testing.assert_close(results[True][0], results[False][0], rtol=1e-6, atol=0)
    torch.testing.assert_close(results[True][1], results[False][1], rtol=1e-6, atol=1e-9)


@pytest.mark.gpu
def test_parallel_branches_capture_into_one_cuda_graph_with_backward():
    """Forked streams must rejoin the capturing stream (forward) and autograd's backward on them must
    be captured too; replaying with new inputs then gives the eager gradient of those inputs."""
    torch.manual_seed(1)
    weights = [torch.randn(128, 128, device="cuda") / 12 for _ in range(4)]
    streams = StreamSet(torch.device("cuda"))
    static = torch.randn(32, 128, device="cuda", requires_grad=True)
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):            # warm-up off the default stream, as capture requires
        for _ in range(2):
            branch_losses(streams, static, weights).backward()
            static.grad = None
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        loss = branch_losses(streams, static, weights)
        loss.backward()
    fresh = torch.randn(32, 128, device="cuda")
    with torch.no_grad():
        static.copy_(fresh)
    graph.replay()
    torch.cuda.synchronize()
    leaf = fresh.clone().requires_grad_(True)
    expected = branch_losses(StreamSet(torch.device("cuda"), enabled=False), leaf, weights)
    expected.backward()
    torch.testing.assert_close(loss.detach(), expected.detach(), rtol=1e-5, atol=0)
    torch.testing.assert_close(static.grad, leaf.grad, rtol=1e-5, atol=1e-8)
