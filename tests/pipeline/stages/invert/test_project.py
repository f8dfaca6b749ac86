"""Projection (pipeline/stages/invert/project.py) on the tiny preset, without Ray: round trips on
generated faces with known latents, the schedule, noise regularisation, Z-space generators."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from pipeline.core.config import ConfigError
from pipeline.core.sampling import latents_from_z
from pipeline.core.seeding import Stream, rng_for
from pipeline.presets import ModelConfig, build_bundle
from pipeline.stages.invert.config import LossConfig, ProjectionConfig
from pipeline.stages.invert.project import (LatentJitter, Projector, expression_judge, latent_space, latent_noise_scale,
                                            learning_rate, noise_regularisation, normalise_noise_)

pytestmark = pytest.mark.timeout(300)


@pytest.fixture(scope="module")
def tiny():
    return build_bundle(ModelConfig(preset="tiny"), "cpu")


def known_faces(bundle, n: int, seed: int):
    """n generated faces with their true W+ latents. The images are used as they come out of the
    generator: the tiny random generator's values run far outside [-1, 1] (about -5..6), so clamping
    them to uint8 would make the truth unreachable (a trained generator stays inside)."""
    g = bundle.generator
    with torch.no_grad():
        z = torch.stack([torch.randn(int(g.z_dim), generator=rng_for(seed, Stream.HELD_OUT, i)) for i in range(n)])
        wplus = latents_from_z(g, z.to(g.mean_latent.dtype), 1.0)
        return wplus, g.synthesis(wplus, "const")


def mean_layer_distance(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return (a - b).norm(dim=2).mean(dim=1)


def test_round_trip_lowers_the_loss_and_moves_the_latent_toward_the_truth(tiny):
    truth, images = known_faces(tiny, 4, seed=3)
    projector = Projector(tiny, ProjectionConfig(steps=200, w_std_samples=2000, start="mean"))
    assert projector.space == "w+"
    result = projector.project(images, [11, 12, 13, 14])
    assert result.wplus.shape == truth.shape == (4, 8, 32)
    # the loss at the start (the mean latent) and at the end, per face
    assert (result.loss_end < 0.2 * result.loss_start).all(), (result.loss_start, result.loss_end)
    start = mean_layer_distance(projector.start_latents(4), truth)
    end = mean_layer_distance(result.wplus, truth)
    assert (end < 0.95 * start).all(), (start, end)
    assert end.mean() < 0.85 * start.mean()
    # the returned images are the final latents' images, and their loss is loss_end
    with torch.no_grad():
        again = projector.loss(result.wplus, projector.targets(images))
    torch.testing.assert_close(again, result.loss_end, rtol=1e-4, atol=1e-5)
    assert result.history[-1] < result.history[0]


def test_each_face_has_its_own_latent():
    """A face's path does not depend on the other faces of its batch (per-face losses, elementwise Adam).

    In float64: in float32 the rounding differences between batched and single-face kernels are
    amplified by Adam along directions with near-zero gradient (it normalises step sizes), so two
    runs agree only statistically there."""
    bundle = build_bundle(ModelConfig(preset="tiny"), "cpu")
    for name in ("generator", "perceptual", "landmarks"):
        setattr(bundle, name, getattr(bundle, name).double())
    _, images = known_faces(bundle, 2, seed=5)
    projector = Projector(bundle, ProjectionConfig(steps=25, w_std_samples=500))
    alone = projector.project(images[:1], [7])
    together = projector.project(images, [7, 8])
    assert together.wplus.dtype == torch.float64
    torch.testing.assert_close(together.wplus[:1], alone.wplus, rtol=1e-9, atol=1e-9)
    assert not torch.allclose(together.wplus[0], together.wplus[1])


def test_latent_jitter_is_each_faces_own_stream_across_chunks():
    """A face's latent noise depends on its seed alone, whatever its batch, also past a chunk boundary."""
    steps = 2 * LatentJitter.CHUNK + 3
    alone = LatentJitter([7], (3, 4), torch.device("cpu"), torch.float32)
    pair = LatentJitter([8, 7], (3, 4), torch.device("cpu"), torch.float32)
    a = torch.stack([alone.next() for _ in range(steps)])      # [steps, 1, 3, 4]
    b = torch.stack([pair.next() for _ in range(steps)])       # [steps, 2, 3, 4]
    assert a.shape == (steps, 1, 3, 4) and b.shape == (steps, 2, 3, 4)
    torch.testing.assert_close(b[:, 1], a[:, 0], rtol=0, atol=0)
    assert not torch.allclose(b[:, 0], b[:, 1])
    assert len({tuple(x.flatten().tolist()) for x in a[:, 0]}) == steps     # a new draw every step


def test_without_the_wplus_tie_the_latent_does_not_follow(tiny):
    """Why losses.wplus_spread exists: with it off, the image still fits but the W+ latent wanders
    (Adam steps along directions the image barely depends on), so it is no closer to the truth."""
    truth, images = known_faces(tiny, 4, seed=3)
    loose = Projector(tiny, ProjectionConfig(steps=200, w_std_samples=2000, losses=LossConfig(wplus_spread=0.0)))
    tied = Projector(tiny, ProjectionConfig(steps=200, w_std_samples=2000, losses=LossConfig(wplus_spread=10.0)))
    r_loose, r_tied = loose.project(images, [1, 2, 3, 4]), tied.project(images, [1, 2, 3, 4])
    assert (r_loose.loss_end < 0.2 * r_loose.loss_start).all()
    assert mean_layer_distance(r_tied.wplus, truth).mean() < 0.9 * mean_layer_distance(r_loose.wplus, truth).mean()


def test_learning_rate_and_latent_noise_follow_the_projector_schedule():
    cfg = ProjectionConfig(steps=100, lr=0.1, lr_rampup=0.05, lr_rampdown=0.25, latent_noise=0.05,
                           latent_noise_ramp=0.75)
    lrs = [learning_rate(s, 100, cfg) for s in range(100)]
    assert lrs[0] == 0.0 and lrs[1] == pytest.approx(0.1 * 1 / 5)      # linear ramp-up over 5 steps
    assert lrs[5] == pytest.approx(0.1) and lrs[70] == pytest.approx(0.1)
    assert lrs[80] == pytest.approx(0.1 * (0.5 - 0.5 * math.cos(0.8 * math.pi)))   # half cosine down
    assert lrs[99] < 0.001 and all(a >= b for a, b in zip(lrs[75:], lrs[76:]))
    assert latent_noise_scale(0, 100, 2.0, cfg) == pytest.approx(0.1)
    assert latent_noise_scale(75, 100, 2.0, cfg) == 0.0 and latent_noise_scale(90, 100, 2.0, cfg) == 0.0


def test_noise_regularisation_is_per_face_and_normalisation_whitens():
    gen = torch.Generator().manual_seed(0)
    white = torch.randn(1, 1, 32, 32, generator=gen)
    smooth = torch.nn.functional.interpolate(torch.randn(1, 1, 4, 4, generator=gen), size=32, mode="bilinear")
    reg = noise_regularisation([torch.cat([white, smooth])])
    assert reg.shape == (2,) and reg[1] > 100 * reg[0]          # correlated noise is penalised
    maps = [torch.cat([white, smooth]) * 3 + 1]
    normalise_noise_(maps)
    assert maps[0].mean(dim=(1, 2, 3)).abs().max() < 1e-5
    torch.testing.assert_close(maps[0].square().mean(dim=(1, 2, 3)), torch.ones(2))


def test_noise_maps_are_optimised_when_asked(tiny):
    _, images = known_faces(tiny, 2, seed=9)
    projector = Projector(tiny, ProjectionConfig(steps=10, w_std_samples=500, optimize_noise=True))
    result = projector.project(images, [3, 4])
    shapes = [n.shape for n in tiny.generator.make_noise("const", 1)]
    assert [tuple(n.shape) for n in result.noise] == [(2, *s[1:]) for s in shapes]
    assert not torch.equal(result.noise[0][0], result.noise[0][1])      # each face's own maps



def test_a_z_space_generator_optimises_z(tiny):
    from models.dcgan import DCGANGenerator
    torch.manual_seed(0)
    g = DCGANGenerator(nz=16, ngf=8).eval()
    bundle = build_bundle(ModelConfig(preset="tiny"), "cpu")
    bundle.generator = g
    projector = Projector(bundle, ProjectionConfig(steps=150, w_std_samples=100, start="mean"))
    assert projector.space == "z" and projector.w_std == pytest.approx(4.0)
    z = torch.randn(3, 1, 16, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        images = g.synthesis(z)
    result = projector.project(images, [1, 2, 3])
    assert result.wplus.shape == (3, 1, 16)
    assert (result.loss_end < 0.5 * result.loss_start).all()
    assert "z_prior" in projector.terms(images, projector.targets(images), result.wplus, None)


def test_one_latent_layer_behind_a_mapping_network_is_refused():
    class Mapped(nn.Module):
        n_latent, z_dim, w_dim, resolution = 1, 4, 4, 8

        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(4, 4)

        def mapping(self, z):
            return self.lin(z)

    with pytest.raises(ConfigError, match="one latent layer behind a mapping network"):
        latent_space(Mapped())


# -- the expression term (losses.expression) --------------------------------------------------------


def expression_projector(bundle, weight: float, kind: str = "features", steps: int = 10) -> Projector:
    return Projector(bundle, ProjectionConfig(steps=steps, w_std_samples=500,
                                              losses=LossConfig(expression=weight, expression_kind=kind)))


@pytest.mark.parametrize("kind", ["features", "kl"])
def test_the_expression_term_is_per_face_and_zero_for_identical_images(tiny, kind):
    _, images = known_faces(tiny, 3, seed=21)
    projector = expression_projector(tiny, 1.0, kind)
    assert projector.expression_name == "tiny-judge" and projector.weights["expression"] == 1.0
    assert projector.expression is not tiny.emotion
    tgt = projector.targets(images)
    w = projector.start_latents(3)
    with torch.no_grad():
        same = projector.terms(images, tgt, w, None)["expression"]
        other = images.clone()
        other[1] = images[1].flip(-1) * 0.5                    # only face 1 differs
        changed = projector.terms(other, tgt, w, None)["expression"]
        generated = projector.terms(projector.synthesis(w, None), tgt, w, None)["expression"]
    assert same.shape == changed.shape == (3,)
    torch.testing.assert_close(same, torch.zeros(3), rtol=0, atol=1e-6)
    assert changed[1] > 1e-7 and changed[0].abs() < 1e-9 and changed[2].abs() < 1e-9, changed
    assert (generated > 1e-7).all(), generated                 # the mean latent's face is not the target


@pytest.mark.parametrize("kind", ["features", "kl"])
def test_the_expression_term_changes_the_gradient(tiny, kind):
    _, images = known_faces(tiny, 2, seed=22)
    off, on = expression_projector(tiny, 0.0), expression_projector(tiny, 10.0, kind)
    assert off.expression is None and off.weights["expression"] == 0.0
    assert "expression" not in off.targets(images) and "expression" not in off.terms(images, off.targets(images),
                                                                                     off.start_latents(2), None)
    grads = []
    for projector in (off, on):
        w = projector.start_latents(2).requires_grad_(True)
        projector.loss(w, projector.targets(images)).sum().backward()
        grads.append(w.grad)
    assert not torch.allclose(grads[0], grads[1], rtol=1e-4, atol=1e-7)
    # ... per face: face 0's gradient does not depend on face 1's target
    w = on.start_latents(2).requires_grad_(True)
    on.loss(w, on.targets(torch.stack([images[0], images[0]]))).sum().backward()
    torch.testing.assert_close(w.grad[0], grads[1][0], rtol=1e-5, atol=1e-7)


def test_without_an_expression_net_the_term_is_skipped():
    """Presets without an expression net (and weight 0) keep today's loss, byte for byte; the preset's
    emotion judge (invert's emotion-agreement measure) is never taken into the loss."""
    bundle = build_bundle(ModelConfig(preset="tiny"), "cpu")
    _, images = known_faces(bundle, 2, seed=23)
    baseline = expression_projector(bundle, 0.0).project(images, [1, 2])
    assert expression_judge(bundle, 1.0)[0] == "tiny-judge" and expression_judge(bundle, 0.0) is None
    for judges in ({}, {"same-as-emotion": bundle.emotion}, {"plain": nn.Identity()}):
        bundle.judges = judges
        assert expression_judge(bundle, 1.0) is None
        projector = expression_projector(bundle, 5.0)
        assert projector.expression is None and projector.weights["expression"] == 0.0
        torch.testing.assert_close(projector.project(images, [1, 2]).wplus, baseline.wplus, rtol=0, atol=0)


def test_expression_weight_and_kind_are_validated():
    for bad in (-1.0, float("nan"), float("inf")):
        with pytest.raises(ConfigError, match=r"projection\.losses\.expression:"):
            LossConfig(expression=bad)
    with pytest.raises(ConfigError, match=r"projection\.losses\.expression_kind"):
        LossConfig(expression_kind="mse")
    assert LossConfig().expression == 0.0              # off by default: today's loss


def test_expression_weight_from_the_command_line_is_validated():
    import argparse
    from pipeline.cli.stages import STAGES, load_stage_config
    stage = STAGES["invert"]
    args = argparse.Namespace(preset=None, print_config=False, config=None, **{f.key: None for f in stage.flags})
    args.set = ["projection.losses.expression=-0.5"]
    with pytest.raises(ConfigError, match=r"projection\.losses\.expression: -0\.5 must be a finite number >= 0"):
        load_stage_config(stage, args)
    args.set = ["projection.losses.expression_kind=l2"]
    with pytest.raises(ConfigError, match=r"expression_kind"):
        load_stage_config(stage, args)
    args.set = ["projection.losses.expression=0.3", "projection.losses.expression_kind=kl"]
    cfg = load_stage_config(stage, args)
    assert cfg.projection.losses.expression == 0.3 and cfg.projection.losses.expression_kind == "kl"


def test_the_job_records_an_expression_net_in_the_loss(tiny):
    from pipeline.stages.invert.config import InvertConfig
    from pipeline.stages.invert.job import invert_facts
    off = invert_facts(tiny, InvertConfig(), "tiny")
    on = invert_facts(tiny, InvertConfig(projection=ProjectionConfig(losses=LossConfig(expression=1.0))), "tiny")
    assert off.expression_term == "" and on.expression_term == "tiny-judge (TinyEmotion)"


def whole_pool(projector):
    chunks = list(projector.candidate_chunks())
    judged = {key: ([torch.cat([c[2][key][i] for c in chunks]) for i in range(len(v))] if isinstance(v, list)
                    else torch.cat([c[2][key] for c in chunks])) for key, v in chunks[0][2].items()}
    return torch.cat([c[0] for c in chunks]), torch.cat([c[1] for c in chunks]), judged


def test_candidate_start_finds_a_pool_latent_and_never_starts_worse(tiny):
    """projection.start "pool": a face made from one of the pool's latents starts exactly there; every
    face starts at a loss no higher than at w_avg; a face's start does not depend on its batch."""
    projector = Projector(tiny, ProjectionConfig(steps=5, w_std_samples=500, start="pool", start_candidates=16))
    projector.POOL_CHUNK = 5           # several chunks
    latents, images, _ = whole_pool(projector)
    assert latents.shape == (17, 8, 32) and images.shape[0] == 17
    torch.testing.assert_close(latents[0], projector.start_latents(1)[0], rtol=0, atol=0)    # w_avg first
    _, others = known_faces(tiny, 2, seed=4)
    faces = torch.cat([images[5:6], others, images[11:12]])
    tgt = projector.targets(faces)
    start = projector.start_latents(4, tgt)
    torch.testing.assert_close(start[0], latents[5], rtol=0, atol=0)
    torch.testing.assert_close(start[3], latents[11], rtol=0, atol=0)
    mean = projector.start_latents(4)
    with torch.no_grad():
        assert (projector.loss(start, tgt) <= projector.loss(mean, tgt) + 1e-6).all()
        assert (projector.loss(start[1:3], projector.targets(others)) < projector.loss(mean[1:3], projector.targets(others))).any()
        alone = projector.start_latents(1, projector.targets(others[1:2]))
    torch.testing.assert_close(alone[0], start[2], rtol=0, atol=0)
    # past the cache budget the pool is made again for every batch, with the same starts
    uncached = Projector(tiny, ProjectionConfig(steps=5, w_std_samples=500, start="pool", start_candidates=16))
    uncached.POOL_CHUNK, uncached.POOL_CACHE_BYTES = 5, 1000
    torch.testing.assert_close(uncached.start_latents(4, tgt), start, rtol=0, atol=0)
    assert not uncached.pool_kept and projector.pool_kept
    with pytest.raises(ConfigError, match="projection.start_candidates"):
        ProjectionConfig(start_candidates=0)
    with pytest.raises(ConfigError, match="projection.start"):
        ProjectionConfig(start="best")


@pytest.mark.parametrize("pixel_kind,expression,kind", [("l2", 0.0, "features"), ("l1", 1.0, "features"),
                                                        ("l2", 1.0, "kl")])
def test_pairwise_loss_is_the_projection_loss_of_each_pair(tiny, pixel_kind, expression, kind):
    """The start's [B, K] loss matrix (distance matrices) equals the projection's own loss of each pair."""
    losses = LossConfig(pixel_kind=pixel_kind, expression=expression, expression_kind=kind)
    projector = Projector(tiny, ProjectionConfig(steps=5, w_std_samples=500, start="pool", start_candidates=6, losses=losses))
    assert (projector.weights["expression"] > 0) == (expression > 0)
    latents, images, judged = whole_pool(projector)
    latents = latents + 0.3 * torch.randn(latents.shape, generator=torch.Generator().manual_seed(1))  # spread > 0
    _, faces = known_faces(tiny, 3, seed=8)
    tgt = projector.targets(faces)
    matrix = projector.pairwise_total(tgt, images, judged, latents)
    assert matrix.shape == (3, 7)
    for k in range(7):
        with torch.no_grad():
            terms = projector.terms(images[k:k + 1].expand(3, -1, -1, -1), tgt, latents[k:k + 1].expand(3, -1, -1), None)
        torch.testing.assert_close(matrix[:, k], projector.total(terms), rtol=1e-4, atol=1e-5)


def test_both_starts_keep_each_faces_better_run():
    """projection.start "both": each face's result is whichever of its w_avg run and its pool-pick run ends
    lower, exactly as the two runs alone give them (float64: per-face paths are batch-independent)."""
    bundle = build_bundle(ModelConfig(preset="tiny"), "cpu")
    for name in ("generator", "perceptual", "landmarks"):
        setattr(bundle, name, getattr(bundle, name).double())
    _, images = known_faces(bundle, 4, seed=6)
    runs = {start: Projector(bundle, ProjectionConfig(steps=20, w_std_samples=500, start=start, start_candidates=8))
            .project(images, [1, 2, 3, 4]) for start in ("mean", "pool", "both")}
    pool_won = runs["pool"].loss_end < runs["mean"].loss_end
    assert 0 < int(pool_won.sum()) < 4, "both outcomes should occur on these faces"
    for i in range(4):
        winner = runs["pool" if pool_won[i] else "mean"]
        torch.testing.assert_close(runs["both"].wplus[i], winner.wplus[i], rtol=1e-9, atol=1e-9)
        torch.testing.assert_close(runs["both"].loss_end[i], winner.loss_end[i], rtol=1e-9, atol=1e-12)
