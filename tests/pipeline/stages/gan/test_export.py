"""Export of G_ema + D (+ w_avg) with its card, and the strict loader models.load.stylegan2.load_hfld_gan."""

from __future__ import annotations

import json

import pytest
import torch

from models.errors import WeightsError
from models.load.common import file_sha256
from models.load.stylegan2 import load_hfld_gan, load_stylegan2
from pipeline.core.config import ConfigError
from pipeline.stages.gan.export import ExportTooLarge, export_weights
from pipeline.stages.gan.step import setup_gan
from tests.pipeline.stages.gan.helpers import tiny_config


@pytest.fixture
def trained(tmp_path):
    cfg = tiny_config(tmp_path, resolution=32)
    state = setup_gan(cfg, torch.device("cpu"))
    with torch.no_grad():
        state.G_ema.w_avg.normal_()
        for p in state.G_ema.parameters():
            p.add_(0.01 * torch.randn_like(p))
    return cfg, state


@pytest.mark.parametrize("dtype, tol", [("fp32", 0.0), ("fp16", 2e-2)])
def test_export_round_trip_loads_strictly_and_records_its_sha256(tmp_path, trained, dtype, tol):
    cfg, state = trained
    weights, card_path, card = export_weights(state.G_ema, state.D, tmp_path / "out" / "g.safetensors", dtype=dtype,
                                              card={"architecture": cfg.arch.as_card(), "fd_face": 1.5})
    assert card["weights_sha256"] == file_sha256(weights)
    assert json.loads(card_path.read_text())["weights_sha256"] == file_sha256(weights)
    loaded, read_card = load_hfld_gan(weights, expected_sha256=file_sha256(weights), expected_resolution=32)
    assert read_card["fd_face"] == 1.5 and read_card["dtype"] == dtype
    G, D = loaded.generator, loaded.discriminator
    assert torch.allclose(G.w_avg, state.G_ema.w_avg, atol=tol + 1e-7)
    z = torch.randn(3, cfg.arch.w_dim, generator=torch.Generator().manual_seed(0))
    noise = state.G_ema.make_noise("random", 3, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        a = state.G_ema.synthesis(state.G_ema.broadcast(state.G_ema.mapping(z)), noise)
        b = G.synthesis(G.broadcast(G.mapping(z)), noise)
        assert torch.allclose(a, b, atol=tol * 5 + 1e-6)
        assert torch.allclose(state.D(a), D(a), atol=tol * 5 + 1e-5)
    assert G.n_latent == 8 and loaded.config["channels"] == cfg.arch.channel_table()
    # the generic loader reads it too (the format is hfld-stylegan2)
    assert load_stylegan2(weights).generator.n_latent == 8


def test_the_loader_refuses_a_changed_file_a_missing_card_and_a_wrong_pin(tmp_path, trained):
    cfg, state = trained
    weights, card_path, _ = export_weights(state.G_ema, state.D, tmp_path / "g.safetensors", dtype="fp16",
                                           card={"architecture": cfg.arch.as_card()})
    with pytest.raises(WeightsError, match="the expected pin"):
        load_hfld_gan(weights, expected_sha256="0" * 64)
    card = json.loads(card_path.read_text())
    card["architecture"]["n_mlp"] = 7
    card_path.write_text(json.dumps(card))
    with pytest.raises(WeightsError, match="does not describe"):
        load_hfld_gan(weights)
    data = bytearray(weights.read_bytes())
    data[-3] ^= 0x01
    weights.write_bytes(bytes(data))
    with pytest.raises(WeightsError, match="its card says"):
        load_hfld_gan(weights)
    card_path.unlink()
    with pytest.raises(WeightsError, match="no card"):
        load_hfld_gan(weights)


def test_an_export_over_the_cap_is_refused(tmp_path, trained):
    _, state = trained
    with pytest.raises(ExportTooLarge, match="export.max_mb") as e:
        export_weights(state.G_ema, state.D, tmp_path / "g.safetensors", dtype="fp32", max_mb=0.01)
    assert isinstance(e.value, ConfigError)
    assert not (tmp_path / "g.safetensors").exists()


def test_default_architecture_fits_the_shipping_cap():
    """The default 64 px model: G + D about 3.6M parameters, ~7 MB in fp16, 10 latent layers."""
    from pipeline.stages.gan import ArchitectureConfig, build_networks, parameter_count

    arch = ArchitectureConfig()
    G, D = build_networks(arch)
    n = parameter_count(G, D)
    assert arch.n_latent == G.n_latent == 10 and G.w_dim == 256
    assert max(arch.channel_table().values()) <= 128
    assert n * 2 / 1e6 <= 15.0                               # fp16 bytes, under the 15 MB cap


def test_init_from_export_loads_g_ema_into_both_generators_and_d(tmp_path, trained):
    """init_weights: a fresh state takes the export's G_ema (G and G_ema), D and w_avg exactly (fp32 export)."""
    from pipeline.stages.gan.export import init_from_export

    cfg, state = trained
    weights, _, card = export_weights(state.G_ema, state.D, tmp_path / "g.safetensors", dtype="fp32",
                                      card={"architecture": cfg.arch.as_card(), "fd_face": 0.5,
                                            "training": {"kimg": 12.5}, "run_name": "first"})
    fresh = setup_gan(tiny_config(tmp_path, resolution=32, seed=7), torch.device("cpu"))
    assert not torch.equal(fresh.G.w_avg, state.G_ema.w_avg)                # really another start
    got = init_from_export(fresh.G, fresh.G_ema, fresh.D, str(weights), cfg.arch)
    for target in (fresh.G, fresh.G_ema):
        for (k, a), b in zip(state.G_ema.state_dict().items(), target.state_dict().values()):
            assert torch.equal(a, b), k
        assert torch.equal(target.w_avg, state.G_ema.w_avg)
    for (k, a), b in zip(state.D.state_dict().items(), fresh.D.state_dict().values()):
        assert torch.equal(a, b), k
    # the optimisers still point at the live parameters (loaded in place, not replaced)
    assert fresh.opt_g.param_groups[0]["params"][0] is next(fresh.G.parameters())
    assert got == {"path": str(weights), "weights_sha256": card["weights_sha256"], "kimg": 12.5, "fd_face": 0.5,
                   "run_name": "first"}


def test_init_weights_refuses_a_missing_file_and_another_architecture(tmp_path, trained):
    from pipeline.stages.gan import run_gan
    from pipeline.stages.gan.export import init_from_export

    cfg, state = trained
    with pytest.raises(ConfigError, match="init_weights: no file at"):
        run_gan(tiny_config(tmp_path, f"init_weights={tmp_path / 'none.safetensors'}"))
    assert not (tmp_path / "work").exists()                                 # refused before any output
    weights, _, _ = export_weights(state.G_ema, state.D, tmp_path / "g.safetensors", dtype="fp16",
                                   card={"architecture": cfg.arch.as_card()})
    other = tiny_config(tmp_path, resolution=16)
    fresh = setup_gan(other, torch.device("cpu"))
    with pytest.raises(ConfigError, match=r"init_weights: .* another architecture .*resolution: saved 32, this run 16"):
        init_from_export(fresh.G, fresh.G_ema, fresh.D, str(weights), other.arch)


def test_a_run_from_init_weights_trains_on_and_its_card_says_where_it_started(tmp_path, trained):
    from pipeline.stages.gan import run_gan

    cfg, state = trained
    weights, _, card = export_weights(state.G_ema, state.D, tmp_path / "g.safetensors", dtype="fp16",
                                      card={"architecture": cfg.arch.as_card(), "training": {"kimg": 3.0}})
    lines = []
    result = run_gan(tiny_config(tmp_path, f"init_weights={weights}", "total_kimg=0.008", resolution=32),
                     print_fn=lambda *a, **k: lines.append(" ".join(map(str, a))))
    assert any(line.startswith(f"[gan] weights from {weights} (trained 3.0 kimg") for line in lines)
    new_card = json.loads(result.card_path.read_text())
    assert new_card["training"]["init_from"]["weights_sha256"] == card["weights_sha256"]
    assert new_card["training"]["kimg"] == pytest.approx(0.008)             # counted from the loaded weights
    # resume=auto continues its own checkpoint (kimg goes on from 0.008), not the init file's weights again
    lines.clear()
    again = run_gan(tiny_config(tmp_path, f"init_weights={weights}", "resume=auto", "total_kimg=0.016", resolution=32),
                    print_fn=lambda *a, **k: lines.append(" ".join(map(str, a))))
    assert any("resumed from" in line and "init_weights is not used" in line for line in lines)
    assert not any(line.startswith("[gan] weights from") for line in lines)
    again_card = json.loads(again.card_path.read_text())
    assert again_card["training"]["kimg"] == pytest.approx(0.016)
    assert again_card["training"]["init_from"]["weights_sha256"] == card["weights_sha256"]   # kept in the record
