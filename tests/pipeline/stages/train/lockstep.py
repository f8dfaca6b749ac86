"""Two ways of running the training step compared one step at a time, from the same point.

Before every step the follower's T and Adam moments are set to the leader's (in place: a captured
CUDA graph reads those addresses), both steps see the same batch, and each step's loss terms,
gradient of T and update of T are compared. So a comparison sees one step's rounding, not a
trajectory's.

Why not two independent runs: under bf16 they drift apart within a few steps for reasons that have
nothing to do with the thing under test. Adam's first updates are about lr x sign(grad T), and the
HFLD term's gradient is sign(H(x') - H(x)) over landmark displacements of ~1e-3, some of which are
set by the bf16 generator's rounding, so a rounding-sized difference flips some elements' steps
outright. Seen on an H100 (2026-12-05, starter, bf16): eager and CUDA-graphed runs agreed within 2% on
steps 1 and 2 and were 4.6% apart in the perceptual term at step 3, while both were still running
eager warm-up steps -- no graph involved yet. In fp32 too, more slowly: serial and concurrent passes
(H100, 2026-12-06, starter) ended 5 free steps 1.1e-3 apart in T's update while agreeing to 3e-6 per step.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from pipeline.stages.train.step import Batch, TrainState, trained_tensors

Step = Callable[[Batch], dict[str, float]]


@dataclass(frozen=True)
class StepComparison:
    """One step of the leader and the follower from the same T, moments and batch."""
    leader: dict[str, float]        # loss terms
    follower: dict[str, float]
    grad_rel: float                 # |g_f - g_l| / |g_l|, g = dLoss/dT of this step
    update_rel: float               # |dT_f - dT_l| / |dT_l|, dT = T after the step - T before
    update_norm: float              # |dT_l|: 0 would make update_rel meaningless


@torch.no_grad()
def align(follower: TrainState, leader: TrainState) -> None:
    """The follower's T and Adam state set to the leader's, in place."""
    dst, src = trained_tensors(follower), trained_tensors(leader)
    assert len(dst) == len(src), "one side's optimizer has stepped and the other's has not"
    for d, s in zip(dst, src):
        d.copy_(s)


def relative(a: torch.Tensor, b: torch.Tensor) -> float:
    """|a - b| / |b| (float64)."""
    a, b = a.double(), b.double()
    return float((a - b).norm() / b.norm().clamp_min(1e-300))


def lockstep(leader: tuple[TrainState, Step], follower: tuple[TrainState, Step], draw: Callable[[int], Batch],
             steps: int, draw_follower: Callable[[int], Batch] | None = None) -> list[StepComparison]:
    """`steps` steps of both, the follower aligned to the leader before each. draw(k): step k's batch
    (drawn once per side, as the two may keep or copy it); draw_follower: another batch for the
    follower (a test of this harness feeds it a wrong one)."""
    (lead_state, lead_step), (follow_state, follow_step) = leader, follower
    draw_follower = draw_follower or draw
    out = []
    for k in range(steps):
        align(follow_state, lead_state)
        before = lead_state.directions.T.detach().clone()
        lead_values = lead_step(draw(k))
        follow_values = follow_step(draw_follower(k))
        lead_T, follow_T = lead_state.directions.T, follow_state.directions.T
        lead_update = lead_T.detach() - before
        out.append(StepComparison(lead_values, follow_values, relative(follow_T.grad, lead_T.grad),
                                  relative(follow_T.detach() - before, lead_update), float(lead_update.norm())))
    return out
