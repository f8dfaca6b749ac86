"""Randomness as data: every sample's random numbers derive from (global seed, stream, index).

A sample is identified by its global index, so 2 workers x batch b and 1 worker x batch 2b draw the
same samples, a resumed run draws exactly what an uninterrupted one would, and every generated row
can be regenerated from the seed and index it stores.
"""

from __future__ import annotations

from enum import IntEnum

import numpy as np
import torch


class Stream(IntEnum):
    TRAIN = 0      # training batches
    HELD_OUT = 1   # fixed evaluation / tuning sets
    GENERATE = 2   # dataset generation
    INIT = 3       # initialisation of T and of random networks
    INVERT = 4     # per-face randomness of the inversion (noise maps, latent noise)
    INVERT_CHECK = 5   # faces with known latents for the inversion's held-out quality check


def derive_seed(seed: int, stream: Stream, index: int) -> int:
    """A 63-bit seed from (seed, stream, index), well mixed (numpy SeedSequence)."""
    state = np.random.SeedSequence(entropy=int(seed), spawn_key=(int(stream), int(index))).generate_state(2)
    return int((int(state[0]) << 31) ^ int(state[1])) & ((1 << 63) - 1)


def rng_for(seed: int, stream: Stream, index: int, device: str | torch.device = "cpu") -> torch.Generator:
    return torch.Generator(device=device).manual_seed(derive_seed(seed, stream, index))


def global_sample_ids(step: int, rank: int, per_worker_batch: int, world_size: int) -> list[int]:
    """Global indices of the samples worker `rank` trains on at `step` (disjoint across ranks and steps)."""
    start = step * per_worker_batch * world_size + rank * per_worker_batch
    return list(range(start, start + per_worker_batch))
