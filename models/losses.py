"""The objective of He & McGough (2025): regressor, perceptual, adversarial and HFLD landmark losses.

This layer knows networks and tensors only: no optimiser, no Ray, no MLflow. The stage loop
(pipeline/stages/train) samples inputs, calls `EditObjective`, and steps the optimiser.

    x  = G(w),  x' = G(w + T s)   (same noise)
    L_reg = BCE(R(x'), clamp(R(x) + s, 0, 1))
    L_c   = mean_i MSE(F_i(x), F_i(x'))
    L_D   = softplus(-D(x'))
    L_h   = mean |H(x) - H(x')| over the chosen landmark points, coordinates in [0, 1]
    total = l1 L_reg + l2 L_c + l3 L_D + l4 L_h
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from models.editing import DirectionMatrix, scatter_edits

TERMS = ("regressor", "perceptual", "adversarial", "landmark")


@dataclass(frozen=True)
class LossWeights:
    """lambda1..lambda4 (paper: 10, 0.05, 0.05, 0.5e6)."""
    regressor: float = 10.0
    perceptual: float = 0.05
    adversarial: float = 0.05
    landmark: float = 0.5e6


def regressor_loss(probs_edit: torch.Tensor, probs_orig: torch.Tensor, s_full: torch.Tensor) -> torch.Tensor:
    """BCE of R(x') [B, A] against the target clamp(R(x) + s, 0, 1) [B, A]; mean over B and A."""
    assert probs_edit.shape == probs_orig.shape == s_full.shape, (
        f"regressor loss shapes differ: {list(probs_edit.shape)}, {list(probs_orig.shape)}, {list(s_full.shape)}")
    target = (probs_orig + s_full).clamp(0, 1).float()
    p = probs_edit.float()
    # fp32: under bf16 the log of probabilities near 0/1 loses too much. torch's BCE has the
    # numerically safe gradient at p = 0 or 1 (clamp-style outputs hit them exactly), but it raises
    # on NaN input; so NaNs are swapped out for it and added back (0 * NaN) to make the loss NaN,
    # which the trainer reports, while finite inputs get exactly torch's value and gradient.
    with torch.autocast(device_type=p.device.type, enabled=False):  # CUDA autocast refuses BCE
        bce = F.binary_cross_entropy(torch.nan_to_num(p, nan=0.5).clamp(0, 1), torch.nan_to_num(target, nan=0.5))
    return bce + 0.0 * (p.sum() + target.sum())


def perceptual_loss(feats_orig: Sequence[torch.Tensor], feats_edit: Sequence[torch.Tensor]) -> torch.Tensor:
    """Mean over feature layers of the per-layer MSE between F_i(x) and F_i(x'), a float32 scalar.

    The difference is taken in the features' common dtype (under bf16 autocast: bf16, the rounding the
    features carry already) and its squares are summed with float32 accumulation: no float32 copies
    of the feature maps (at 1024 px, 1 GiB each for VGG's first block at batch 4).

    Each layer is compared as two 1-D views in F_i(x')'s memory order (`flat_in_memory_order`; F_i(x)
    is copied into that order only when its layout differs). Why: the backward multiplies the
    difference by the loss's 0-dim gradient, and on 4-D NHWC maps PyTorch runs that broadcast in its
    non-vectorised strided kernel: at 1024 px (batch 4, bf16, H200) the loss's forward + backward took
    32.8 ms on the 4-D maps and 7.7 ms on 1-D views (benchmarks/bench_perceptual_loss.py)."""
    assert len(feats_orig) == len(feats_edit) > 0, "perceptual loss needs the same non-empty list of layers"
    terms = []
    for a, b in zip(feats_orig, feats_edit):
        assert a.shape == b.shape, f"perceptual features differ in shape: {list(a.shape)} vs {list(b.shape)}"
        dtype = torch.promote_types(a.dtype, b.dtype)
        order = memory_order(b)
        diff = flat_in_memory_order(b.to(dtype), order) - flat_in_memory_order(a.to(dtype), order)
        terms.append((diff * diff).sum(dtype=torch.float32) / diff.numel())
    return torch.stack(terms).mean()


def mean_square_per_sample(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per-sample mean of (b - a)^2 over all but dim 0: a, b [B, ...] -> [B] in their common dtype
    (squares summed with float32 accumulation). Compared as [B, N] views in b's memory order, like
    perceptual_loss and for the same reason: `.flatten(1)` of an NHWC map is a copy, and the 4-D
    broadcasts of its backward run in PyTorch's slow strided kernel."""
    assert a.shape == b.shape and a.dim() >= 2, f"need two equal [B, ...] tensors, got {list(a.shape)}, {list(b.shape)}"
    dtype = torch.promote_types(a.dtype, b.dtype)
    order = memory_order(b)
    rows = b.shape[0]
    diff = flat_in_memory_order(b.to(dtype), order, rows) - flat_in_memory_order(a.to(dtype), order, rows)
    return ((diff * diff).sum(dim=1, dtype=torch.float32) / diff.shape[1]).to(dtype)


def memory_order(t: torch.Tensor) -> tuple[int, ...]:
    """The dimension order in which t's elements lie in memory: (0, 2, 3, 1) for an NHWC map, else
    the logical order."""
    nhwc = t.dim() == 4 and t.is_contiguous(memory_format=torch.channels_last) and not t.is_contiguous()
    return (0, 2, 3, 1) if nhwc else tuple(range(t.dim()))


def flat_in_memory_order(t: torch.Tensor, order: tuple[int, ...], rows: int | None = None) -> torch.Tensor:
    """t's elements in `order` as a 1-D tensor, or as [rows, N] (a view when t is laid out that way,
    else a copy)."""
    return t.permute(order).reshape(-1) if rows is None else t.permute(order).reshape(rows, -1)


def adversarial_loss(logits_edit: torch.Tensor) -> torch.Tensor:
    """Non-saturating generator loss softplus(-D(x')), logits [B, 1]; mean over B."""
    return F.softplus(-logits_edit.float()).mean()


def landmark_loss(points_orig: torch.Tensor, points_edit: torch.Tensor,
                  point_index: torch.Tensor | None = None) -> torch.Tensor:
    """HFLD loss: mean |H(x) - H(x')| over chosen points [B, P, 2] (both coordinates, in [0, 1])."""
    assert points_orig.shape == points_edit.shape and points_orig.shape[-1] == 2, (
        f"landmarks must both be [B, P, 2], got {list(points_orig.shape)}, {list(points_edit.shape)}")
    if point_index is not None:
        points_orig, points_edit = points_orig[:, point_index], points_edit[:, point_index]
    return (points_edit.float() - points_orig.float()).abs().mean()


def group_point_index(groups: dict[str, Sequence[int]], chosen: Sequence[str]) -> torch.Tensor:
    """Sorted unique landmark indices of the chosen group names (all groups when `chosen` is empty)."""
    unknown = [g for g in chosen if g not in groups]
    if unknown:
        raise ValueError(f"unknown landmark group(s) {unknown}; this landmark model has {sorted(groups)}")
    names = list(chosen) or list(groups)
    return torch.tensor(sorted({i for g in names for i in groups[g]}), dtype=torch.long)


def freeze(module: nn.Module) -> nn.Module:
    """Eval mode and no gradients: the pretrained networks are fixed, only T learns."""
    module.eval()
    for p in module.parameters():
        p.requires_grad_(False)
    return module


def assert_frozen(named: dict[str, nn.Module | None]) -> None:
    trainable = [f"{name}.{pname}" for name, m in named.items() if m is not None
                 for pname, p in m.named_parameters() if p.requires_grad]
    if trainable:
        raise AssertionError(f"networks must be frozen (only T trains); trainable: {trainable[:5]}")


@dataclass
class OriginalPass:
    """What the objective needs from the unedited image x (computed without grad)."""
    image: torch.Tensor       # [B, 3, R, R]
    probs: torch.Tensor       # [B, A]
    points: torch.Tensor      # [B, P, 2]
    features: list            # perceptual features of x


class EditObjective(nn.Module):
    """The four-term loss around frozen networks G, R, H, F and optional D.

    Args:
        generator: has `synthesis(wplus, noise)`.
        regressor: AttributeRegressor, `names` and image -> probs [B, A].
        landmarks: LandmarkModel, `groups` and image -> points [B, P, 2].
        perceptual: image -> list of features.
        discriminator: image -> logits [B, 1], or None (then weights.adversarial must be 0).
        attributes: the N edited attribute names (a subset of regressor.names), in T's column order.
        landmark_groups: landmark groups the HFLD loss covers (empty = all).
    """

    def __init__(self, generator: nn.Module, regressor: nn.Module, landmarks: nn.Module, perceptual: nn.Module,
                 discriminator: nn.Module | None, attributes: Sequence[str], landmark_groups: Sequence[str] = (),
                 weights: LossWeights = LossWeights()):
        super().__init__()
        if discriminator is None and weights.adversarial != 0:
            raise ValueError("losses.adversarial must be 0 when the model preset has no discriminator")
        unknown = [a for a in attributes if a not in regressor.names]
        if unknown:
            raise ValueError(f"unknown attribute(s) {unknown}; the regressor knows {list(regressor.names)}")
        self.G, self.R, self.H, self.F, self.D = generator, regressor, landmarks, perceptual, discriminator
        for m in (generator, regressor, landmarks, perceptual, discriminator):
            if m is not None:
                freeze(m)
        self.weights = weights
        self.attributes = tuple(attributes)
        self.register_buffer("attribute_index",
                             torch.tensor([list(regressor.names).index(a) for a in attributes], dtype=torch.long))
        self.register_buffer("point_index", group_point_index(landmarks.groups, landmark_groups))

    def networks(self) -> dict[str, nn.Module | None]:
        return {"generator": self.G, "regressor": self.R, "landmarks": self.H, "perceptual": self.F,
                "discriminator": self.D}

    @torch.no_grad()
    def original(self, wplus: torch.Tensor, noise) -> OriginalPass:
        image = self.G.synthesis(wplus, noise)
        return OriginalPass(image, self.R(image), self.H(image), self.F(image))

    def current_edited_attributes(self, orig: OriginalPass) -> torch.Tensor:
        """R(x) restricted to the edited attributes [B, N] (for the "target" edit sampling)."""
        return orig.probs[:, self.attribute_index]

    def edited_image(self, directions: DirectionMatrix | nn.Module, wplus: torch.Tensor, s: torch.Tensor,
                     noise) -> torch.Tensor:
        """x' = G(w + T s) [B, 3, R, R]."""
        # Call the module (not .edit) so a DDP wrapper around T sees the forward and syncs gradients.
        return self.G.synthesis(directions(wplus, s), noise)

    def judges(self) -> dict[str, nn.Module]:
        """The networks that look at x', by the name of their output in `terms`' `edited` dict. They
        are independent of each other, so a caller may run them concurrently."""
        judges = {"probs": self.R, "features": self.F, "points": self.H}
        if self.D is not None:
            judges["logits"] = self.D
        return judges

    def terms(self, orig: OriginalPass, edited: dict, s: torch.Tensor) -> dict[str, torch.Tensor]:
        """Loss terms (each a scalar) and their weighted sum under "total", from the judges' outputs on
        x (`orig`) and on x' (`edited`: the `judges()` names -> their outputs)."""
        s_full = scatter_edits(s.to(orig.probs.dtype), self.attribute_index, orig.probs.shape[1])
        terms = {
            "regressor": regressor_loss(edited["probs"], orig.probs, s_full),
            "perceptual": perceptual_loss(orig.features, edited["features"]),
            "landmark": landmark_loss(orig.points, edited["points"], self.point_index),
        }
        terms["adversarial"] = (adversarial_loss(edited["logits"]) if "logits" in edited
                                else orig.image.new_zeros((), dtype=torch.float32))
        w = self.weights
        terms["total"] = (w.regressor * terms["regressor"] + w.perceptual * terms["perceptual"]
                          + w.adversarial * terms["adversarial"] + w.landmark * terms["landmark"])
        return terms

    def forward(self, directions: DirectionMatrix | nn.Module, wplus: torch.Tensor, s: torch.Tensor, noise,
                orig: OriginalPass) -> dict[str, torch.Tensor]:
        """Loss terms of x' = G(w + T s) against the original pass, the judges run one after another
        (the train stage composes the same pieces with its passes on parallel CUDA streams)."""
        edited = self.edited_image(directions, wplus, s, noise)
        return self.terms(orig, {name: judge(edited) for name, judge in self.judges().items()}, s)
