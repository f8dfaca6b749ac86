"""Evaluation metrics against hand-computed values."""

import math

import numpy as np
import pytest

from pipeline.core import metrics as M


def test_change_ratios_by_hand():
    low = [[0.2, 0.5, 0.1], [0.4, 0.5, 0.3]]
    high = [[0.8, 0.6, 0.1], [1.0, 0.7, 0.1]]
    # mean change: target (0.6 + 0.6) / 2 = 0.6; b (0.1 + 0.2) / 2 = 0.15; c (0 - 0.2) / 2 = -0.1
    np.testing.assert_allclose(M.mean_change(low, high), [0.6, 0.15, -0.1])
    np.testing.assert_allclose(M.change_ratios(low, high, 0), [1.0, 0.25, -1 / 6])
    np.testing.assert_allclose(M.change_ratios(low, high, 1), [4.0, 1.0, -2 / 3])


def test_change_ratio_of_an_edit_that_did_nothing_is_not_finite():
    r = M.change_ratios([[0.5, 0.1]], [[0.5, 0.3]], 0)
    assert r[1] == math.inf and math.isnan(r[0])


def test_change_ratios_reject_mismatched_sets():
    with pytest.raises(ValueError, match="shapes differ"):
        M.change_ratios(np.zeros((2, 3)), np.zeros((3, 3)), 0)


def test_top_k_takes_the_largest_change_under_either_method_and_skips_the_target():
    names = ["Male", "Young", "Smiling", "Bald"]
    ratios = {"baseline": [1.0, 0.1, -0.5, 0.2], "hfld": [1.0, 0.7, 0.05, 0.1]}
    assert M.top_k_ratios(ratios, names, exclude=["Male"], k=2) == ["Young", "Smiling"]
    assert M.top_k_ratios(ratios, names, exclude=["Male"], k=10) == ["Young", "Smiling", "Bald"]


def test_emotion_deltas_and_total_variation_by_hand():
    orig = [[1.0, 0, 0, 0, 0, 0, 0], [0.2, 0.3, 0.5, 0, 0, 0, 0]]
    edit = [[0.5, 0.5, 0, 0, 0, 0, 0], [0.5, 0.3, 0.2, 0, 0, 0, 0]]
    np.testing.assert_allclose(M.emotion_abs_deltas(orig, edit),
                               [[50, 50, 0, 0, 0, 0, 0], [30, 0, 30, 0, 0, 0, 0]], atol=1e-12)
    np.testing.assert_allclose(M.total_variation(orig, edit), [0.5, 0.3])
    np.testing.assert_allclose(M.total_variation(orig, orig), [0.0, 0.0])


def eye_points():
    # right eye (0,0),(0.2,0): centroid (0.1, 0); left eye (0.5,0),(0.7,0): centroid (0.6, 0); a mouth point.
    return np.array([[[0.0, 0.0], [0.2, 0.0], [0.5, 0.0], [0.7, 0.0], [0.4, 0.6]]])


GROUPS = {"right_eye": [0, 1], "left_eye": [2, 3], "mouth": [4]}


def test_inter_ocular_distance_and_scale():
    pts = eye_points()
    np.testing.assert_allclose(M.inter_ocular_distance(pts, [0, 1], [2, 3]), [0.5])
    scale, name = M.landmark_scale(pts, GROUPS)
    np.testing.assert_allclose(scale, [0.5])
    assert name == "inter-ocular distance"
    scale, name = M.landmark_scale(pts, {"eyes": [0, 1, 2, 3], "mouth": [4]})
    np.testing.assert_allclose(scale, [1.0])
    assert name == "image side"


def test_degenerate_inter_ocular_distance_falls_back_to_image_side():
    pts = np.zeros((1, 5, 2))
    scale, _ = M.landmark_scale(pts, GROUPS)
    np.testing.assert_allclose(scale, [1.0])


def test_landmark_drift_by_hand():
    pts = eye_points()
    moved = pts + np.array([0.03, 0.04])        # every point moves by 0.05
    np.testing.assert_allclose(M.landmark_drift(pts, moved), [0.05])
    np.testing.assert_allclose(M.landmark_drift(pts, moved, scale=[0.5]), [0.1])
    one = pts.copy()
    one[0, 4] += [0.3, 0.4]                      # only the mouth point moves, by 0.5
    np.testing.assert_allclose(M.landmark_drift(pts, one), [0.1])          # 0.5 / 5 points
    np.testing.assert_allclose(M.landmark_drift(pts, one, scale=[0.5], index=[4]), [1.0])
    np.testing.assert_allclose(M.landmark_drift(pts, one, index=[0, 1]), [0.0])


def test_cosine_similarity_by_hand():
    a = [[1.0, 0.0], [1.0, 2.0], [3.0, 4.0]]
    b = [[1.0, 1.0], [-1.0, -2.0], [6.0, 8.0]]
    np.testing.assert_allclose(M.cosine_similarity(a, b), [1 / math.sqrt(2), -1.0, 1.0])


def test_bootstrap_ci_contains_the_mean_and_is_deterministic():
    v = np.random.default_rng(3).normal(2.0, 1.0, size=200)
    lo, hi = M.bootstrap_ci(v, n_resamples=500, seed=7)
    assert lo < v.mean() < hi
    assert (lo, hi) == M.bootstrap_ci(v, n_resamples=500, seed=7)
    assert (lo, hi) != M.bootstrap_ci(v, n_resamples=500, seed=8)
    lo80, hi80 = M.bootstrap_ci(v, n_resamples=500, seed=7, confidence=0.8)
    assert lo < lo80 < hi80 < hi
    # The half-width is about 1.96 standard errors of the mean.
    assert abs((hi - lo) / 2 - 1.96 * v.std() / math.sqrt(len(v))) < 0.05


def test_bootstrap_ci_of_constant_data_is_a_point():
    assert M.bootstrap_ci(np.full(10, 3.5), n_resamples=100) == (3.5, 3.5)


def test_bootstrap_ci_keeps_pairs_together():
    b = np.arange(1.0, 21.0)
    lo, hi = M.bootstrap_ci((b, 2 * b), lambda x, y: float(np.mean(y) / np.mean(x)), n_resamples=200)
    assert lo == pytest.approx(2.0) and hi == pytest.approx(2.0)


def test_bootstrap_ci_rejects_bad_input():
    with pytest.raises(ValueError, match="share their number of rows"):
        M.bootstrap_ci((np.zeros(3), np.zeros(4)), lambda a, b: 0.0)
    with pytest.raises(ValueError, match="confidence"):
        M.bootstrap_ci(np.zeros(3), confidence=1.5)


def test_relative_reduction_and_compare_by_hand():
    base = np.array([2.0, 4.0, 6.0])
    assert M.relative_reduction(base, base / 2) == pytest.approx(50.0)
    assert M.relative_reduction(base, base * 1.5) == pytest.approx(-50.0)
    assert M.relative_reduction([0.0], [0.0]) == 0.0
    c = M.compare(base, base / 2, n_resamples=200)
    # Every face halves, so every resample's reduction is exactly 50%.
    assert c == {"reduction_pct": pytest.approx(50.0), "ci_low": pytest.approx(50.0),
                 "ci_high": pytest.approx(50.0), "n": 3}
    worse = M.compare(base, base + np.array([1.0, 0.0, 2.0]), n_resamples=300, seed=1)
    assert worse["reduction_pct"] == pytest.approx(-25.0)
    assert worse["ci_low"] <= -25.0 <= worse["ci_high"] <= 0


def test_summarise_by_hand():
    s = M.summarise([1.0, 2.0, 3.0, 6.0], n_resamples=300, seed=0)
    assert s["mean"] == 3.0 and s["n"] == 4 and 1.0 <= s["ci_low"] < 3.0 < s["ci_high"] <= 6.0


def test_change_ratio_ci_brackets_the_estimate_and_the_target_is_exactly_one():
    rng = np.random.default_rng(0)
    low = rng.uniform(0, 0.3, size=(100, 3))
    high = low + np.stack([rng.uniform(0.5, 0.7, 100), rng.uniform(0.05, 0.15, 100), np.zeros(100)], axis=1)
    ratios = M.change_ratios(low, high, 0)
    lo, hi = M.change_ratio_ci(low, high, 0, n_resamples=300, seed=2)
    assert lo[0] == pytest.approx(1.0) and hi[0] == pytest.approx(1.0)
    assert lo[1] < ratios[1] < hi[1]
    assert lo[2] == hi[2] == 0.0
    lo2, hi2 = M.change_ratio_ci(low, high, 0, n_resamples=300, seed=2)
    np.testing.assert_array_equal(lo, lo2)
    np.testing.assert_array_equal(hi, hi2)
