"""Step 1 of the human parity fixture: the source images the Node script feeds to TF.js.

Writes a JSON file with two uint8 NHWC RGB stacks (5 images each):
    src64 [5, 64, 64, 3]  facemesh input = nearest-neighbour x3 (192) / 255; blazeface input = x4 (256) / 127.5 - 1
    src56 [5, 56, 56, 3]  faceres input  = nearest-neighbour x4 (224), values 0..255
Integer nearest-neighbour upsampling is exact in both TF.js and numpy, so the fixture only stores these
small sources. Images: 0 uniform noise (numpy PCG64, seed 7 / 8), 1 a smooth colour pattern,
2..4 three faces of the starter DCGAN (gan-face-generate 1.1.1 weights from the zoo cache;
z = torch.randn(16, 100) from torch.Generator seeded 2025, faces 4, 11 and 14: frontal ones). The
56-px faces are the 64-px generator output resized with antialiased bilinear interpolation.

Run from the repository root (after `hfld zoo fetch starter`):
    PYTHONPATH=. .venv/bin/python tools/reference/human/make_inputs.py /tmp/human_ref/inputs.json
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from models.load.dcgan import load_dcgan_generator

FACE_SEED, FACE_INDICES = 2025, (4, 11, 14)


def pattern(size: int) -> np.ndarray:
    v, u = np.meshgrid(np.arange(size) / size, np.arange(size) / size, indexing="ij")
    rgb = np.stack([127.5 + 120 * np.sin(2 * np.pi * (1.5 * u + 0.5 * v)),
                    127.5 + 120 * np.cos(2 * np.pi * (0.7 * u - 1.3 * v)),
                    255 * (0.5 * u + 0.5 * v)], axis=-1)
    return np.clip(np.round(rgb), 0, 255).astype(np.uint8)


def to_u8(images: torch.Tensor) -> np.ndarray:
    """[B, 3, H, W] in [-1, 1] -> [B, H, W, 3] uint8."""
    return ((images.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()


def starter_faces() -> torch.Tensor:
    cache = Path(os.environ.get("HFLD_CACHE", "~/.cache/hfld")).expanduser()
    generator = load_dcgan_generator(cache / "starter" / "gan_face_generate" / "weights.tar")
    z = torch.randn(16, 100, generator=torch.Generator().manual_seed(FACE_SEED))
    with torch.no_grad():
        return generator(z)[list(FACE_INDICES)]


def main(out: Path) -> None:
    faces = starter_faces()  # [3, 3, 64, 64] in [-1, 1]
    faces56 = F.interpolate(faces, size=(56, 56), mode="bilinear", align_corners=False, antialias=True)
    src64 = np.concatenate([np.random.default_rng(7).integers(0, 256, (1, 64, 64, 3), dtype=np.uint8),
                            pattern(64)[None], to_u8(faces)])
    src56 = np.concatenate([np.random.default_rng(8).integers(0, 256, (1, 56, 56, 3), dtype=np.uint8),
                            pattern(56)[None], to_u8(faces56)])
    data = {name: {"shape": list(a.shape), "data": a.reshape(-1).tolist()}
            for name, a in (("src64", src64), ("src56", src56))}
    data["image_names"] = ["noise", "pattern"] + [f"starter_face_{i}" for i in FACE_INDICES]
    out.write_text(json.dumps(data))
    print(f"wrote {out}")


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: make_inputs.py INPUTS_JSON")
    main(Path(sys.argv[1]))
