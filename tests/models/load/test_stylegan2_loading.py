import os
import pickle

import pytest
import torch

from models.errors import WeightsError
from models.load.stylegan2 import (load_rosinality_checkpoint, load_stylegan2, save_stylegan2_safetensors)


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


class _Evil:
    def __reduce__(self):
        return (os.system, ("touch /tmp/should-not-exist",))


def test_pickle_with_code_is_refused(tmp_path):
    marker = tmp_path / "marker"

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    p = tmp_path / "evil.pt"
    with open(p, "wb") as f:
        pickle.dump({"g_ema": Evil()}, f)
    torch.save({"g_ema": {}, "x": torch.zeros(1)}, tmp_path / "ok.pt")
    # torch.save format with a reducer inside
    torch.save({"g_ema": _Evil()}, tmp_path / "evil2.pt", _use_new_zipfile_serialization=True)
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
