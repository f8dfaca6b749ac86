"""Tiny GAN configs and judges for the gan stage tests (CPU, seconds)."""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from pipeline.core.config import apply_overrides, from_dict

TINY_CHANNELS = {4: 16, 8: 16, 16: 8, 32: 8}       # the tiny preset's table


class PooledDescriptor(nn.Module):
    """A stand-in identity judge: image [B, 3, H, W] -> [B, 12] (2x2 average pool of each channel)."""

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return F.adaptive_avg_pool2d(image.float(), 2).flatten(1)


def tiny_config(tmp_path: Path, *overrides: str, resolution: int = 16, **fields):
    """A 16 px StyleGAN2 with the tiny preset's channels, trained from the tiny preset's generator."""
    from pipeline.stages.gan import GanConfig

    data = {
        "arch": {"resolution": resolution, "w_dim": 32, "n_mlp": 2,
                 "channels": {k: v for k, v in TINY_CHANNELS.items() if k <= resolution}},
        "data": {"teacher": {"preset": "tiny"}},
        "batch_size": 4, "total_kimg": 0.024, "r1_every": 4, "pl_every": 2, "log_every": 2,
        "snapshot_kimg": 0.008, "grid_kimg": 0.0, "device": "cpu",
        "quality": {"judges": "", "every_kimg": 0.0, "n_images": 32, "batch_size": 16},
        "work_dir": str(tmp_path / "work"), "run_name": "tiny-gan", "tracking": {"enabled": False},
        **fields,
    }
    return from_dict(GanConfig, apply_overrides(data, list(overrides)), "test")


def state_tensors(state) -> dict[str, torch.Tensor]:
    """Every tensor that defines a trainer state (networks with w_avg, both Adams' moments, pl mean)."""
    out = {}
    for name in ("G", "D", "G_ema"):
        m = getattr(state, name)
        out.update({f"{name}.{k}": v.detach().clone() for k, v in m.state_dict().items()})
        if hasattr(m, "w_avg"):
            out[f"{name}.w_avg"] = m.w_avg.detach().clone()
    for name in ("opt_g", "opt_d"):
        for idx, st in getattr(state, name).state_dict()["state"].items():
            out.update({f"{name}.{idx}.{k}": torch.as_tensor(v).clone() for k, v in st.items()})
    out["pl_mean"] = state.pl_mean.detach().clone()
    return out


def face_points() -> torch.Tensor:
    """A plausible frontal 68-point layout in [0, 1] (iBUG order)."""
    p = torch.zeros(68, 2)
    t = torch.linspace(0, 1, 17)
    p[0:17, 0], p[0:17, 1] = 0.15 + 0.7 * t, 0.45 + 0.45 * torch.sin(torch.pi * t)   # jaw, chin (8) lowest
    p[17:22] = torch.stack([torch.linspace(0.25, 0.42, 5), torch.full((5,), 0.33)], 1)
    p[22:27] = torch.stack([torch.linspace(0.58, 0.75, 5), torch.full((5,), 0.33)], 1)
    p[27:31] = torch.stack([torch.full((4,), 0.5), torch.linspace(0.4, 0.55, 4)], 1)
    p[31:36] = torch.stack([torch.linspace(0.44, 0.56, 5), torch.full((5,), 0.6)], 1)
    p[36:42] = torch.stack([torch.linspace(0.28, 0.42, 6), torch.full((6,), 0.42)], 1)
    p[42:48] = torch.stack([torch.linspace(0.58, 0.72, 6), torch.full((6,), 0.42)], 1)
    p[48:60] = torch.stack([torch.linspace(0.38, 0.62, 12), torch.full((12,), 0.72)], 1)
    p[60:68] = torch.stack([torch.linspace(0.42, 0.58, 8), torch.full((8,), 0.72)], 1)
    return p
