"""No network of a preset builds a tensor from host data, or reads one back, inside its forward.

CUDA-graph capture (train's `cuda_graph: true`, the default) forbids host-device copies and
synchronisations while it records: `torch.tensor(constants, device=cuda)` inside a forward kills the
first graphed step on a GPU. On a CPU machine nothing fails, so these tests watch every torch call
made during a forward (and the training step's backward) with a TorchFunctionMode and refuse the
calls that copy host data into a tensor or read a tensor back to the host. Constants belong in
(non-persistent) buffers, which `.to(device)` moves once, outside any capture.

The GPU counterpart (eager vs. graphed training step of every preset) is
tests/pipeline/stages/train/test_train_gpu.py.
"""

from __future__ import annotations

import traceback

import pytest
import torch
from torch.overrides import TorchFunctionMode

from pipeline.core.config import from_dict
from pipeline.presets import ModelConfig, build_bundle
from pipeline.stages.train import TrainConfig
from pipeline.stages.train.step import compute_terms, sample_batch, setup_training

# Host data -> tensor (a host-to-device copy on a GPU), and tensor -> host (a synchronisation).
HOST_CALLS = frozenset({"tensor", "as_tensor", "asarray", "new_tensor", "from_numpy",
                        "item", "tolist", "numpy", "cpu", "nonzero", "__bool__", "__int__", "__float__"})


class HostTensorInForward(AssertionError):
    pass


class NoHostTensors(TorchFunctionMode):
    """Raise on any HOST_CALLS function called while active, naming the caller's file and line."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        name = getattr(func, "__name__", "")
        if name in HOST_CALLS:
            caller = traceback.extract_stack()[-2]
            raise HostTensorInForward(f"torch {name}() at {caller.filename}:{caller.lineno} ({caller.line}): "
                                      "host data inside a forward breaks CUDA-graph capture; use a buffer")
        return func(*args, **(kwargs or {}))


def test_the_guard_refuses_a_host_constant_and_allows_buffers():
    class Bad(torch.nn.Module):
        def forward(self, x):
            return x - torch.tensor([1.0, 2.0, 3.0], device=x.device).view(1, 3, 1, 1)

    class Good(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.register_buffer("mean", torch.tensor([1.0, 2.0, 3.0]).view(1, 3, 1, 1), persistent=False)

        def forward(self, x):
            return x - self.mean.to(x.dtype) + x.new_zeros(())

    x, bad, good = torch.zeros(1, 3, 2, 2), Bad(), Good()
    with NoHostTensors(), pytest.raises(HostTensorInForward, match=r"torch tensor\(\) at .*test_capture_safe"):
        bad(x)
    with NoHostTensors():
        good(x)


def training_step_under_guard(preset: str, bundle) -> dict:
    """One training step's forward passes and backward (what the CUDA graph captures) under the guard."""
    cfg = from_dict(TrainConfig, {"model": {"preset": preset}, "batch_size": 2, "noise_mode": "random",
                                  "tracking": {"enabled": False}})
    state = setup_training(cfg, bundle, torch.device("cpu"))
    batch = sample_batch(cfg, bundle.generator, state.directions.n_attributes, [0, 1], state.device)
    with NoHostTensors():
        terms = compute_terms(state, batch, cfg)
        terms["total"].backward()
    assert state.directions.T.grad is not None and torch.isfinite(state.directions.T.grad).all()
    return terms


def every_network_under_guard(bundle) -> None:
    """Every other network of the bundle (emotion, identity, judges) on a generated image."""
    with torch.no_grad():
        wplus = bundle.generator.broadcast(bundle.generator.mapping(torch.randn(2, bundle.generator.z_dim)))
        image = bundle.generator.synthesis(wplus)
    modules = {"emotion": bundle.emotion, "identity": bundle.identity, **bundle.judges}
    with NoHostTensors(), torch.no_grad():
        for name, module in modules.items():
            if module is not None:
                out = module(image)
                assert out.shape[0] == 2, name


def test_tiny_forwards_create_no_host_tensor(tiny_bundle):
    training_step_under_guard("tiny", tiny_bundle)
    every_network_under_guard(tiny_bundle)


def test_starter_forwards_create_no_host_tensor(starter_cache):
    """Failed before the face-api / fer constants became buffers (torch.tensor(FACEAPI_MEAN_RGB, ...)
    in faceapi_age_gender.normalise_faceapi, faceapi.normalise_pixels, mini_xception.rgb_to_fer_input)."""
    bundle = build_bundle(ModelConfig(preset="starter", cache_dir=str(starter_cache.parent)), "cpu")
    training_step_under_guard("starter", bundle)
    every_network_under_guard(bundle)


def test_paper_and_human_networks_create_no_host_tensor():
    """The ffhq presets' role wrappers and the human judges, randomly initialised, on a small image."""
    from models.human_faceres import FaceResNet, HumanFaceRes
    from models.human_facemesh import FaceMeshNet, HumanFaceMesh
    from models.load.paper_nets import deepface_emotion_net
    from models.paper_nets import CelebAAttributeRegressor, DeepFaceEmotion, Landmark106, VGGPerceptual

    torch.manual_seed(0)
    modules = {"regressor": CelebAAttributeRegressor(input_size=64), "landmarks": Landmark106(),
               "perceptual": VGGPerceptual(), "emotion": DeepFaceEmotion(deepface_emotion_net()),
               "facemesh": HumanFaceMesh(FaceMeshNet()), "faceres": HumanFaceRes(FaceResNet())}
    image = torch.rand(2, 3, 64, 64) * 2 - 1
    with NoHostTensors(), torch.no_grad():
        for name, module in modules.items():
            out = module.eval()(image)
            assert (out[0] if isinstance(out, list) else out).shape[0] == 2, name
