"""StyleGAN2 loaders: rosinality checkpoints and our safetensors + JSON format (errors, safety, round trips)."""

import json
import pickle

import pytest
import torch
from safetensors.torch import load_file, save_file

from models.errors import WeightsError
from models.load.stylegan2 import (ARCH_KEY, build_from_state, load_rosinality_checkpoint, load_stylegan2,
                                   save_stylegan2_safetensors)
from tests.models.load.pickle_helpers import RunsCommand, marker_command


@pytest.fixture(scope="module")
def ckpt(stylegan2_fixtures):
    return torch.load(stylegan2_fixtures / "rosinality_small64.pt", weights_only=True)


def test_missing_file_names_role_and_what_to_do(tmp_path):
    with pytest.raises(WeightsError, match=r"generator \(StyleGAN2\): weight file not found.*hfld convert"):
        load_rosinality_checkpoint(tmp_path / "nope.pt")


def test_not_a_torch_file(tmp_path):
    p = tmp_path / "g.pt"
    p.write_text("hello")
    with pytest.raises(WeightsError, match="not a readable PyTorch checkpoint"):
        load_rosinality_checkpoint(p)


def test_wrong_format_dict(tmp_path):
    p = tmp_path / "g.pt"
    torch.save({"model": {}}, p)
    with pytest.raises(WeightsError, match="expected a dict with 'g_ema'"):
        load_rosinality_checkpoint(p)


def test_missing_and_unexpected_keys_are_listed(tmp_path, ckpt):
    g = dict(ckpt["g_ema"])
    del g["convs.1.noise.weight"]
    g["convs.1.extra"] = torch.zeros(1)
    p = tmp_path / "g.pt"
    torch.save({"g_ema": g}, p)
    with pytest.raises(WeightsError, match=r"missing keys: convs\.1\.noise\.weight.*unexpected keys: convs\.1\.extra"):
        load_rosinality_checkpoint(p)


def test_shape_mismatch_is_reported(tmp_path, ckpt):
    g = dict(ckpt["g_ema"])
    g["to_rgb1.bias"] = torch.zeros(1, 4, 1, 1)
    p = tmp_path / "g.pt"
    torch.save({"g_ema": g}, p)
    with pytest.raises(WeightsError, match=r"shape mismatch: to_rgb1\.bias \[1, 4, 1, 1\] != expected \[1, 3, 1, 1\]"):
        load_rosinality_checkpoint(p)


def test_wrong_resolution(stylegan2_fixtures):
    with pytest.raises(WeightsError, match="is a 64 px generator, but the preset expects 256 px"):
        load_rosinality_checkpoint(stylegan2_fixtures / "rosinality_small64.pt", expected_resolution=256)


def test_pickle_with_code_is_refused(tmp_path):
    marker = tmp_path / "marker"
    evil = RunsCommand(marker_command(marker))
    p = tmp_path / "evil.pt"
    with open(p, "wb") as f:
        pickle.dump({"g_ema": evil}, f)
    # torch.save format with a reducer inside
    torch.save({"g_ema": evil}, tmp_path / "evil2.pt", _use_new_zipfile_serialization=True)
    for path in (p, tmp_path / "evil2.pt"):
        with pytest.raises(WeightsError, match="refused for safety|not a readable"):
            load_rosinality_checkpoint(path)
    assert not marker.exists()


def test_safetensors_round_trip(tmp_path, stylegan2_fixtures):
    w = load_rosinality_checkpoint(stylegan2_fixtures / "rosinality_small64.pt")
    out = save_stylegan2_safetensors(w, tmp_path / "g.safetensors")
    w2 = load_stylegan2(out)
    z = torch.randn(2, w.generator.z_dim)
    with torch.no_grad():
        assert torch.equal(w.generator(z), w2.generator(z))
        img = w.generator(z)
        assert torch.equal(w.discriminator(img), w2.discriminator(img))
    assert torch.equal(w.generator.mean_latent, w2.generator.mean_latent)


# ---------------------------------------------------------------------------------------------
# conv_clamp travels with the safetensors file (header) and is shown in the sidecar
# ---------------------------------------------------------------------------------------------

CLAMP = 0.5  # binds on the small rosinality fixture (its activations reach several units)


def unclamped_networks(ckpt):
    """The rosinality fixture's networks, built from the already-loaded checkpoint (no clamp)."""
    return build_from_state(ckpt["g_ema"], ckpt["d"], ckpt["latent_avg"], "rosinality_small64")


@pytest.fixture
def clamped(ckpt):
    """The rosinality fixture's weights in networks that clamp, as a converted ada network would."""
    return build_from_state(ckpt["g_ema"], ckpt["d"], ckpt["latent_avg"], "clamped", conv_clamp=CLAMP,
                            num_fp16_res=2, d_conv_clamp=CLAMP, d_num_fp16_res=1)


@torch.no_grad()
def test_conv_clamp_survives_the_safetensors_round_trip(tmp_path, ckpt, clamped):
    out = save_stylegan2_safetensors(clamped, tmp_path / "g.safetensors")
    meta = json.loads(out.with_suffix(".json").read_text())
    recorded = (meta["conv_clamp"], meta["num_fp16_res"], meta["d_conv_clamp"], meta["d_num_fp16_res"])
    assert recorded == (CLAMP, 2, CLAMP, 1)
    assert meta["format_version"] == 2
    back = load_stylegan2(out)
    assert back.generator.conv_clamp == back.discriminator.conv_clamp == CLAMP
    assert (back.config["num_fp16_res"], back.config["d_num_fp16_res"]) == (2, 1)
    z = torch.randn(2, back.generator.z_dim, generator=torch.Generator().manual_seed(0))
    img = back.generator(z)
    assert torch.equal(img, clamped.generator(z))
    assert torch.equal(back.discriminator(img), clamped.discriminator(img))
    unclamped = unclamped_networks(ckpt).generator
    assert (unclamped(z) - img).abs().max() > 0.1  # the clamp binds, so losing it would show

    out.with_suffix(".json").unlink()  # the header alone carries the clamp
    assert load_stylegan2(out).generator.conv_clamp == CLAMP


def test_sidecar_contradicting_the_header_is_refused(tmp_path, clamped):
    out = save_stylegan2_safetensors(clamped, tmp_path / "g.safetensors")
    sidecar = out.with_suffix(".json")
    meta = json.loads(sidecar.read_text())
    meta["conv_clamp"] = None
    sidecar.write_text(json.dumps(meta))
    with pytest.raises(WeightsError, match=r"g\.json does not match g\.safetensors \(conv_clamp: sidecar None, "
                                           r"header 0\.5\)"):
        load_stylegan2(out)


@pytest.mark.parametrize("entry", ["not json", json.dumps({"conv_clamp": "256"}), json.dumps({"conv_clamp": -1}),
                                   json.dumps([1])])
def test_malformed_header_entry_is_refused(tmp_path, clamped, entry):
    out = save_stylegan2_safetensors(clamped, tmp_path / "g.safetensors")
    save_file(load_file(out), out, metadata={"format": "hfld-stylegan2", ARCH_KEY: entry})
    out.with_suffix(".json").unlink()
    with pytest.raises(WeightsError, match=rf"{ARCH_KEY}.*Re-run `hfld convert`"):
        load_stylegan2(out)


@torch.no_grad()
def test_version_1_files_load_without_a_clamp(tmp_path, ckpt):
    # Written before conv_clamp existed: no header entry, sidecar version 1 (the converter then refused clamps).
    w = unclamped_networks(ckpt)
    out = save_stylegan2_safetensors(w, tmp_path / "v1.safetensors")
    save_file(load_file(out), out, metadata={"format": "hfld-stylegan2"})
    meta = json.loads(out.with_suffix(".json").read_text())
    for key in ("conv_clamp", "num_fp16_res", "d_conv_clamp", "d_num_fp16_res"):
        del meta[key]
    meta["format_version"] = 1
    out.with_suffix(".json").write_text(json.dumps(meta))
    back = load_stylegan2(out)
    assert back.generator.conv_clamp is None and back.discriminator.conv_clamp is None
    z = torch.randn(2, w.generator.z_dim)
    assert torch.equal(back.generator(z), w.generator(z))


def test_unknown_format_version_is_refused(tmp_path, ckpt):
    out = save_stylegan2_safetensors(unclamped_networks(ckpt), tmp_path / "g.safetensors")
    meta = json.loads(out.with_suffix(".json").read_text())
    meta["format_version"] = 3
    out.with_suffix(".json").write_text(json.dumps(meta))
    with pytest.raises(WeightsError, match="version 3; expected 'hfld-stylegan2' version 1 or 2"):
        load_stylegan2(out)

