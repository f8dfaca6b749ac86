"""One G/D step: the lazy schedule, Adam's lazy-regularisation correction, EMA, w_avg (pipeline/stages/gan/step.py)."""

from __future__ import annotations

import pytest
import torch

from pipeline.presets import ModelConfig, build_bundle
from pipeline.stages.gan.data import TeacherSource
from pipeline.stages.gan.step import setup_gan, train_step, update_ema
from tests.pipeline.stages.gan.helpers import tiny_config


@pytest.fixture(scope="module")
def teacher():
    return build_bundle(ModelConfig(preset="tiny"), "cpu").generator


def test_the_lazy_schedule_runs_r1_every_r1_every_steps_and_path_length_every_pl_every(tmp_path, teacher):
    cfg = tiny_config(tmp_path, "r1_every=4", "pl_every=3")
    state = setup_gan(cfg, torch.device("cpu"))
    source = TeacherSource(teacher, 16, torch.device("cpu"))
    seen = [sorted(train_step(state, cfg, source)) for _ in range(8)]
    r1_steps = [t for t, keys in enumerate(seen) if "r1" in keys]
    pl_steps = [t for t, keys in enumerate(seen) if "pl" in keys]
    assert r1_steps == [0, 4]
    assert pl_steps == [0, 3, 6]
    assert all({"loss_d", "loss_g", "real_score", "fake_score"} <= set(keys) for keys in seen)
    assert state.step == 8 and state.cur_nimg == 8 * cfg.batch_size


def test_regularisers_off_means_no_lazy_correction_and_no_reg_phases(tmp_path, teacher):
    cfg = tiny_config(tmp_path, "r1_gamma=0", "pl_weight=0")
    state = setup_gan(cfg, torch.device("cpu"))
    assert state.opt_d.param_groups[0]["lr"] == cfg.lr and tuple(state.opt_d.param_groups[0]["betas"]) == cfg.betas
    out = train_step(state, cfg, TeacherSource(teacher, 16, torch.device("cpu")))
    assert "r1" not in out and "pl" not in out


def test_adam_settings_carry_the_lazy_regularisation_correction(tmp_path):
    cfg = tiny_config(tmp_path, "lr=0.002", "r1_every=16", "pl_every=4")
    state = setup_gan(cfg, torch.device("cpu"))
    d, g = state.opt_d.param_groups[0], state.opt_g.param_groups[0]
    assert d["lr"] == pytest.approx(0.002 * 16 / 17) and d["betas"][1] == pytest.approx(0.99 ** (16 / 17))
    assert g["lr"] == pytest.approx(0.002 * 4 / 5) and g["betas"][1] == pytest.approx(0.99 ** (4 / 5))
    assert d["betas"][0] == 0.0 and g["betas"][0] == 0.0


def test_ema_update_is_the_lerp_and_copies_buffers(tmp_path):
    cfg = tiny_config(tmp_path)
    state = setup_gan(cfg, torch.device("cpu"))
    with torch.no_grad():
        for p in state.G.parameters():
            p.add_(1.0)
        state.G.w_avg.fill_(3.0)
    before = {k: v.clone() for k, v in state.G_ema.named_parameters()}
    update_ema(state.G_ema, state.G, beta=0.75)
    for k, p in state.G.named_parameters():
        expected = 0.75 * before[k] + 0.25 * p.detach()
        assert torch.allclose(dict(state.G_ema.named_parameters())[k], expected, atol=1e-6), k
    assert (state.G_ema.w_avg == 3.0).all()


def test_a_step_tracks_w_avg_and_starts_g_ema_at_g(tmp_path, teacher):
    cfg = tiny_config(tmp_path, "w_avg_beta=0.5")
    state = setup_gan(cfg, torch.device("cpu"))
    assert (state.G.w_avg == 0).all()
    train_step(state, cfg, TeacherSource(teacher, 16, torch.device("cpu")))
    assert state.G.w_avg.abs().sum() > 0                       # moved halfway to the batch's mean w
    assert torch.equal(state.G_ema.w_avg, state.G.w_avg)
    # the ramped half-life is tiny after 4 images: G_ema is (almost exactly) G
    for (k, pe), p in zip(state.G_ema.named_parameters(), state.G.parameters()):
        assert torch.allclose(pe, p, atol=1e-4), k


def test_the_same_step_index_draws_the_same_numbers(tmp_path, teacher):
    """Randomness is a function of (seed, step, rank): two fresh states take identical first steps."""
    cfg = tiny_config(tmp_path)
    source = TeacherSource(teacher, 16, torch.device("cpu"))
    a, b = setup_gan(cfg, torch.device("cpu")), setup_gan(cfg, torch.device("cpu"))
    out_a, out_b = train_step(a, cfg, source), train_step(b, cfg, source)
    assert all(torch.equal(out_a[k], out_b[k]) for k in out_a)
    assert all(torch.equal(p, q) for p, q in zip(a.G.parameters(), b.G.parameters()))
