#!/usr/bin/env python3
"""How often does fer keep its label when a face changes as little as a good reconstruction does?

    python benchmarks/fer_agreement_floor.py                     # 1,000 starter faces, seed 3
    python benchmarks/fer_agreement_floor.py --faces 2000 --seed 5

Issue 17 asks for emotion agreement >= 90% between an inverted face and its reconstruction (fer on
both). `hfld invert-check` measured 83.8% at a median PSNR of 37.0 dB (mean 35.3), with the misses at fer's
near-ties. This script asks what agreement ANY reconstruction of that fidelity could expect: it takes
generated starter faces (uint8, as invert-check writes them) and changes them in two ways whose size
is set by PSNR, then counts how often fer's arg max survives:
- "latent": the face re-synthesised from its W+ latent plus Gaussian noise (a scale x the latent's
  per-dimension std): smooth, face-shaped errors, like an inversion that landed near the truth;
- "pixel": i.i.d. Gaussian pixel noise (fer's 48 px grey resize averages much of it away).
It prints, per perturbation size, the median PSNR, fer's agreement, and the agreement on the faces fer
decided by a top-2 margin >= 0.05 / 0.1 (as invert-check's report does). Needs the starter weights.
"""

from __future__ import annotations

import argparse
import platform
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # run as a plain script from a checkout, installed or not
    sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402
import torch  # noqa: E402

LATENT_SCALES = (0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.12, 0.16, 0.2)
PIXEL_PSNRS = (45.0, 40.0, 35.3, 30.0)


def to_uint8(x: torch.Tensor) -> torch.Tensor:
    """[B, 3, H, W] in [-1, 1] -> uint8 values as float in [0, 255] (what a PNG round trip keeps)."""
    return ((x.clamp(-1, 1) + 1) * 127.5).round()


def from_uint8(u: torch.Tensor) -> torch.Tensor:
    return u / 127.5 - 1


def row(name: str, size: str, p: np.ndarray, same: np.ndarray, margin: np.ndarray) -> str:
    cells = [f"{name:7s} {size:>12s}  PSNR median {np.median(p):5.1f} dB  agreement {same.mean():6.1%}"]
    for th in (0.05, 0.1):
        keep = margin >= th
        cells.append(f"margin>={th:g}: {same[keep].mean():6.1%} of {keep.sum()}")
    return "  ".join(cells)


@torch.no_grad()
def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--faces", type=int, default=1000)
    ap.add_argument("--seed", type=int, default=3)
    ap.add_argument("--batch", type=int, default=100)
    ap.add_argument("--preset", default="starter")
    args = ap.parse_args(argv)
    torch.set_num_threads(2)
    from pipeline.core.sampling import held_out_faces
    from pipeline.presets import ModelConfig, build_bundle
    from pipeline.stages.invert.check import top2_margins
    from pipeline.stages.invert.quality import psnr

    bundle = build_bundle(ModelConfig(preset=args.preset), "cpu")
    G, fer = bundle.generator, bundle.emotion
    z = torch.randn(4096, G.z_dim, generator=torch.Generator().manual_seed(args.seed))
    w_std = G.mapping(z).std(dim=0)                          # [w_dim]: the latent's per-dimension spread
    gen = torch.Generator().manual_seed(args.seed + 1)
    base_probs, results = [], {}
    for start in range(0, args.faces, args.batch):
        faces = held_out_faces(G, list(range(start, min(start + args.batch, args.faces))), seed=args.seed)
        original = to_uint8(G.synthesis(faces.wplus, faces.noise))          # [B, 3, H, W]
        base_probs.append(fer(from_uint8(original)))
        label = base_probs[-1].argmax(1)
        for scale in LATENT_SCALES:
            eps = torch.randn(faces.wplus.shape, generator=gen) * scale * w_std
            moved = to_uint8(G.synthesis(faces.wplus + eps, faces.noise))
            results.setdefault(("latent", f"{scale:g} std"), []).append(
                (psnr(original.numpy(), moved.numpy()), (fer(from_uint8(moved)).argmax(1) == label).numpy()))
        for target in PIXEL_PSNRS:
            sigma = 255.0 / 10 ** (target / 20)                 # rms error of that PSNR, in uint8 levels
            noisy = (original + torch.randn(original.shape, generator=gen) * sigma).clamp(0, 255).round()
            results.setdefault(("pixel", f"{target:g} dB"), []).append(
                (psnr(original.numpy(), noisy.numpy()), (fer(from_uint8(noisy)).argmax(1) == label).numpy()))
    margin = top2_margins(torch.cat(base_probs).double().numpy())
    print(f"fer agreement under perturbations of known size: {args.faces} {args.preset} faces (held-out seed "
          f"{args.seed}), torch {torch.__version__}, Python {platform.python_version()}, CPU")
    print(f"fer's top-2 margin on the originals: median {np.median(margin):.3f}; "
          f"{(margin < 0.05).mean():.1%} of faces below 0.05")
    for (name, size), parts in results.items():
        p = np.concatenate([a for a, _ in parts])
        same = np.concatenate([b for _, b in parts])
        print(row(name, size, p, same, margin))
    return 0


if __name__ == "__main__":
    sys.exit(main())
