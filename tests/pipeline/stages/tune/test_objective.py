"""pipeline/stages/tune/objective.py: the held-out set and the tune objective (starter preset, CPU, seconds)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from models.editing import DirectionMatrix
from pipeline.core import metrics as M
from pipeline.core.config import ConfigError
from pipeline.core.sampling import held_out_faces
from pipeline.stages.tune.objective import (
    INFEASIBLE_OFFSET,
    HeldOutSet,
    ObjectiveEvaluator,
    build_held_out,
    emotion_judge,
    score,
)
from pipeline.presets import ModelConfig, build_bundle

ATTRIBUTES = ("Male", "Young")
N = 6


@pytest.fixture(scope="module")
def starter(starter_cache):
    return build_bundle(ModelConfig(preset="starter", cache_dir=str(starter_cache.parent)), "cpu")


@pytest.fixture(scope="module")
def held_out(starter):
    return build_held_out(starter, ATTRIBUTES, n=N, seed=7, batch_size=4)


def random_T(bundle, n_columns: int, seed: int = 0, std: float = 0.5) -> DirectionMatrix:
    g = bundle.generator
    return DirectionMatrix(g.n_latent, g.w_dim, n_columns, init_std=std,
                           generator=torch.Generator().manual_seed(seed)).eval()


# ---------------------------------------------------------------------------------------------
# Held-out set
# ---------------------------------------------------------------------------------------------

def test_held_out_faces_are_seeded_and_are_evaluates_faces(starter, held_out):
    again = build_held_out(starter, ATTRIBUTES, n=N, seed=7, batch_size=N)     # another batching: same set
    # Each face's z is drawn from its own generator, rng_for(seed, HELD_OUT, i), whatever the batch;
    # everything computed from it through a network -- w = mapping(z) included -- is equal up to float32
    # rounding, which depends on the batch: the CPU's GEMM kernels pick their blocking by the number of
    # rows (seen here: batches of 4 + 2 vs 6 differ by up to 3e-6 after the 8 mapping layers on one machine, not at all on another).
    torch.testing.assert_close(held_out.wplus, again.wplus, rtol=1e-4, atol=1e-5)
    for name in ("amounts", "targets", "original_attributes"):
        assert torch.allclose(getattr(held_out, name), getattr(again, name), atol=1e-5), name
    other = build_held_out(starter, ATTRIBUTES, n=N, seed=8)
    assert not torch.allclose(held_out.wplus, other.wplus)
    faces = held_out_faces(starter.generator, [3, 5], seed=7, device="cpu")
    torch.testing.assert_close(held_out.wplus[[3, 5]], faces.wplus, rtol=1e-4, atol=1e-5)
    assert held_out.meta["stream"] == "HELD_OUT" and held_out.meta["seed"] == 7
    assert held_out.meta["indices"] == list(range(N)) and held_out.meta["preset"] == "starter"


def test_target_edits_aim_at_the_extremes_and_fixed_edits_at_clamped_targets(starter, held_out):
    assert held_out.amounts.shape == (N, 2, 2) and held_out.targets.shape == (N, 2, 2)
    assert torch.equal(held_out.targets[:, :, 0], torch.zeros(N, 2))
    assert torch.equal(held_out.targets[:, :, 1], torch.ones(N, 2))
    assert torch.allclose(held_out.amounts[:, :, 1], 1 - held_out.original_attributes)
    fixed = build_held_out(starter, ("Young",), n=N, seed=7, edit_mode="fixed", fixed_amount=0.3)
    assert torch.equal(fixed.amounts[:, 0], torch.tensor([-0.3, 0.3]).expand(N, 2))
    expected = (fixed.original_attributes[:, :, None] + fixed.amounts).clamp(0, 1)
    assert torch.allclose(fixed.targets, expected)


def test_held_out_round_trips_through_one_safetensors_file(tmp_path, held_out):
    path = held_out.save(tmp_path / "held_out.safetensors")
    loaded = HeldOutSet.load(path)
    assert loaded.attributes == ATTRIBUTES and loaded.noise == "const"
    assert loaded.meta["seed"] == 7 and loaded.meta["format"] == "hfld-held-out"
    for name in ("wplus", "amounts", "targets", "original_attributes"):
        assert torch.equal(getattr(loaded, name), getattr(held_out, name)), name
    head = loaded.head(2)
    assert len(head) == 2 and torch.equal(head.wplus, held_out.wplus[:2]) and head.meta["indices"] == [0, 1]


def test_random_noise_is_stored_with_the_set(tmp_path, tiny_bundle):
    h = build_held_out(tiny_bundle, ("Male",), n=3, seed=1, noise_mode="random")
    assert isinstance(h.noise, list) and all(n.shape[0] == 3 for n in h.noise)
    loaded = HeldOutSet.from_bytes(h.to_bytes())
    assert len(loaded.noise) == len(h.noise)
    assert all(torch.equal(a, b) for a, b in zip(loaded.noise, h.noise))


def test_a_file_that_is_not_a_held_out_set_is_rejected(tmp_path):
    from safetensors.torch import save_file
    save_file({"T": torch.zeros(1)}, str(tmp_path / "directions.safetensors"))
    with pytest.raises(ConfigError, match="directions.safetensors: not a held-out safetensors file"):
        HeldOutSet.load(tmp_path / "directions.safetensors")
    with pytest.raises(ConfigError, match="not found"):
        HeldOutSet.load(tmp_path / "missing.safetensors")


# ---------------------------------------------------------------------------------------------
# Components
# ---------------------------------------------------------------------------------------------

def test_zero_T_moves_nothing_and_has_zero_strength(starter, held_out):
    """Issue 14: the old edit success scored a T that does nothing at ~50; its strength is exactly 0."""
    T = random_T(starter, 2)
    with torch.no_grad():
        T.T.zero_()
    parts = ObjectiveEvaluator(starter, held_out)(T, ATTRIBUTES)
    assert parts.emotion_tv_pp == 0 and parts.landmark_drift == 0
    assert set(parts.emotion_abs_pp) == {"angry", "disgust", "fear", "happy", "sad", "surprise", "neutral"}
    assert all(v == 0 for v in parts.emotion_abs_pp.values())
    # x' = x for both targets: R(x' | t = 1) - R(x' | t = 0) = 0 for every face.
    assert parts.strength_by_attribute == {"Male": 0.0, "Young": 0.0} and parts.strength == 0.0
    s = score(parts.emotion_tv_pp, parts.strength)
    assert not s.feasible and s.shortfall == 0.5        # a zero-drift T that does not edit is infeasible


def test_components_equal_the_metrics_computed_by_hand(starter, held_out):
    """One attribute (Young, column 0 of a one-column T): the evaluator's bookkeeping vs. direct calls."""
    T = random_T(starter, 1, seed=3)
    parts = ObjectiveEvaluator(starter, held_out, batch_size=4)(T, ("Young",))
    G, judge = starter.generator, starter.emotion
    a = held_out.attributes.index("Young")
    with torch.no_grad():
        x = G.synthesis(held_out.wplus)
        p, pts = judge(x).numpy(), starter.landmarks(x).numpy()
        scale, _ = M.landmark_scale(pts, starter.landmarks.groups)
        tv, lm, young, absd = [], [], [], []
        for e in range(2):
            s = held_out.amounts[:, a, e:e + 1]
            x2 = G.synthesis(T(held_out.wplus, s))
            p2, pts2 = judge(x2).numpy(), starter.landmarks(x2).numpy()
            young.append(starter.regressor(x2)[:, list(starter.regressor.names).index("Young")].numpy())
            tv.append(M.total_variation(p, p2) * 100)
            absd.append(M.emotion_abs_deltas(p, p2))
            lm.append(M.landmark_drift(pts, pts2, scale))
    assert parts.emotion_tv_pp == pytest.approx(float(np.mean(tv)), rel=1e-5)
    assert parts.landmark_drift == pytest.approx(float(np.mean(lm)), rel=1e-5)
    # strength = mean R(x' | must-exist) - mean R(x' | non-exist), extremes in (low, high) order
    # abs 1e-5: float32 rounding (the objective and this check batch the judges differently; oneDNN NHWC)
    assert parts.strength_by_attribute["Young"] == pytest.approx(float(young[1].mean() - young[0].mean()), abs=1e-5)
    assert parts.strength == parts.strength_by_attribute["Young"]
    assert parts.emotion_abs_pp["happy"] == pytest.approx(float(np.mean(absd, axis=(0, 1))[3]), rel=1e-5)
    assert parts.emotion_tv_pp > 0.01   # the random T really edits (the comparison is not 0 == 0)
    np.testing.assert_allclose(parts.per_face["emotion_tv_pp"], np.mean(tv, axis=0), rtol=1e-5)


def test_intermediate_evaluation_uses_the_first_faces(starter, held_out):
    T = random_T(starter, 2, seed=4)
    first4 = ObjectiveEvaluator(starter, held_out)(T, ATTRIBUTES, n_faces=4)
    on_head = ObjectiveEvaluator(starter, held_out.head(4))(T, ATTRIBUTES)
    # the same faces in batches of another size: equal up to float32 rounding (see above)
    assert first4.n_faces == 4 and first4.as_metrics() == pytest.approx(on_head.as_metrics(), rel=1e-4)


def test_strength_by_an_independent_attribute_judge(starter, held_out):
    """strength_by names a held-out attribute judge: strength is its P(x' | t = 1) - P(x' | t = 0)."""
    T = random_T(starter, 2, seed=5)
    by_judge = ObjectiveEvaluator(starter, held_out, strength_by="hse-faceres")(T, ATTRIBUTES, n_faces=2)
    by_r = ObjectiveEvaluator(starter, held_out)(T, ATTRIBUTES, n_faces=2)
    assert by_judge.strength_by == "hse-faceres" and by_r.strength_by == "regressor"
    assert by_judge.emotion_tv_pp == pytest.approx(by_r.emotion_tv_pp)          # same edits, other scorer
    assert by_judge.strength_by_attribute != pytest.approx(by_r.strength_by_attribute)
    with pytest.raises(ConfigError, match="objective.strength_by: 'nope' is neither"):
        ObjectiveEvaluator(starter, held_out, strength_by="nope")


def test_unknown_judge_and_uncovered_attribute_are_config_errors(starter, held_out):
    with pytest.raises(ConfigError, match="objective.judge: 'deepface-x' is not an emotion judge"):
        emotion_judge(starter, "deepface-x")
    model, labels = emotion_judge(starter, "face-api-expression")
    assert labels[3] == "happy" and model is starter.judges["face-api-expression"]
    only_male = build_held_out(starter, ("Male",), n=2, seed=0)
    with pytest.raises(ConfigError, match="'Young' is not covered"):
        ObjectiveEvaluator(starter, only_male)(random_T(starter, 1), ("Young",))
    with pytest.raises(ConfigError, match=r"\['Bald'\] not known"):
        build_held_out(starter, ("Bald",), n=2, seed=0)


# ---------------------------------------------------------------------------------------------
# Score
# ---------------------------------------------------------------------------------------------

def test_score_is_drift_above_an_absolute_strength_floor_and_ranks_infeasible_trials_last():
    kw = {"strength_floor": 0.5, "penalty": 1000.0}
    ok = score(3.0, 0.62, **kw)
    assert ok.feasible and ok.score == 3.0 and ok.shortfall == 0 and ok.strength_floor == 0.5
    bad = score(0.5, 0.49, **kw)                          # 0.01 below the floor: infeasible, however small its drift
    assert not bad.feasible and bad.shortfall == pytest.approx(0.01)
    assert bad.score == pytest.approx(INFEASIBLE_OFFSET + 0.5 + 10.0)
    worst_feasible = score(100.0, 0.5, **kw)                # the largest possible drift, exactly at the floor
    assert worst_feasible.feasible and worst_feasible.score < bad.score
    assert score(0.5, 0.3, **kw).score > bad.score         # a weaker edit ranks later
    # The floor is absolute: a non-editing baseline (strength 0.01) is infeasible like any trial, and
    # there is no reference to pass in.
    assert not score(0.0, 0.01, **kw).feasible
    diverged = score(math.nan, 0.7, **kw)
    assert diverged.score == math.inf and not diverged.feasible
