"""pipeline/core/strength.py: edit strength, the gate and matched-strength interpolation, by hand."""

import math

import numpy as np
import pytest

from pipeline.core import strength as S


def test_strength_is_the_mean_must_exist_minus_the_mean_non_exist_probability():
    low, high = [0.1, 0.3, 0.2], [0.9, 0.7, 0.2]
    np.testing.assert_allclose(S.per_face_strength(low, high), [0.8, 0.4, 0.0])
    assert S.edit_strength(low, high) == pytest.approx(0.4)
    # A T that does nothing: both sets keep R(x) (~0.6 for the starter), strength 0.
    assert S.edit_strength([0.6, 0.62], [0.6, 0.62]) == 0.0
    with pytest.raises(ValueError, match="must both be"):
        S.per_face_strength([0.1, 0.2], [0.3])


@pytest.mark.parametrize("by_r, by_judge, verdict", [
    (0.70, 0.76, S.EDITING),
    (0.50, 0.40, S.EDITING),            # both exactly at their floors
    (0.49, 0.90, S.NOT_EDITING),        # the floor is on R: below it nothing else counts
    (0.006, 0.0, S.NOT_EDITING),        # the demo T's
    (0.80, 0.10, S.FOOLING_R),          # passes R, not the independent judge
    (0.80, None, S.EDITING_R_ONLY),     # no independent judge for this attribute
    (math.nan, 0.8, S.NOT_EDITING),
])
def test_verdicts(by_r, by_judge, verdict):
    assert S.strength_verdict(by_r, by_judge) == verdict


def test_floors_can_be_set():
    assert S.strength_verdict(0.3, 0.3, floor=0.25, judge_floor=0.2) == S.EDITING
    assert S.strength_verdict(0.3, 0.3, floor=0.25, judge_floor=0.35) == S.FOOLING_R


def test_level_position_and_matched_values_by_hand():
    # alpha grid 0, 0.5, 1, 2 -> strength 0, 0.3, 0.6, 0.8 and drift 0, 2, 5, 9
    strengths, drifts, alphas = [0.0, 0.3, 0.6, 0.8], [0.0, 2.0, 5.0, 9.0], [0.0, 0.5, 1.0, 2.0]
    assert S.level_position(strengths, 0.5) == pytest.approx(1 + 0.2 / 0.3)
    assert S.value_at_level(strengths, drifts, 0.5) == pytest.approx(2 + (0.2 / 0.3) * 3)    # 4.0
    assert S.value_at_level(strengths, alphas, 0.7) == pytest.approx(1.5)                   # the calibrated alpha
    assert S.value_at_level(strengths, drifts, 0.6) == 5.0 and S.value_at_level(strengths, drifts, 0.0) == 0.0
    assert S.value_at_level(strengths, drifts, 0.15) == pytest.approx(1.0)                  # below the first scale
    assert math.isnan(S.value_at_level(strengths, drifts, 0.9))                            # never reached
    # The first crossing counts when a curve saturates and falls back (a broken face at large alpha).
    assert S.value_at_level([0, 0.6, 0.4, 0.7], [0, 6, 8, 20], 0.5) == pytest.approx(5.0)
    # A T that edits the wrong way never reaches a positive level.
    assert math.isnan(S.value_at_level([0, -0.2, -0.4], [0, 1, 2], 0.5))
    with pytest.raises(ValueError, match="3 strengths but 2 values"):
        S.value_at_level([0, 1, 2], [0, 1], 0.5)


def test_natural_spans_are_the_top_minus_bottom_quarter_as_ranked_by_R():
    r = np.array([0.1, 0.9, 0.2, 0.8, 0.5, 0.4, 0.6, 0.3])
    j = np.array([0.0, 1.0, 0.0, 0.5, 9.0, 9.0, 9.0, 9.0])      # the middle faces must not count
    r_span, j_span = S.natural_spans(r, j)                          # quarter of 8 faces: 2 each side
    assert r_span == pytest.approx((0.9 + 0.8) / 2 - (0.1 + 0.2) / 2)
    assert j_span == pytest.approx((1.0 + 0.5) / 2 - 0.0)
    assert all(np.isnan(S.natural_spans(r[:3], j[:3])))
    with pytest.raises(ValueError, match="natural_spans"):
        S.natural_spans(r, j[:5])


@pytest.mark.parametrize("by_r, by_judge, spans, verdict", [
    (0.62, 0.15, (0.54, 0.10), S.UNCONFIRMED),   # the starter's case: judge range 0.10 < 0.4, 0.24 vs 0.19 per R
    (0.62, 0.02, (0.54, 0.10), S.FOOLING_R),     # moves the judge far less per R than natural faces do
    (0.62, 0.15, (0.54, 0.60), S.FOOLING_R),     # the judge CAN reach its floor on natural faces
    (0.62, 0.15, (float("nan"), float("nan")), S.FOOLING_R),
    (0.62, 0.45, (0.54, 0.10), S.EDITING),       # above the floor: editing, whatever the span
    (0.30, 0.15, (0.54, 0.10), S.NOT_EDITING),
])
def test_an_insensitive_judge_makes_an_edit_unconfirmed_not_fooling(by_r, by_judge, spans, verdict):
    assert S.strength_verdict(by_r, by_judge, judge_spans=spans) == verdict
    assert verdict in S.PASSING or verdict in S.FAILING
