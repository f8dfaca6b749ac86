"""Latents and noise for the generator, drawn from seeds (no I/O, no Ray).

Every face of every stage is built the same way: z ~ N(0, I) from the face's own torch.Generator,
w = mapping(z), truncated towards mean_latent by psi, broadcast to the L latent layers
(wplus [B, L, w_dim]); per-face noise maps follow z in the same generator when noise_mode is
"random". `held_out_faces` is the fixed evaluation set (Stream.HELD_OUT) shared by the tune
objective, the evaluate stage and the preview.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

from pipeline.core.config import ConfigError
from pipeline.core.seeding import Stream, rng_for

NoiseMode = Literal["const", "random", "zero"]


def latents_from_z(generator: nn.Module, z: torch.Tensor, psi: float) -> torch.Tensor:
    """z [B, Z] -> wplus [B, L, w_dim] through mapping, truncation towards mean_latent, broadcast."""
    w = generator.mapping(z)
    if psi != 1:
        w = generator.mean_latent.reshape(1, -1) + psi * (w - generator.mean_latent.reshape(1, -1))
    return w[:, None, :].expand(-1, generator.n_latent, -1).contiguous()


def to_device(t: torch.Tensor, device) -> torch.Tensor:
    """A host tensor on `device`. To a GPU the copy is from pinned memory and asynchronous: a plain
    .to() waits for the GPU to finish all queued work first, which would stall a loop that draws the
    next batch while the GPU still runs the current step (pipeline.stages.train.step)."""
    device = torch.device(device)
    if device.type != "cuda":
        return t.to(device)
    return t.pin_memory().to(device, non_blocking=True)


def sample_noise(generator: nn.Module, mode: NoiseMode, rngs: list[torch.Generator], device) -> list | str:
    """Per-sample random noise from each sample's own generator; other modes are passed by name."""
    if mode != "random" or not hasattr(generator, "make_noise"):
        return mode
    shapes = [n.shape[-2:] for n in generator.make_noise("const", 1)]
    return [to_device(torch.cat([torch.randn(1, 1, *hw, generator=r) for r in rngs]), device) for hw in shapes]


@dataclass
class Faces:
    """Latents of a batch of fixed faces."""
    index: list[int]
    wplus: torch.Tensor      # [B, L, w_dim]
    noise: list | str        # per-layer [B, 1, r, r] maps, or a noise mode name


def held_out_faces(generator: nn.Module, index: list[int], *, seed: int, truncation: float = 1.0,
                   noise_mode: NoiseMode = "const", device: torch.device | str = "cpu") -> Faces:
    """Faces `index` of the held-out set of `seed`: face i is z_i from rng_for(seed, HELD_OUT, i)
    (then its noise maps), so a face is the same whatever the batch it is drawn in."""
    rngs = [rng_for(seed, Stream.HELD_OUT, i) for i in index]
    z = torch.stack([torch.randn(generator.z_dim, generator=r) for r in rngs]).to(device)
    noise = sample_noise(generator, noise_mode, rngs, device)
    return Faces(index, latents_from_z(generator, z, truncation), noise)


def resolve_device(name: str) -> torch.device:
    """"auto" -> cuda when available else cpu; otherwise the named device, checked to exist."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(name)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device: {name!r} asked for but no CUDA GPU is visible; use 'cpu' or 'auto'")
    return dev
