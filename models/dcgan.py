"""The starter face generator: the PyTorch-tutorial DCGAN (64 x 64 RGB), seen as "a generator with L = 1".

The weights come from PyPI `gan-face-generate==1.1.1` (trained on DigiFace-1M); the module tree
(`main.0` ... `main.13`) follows the tutorial exactly so that checkpoint's `netG_state_dict` loads
with strict key and shape matching.

A DCGAN has no mapping network and no per-layer styles, so it is mapped onto the Generator contract
of docs/architecture.md ("Contracts") like this:
    z      [B, nz]          latent code, z ~ N(0, I)
    w      [B, nz]          mapping is the identity: W = Z
    wplus  [B, 1, nz]       one "latent layer" (n_latent = 1)
    image  [B, nc, 64, 64]  in [-1, 1] (tanh)
The edit-direction matrix T therefore has shape [1, nz, N] for this generator.

The network contains BatchNorm layers. They must use the running statistics stored in the
checkpoint: in training mode they would normalise with batch statistics (so one face would depend
on the others in its batch) and overwrite the trained averages. This module is a frozen, pretrained
generator, so `.train()` keeps it in inference mode (see `DCGANGenerator.train`).
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import nn

NoiseMode = Literal["const", "random", "zero"]


def _up_block(in_ch: int, out_ch: int) -> list[nn.Module]:
    """Transposed conv (kernel 4, stride 2, pad 1: doubles H and W) + BatchNorm + ReLU."""
    return [nn.ConvTranspose2d(in_ch, out_ch, 4, 2, 1, bias=False), nn.BatchNorm2d(out_ch), nn.ReLU(True)]


class DCGANGenerator(nn.Module):
    """DCGAN generator z [B, nz] -> image [B, nc, 64, 64] in [-1, 1], with the Generator contract.

    Args:
        nz: latent size (100 for the starter weights); also `w_dim` and `z_dim`.
        ngf: feature-map width of the last hidden layer (64); the first one has ngf * 8 channels.
        nc: output channels (3, RGB).
    """

    resolution = 64
    n_latent = 1

    def __init__(self, nz: int = 100, ngf: int = 64, nc: int = 3):
        super().__init__()
        self.nz, self.ngf, self.nc = nz, ngf, nc
        self.w_dim = self.z_dim = nz
        # Indices matter: they are the state-dict keys main.0, main.1, main.3, ... of the checkpoint.
        self.main = nn.Sequential(
            # [B, nz, 1, 1] -> [B, ngf*8, 4, 4]
            nn.ConvTranspose2d(nz, ngf * 8, 4, 1, 0, bias=False), nn.BatchNorm2d(ngf * 8), nn.ReLU(True),
            *_up_block(ngf * 8, ngf * 4),   # -> 8 x 8
            *_up_block(ngf * 4, ngf * 2),   # -> 16 x 16
            *_up_block(ngf * 2, ngf),       # -> 32 x 32
            nn.ConvTranspose2d(ngf, nc, 4, 2, 1, bias=False),  # -> 64 x 64
            nn.Tanh(),
        )
        # z ~ N(0, I) and W = Z, so the mean latent is exactly zero (not an estimate).
        self.register_buffer("w_avg", torch.zeros(nz), persistent=False)
        self.eval()

    def train(self, mode: bool = True) -> "DCGANGenerator":
        """Stay in inference mode whatever `mode` says.

        The generator is only ever used frozen; BatchNorm must keep using the checkpoint's running
        statistics even when a surrounding module (a trainer, DDP) is switched to training mode.
        """
        return super().train(False)

    # -- contract of docs/architecture.md ("Contracts") ----------------------------------------------
    def mapping(self, z: torch.Tensor) -> torch.Tensor:
        """z [B, nz] -> w [B, nz]. The identity: the DCGAN has no mapping network (W = Z)."""
        assert z.ndim == 2 and z.shape[1] == self.nz, f"z must be [B, {self.nz}], got {list(z.shape)}"
        return z

    @property
    def mean_latent(self) -> torch.Tensor:
        """Mean w [nz]: zeros, because w = z and z ~ N(0, I). Same shape as StyleGAN2's `mean_latent`."""
        return self.w_avg

    def truncate(self, w: torch.Tensor, psi: float) -> torch.Tensor:
        """Pull w (any shape [..., nz]) towards mean_latent; here simply psi * w."""
        if psi == 1:
            return w
        return self.w_avg + psi * (w - self.w_avg)

    def broadcast(self, w: torch.Tensor) -> torch.Tensor:
        """w [B, nz] -> wplus [B, 1, nz]."""
        return w[:, None, :]

    def make_noise(self, mode: NoiseMode, batch: int, generator: torch.Generator | None = None,
                   device=None) -> list:
        """No noise inputs: an empty list, so callers that share noise between x and x' still work."""
        if mode not in ("const", "random", "zero"):
            raise ValueError(f"noise mode must be one of const, random, zero; got {mode!r}")
        return []

    def synthesis(self, wplus: torch.Tensor, noise: NoiseMode | list | None = "const",
                  generator: torch.Generator | None = None, *, noise_mode: NoiseMode | None = None
                  ) -> torch.Tensor:
        """wplus [B, 1, nz] -> image [B, nc, 64, 64] in [-1, 1].

        `noise`, `noise_mode` and `generator` are accepted for the common Generator signature and
        ignored: the DCGAN has no noise inputs, so x and x' are deterministic functions of wplus.
        """
        assert wplus.ndim == 3 and wplus.shape[1:] == (self.n_latent, self.nz), (
            f"wplus must be [B, {self.n_latent}, {self.nz}], got {list(wplus.shape)}")
        image = self.main(wplus[:, 0, :, None, None])
        assert image.shape[1:] == (self.nc, self.resolution, self.resolution), list(image.shape)
        return image

    def forward(self, z: torch.Tensor, truncation: float = 1.0, noise: NoiseMode | list = "const"):
        """z [B, nz] -> image [B, nc, 64, 64] (mapping, truncation, broadcast, synthesis)."""
        return self.synthesis(self.broadcast(self.truncate(self.mapping(z), truncation)), noise)
