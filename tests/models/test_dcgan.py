"""Tests of the starter DCGAN generator (models/dcgan.py) and its loader (models/load/dcgan.py).

Parity reference: tests/fixtures/dcgan/reference.npz, made with gan-face-generate's own Generator
class and loading code (tools/reference/dcgan_reference.py).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from models.dcgan import DCGANGenerator
from models.errors import WeightsError
from models.load.dcgan import load_dcgan_generator

REFERENCE = Path(__file__).resolve().parents[1] / "fixtures" / "dcgan" / "reference.npz"
WEIGHTS_SHA256 = "0c3b90b138cfc4e8a73310b9fd5ce2a8f1f3a542a037de277412307fcd28771f"


@pytest.fixture(scope="module")
def weights_path(starter_cache) -> Path:
    return starter_cache / "gan_face_generate" / "weights.tar"


@pytest.fixture(scope="module")
def generator(weights_path) -> DCGANGenerator:
    return load_dcgan_generator(weights_path)


def test_real_weights_load_strictly(generator):
    assert (generator.nz, generator.w_dim, generator.z_dim, generator.n_latent, generator.resolution) == (
        100, 100, 100, 1, 64)
    assert not generator.training
    assert not any(p.requires_grad for p in generator.parameters())


def test_matches_the_package_reference_output(generator):
    ref = np.load(REFERENCE)
    with torch.no_grad():
        images = generator(torch.from_numpy(ref["z"]))
    err = (images - torch.from_numpy(ref["images"])).abs().max().item()
    assert err < 1e-4, f"max abs error vs gan-face-generate's own Generator: {err:.3g}"


def test_reference_was_made_from_the_pinned_weights():
    assert str(np.load(REFERENCE)["sha256"]) == WEIGHTS_SHA256


def test_output_shape_and_range(generator):
    z = torch.randn(3, 100, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        images = generator(z)
    assert images.shape == (3, 3, 64, 64)
    assert images.min() >= -1 and images.max() <= 1
    assert images.std() > 0.1  # a face, not a constant


def test_synthesis_of_mapping_equals_forward(generator):
    z = torch.randn(2, 100, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        via_contract = generator.synthesis(generator.mapping(z)[:, None], noise_mode="random")
        assert torch.equal(via_contract, generator(z))
    assert torch.equal(generator.mapping(z), z)  # W = Z
    assert torch.equal(generator.mean_latent, torch.zeros(100))


def test_gradient_flows_to_wplus(generator):
    wplus = torch.randn(2, 1, 100, requires_grad=True)
    generator.synthesis(wplus).square().mean().backward()
    assert wplus.grad is not None and wplus.grad.abs().sum() > 0


def test_output_of_one_face_does_not_depend_on_its_batch(generator):
    """BatchNorm must use the stored statistics, even after .train() on a surrounding module."""
    z = torch.randn(4, 100, generator=torch.Generator().manual_seed(3))
    torch.nn.ModuleDict({"g": generator}).train()
    assert not generator.training
    with torch.no_grad():
        assert torch.allclose(generator(z)[:1], generator(z[:1]), atol=1e-6)


def test_shapes_are_asserted():
    g = DCGANGenerator(nz=8, ngf=4)
    with pytest.raises(AssertionError, match=r"z must be \[B, 8\]"):
        g(torch.randn(2, 9))
    with pytest.raises(AssertionError, match=r"wplus must be \[B, 1, 8\]"):
        g.synthesis(torch.randn(2, 2, 8))
    assert g(torch.randn(2, 8)).shape == (2, 3, 64, 64)


# -- broken checkpoints ---------------------------------------------------------------------------

@pytest.fixture(scope="module")
def real_state(weights_path) -> dict[str, torch.Tensor]:
    return torch.load(weights_path, map_location="cpu", weights_only=True)["netG_state_dict"]


def test_missing_file_says_how_to_fetch(tmp_path):
    with pytest.raises(WeightsError, match=r"generator \(starter DCGAN\): .*not found; run `hfld zoo fetch starter`"):
        load_dcgan_generator(tmp_path / "weights.tar")


def test_missing_key_is_named(real_state, tmp_path):
    state = dict(real_state)
    del state["main.4.running_var"]
    torch.save({"netG_state_dict": state}, tmp_path / "w.tar")
    with pytest.raises(WeightsError, match=r"missing keys: main\.4\.running_var.*hfld zoo fetch starter"):
        load_dcgan_generator(tmp_path / "w.tar")


def test_wrong_shape_is_named(real_state, tmp_path):
    state = dict(real_state, **{"main.12.weight": torch.zeros(64, 1, 4, 4)})
    torch.save({"netG_state_dict": state}, tmp_path / "w.tar")
    with pytest.raises(WeightsError, match=r"main\.12\.weight: file \[64, 1, 4, 4\] vs model \[64, 3, 4, 4\]"):
        load_dcgan_generator(tmp_path / "w.tar")


def test_not_a_torch_file(tmp_path):
    (tmp_path / "w.tar").write_bytes(b"this is not a checkpoint")
    with pytest.raises(WeightsError, match=r"generator \(starter DCGAN\): .*w\.tar: not a readable torch checkpoint"):
        load_dcgan_generator(tmp_path / "w.tar")


def test_pickled_objects_are_refused(tmp_path):
    """weights_only=True must refuse arbitrary pickled objects instead of executing them."""
    torch.save({"netG_state_dict": {}, "extra": Path("/")}, tmp_path / "w.tar")
    with pytest.raises(WeightsError, match="weights_only=True"):
        load_dcgan_generator(tmp_path / "w.tar")


def test_checkpoint_without_generator_key(tmp_path):
    torch.save({"netD_state_dict": {"main.0.weight": torch.zeros(1)}, "epoch": 3}, tmp_path / "w.tar")
    expected = r"expected a 'netG_state_dict' dict of tensors, found keys: netD_state_dict, epoch"
    with pytest.raises(WeightsError, match=expected):
        load_dcgan_generator(tmp_path / "w.tar")
