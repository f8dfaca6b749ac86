"""The edit-direction matrix T and the sampling of edit amounts s.

    w' = w + T s      w: [B, L, w_dim], s: [B, N], T: [L, w_dim, N]

N is the number of edited attributes. The attribute regressor may know more attributes (A >= N);
`scatter_edits` places the N edited amounts into the regressor's A slots (zeros elsewhere) so the
regressor loss also asks every non-edited attribute to stay where it was.
"""

from __future__ import annotations

from typing import Literal, Sequence

import torch
from torch import nn

EditSampling = Literal["uniform", "target"]


class DirectionMatrix(nn.Module):
    """Learnable T [L, w_dim, N], initialised N(0, init_std^2).

    `layer_mask` lists the latent layers that may be edited (empty/None = all). Masked-out layers get
    a zero offset, hence a zero gradient, so they stay untouched through training.
    """

    def __init__(self, n_latent: int, w_dim: int, n_attributes: int, init_std: float = 0.02,
                 layer_mask: Sequence[int] | None = None, generator: torch.Generator | None = None):
        super().__init__()
        if n_attributes < 1:
            raise ValueError("DirectionMatrix needs at least one edited attribute")
        self.n_latent, self.w_dim, self.n_attributes = n_latent, w_dim, n_attributes
        self.T = nn.Parameter(torch.randn(n_latent, w_dim, n_attributes, generator=generator) * init_std)
        mask = torch.ones(n_latent)
        if layer_mask:
            bad = [i for i in layer_mask if not 0 <= i < n_latent]
            if bad:
                raise ValueError(f"layer_mask entries {bad} are outside 0..{n_latent - 1}")
            mask = torch.zeros(n_latent)
            mask[list(layer_mask)] = 1.0
        self.register_buffer("layer_mask", mask)

    def offsets(self, s: torch.Tensor) -> torch.Tensor:
        """s [B, N] -> T s [B, L, w_dim] (masked layers are zero)."""
        assert s.ndim == 2 and s.shape[1] == self.n_attributes, (
            f"s must be [B, {self.n_attributes}], got {list(s.shape)}")
        masked_T = self.T * self.layer_mask[:, None, None]
        return torch.einsum("ldn,bn->bld", masked_T, s.to(masked_T.dtype))

    def edit(self, wplus: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
        """wplus [B, L, w_dim], s [B, N] -> wplus + T s [B, L, w_dim]."""
        assert wplus.ndim == 3 and wplus.shape[1:] == (self.n_latent, self.w_dim), (
            f"wplus must be [B, {self.n_latent}, {self.w_dim}], got {list(wplus.shape)}")
        return wplus + self.offsets(s).to(wplus.dtype)

    def forward(self, wplus: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
        return self.edit(wplus, s)


def scatter_edits(s: torch.Tensor, attribute_index: torch.Tensor, n_regressor: int) -> torch.Tensor:
    """s [B, N] over edited attributes -> [B, A] over all regressor attributes (zeros elsewhere)."""
    full = s.new_zeros(s.shape[0], n_regressor)
    full[:, attribute_index] = s
    return full


def sample_edits(mode: EditSampling, uniforms: torch.Tensor, current: torch.Tensor | None = None) -> torch.Tensor:
    """Edit amounts s [B, N] from pre-drawn U[0,1) numbers `uniforms` [B, N].

    "uniform": s ~ U[-1, 1] (the paper).
    "target":  target ~ U[0, 1], s = target - R(x) (the "Enjoy Your Editing" reference code);
               `current` [B, N] is R(x) restricted to the edited attributes.
    Randomness is passed in (the uniforms) so every sample is reproducible from its seed.
    """
    if mode == "uniform":
        return uniforms * 2 - 1
    if mode == "target":
        if current is None:
            raise ValueError("edit sampling 'target' needs the regressor's current values")
        return uniforms.to(current.dtype) - current
    raise ValueError(f"edit sampling must be 'uniform' or 'target', got {mode!r}")
