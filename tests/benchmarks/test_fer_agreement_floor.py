"""benchmarks/fer_agreement_floor.py: fer's agreement under perturbations of known PSNR (starter weights)."""

from __future__ import annotations

import re

import pytest

from benchmarks import fer_agreement_floor


@pytest.mark.timeout(300)
def test_small_run_prints_agreement_falling_with_the_perturbation(starter_cache, capsys):
    assert fer_agreement_floor.main(["--faces", "24", "--batch", "12"]) == 0
    printed = capsys.readouterr().out
    latent = [(float(p), float(a)) for p, a in
              re.findall(r"^latent .*PSNR median +([\d.]+) dB +agreement +([\d.]+)%", printed, re.M)]
    assert len(latent) == len(fer_agreement_floor.LATENT_SCALES)
    psnrs = [p for p, _ in latent]
    assert psnrs == sorted(psnrs, reverse=True)            # larger latent noise, lower PSNR
    assert latent[0][1] >= latent[-1][1]                   # and no more agreement than the smallest
    pixel = re.findall(r"^pixel +([\d.]+) dB +PSNR median +([\d.]+) dB", printed, re.M)
    assert all(abs(float(want) - float(got)) < 1.0 for want, got in pixel)   # noise sized to its PSNR
