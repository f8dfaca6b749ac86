"""Evaluation metrics of the `evaluate` stage: pure functions on numpy arrays, no models, no I/O.

Notation: N faces (the fixed held-out set), A regressor attributes, P landmark points, D descriptor
size. "orig" is the measurement on x = G(w), "edit" on x' = G(w + T s) of the same face.

- change_ratios: the paper's relative change ratio (Tables I-IV). Editing attribute a to its two
  extremes gives two sets of edited faces, "non-exist" (low) and "must-exist" (high). For every
  attribute b:  ratio_b = mean_n(R_b(high_n) - R_b(low_n)) / mean_n(R_a(high_n) - R_a(low_n)),
  so the target's own ratio is 1 and a well-disentangled edit has other ratios near 0. Signed: a
  negative ratio means b moves against a.
- table_v_pp: the paper's Table V exactly: per emotion k, mean over the must-exist set of p_k(x')
  minus mean over the non-exist set of p_k(x'), in percentage points (signed; the original face x
  does not enter).
- emotion_abs_deltas: per emotion, |p(x') - p(x)| in percentage points (x 100) per face (our extra:
  the change against the original face, unsigned).
- total_variation: total emotion drift of one face, TV(p, q) = 0.5 * sum_k |p_k - q_k|, in [0, 1]
  (reported x 100, in percentage points: the probability mass that moved between emotions).
- landmark_drift: mean Euclidean distance between corresponding points of x and x', divided by the
  face's inter-ocular distance (distance between the centroids of the two eye groups, measured on
  x) when the landmark model has two eye groups; otherwise by 1, i.e. in units of the image side
  (landmark coordinates are fractions of the image's width/height).
- cosine_similarity: identity similarity of face descriptors of x and x'.
- bootstrap_ci: percentile bootstrap over faces with a seeded numpy generator; resampling whole
  rows keeps paired data (the same faces under two T's) paired.
- HierarchicalDraws / hierarchical_summary / hierarchical_compare: the bootstrap that includes
  training: values [S, N] of S trained T's (seeds) of one arm on the same N faces; each resample
  draws S seeds with replacement, then N faces with replacement within each drawn seed. Its
  intervals carry the between-seed variance that a face-only bootstrap of one T leaves out.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Mapping, Sequence

import numpy as np

# Names of eye groups, as (right, left) pairs, in the landmark models' `groups` (checked in order).
EYE_GROUP_PAIRS: tuple[tuple[str, str], ...] = (("right_eye", "left_eye"), ("eye_right", "eye_left"),
                                                 ("reye", "leye"))


def _as_2d(x, name: str) -> np.ndarray:
    a = np.asarray(x, dtype=np.float64)
    if a.ndim != 2:
        raise ValueError(f"{name} must be [N, K], got shape {list(a.shape)}")
    return a


def _same_shape(a: np.ndarray, b: np.ndarray, what: str) -> None:
    if a.shape != b.shape:
        raise ValueError(f"{what}: shapes differ, {list(a.shape)} vs {list(b.shape)}")


# ---------------------------------------------------------------------------------------------
# Attribute change ratios (Tables I-IV)
# ---------------------------------------------------------------------------------------------

def mean_change(low, high) -> np.ndarray:
    """low, high [N, A] (regressor outputs of the two edited sets) -> mean_n(high - low) [A]."""
    low, high = _as_2d(low, "low"), _as_2d(high, "high")
    _same_shape(low, high, "mean_change")
    return (high - low).mean(axis=0)


def change_ratios(low, high, target_index: int) -> np.ndarray:
    """[A] ratios of every attribute's mean change to the target attribute's (target's own = 1).

    A target change of exactly 0 (the edit did nothing) gives inf/nan ratios, as it should.
    """
    change = mean_change(low, high)
    with np.errstate(divide="ignore", invalid="ignore"):
        return change / change[target_index]


def top_k_ratios(ratios: Mapping[str, Sequence[float]] | Mapping[str, np.ndarray], names: Sequence[str],
                 exclude: Sequence[str], k: int) -> list[str]:
    """Names of the k attributes (not in `exclude`) with the largest |ratio| under any method.

    ratios: method -> [A] ratios over `names`. Ties keep the regressor's order.
    """
    scores = np.max(np.abs(np.stack([np.asarray(v, dtype=np.float64) for v in ratios.values()])), axis=0)
    scores = np.nan_to_num(scores, nan=-1.0)
    order = sorted(range(len(names)), key=lambda i: -scores[i])
    return [names[i] for i in order if names[i] not in exclude][:k]


# ---------------------------------------------------------------------------------------------
# Emotions (Table V)
# ---------------------------------------------------------------------------------------------

def emotion_abs_deltas(orig, edit) -> np.ndarray:
    """orig, edit [N, 7] probabilities -> [N, 7] |edit - orig| in percentage points."""
    orig, edit = _as_2d(orig, "orig"), _as_2d(edit, "edit")
    _same_shape(orig, edit, "emotion_abs_deltas")
    return np.abs(edit - orig) * 100.0


def table_v_pp(low, high) -> np.ndarray:
    """The paper's Table V: low, high [N, K] emotion probabilities of the non-exist (t = 0) and
    must-exist (t = 1) sets -> [K] mean(high) - mean(low) per emotion, in percentage points."""
    low, high = _as_2d(low, "low"), _as_2d(high, "high")
    if low.shape[1] != high.shape[1]:
        raise ValueError(f"table_v_pp: {low.shape[1]} vs {high.shape[1]} emotions")
    return (high.mean(axis=0) - low.mean(axis=0)) * 100.0


def total_variation(orig, edit) -> np.ndarray:
    """orig, edit [N, K] probability vectors -> [N] total-variation distance 0.5 * sum |p - q| in [0, 1]."""
    orig, edit = _as_2d(orig, "orig"), _as_2d(edit, "edit")
    _same_shape(orig, edit, "total_variation")
    return 0.5 * np.abs(edit - orig).sum(axis=1)


# ---------------------------------------------------------------------------------------------
# Landmarks and identity
# ---------------------------------------------------------------------------------------------

def eye_groups(groups: Mapping[str, Sequence[int]]) -> tuple[list[int], list[int]] | None:
    """The (right, left) eye index lists of a landmark model's groups, or None when it has no pair."""
    for right, left in EYE_GROUP_PAIRS:
        if right in groups and left in groups and groups[right] and groups[left]:
            return list(groups[right]), list(groups[left])
    return None


def inter_ocular_distance(points, right_eye: Sequence[int], left_eye: Sequence[int]) -> np.ndarray:
    """points [N, P, 2] -> [N] distance between the centroids of the two eye groups."""
    pts = np.asarray(points, dtype=np.float64)
    if pts.ndim != 3 or pts.shape[2] != 2:
        raise ValueError(f"points must be [N, P, 2], got shape {list(pts.shape)}")
    centre_r = pts[:, list(right_eye)].mean(axis=1)
    centre_l = pts[:, list(left_eye)].mean(axis=1)
    return np.linalg.norm(centre_r - centre_l, axis=1)


def landmark_scale(points_orig, groups: Mapping[str, Sequence[int]]) -> tuple[np.ndarray, str]:
    """Per-face normaliser [N] and its name: inter-ocular distance, or 1 (image side) without eye groups.

    A degenerate inter-ocular distance (below 1e-6 of the image side, e.g. an untrained model that
    puts all points together) falls back to 1 for that face so no drift becomes infinite.
    """
    n = np.asarray(points_orig).shape[0]
    eyes = eye_groups(groups)
    if eyes is None:
        return np.ones(n), "image side"
    iod = inter_ocular_distance(points_orig, *eyes)
    return np.where(iod > 1e-6, iod, 1.0), "inter-ocular distance"


def landmark_drift(points_orig, points_edit, scale=None, index: Sequence[int] | None = None) -> np.ndarray:
    """points [N, P, 2] -> [N] mean over points (or over `index`) of ||p' - p||, divided by scale [N]."""
    a = np.asarray(points_orig, dtype=np.float64)
    b = np.asarray(points_edit, dtype=np.float64)
    _same_shape(a, b, "landmark_drift")
    if a.ndim != 3 or a.shape[2] != 2:
        raise ValueError(f"points must be [N, P, 2], got shape {list(a.shape)}")
    if index is not None:
        a, b = a[:, list(index)], b[:, list(index)]
    dist = np.linalg.norm(b - a, axis=2).mean(axis=1)
    return dist / (np.ones(len(dist)) if scale is None else np.asarray(scale, dtype=np.float64))


def cosine_similarity(a, b, eps: float = 1e-12) -> np.ndarray:
    """a, b [N, D] -> [N] cosine similarity of corresponding rows."""
    a, b = _as_2d(a, "a"), _as_2d(b, "b")
    _same_shape(a, b, "cosine_similarity")
    norms = np.maximum(np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1), eps)
    return (a * b).sum(axis=1) / norms


# ---------------------------------------------------------------------------------------------
# Bootstrap
# ---------------------------------------------------------------------------------------------

def bootstrap_indices(n: int, n_resamples: int, seed: int) -> np.ndarray:
    """[n_resamples, n] row indices drawn with replacement from a seeded numpy generator."""
    if n < 1:
        raise ValueError("bootstrap: need at least one row")
    if n_resamples < 1:
        raise ValueError(f"bootstrap: n_resamples must be >= 1, got {n_resamples}")
    return np.random.default_rng(seed).integers(0, n, size=(n_resamples, n))


def percentile_interval(values, confidence: float) -> tuple[float, float]:
    """(low, high) percentiles of bootstrap statistics [R, ...] along axis 0 (non-finite values skipped)."""
    if not 0 < confidence < 1:
        raise ValueError(f"bootstrap: confidence must be in (0, 1), got {confidence}")
    v = np.asarray(values, dtype=np.float64)
    v = np.where(np.isfinite(v), v, np.nan)
    alpha = (1 - confidence) / 2
    with np.errstate(invalid="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN columns give NaN, which is the answer
        low, high = np.nanquantile(v, [alpha, 1 - alpha], axis=0)
    return (float(low), float(high)) if np.ndim(low) == 0 else (low, high)


def bootstrap_ci(data, statistic: Callable[..., float] | None = None, *, n_resamples: int = 1000,
                 confidence: float = 0.95, seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap confidence interval of `statistic` over rows.

    data: an array [N, ...] or a tuple of arrays sharing N (resampled with the same row indices, so
    paired measurements stay paired). statistic(*arrays) -> float; default: the mean of one array.
    Deterministic for a seed (numpy default_rng). Returns (low, high).
    """
    arrays = tuple(np.asarray(d, dtype=np.float64) for d in (data if isinstance(data, tuple) else (data,)))
    n = arrays[0].shape[0]
    if any(a.shape[0] != n for a in arrays):
        raise ValueError(f"bootstrap_ci: arrays must share their number of rows, got {[a.shape[0] for a in arrays]}")
    idx = bootstrap_indices(n, n_resamples, seed)
    if statistic is None:
        if len(arrays) != 1:
            raise ValueError("bootstrap_ci: name a statistic for more than one array")
        values = arrays[0][idx].reshape(n_resamples, -1).mean(axis=1)
    else:
        values = np.array([statistic(*(a[i] for a in arrays)) for i in idx], dtype=np.float64)
    return percentile_interval(values, confidence)


def change_ratio_ci(low, high, target_index: int, *, n_resamples: int = 1000, confidence: float = 0.95,
                    seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Bootstrap CI [A], [A] of every attribute's change ratio (faces resampled, both sets together)."""
    low, high = _as_2d(low, "low"), _as_2d(high, "high")
    _same_shape(low, high, "change_ratio_ci")
    diff = high - low
    idx = bootstrap_indices(diff.shape[0], n_resamples, seed)
    means = np.stack([diff[i].mean(axis=0) for i in idx])            # [R, A], one resample at a time
    with np.errstate(divide="ignore", invalid="ignore"):
        ratios = means / means[:, target_index:target_index + 1]
    lo, hi = percentile_interval(ratios, confidence)
    return np.atleast_1d(lo), np.atleast_1d(hi)


def relative_reduction(baseline, candidate) -> float:
    """100 * (1 - mean(candidate) / mean(baseline)): percent by which the candidate lowers a drift.

    Positive: the candidate drifts less. baseline, candidate: per-face values [N] (paired).
    A zero baseline drift gives 0 when the candidate is also 0, else -inf.
    """
    base, cand = float(np.mean(baseline)), float(np.mean(candidate))
    if base == 0:
        return 0.0 if cand == 0 else float("-inf")
    return 100.0 * (1.0 - cand / base)


def summarise(values, *, n_resamples: int = 1000, confidence: float = 0.95, seed: int = 0) -> dict:
    """{"mean", "ci_low", "ci_high", "n"} of per-face values [N]; CI of the mean by bootstrap."""
    v = np.asarray(values, dtype=np.float64)
    low, high = bootstrap_ci(v, n_resamples=n_resamples, confidence=confidence, seed=seed)
    return {"mean": float(v.mean()), "ci_low": low, "ci_high": high, "n": int(v.shape[0])}


def compare(baseline, candidate, *, n_resamples: int = 1000, confidence: float = 0.95, seed: int = 0) -> dict:
    """Paired comparison of per-face drifts [N] of two methods on the same faces.

    {"reduction_pct": relative_reduction, "ci_low", "ci_high", "n"}; the CI resamples faces (paired).
    """
    b = np.asarray(baseline, dtype=np.float64)
    c = np.asarray(candidate, dtype=np.float64)
    _same_shape(b, c, "compare")
    idx = bootstrap_indices(b.shape[0], n_resamples, seed)
    mb, mc = b[idx].mean(axis=1), c[idx].mean(axis=1)                 # [R] resampled means
    with np.errstate(divide="ignore", invalid="ignore"):
        values = np.where(mb == 0, np.where(mc == 0, 0.0, -np.inf), 100.0 * (1.0 - mc / mb))
    low, high = percentile_interval(values, confidence)
    return {"reduction_pct": relative_reduction(b, c), "ci_low": low, "ci_high": high, "n": int(b.shape[0])}


# ---------------------------------------------------------------------------------------------
# Hierarchical bootstrap: seeds (trained T's), then faces within each seed
# ---------------------------------------------------------------------------------------------

class HierarchicalDraws:
    """Resampling indices for arms of S_arm trained T's (seeds), each measured on the same N faces.

    For resample r and arm m: seed_idx[m][r] [S_m] seeds drawn with replacement, and for seed slot j
    the faces face_idx[r, j] [N] drawn with replacement. The face draws of slot j are shared by all
    arms, so with one seed per arm a comparison stays paired face by face (and the draws reduce to
    the plain face bootstrap). Deterministic for a seed.
    """

    def __init__(self, n_seeds: dict[str, int], n_faces: int, n_resamples: int, seed: int = 0):
        if n_faces < 1 or n_resamples < 1 or any(s < 1 for s in n_seeds.values()):
            raise ValueError(f"hierarchical bootstrap: need >= 1 seed per arm, face and resample; got seeds "
                             f"{n_seeds}, {n_faces} faces, {n_resamples} resamples")
        rng = np.random.default_rng(seed)
        self.n_seeds, self.n_faces, self.n_resamples = dict(n_seeds), n_faces, n_resamples
        self.seed_idx = {arm: rng.integers(0, s, size=(n_resamples, s)) for arm, s in sorted(n_seeds.items())}
        self.face_idx = rng.integers(0, n_faces, size=(n_resamples, max(n_seeds.values()), n_faces))

    def means(self, arm: str, values, chunk: int = 128) -> np.ndarray:
        """values [S_arm, N, ...] -> [R, ...]: the mean over the drawn seeds and faces of every resample."""
        v = np.asarray(values, dtype=np.float64)
        s = self.n_seeds[arm]
        if v.shape[:2] != (s, self.n_faces):
            raise ValueError(f"hierarchical bootstrap: arm {arm!r} values must be [{s}, {self.n_faces}, ...], "
                             f"got {list(v.shape)}")
        out = []
        for start in range(0, self.n_resamples, chunk):
            seeds = self.seed_idx[arm][start:start + chunk]                  # [r, S]
            faces = self.face_idx[start:start + chunk, :s]                    # [r, S, N]
            out.append(v[seeds[:, :, None], faces].mean(axis=(1, 2)))
        return np.concatenate(out)


def grand_mean(values) -> float:
    """Mean over seeds and faces of values [S, N] (every seed has the same N faces: equal weights)."""
    return float(np.mean(np.asarray(values, dtype=np.float64)))


def hierarchical_summary(draws: HierarchicalDraws, arm: str, values, confidence: float = 0.95) -> dict:
    """{"mean", "ci_low", "ci_high", "n", "n_seeds", "per_seed"} of values [S, N]; CI by the hierarchical bootstrap."""
    v = np.asarray(values, dtype=np.float64)
    low, high = percentile_interval(draws.means(arm, v), confidence)
    return {"mean": grand_mean(v), "ci_low": low, "ci_high": high, "n": int(v.shape[1]), "n_seeds": int(v.shape[0]),
            "per_seed": [float(x) for x in v.mean(axis=1)]}


def reduction_pct(base, cand):
    """100 * (1 - cand / base), elementwise; base 0 gives 0 (cand 0) or -inf."""
    base, cand = np.asarray(base, dtype=np.float64), np.asarray(cand, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(base == 0, np.where(cand == 0, 0.0, -np.inf), 100.0 * (1.0 - cand / base))


def hierarchical_compare(draws: HierarchicalDraws, baseline, candidate, confidence: float = 0.95,
                         arms: tuple[str, str] = ("baseline", "hfld")) -> dict:
    """Relative reduction of a drift by the candidate arm: {"reduction_pct", "ci_low", "ci_high", "n", "n_seeds"}.

    baseline [S_b, N], candidate [S_c, N] on the same faces; the interval resamples seeds within each
    arm, then faces (shared by seed slot across the arms).
    """
    b, c = np.asarray(baseline, dtype=np.float64), np.asarray(candidate, dtype=np.float64)
    values = reduction_pct(draws.means(arms[0], b), draws.means(arms[1], c))
    low, high = percentile_interval(values, confidence)
    return {"reduction_pct": float(reduction_pct(grand_mean(b), grand_mean(c))), "ci_low": low, "ci_high": high,
            "n": int(b.shape[1]), "n_seeds": [int(b.shape[0]), int(c.shape[0])]}
