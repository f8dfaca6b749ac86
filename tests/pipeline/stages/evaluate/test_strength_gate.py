"""Issue 14 on hand-made toy networks with known answers: edit strength first, the gate (not editing /
fooling R -> no claim), matched-strength calibration, Table V in the report, several seeds per arm.

The toy generator paints channel c of an 8x8 image with 0.9 tanh(w_c) (w_dim 4, one latent layer):
- the training regressor R reads Male from channels 0 and 1, the held-out attribute judge from channel 0
  only (channel 1 is R's blind spot: a T moving w_1 fools R);
- both emotion judges and both landmark models read channel 2 (the "expression").
So a baseline T that moves w_0 and w_2 edits Male AND drifts; an HFLD T that moves w_0 alone edits
Male equally (by the judge) with zero drift.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from pipeline.core.config import from_dict
from pipeline.core.directions import DirectionsFile
from pipeline.core.sampling import held_out_faces
from pipeline.core.strength import value_at_level
from pipeline.presets import ModelBundle
from pipeline.stages.evaluate import EvaluateConfig, run_evaluate

N = 24
K = 6.0   # slope of the toy attribute models


def channel_means(image: torch.Tensor) -> torch.Tensor:
    return image.mean(dim=(2, 3))                      # [B, 3]


class ToyGenerator(nn.Module):
    z_dim = w_dim = 4
    n_latent = 1
    resolution = 8

    def __init__(self):
        super().__init__()
        self.register_buffer("mean_latent", torch.zeros(4))
        self.anchor = nn.Parameter(torch.zeros(1))      # a parameter, so .device can be read

    def mapping(self, z):
        return z

    def synthesis(self, wplus, noise=None):
        w = wplus[:, 0, :3]                              # [B, 3]
        return (0.9 * torch.tanh(w))[:, :, None, None].expand(-1, -1, 8, 8)


class ToyRegressor(nn.Module):
    names = ("Male", "Young")

    def forward(self, image):
        m = channel_means(image)
        return torch.sigmoid(K * torch.stack([m[:, 0] + m[:, 1], -m[:, 2]], dim=1))


class ToyJudge(nn.Module):
    names = ("Male",)

    def forward(self, image):
        return torch.sigmoid(K * channel_means(image)[:, :1])


class ToyEmotion(nn.Module):
    labels = ("angry", "disgust", "fear", "happy", "sad", "surprise", "neutral")

    def __init__(self, gain: float):
        super().__init__()
        self.gain = gain

    def forward(self, image):
        e = channel_means(image)[:, 2]
        logits = torch.zeros(image.shape[0], 7)
        logits[:, 3], logits[:, 4] = self.gain * e, -self.gain * e
        return torch.softmax(logits, dim=1)


class ToyLandmarks(nn.Module):
    n_points = 4
    groups = {"right_eye": [0], "left_eye": [1], "mouth": [2, 3]}

    def forward(self, image):
        e = channel_means(image)[:, 2]
        base = torch.tensor([[0.3, 0.4], [0.7, 0.4], [0.45, 0.7], [0.55, 0.7]]).expand(image.shape[0], -1, -1).clone()
        base[:, 2:, 1] = base[:, 2:, 1] + 0.1 * e[:, None]
        return base


@pytest.fixture(scope="module")
def toy():
    return ModelBundle(preset="tiny", generator=ToyGenerator(), discriminator=None, regressor=ToyRegressor(),
                       landmarks=ToyLandmarks(), perceptual=nn.Identity(), emotion=ToyEmotion(3.0),
                       judges={"toy-expression": ToyEmotion(5.0)}, landmark_judges={"toy-mesh": ToyLandmarks()},
                       attribute_judges={"toy-judge": ToyJudge()}, generator_id="toy")


def T(male_column, seed=0) -> DirectionsFile:
    """A [1, 4, 2] T whose Male column is `male_column` (Young's column 0)."""
    t = torch.zeros(1, 4, 2)
    t[0, :, 0] = torch.tensor(male_column, dtype=torch.float32)
    return DirectionsFile(t, {"attributes": ["Male", "Young"], "lambdas": {"landmark": 0.0}, "sha256": f"toy{seed}{male_column}",
                              "config": {"seed": seed}})


def cfg(tmp_path, **over) -> EvaluateConfig:
    data = {"model": {"preset": "tiny"}, "attributes": ["Male"], "n_samples": N, "batch_size": 8, "device": "cpu",
            "work_dir": str(tmp_path), "trajectory_faces": 1, "trajectory_steps": 3, "bootstrap_resamples": 200,
            "tracking": {"enabled": False}, "alphas": [0.5, 1.0, 2.0, 4.0], "strength_levels": [0.3, 0.5]}
    data.update(over)
    return from_dict(EvaluateConfig, data)


def quiet(*a, **k):
    pass


ENTANGLED = [2.5, 0.0, 2.0, 0.0]      # edits Male (w0) and the expression (w2)
CLEAN = [2.5, 0.0, 0.0, 0.0]          # edits Male only
FOOLS_R = [0.0, 3.0, 0.0, 0.0]        # moves R's blind spot: R sees Male change, the judge does not
NOTHING = [0.01, 0.0, 0.0, 0.0]


def toy_strength(w0, r_male, alpha, coefficient) -> float:
    """Hand computation of the judge's strength: P(x' | t = 1) - P(x' | t = 0), where the edit
    s = alpha (t - R(x)) moves w0 by coefficient * s (the judge reads channel 0 = 0.9 tanh(w0))."""
    def p(w):
        return 1 / (1 + np.exp(-K * 0.9 * np.tanh(w)))
    high, low = w0 + coefficient * alpha * (1 - r_male), w0 + coefficient * alpha * (0 - r_male)
    return float(np.mean(p(high) - p(low)))


@pytest.fixture(scope="module")
def clean_vs_entangled(toy, tmp_path_factory):
    return run_evaluate(cfg(tmp_path_factory.mktemp("cve")), bundle=toy, baseline=T(ENTANGLED), hfld=T(CLEAN),
                        print_fn=quiet)


def test_strength_and_matched_calibration_equal_the_hand_computation(toy, clean_vs_entangled):
    res = clean_vs_entangled
    faces = held_out_faces(toy.generator, list(range(N)), seed=0)
    w = faces.wplus[:, 0].numpy().astype(np.float64)
    r_male = 1 / (1 + np.exp(-K * 0.9 * (np.tanh(w[:, 0]) + np.tanh(w[:, 1]))))
    m = res.metrics["matched"]["Male"]
    assert m["by"] == "toy-judge"                    # matched by the held-out judge, not R
    grid = m["grid"]
    assert grid == [0.0, 0.5, 1.0, 2.0, 4.0]
    by_hand = [toy_strength(w[:, 0], r_male, a, CLEAN[0]) for a in grid]
    for arm in ("baseline", "hfld"):                 # both move w0 by the same amount: same judge strength
        curve = [p["mean"] for p in m["curves"][arm]["strength"]]
        np.testing.assert_allclose(curve, by_hand, atol=1e-5)
    # Strength at alpha = 1 by the judge is the grid value; by R it includes w1 = 0 here, so R agrees.
    st = res.metrics["strength"]["Male"]
    assert st["hfld"]["by"]["toy-judge"]["mean"] == pytest.approx(by_hand[2], abs=1e-5)
    # The calibrated alpha at each level is the linear interpolation of the hand curve.
    for level in (0.3, 0.5):
        row = m["levels"][f"{level:g}"]["emotion_tv/toy-expression"]
        assert row["hfld"]["alpha"] == pytest.approx(value_at_level(by_hand, grid, level), abs=1e-4)
        assert row["baseline"]["alpha"] == pytest.approx(row["hfld"]["alpha"], abs=1e-4)


def test_matched_strength_finds_the_clean_edit_drift_free(clean_vs_entangled):
    res = clean_vs_entangled
    m = res.metrics["matched"]["Male"]
    assert m["headline"] == ["emotion_tv/toy-expression", "landmarks/toy-mesh"]     # held-out judges lead
    for level in ("0.3", "0.5"):
        for q in ("emotion_tv/toy-expression", "landmarks/toy-mesh", "emotion_tv/training", "landmarks/training"):
            row = m["levels"][level][q]
            assert row["hfld"]["value"] == 0 and row["baseline"]["value"] > 0
            assert row["comparison"]["reduction_pct"] == 100 and row["comparison"]["ci_low"] == 100
    matched = [s for s in res.statements if s.startswith("HFLD reduced total emotion drift, toy-expression")]
    assert len(matched) == 2 and all("at matched strength" in s and s.endswith("reduced at 95%.") for s in matched)
    # Strength comes first in the findings, and both arms edit.
    assert res.statements[0].startswith("Edit strength of Male")
    assert res.metrics["strength"]["Male"]["baseline"]["verdict"] == "editing"
    md = res.report_md.read_text()
    assert md.index("Edit strength of Male") < md.index("at matched strength") < md.index("fixed-target protocol t in")
    assert "drift_vs_strength_Male.png" in md and res.strength_figures["Male"].read_bytes()[:4] == b"\x89PNG"


def test_table_v_in_the_report_is_the_paper_definition(toy, clean_vs_entangled):
    """Table V = mean p(x' | must-exist) - mean p(x' | non-exist) per emotion, by hand from the toy nets."""
    res = clean_vs_entangled
    faces = held_out_faces(toy.generator, list(range(N)), seed=0)
    with torch.no_grad():
        x = toy.generator.synthesis(faces.wplus)
        r = toy.regressor(x)[:, 0]
        probs = []
        for t in (0.0, 1.0):
            s = torch.zeros(N, 2)
            s[:, 0] = t - r
            wp = faces.wplus + torch.einsum("ldn,bn->bld", T(ENTANGLED).T, s)
            probs.append(toy.judges["toy-expression"](toy.generator.synthesis(wp)).numpy())
    expected = (probs[1].mean(axis=0) - probs[0].mean(axis=0)) * 100
    got = res.metrics["attributes"]["Male"]["emotion"]["toy-expression"]["baseline"]["table_v_pp"]
    np.testing.assert_allclose([got[e]["mean"] for e in ToyEmotion.labels], expected, atol=1e-4)
    assert abs(expected[3]) > 1                       # the entangled edit really moves "happy"
    hfld = res.metrics["attributes"]["Male"]["emotion"]["toy-expression"]["hfld"]["table_v_pp"]
    assert all(hfld[e]["mean"] == pytest.approx(0, abs=1e-6) for e in ToyEmotion.labels)
    md = res.report_md.read_text()
    assert "The paper's Table V" in md and "(extra)" in md


def test_a_non_editing_T_is_reported_as_such_and_no_reduction_is_claimed(toy, tmp_path):
    """The issue's target: feed a T that does not edit; the report says so first and claims nothing."""
    res = run_evaluate(cfg(tmp_path), bundle=toy, baseline=T(ENTANGLED), hfld=T(NOTHING), print_fn=quiet)
    st = res.metrics["strength"]["Male"]
    assert st["hfld"]["verdict"] == "not editing" and st["hfld"]["by"]["training"]["mean"] < 0.05
    assert st["baseline"]["verdict"] == "editing"
    assert res.statements[0].startswith("Edit strength of Male") and "NOT EDITING" in res.statements[0]
    assert not res.metrics["gate"]["Male"]["comparable"]
    gate = next(s for s in res.statements if s.startswith("No drift reduction is stated for Male: HFLD is NOT EDITING Male"))
    assert "does not edit Male" in gate and "blind spots" not in gate
    # HFLD's drift IS lower (it barely moves the face), yet nothing claims a reduction.
    fixed = res.metrics["attributes"]["Male"]["emotion"]["toy-expression"]["comparison"]
    assert fixed["reduction_pct"] > 90
    for s in res.statements:
        assert "reduced" not in s and "did NOT reduce" not in s and "did not establish" not in s, s
    md = res.report_md.read_text()
    assert "no claim (strength gate)" in md and "reduced at 95%" not in md
    assert res.metrics["overall"]["attributes"] == []
    assert "None passes the strength gate" in md


def test_a_T_that_fools_R_is_flagged_and_claims_nothing(toy, tmp_path):
    res = run_evaluate(cfg(tmp_path), bundle=toy, baseline=T(ENTANGLED), hfld=T(FOOLS_R), print_fn=quiet)
    st = res.metrics["strength"]["Male"]["hfld"]
    assert st["by"]["training"]["mean"] >= 0.5 and st["by"]["toy-judge"]["mean"] == pytest.approx(0, abs=1e-6)
    assert st["verdict"] == "fooling R" and "FOOLING R" in res.statements[0]
    gate = next(s for s in res.statements if "HFLD is FOOLING R on Male" in s)
    assert "blind spots" in gate and "does not edit" not in gate      # the reason given fits the failure
    assert not any("reduced" in s for s in res.statements)


def test_several_seeds_per_arm_and_hierarchical_intervals(toy, tmp_path):
    base = [T([2.5, 0.0, 1.5 + 0.5 * k, 0.0], seed=k) for k in range(3)]
    hfld = [T([2.5, 0.0, 0.1 * k, 0.0], seed=k) for k in range(3)]
    res = run_evaluate(cfg(tmp_path, strength_levels=[0.5]), bundle=toy, baseline=base, hfld=hfld, print_fn=quiet)
    m = res.metrics
    assert m["seeds_per_arm"] == {"baseline": 3, "hfld": 3}
    assert [d["seed_index"] for d in m["methods"]["baseline"]["seeds"]] == [0, 1, 2]
    tv = m["attributes"]["Male"]["emotion"]["toy-expression"]["baseline"]["total_drift_pp"]
    assert tv["n_seeds"] == 3 and len(tv["per_seed"]) == 3 and tv["per_seed"][0] < tv["per_seed"][2]
    assert tv["mean"] == pytest.approx(np.mean(tv["per_seed"]))
    row = m["matched"]["Male"]["levels"]["0.5"]["emotion_tv/toy-expression"]
    assert row["comparison"]["n_seeds"] == [3, 3] and row["comparison"]["ci_low"] > 0
    assert "3 baseline and 3 HFLD T('s)" in res.report_md.read_text()
    assert not any("fewer than 3 training seeds" in w for w in m["warnings"])


def test_config_checks_and_a_list_of_T_files(toy, tmp_path):
    from pipeline.core.config import ConfigError
    from pipeline.core.directions import save_directions
    with pytest.raises(ConfigError, match="alphas.*including 1"):
        cfg(tmp_path, alphas=[0.5, 2.0])
    with pytest.raises(ConfigError, match="alphas"):
        cfg(tmp_path, alphas=[1.0, -1.0])
    with pytest.raises(ConfigError, match="strength_levels"):
        cfg(tmp_path, strength_levels=[0.0])
    with pytest.raises(ConfigError, match="baseline"):
        cfg(tmp_path, baseline=["a.safetensors", "a.safetensors"])
    with pytest.raises(ConfigError, match=r"match_by: 'nope' does not score Male"):
        run_evaluate(cfg(tmp_path, match_by="nope"), bundle=toy, baseline=T(CLEAN), hfld=T(CLEAN), print_fn=quiet)
    # A T trained on another generator is refused (its columns mean nothing in this W+).
    other = T(CLEAN)
    other = DirectionsFile(other.T, {**other.meta, "generator_id": "sha256:other", "preset": "x"})
    with pytest.raises(ConfigError, match=r"HFLD T \(seed 0\) was trained on generator sha256:other"):
        run_evaluate(cfg(tmp_path), bundle=toy, baseline=T(CLEAN), hfld=other, print_fn=quiet)
    # Files, one per seed, through the config (a YAML list) or a single path (a string, as before).
    def save(name, f):
        return save_directions(tmp_path / name, f.T, {k: v for k, v in f.meta.items() if k != "sha256"})
    paths = [save(f"b{k}.safetensors", T([2.5, 0.0, 1.0 + k, 0.0], k)) for k in range(2)]
    one = save("h.safetensors", T(CLEAN))
    c = cfg(tmp_path, baseline=[str(p) for p in paths], hfld=str(one), n_samples=4, alphas=[1.0],
            trajectory_faces=0, match_by="regressor")
    assert c.sources("baseline") == tuple(str(p) for p in paths) and c.sources("hfld") == (str(one),)
    res = run_evaluate(c, bundle=toy, print_fn=quiet)
    assert res.metrics["seeds_per_arm"] == {"baseline": 2, "hfld": 1}
    assert res.metrics["matched"]["Male"]["by"] == "training" and res.metrics["matched"]["Male"]["grid"] == [0.0, 1.0]


class WeakJudge(ToyJudge):
    """Reads R's Male channel but with a slope so small that its answers stay near 0.5 on every face."""

    def forward(self, image):
        return torch.sigmoid(0.5 * channel_means(image)[:, :1])


def test_an_insensitive_judge_leaves_an_edit_unconfirmed_and_still_fooled_R_is_caught(toy, tmp_path):
    """A judge that cannot reach its floor even between R's most and least Male natural faces cannot
    call a real edit "fooling R" (it is UNCONFIRMED); a T that moves only R's blind spot still is."""
    weak = ModelBundle(**{**toy.__dict__, "attribute_judges": {"toy-judge": WeakJudge()}})
    res = run_evaluate(cfg(tmp_path), bundle=weak, baseline=T(CLEAN), hfld=T(FOOLS_R), print_fn=quiet)
    st = res.metrics["strength"]["Male"]
    span = st["natural_span"]["toy-judge"]
    assert span["regressor"] > 0.5 and 0 < span["judge"] < 0.4
    assert st["baseline"]["verdict"] == "unconfirmed (held-out judge insensitive)"
    assert 0 < st["baseline"]["by"]["toy-judge"]["mean"] < 0.4 <= st["baseline"]["by"]["training"]["mean"]
    assert st["hfld"]["verdict"] == "fooling R"
    assert "UNCONFIRMED" in res.statements[0] and "FOOLING R" in res.statements[0]
    gate = next(s for s in res.statements if s.startswith("No drift reduction is stated for Male"))
    assert "UNCONFIRMED" in gate and "separates R's top and bottom quarter by only" in gate
    assert not any("reduced" in s for s in res.statements)
    assert "Natural span on the unedited faces" in res.report_md.read_text()
