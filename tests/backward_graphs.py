"""A torch.compile backend for tests that looks at the backward graphs AOTAutograd builds.

What cuDNN copies in a convolution's backward depends on the layouts of its output gradient and its
input (it converts the gradient to the input's layout first), and those layouts are recorded on the
graph's nodes. Reading them needs no code generation, so the check runs in seconds on the CPU.
"""

import torch


def nhwc(t: torch.Tensor) -> bool:
    return t.is_contiguous(memory_format=torch.channels_last) and not t.is_contiguous()


def recording_convolution_backwards(rows: list):
    """A backend that runs graphs as traced and appends, for each `convolution_backward` in a backward
    graph, (transposed, gradient shape, gradient NHWC?, input NHWC or single-channel?) to `rows`."""
    from functorch.compile import make_boxed_func
    from torch._functorch.aot_autograd import aot_module_simplified

    def record(gm, example_inputs):
        for node in gm.graph.nodes:
            if node.target is torch.ops.aten.convolution_backward.default:
                grad, inp = node.args[0].meta["val"], node.args[1].meta["val"]
                rows.append((node.args[7], list(grad.shape), nhwc(grad), nhwc(inp) or inp.shape[1] == 1))
        return make_boxed_func(gm.forward)

    def backend(gm, example_inputs):
        return aot_module_simplified(gm, example_inputs, fw_compiler=lambda g, _: make_boxed_func(g.forward),
                                     bw_compiler=record)
    return backend
