"""The lockstep harness of the GPU tests (tests/pipeline/stages/train/lockstep.py), checked on the CPU
with two eager steps: equal steps compare equal, and the faults it exists to find show up."""

from __future__ import annotations

import pytest
import torch

from pipeline.core.config import from_dict
from pipeline.core.seeding import global_sample_ids
from pipeline.presets import ModelConfig, build_bundle
from pipeline.stages.train import TrainConfig
from pipeline.stages.train.step import make_step, sample_batch, setup_training, train_step, trained_tensors
from tests.pipeline.stages.train.lockstep import align, lockstep

STEPS = 3


@pytest.fixture(scope="module")
def setup():
    cfg = from_dict(TrainConfig, {"model": {"preset": "tiny"}, "device": "cpu", "batch_size": 4,
                                  "noise_mode": "random", "tracking": {"enabled": False}})
    bundle = build_bundle(ModelConfig(preset="tiny"), "cpu")

    def side():
        state = setup_training(cfg, bundle, torch.device("cpu"))
        return state, make_step(state, cfg)

    def draw(k: int):
        return sample_batch(cfg, bundle.generator, 2, global_sample_ids(k, 0, 4, 1), torch.device("cpu"))

    return cfg, side, draw


def test_equal_steps_compare_equal_even_from_different_starting_points(setup):
    cfg, side, draw = setup
    leader, follower = side(), side()
    with torch.no_grad():
        follower[0].directions.T.add_(0.1)      # align() must undo this before the first step
    for c in lockstep(leader, follower, draw, STEPS):
        assert c.follower == c.leader
        assert c.grad_rel == 0.0 and c.update_rel == 0.0 and c.update_norm > 0


def test_a_follower_trained_on_other_faces_is_caught(setup):
    """A stale input buffer (a graph replaying another batch) moves the gradient by O(1)."""
    cfg, side, draw = setup
    comparisons = lockstep(side(), side(), draw, STEPS, draw_follower=lambda k: draw(k + 100))
    assert all(c.grad_rel > 0.1 for c in comparisons)
    assert any(c.follower["total"] != c.leader["total"] for c in comparisons)


def test_a_follower_that_misses_its_update_is_caught(setup):
    cfg, side, draw = setup
    state, _ = side()

    def forgets_to_step(batch):             # computes the gradient, never applies it
        optimizer_step, state.optimizer.step = state.optimizer.step, lambda: None
        try:
            return train_step(state, batch, cfg)
        finally:
            state.optimizer.step = optimizer_step

    comparisons = lockstep(side(), (state, forgets_to_step), draw, 1)
    assert comparisons[0].grad_rel == 0.0 and comparisons[0].update_rel == pytest.approx(1.0)


def test_align_copies_T_and_adam_moments_in_place(setup):
    cfg, side, draw = setup
    leader, follower = side(), side()
    for state, step in (leader, follower):
        step(draw(0))
    leader[1](draw(1))                      # the leader one step ahead: other T, moments, step count
    addresses = [t.data_ptr() for t in trained_tensors(follower[0])]
    align(follower[0], leader[0])
    assert [t.data_ptr() for t in trained_tensors(follower[0])] == addresses
    assert len(addresses) == 4
    for f, l in zip(trained_tensors(follower[0]), trained_tensors(leader[0])):
        assert torch.equal(f, l)
