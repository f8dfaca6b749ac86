"""GPU-only checks of the training step (skipped on CPU machines with the reason)."""

import pytest
import torch

from pipeline.core.config import from_dict
from pipeline.core.seeding import global_sample_ids
from pipeline.presets import ModelConfig, build_bundle
from pipeline.stages.train import NonFiniteLoss, TrainConfig
from pipeline.stages.train.step import GraphedTrainStep, make_step, sample_batch, setup_training

pytestmark = pytest.mark.gpu


def run_steps(cuda_graph: bool, steps: int, poison_at: int | None = None):
    cfg = from_dict(TrainConfig, {"model": {"preset": "tiny"}, "device": "cuda", "batch_size": 4,
                                  "cuda_graph": cuda_graph, "noise_mode": "random",
                                  "tracking": {"enabled": False}})
    bundle = build_bundle(ModelConfig(preset="tiny"), "cuda")
    state = setup_training(cfg, bundle, torch.device("cuda"))
    step = make_step(state, cfg)
    assert isinstance(step, GraphedTrainStep) == cuda_graph
    for k in range(steps):
        batch = sample_batch(cfg, bundle.generator, 2, global_sample_ids(k, 0, 4, 1), state.device)
        if poison_at is not None and k == poison_at:
            batch.wplus.fill_(float("nan"))
            with pytest.raises(NonFiniteLoss, match=f"non-finite loss at step {k + 1}"):
                step(batch)
            return state
        step(batch)
    return state


def test_cuda_graph_step_equals_eager_step():
    eager, graphed = run_steps(False, 8), run_steps(True, 8)
    assert graphed.step == eager.step == 8
    assert torch.allclose(graphed.directions.T, eager.directions.T, atol=1e-6, rtol=1e-5)


def test_cuda_graph_step_keeps_T_on_nan():
    poisoned = run_steps(True, 8, poison_at=6)   # steps 1-6 fine, step 7 NaN (a replayed graph)
    clean = run_steps(True, 6)
    assert poisoned.step == 6
    assert torch.allclose(poisoned.directions.T, clean.directions.T, atol=1e-6, rtol=1e-5)
    opt_p, opt_c = (s.optimizer.state[s.directions.T] for s in (poisoned, clean))
    assert torch.allclose(opt_p["exp_avg"], opt_c["exp_avg"], atol=1e-6) and torch.equal(opt_p["step"], opt_c["step"])


def test_fast_path_gradient_of_T_tracks_the_reference():
    """The bf16 fast path (compiled G and D) gives T's first gradient close to the reference modules'."""
    from pipeline.stages.train.step import compute_terms

    def first_grad(fast_path: str) -> torch.Tensor:
        cfg = from_dict(TrainConfig, {"model": {"preset": "tiny", "fast_path": fast_path}, "device": "cuda",
                                      "batch_size": 8, "cuda_graph": False, "init_std": 0.5,
                                      "tracking": {"enabled": False}})
        bundle = build_bundle(cfg.model, "cuda")
        state = setup_training(cfg, bundle, torch.device("cuda"))
        batch = sample_batch(cfg, bundle.generator, 2, global_sample_ids(0, 0, 8, 1), state.device)
        compute_terms(state, batch, cfg)["total"].backward()
        return state.directions.T.grad.flatten().clone()

    ref, fast = first_grad("off"), first_grad("compiled")
    cosine = torch.nn.functional.cosine_similarity(ref, fast, dim=0).item()
    print(f"cosine(grad T fast, grad T reference) = {cosine:.4f}")
    assert cosine > 0.95
