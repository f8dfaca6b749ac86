"""Reference outputs of the starter DCGAN made with gan-face-generate's OWN code path.

Writes tests/fixtures/dcgan/reference.npz with
    z       [4, 100] float32   latent codes (torch.Generator seeded with 0, torch.randn)
    images  [4, 3, 64, 64] float32   the package's Generator output for z, in [-1, 1]
    sha256  str                sha256 of the weights.tar used
tests/models/test_dcgan.py checks models.dcgan.DCGANGenerator against it (max abs error 1e-4).

The package's code (gan_face_generate/models.py, inference.py) needs only torch at import; its
declared requirements pull wandb, matplotlib, ... so it is installed WITHOUT dependencies into a
throwaway venv that borrows torch from the project venv through a .pth file:

    mkdir -p /tmp/dcgan && cd /tmp/dcgan
    /work/main/.venv/bin/python -m pip download --no-deps gan-face-generate==1.1.1 -d .
    /work/main/.venv/bin/python -m venv venv
    venv/bin/python -m pip install --no-deps gan_face_generate-1.1.1-py3-none-any.whl
    echo /work/main/.venv/lib/python3.11/site-packages > venv/lib/python3.11/site-packages/zz_torch.pth
    cd /work/main && /tmp/dcgan/venv/bin/python tools/reference/dcgan_reference.py

(made with gan-face-generate 1.1.1, torch 2.14.1, CPU). Nothing from this repository is imported, so the
reference cannot come from the code under test.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import torch

import gan_face_generate
from gan_face_generate.models import Generator  # the package's own class, not models.dcgan

OUT = Path(__file__).resolve().parents[2] / "tests" / "fixtures" / "dcgan" / "reference.npz"
BATCH, NZ, NGF, NC, SEED = 4, 100, 64, 3, 0


def main() -> None:
    weights = Path(gan_face_generate.__file__).parent / "weights.tar"
    # As gan_face_generate/inference.py does: Generator(ngpu, nc, nz, ngf), torch.load, load_state_dict, eval.
    net = Generator(0, NC, NZ, NGF)
    checkpoint = torch.load(weights, map_location="cpu", weights_only=True)
    net.load_state_dict(checkpoint["netG_state_dict"])
    net.eval()
    z = torch.randn(BATCH, NZ, generator=torch.Generator().manual_seed(SEED))
    with torch.no_grad():
        images = net(z[:, :, None, None])  # the package feeds z as [B, nz, 1, 1]
    OUT.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(OUT, z=z.numpy(), images=images.numpy(),
                        sha256=np.array(hashlib.sha256(weights.read_bytes()).hexdigest()))
    print(f"wrote {OUT} ({OUT.stat().st_size} bytes); images range "
          f"[{images.min().item():.4f}, {images.max().item():.4f}]")


if __name__ == "__main__":
    main()
