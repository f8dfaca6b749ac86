"""Edit strength: does a T edit at all? Pure functions on numpy arrays (no models, no I/O).

For target attribute a, the two edited sets of the edit protocol (pipeline/core/edits.py; "target"
mode: t = 0 "non-exist" and t = 1 "must-exist"), scored by an attribute model P (the training
regressor R, or an independent attribute judge):

    strength_a = mean_i P_a(x'_i | t = 1) - mean_i P_a(x'_i | t = 0)

in probability units: 1 = every face goes from certainly-not-a to certainly-a, 0 = the edit does
nothing. Per face, P_a(x'_i | t = 1) - P_a(x'_i | t = 0) (the same face under both targets), so the
mean of the per-face values is strength_a and bootstrap resampling keeps the two sets paired.

Gate (every drift comparison depends on it: a T that does not edit cannot change an emotion, so
its "low drift" is no achievement):
- strength by R below `STRENGTH_FLOOR` (0.5): the T is NOT EDITING the attribute;
- strength by R at or above the floor but below `JUDGE_STRENGTH_FLOOR` (0.4) by an independent
  attribute judge: the T is FOOLING R (T was trained against R, so it can learn R's blind spots)...
- ...unless the judge itself cannot reach the floor on this generator's faces: its NATURAL SPAN (on
  unedited faces, the judge's mean over the quarter of faces R scores highest minus its mean over the
  quarter R scores lowest, `natural_spans`) is below the judge floor, while the edit moves the judge
  at least half as much per unit of R as natural variation does. Then the edit is UNCONFIRMED: R's
  reading is not contradicted, but the held-out judge is too insensitive here to confirm it (measured
  on the starter: faceres separates R's most and least "Male" natural faces by 0.10, R by 0.54).
  Neither FOOLING R nor UNCONFIRMED passes the gate;
- otherwise EDITING (or EDITING_R_ONLY when the preset has no independent attribute judge).

Matched strength: drift grows with how far an edit moves the face, so two T's are compared where
they edit equally. Evaluating a T at edit scales alpha (s multiplied by alpha) traces a curve of
(strength(alpha), drift(alpha)); `value_at_level` reads the drift (or the alpha) at which the curve
first reaches a chosen strength, by linear interpolation between neighbouring grid points.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

STRENGTH_FLOOR = 0.5            # strength by R below this: "not editing"
JUDGE_STRENGTH_FLOOR = 0.4      # strength by an independent judge below this (R passing): "fooling R"

EDITING = "editing"
EDITING_R_ONLY = "editing (by R; no independent attribute judge)"
NOT_EDITING = "not editing"
FOOLING_R = "fooling R"
UNCONFIRMED = "unconfirmed (held-out judge insensitive)"
PASSING = (EDITING, EDITING_R_ONLY)
FAILING = (NOT_EDITING, FOOLING_R, UNCONFIRMED)
NATURAL_QUANTILE = 0.25         # natural span: R's top vs bottom quarter of unedited faces
SENSITIVITY_SHARE = 0.5         # UNCONFIRMED needs >= this share of the natural judge-per-R response


def per_face_strength(low, high) -> np.ndarray:
    """low, high [N]: P_a of each face's t = 0 and t = 1 edits -> [N] high - low."""
    lo, hi = np.asarray(low, dtype=np.float64), np.asarray(high, dtype=np.float64)
    if lo.shape != hi.shape or lo.ndim != 1:
        raise ValueError(f"strength: low and high must both be [N], got {list(lo.shape)} and {list(hi.shape)}")
    return hi - lo


def edit_strength(low, high) -> float:
    """mean(high) - mean(low) of the two edited sets' attribute probabilities [N]."""
    return float(per_face_strength(low, high).mean())


def natural_spans(regressor_probs, judge_probs, quantile: float = NATURAL_QUANTILE) -> tuple[float, float]:
    """(R's span, the judge's span) on unedited faces [N]: each model's mean over the faces R scores in
    its top `quantile` minus its mean over the faces R scores in its bottom `quantile`. How far the judge
    moves when R moves that far through natural variation (nan with fewer than 4 faces)."""
    r, j = np.asarray(regressor_probs, dtype=np.float64), np.asarray(judge_probs, dtype=np.float64)
    if r.shape != j.shape or r.ndim != 1:
        raise ValueError(f"natural_spans: both must be [N], got {list(r.shape)} and {list(j.shape)}")
    if len(r) < 4:
        return math.nan, math.nan
    order = np.argsort(r, kind="stable")
    k = max(1, int(round(quantile * len(r))))
    low, high = order[:k], order[-k:]
    return float(r[high].mean() - r[low].mean()), float(j[high].mean() - j[low].mean())


def judge_cannot_confirm(by_regressor: float, by_judge: float, spans: tuple[float, float], judge_floor: float) -> bool:
    """The judge's natural span is below its floor (it cannot reach the floor on these faces), and the
    edit moves it per unit of R at least SENSITIVITY_SHARE as much as natural variation does."""
    r_span, j_span = spans
    if not all(math.isfinite(v) for v in (by_regressor, by_judge, r_span, j_span)) or r_span <= 0:
        return False
    return j_span < judge_floor and by_judge >= SENSITIVITY_SHARE * by_regressor * j_span / r_span


def strength_verdict(by_regressor: float, by_judge: float | None, *, floor: float = STRENGTH_FLOOR,
                     judge_floor: float = JUDGE_STRENGTH_FLOOR, judge_spans: tuple[float, float] | None = None) -> str:
    """EDITING, EDITING_R_ONLY, NOT_EDITING, FOOLING_R or UNCONFIRMED (see the module docstring).

    by_judge None: the preset has no independent attribute judge for this attribute.
    judge_spans: `natural_spans` of R and that judge on the unedited faces (None: not measured, so a
    judge below its floor means FOOLING_R).
    """
    if not math.isfinite(by_regressor) or by_regressor < floor:
        return NOT_EDITING
    if by_judge is None:
        return EDITING_R_ONLY
    if not math.isfinite(by_judge) or by_judge < judge_floor:
        if judge_spans is not None and judge_cannot_confirm(by_regressor, by_judge, judge_spans, judge_floor):
            return UNCONFIRMED
        return FOOLING_R
    return EDITING


def level_position(strengths: Sequence[float], level: float) -> float:
    """Fractional grid position where the curve `strengths` (in grid order) first reaches `level`.

    Between grid points i and i + 1 it is i + (level - s_i) / (s_{i+1} - s_i); nan when the curve never
    reaches the level (or a grid point is not finite before it does).
    """
    s = np.asarray(strengths, dtype=np.float64)
    for i in range(len(s) - 1):
        a, b = s[i], s[i + 1]
        if not (math.isfinite(a) and math.isfinite(b)):
            return math.nan
        if a == level:
            return float(i)
        if (a - level) * (b - level) < 0 or b == level:
            return i + (level - a) / (b - a)
    return float(len(s) - 1) if len(s) and s[-1] == level else math.nan


def value_at_position(values: Sequence[float], position: float) -> float:
    """Linear interpolation of `values` (on the same grid) at a fractional grid position (nan -> nan)."""
    if not math.isfinite(position):
        return math.nan
    v = np.asarray(values, dtype=np.float64)
    i = min(int(math.floor(position)), len(v) - 1)
    frac = position - i
    if frac == 0:
        return float(v[i])
    return float(v[i] + frac * (v[i + 1] - v[i]))


def value_at_level(strengths: Sequence[float], values: Sequence[float], level: float) -> float:
    """`values` interpolated where `strengths` first reaches `level` (nan when it never does).

    strengths, values: one curve on one grid of edit scales, in grid order (prepend alpha = 0, where
    both strength and drift are exactly 0, so levels below the first measured scale are reachable).
    """
    if len(strengths) != len(values):
        raise ValueError(f"value_at_level: {len(strengths)} strengths but {len(values)} values")
    return value_at_position(values, level_position(strengths, level))
