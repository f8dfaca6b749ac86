"""pipeline/core/compiled.py: compiled forwards compute what eager does, fall back on failure, skip the CPU."""

import pytest
import torch
from torch import nn

from pipeline.core.compiled import CompiledForward, compile_networks, compile_seconds


class SmallJudge(nn.Module):
    """Conv + batch norm + ReLU + pooling: the kind of network the wrapper is for."""

    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                                  nn.Conv2d(8, 8, 3, stride=2, padding=1), nn.BatchNorm2d(8), nn.ReLU())
        self.head = nn.Linear(8, 5)

    def forward(self, x):
        return self.head(self.body(x).mean(dim=(2, 3)))


def frozen_judge(seed: int = 0) -> SmallJudge:
    torch.manual_seed(seed)
    net = SmallJudge().eval().requires_grad_(False)
    for m in net.modules():      # non-trivial running statistics, so batch norm is not the identity
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
    return net


def output_and_input_grad(net, x):
    x = x.clone().requires_grad_(True)
    out = net(x)
    (grad,) = torch.autograd.grad(out.square().sum(), x)
    return out.detach(), grad


def test_cpu_inputs_run_the_original_forward_untouched():
    net = frozen_judge()
    x = torch.randn(4, 3, 16, 16)
    want = net(x)
    assert compile_networks(True, net) == [net]
    assert isinstance(net.__dict__["forward"], CompiledForward)
    torch.testing.assert_close(net(x), want, rtol=0, atol=0)
    assert net.forward.compiled is None and compile_seconds(net) == 0.0       # nothing was compiled


def test_disabled_repeated_and_none_entries_wrap_nothing_twice():
    a, b = frozen_judge(), frozen_judge(1)
    assert compile_networks(False, a, b) == []
    assert "forward" not in a.__dict__
    assert compile_networks(True, a, None, a, b) == [a, b]
    assert compile_networks(True, a, b) == []                  # already wrapped


def test_traced_forward_equals_eager_in_values_and_input_gradients_across_batch_sizes():
    """aot_eager on the CPU: the same Dynamo trace and AOTAutograd split Inductor would get; the batch
    dimension is dynamic, so a second batch size reuses the graph."""
    eager, traced = frozen_judge(), frozen_judge()
    compile_networks(True, traced, backend="aot_eager", devices=("cpu",))
    for batch in (4, 6):
        x = torch.randn(batch, 3, 16, 16, generator=torch.Generator().manual_seed(batch))
        want, want_grad = output_and_input_grad(eager, x)
        got, got_grad = output_and_input_grad(traced, x)
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(got_grad, want_grad, rtol=1e-5, atol=1e-6)
    assert traced.forward.compiled is not None and compile_seconds(traced) > 0


def test_a_compile_failure_warns_once_and_runs_eagerly_from_then_on():
    net = frozen_judge()
    x = torch.randn(2, 3, 16, 16)
    want = net(x)
    compile_networks(True, net, backend="no-such-backend", devices=("cpu",))
    with pytest.warns(RuntimeWarning, match="torch.compile of SmallJudge failed"):
        got = net(x)
    torch.testing.assert_close(got, want, rtol=0, atol=0)
    assert net.forward.failed
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        torch.testing.assert_close(net(x), want, rtol=0, atol=0)


@pytest.mark.gpu
def test_gpu_inductor_forward_matches_eager_under_bf16_autocast():
    """Inductor on CUDA (the stage's setting): outputs and input gradients within bf16 rounding of eager."""
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA device")
    eager, compiled = frozen_judge().cuda(), frozen_judge().cuda()
    compile_networks(True, compiled)
    for batch in (8, 24):
        x = torch.randn(batch, 3, 32, 32, device="cuda", generator=torch.Generator("cuda").manual_seed(batch))
        with torch.autocast("cuda", dtype=torch.bfloat16):
            want, want_grad = output_and_input_grad(eager, x)
            got, got_grad = output_and_input_grad(compiled, x)
        assert not compiled.forward.failed
        torch.testing.assert_close(got.float(), want.float(), rtol=2e-2, atol=2e-2)
        torch.testing.assert_close(got_grad.float(), want_grad.float(), rtol=5e-2, atol=5e-3)
