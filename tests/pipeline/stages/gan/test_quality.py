"""FD_face and the other quality measures (pipeline/stages/gan/quality.py)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pipeline.stages.gan.quality import (QualityJudges, SetStats, compute_scale, fd_between, frechet_distance,
                                         gaussian_blur, jpeg_copies, landmarks_in_order, measure, total_variation,
                                         where_on_scale)
from tests.pipeline.stages.gan.helpers import PooledDescriptor, face_points


def test_frechet_distance_closed_forms():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(6, 6))
    cov = a @ a.T + np.eye(6)
    mu = rng.normal(size=6)
    assert frechet_distance(mu, cov, mu, cov) == pytest.approx(0.0, abs=1e-8)
    d = np.array([1.0, -2.0, 0, 0, 0.5, 0])
    assert frechet_distance(mu, cov, mu + d, cov) == pytest.approx((d ** 2).sum(), rel=1e-8)
    # N(0, I) vs N(0, 4 I) in D dims: D (1 + 4 - 2 * 2) = D
    assert frechet_distance(np.zeros(5), np.eye(5), np.zeros(5), 4 * np.eye(5)) == pytest.approx(5.0, rel=1e-8)


def sample_stats(x: np.ndarray) -> SetStats:
    return SetStats(len(x), x.mean(0), np.cov(x, rowvar=False), None, None)


def test_fd_of_a_distribution_against_itself_is_about_zero_and_grows_with_a_shift():
    rng = np.random.default_rng(1)
    base = rng.normal(size=(4000, 16))
    same = sample_stats(rng.normal(size=(4000, 16)))
    values = [fd_between(sample_stats(base + shift), same) for shift in (0.0, 0.25, 0.5, 1.0)]
    assert values[0] < 0.15                                   # sampling noise only (~D^2 / N)
    assert values == sorted(values)
    assert values[2] == pytest.approx(16 * 0.25, rel=0.1)     # ||shift||^2 dominates


def test_measure_matches_numpy_and_a_shift_of_the_images_shows(tiny_bundle):
    judges = QualityJudges(PooledDescriptor())
    g = torch.Generator().manual_seed(0)
    images = torch.rand(64, 3, 16, 16, generator=g) * 2 - 1
    stats = measure(judges, images.split(20))
    feats = PooledDescriptor()(images).double().numpy()
    assert stats.n == 64
    assert np.allclose(stats.mu, feats.mean(0)) and np.allclose(stats.cov, np.cov(feats, rowvar=False))
    other = measure(judges, (torch.rand(64, 3, 16, 16, generator=g) * 2 - 1).split(32))
    shifted = measure(judges, (images + 0.3).split(32))
    assert fd_between(stats, other) < fd_between(stats, shifted)


def test_the_scale_orders_noise_floor_and_degradations(tiny_bundle):
    """compute_scale on a smooth random 'teacher': blur and JPEG move the statistics, a second set less so
    for a descriptor that sees fine detail."""
    class Edges(torch.nn.Module):        # mean |horizontal gradient| per channel and quadrant: blur-sensitive
        def forward(self, x):
            gx = (x[..., 1:] - x[..., :-1]).abs()
            return torch.nn.functional.adaptive_avg_pool2d(gx, 2).flatten(1)

    def reference(set_index):
        g = torch.Generator().manual_seed(10 + set_index)
        for _ in range(4):
            yield torch.rand(128, 3, 32, 32, generator=g) * 2 - 1

    ref, scale = compute_scale(QualityJudges(Edges()), reference)
    assert ref.n == 512 and scale["n"] == 512
    assert scale["noise_floor"] < scale["jpeg30"] and scale["noise_floor"] < scale["blur1"]
    assert "below noise_floor, " in where_on_scale(scale["noise_floor"] / 2, scale)
    assert "above every level" in where_on_scale(1e9, scale)


def test_degraded_copies_keep_shapes_and_ranges():
    x = torch.rand(3, 3, 16, 16) * 2 - 1
    j = jpeg_copies(x, 30)
    assert j.shape == x.shape and j.min() >= -1 and j.max() <= 1 and (j - x).abs().mean() < 0.5
    flat = torch.full((1, 3, 8, 8), 0.25)
    assert torch.allclose(gaussian_blur(flat, 1.0), flat, atol=1e-6)   # a constant image is unchanged
    assert gaussian_blur(x, 1.0).std() < x.std()


def test_landmarks_in_order():
    face = face_points()
    mirrored = face.clone()
    mirrored[:, 0] = 1 - mirrored[:, 0]                     # the subject's right eye now on the image's right
    outside = face.clone()
    outside[8, 1] = 1.02                                     # chin below the image
    upside_down = face.clone()
    upside_down[:, 1] = 1 - upside_down[:, 1]
    result = landmarks_in_order(torch.stack([face, mirrored, outside, upside_down]))
    assert result.tolist() == [True, False, False, False]


def test_total_variation():
    assert total_variation(np.array([0.5, 0.5, 0]), np.array([0, 0.5, 0.5])) == pytest.approx(0.5)
    assert total_variation(None, np.ones(2)) is None


def test_starter_judges_on_dcgan_faces(starter_cache):
    """The real judges: 128-d descriptors, and the anatomical-order check holds for most DCGAN faces
    (the convention of the landmark indices is right; failures are points just outside the image)."""
    from pipeline.presets import ModelConfig, build_bundle
    from pipeline.stages.gan.data import TeacherSource

    bundle = build_bundle(ModelConfig(preset="starter"), "cpu")
    judges = QualityJudges.from_bundle(bundle)
    source = TeacherSource(bundle.generator, 64, torch.device("cpu"))
    stats = measure(judges, source.reference(32, 0, 16))
    assert stats.mu.shape == (128,) and stats.cov.shape == (128, 128)
    assert stats.landmark_share >= 0.8
    assert stats.emotion_hist.shape == (7,) and stats.emotion_hist.sum() == pytest.approx(1.0)
