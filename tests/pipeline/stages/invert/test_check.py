"""The held-out check's numbers (pipeline/stages/invert/check.py) from an invert output table."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.core.config import ConfigError, from_dict
from pipeline.stages.invert import InvertCheckConfig
from pipeline.stages.invert.check import agreement_by_margin, check_metrics, latent_errors, margin_line, top2_margins


def test_latent_errors_are_in_units_of_w_std():
    truth = np.zeros((2, 3, 4))
    truth[:, :, 0] = 2.0
    estimate = truth.copy()
    estimate[1, :, 1] = 1.0                       # face 1 off by 1 in every layer
    err, start = latent_errors(estimate, truth, np.zeros(4), w_std=2.0)
    np.testing.assert_allclose(err, [0.0, 0.5])
    np.testing.assert_allclose(start, [1.0, 1.0])


def test_check_metrics_count_found_faces_targets_and_recovery():
    import pyarrow as pa
    truth = np.random.default_rng(0).normal(size=(3, 2, 4)).astype(np.float32)
    good = truth[0].reshape(-1).tolist()
    table = pa.table({
        "source_index": [0, 1, 2], "status": ["ok", "no_face", "ok"],
        "wplus": [good, None, (truth[2] + 0.1).reshape(-1).tolist()],
        "identity_cosine": [0.95, None, 0.85], "landmark_error": [0.01, None, 0.03],
        "emotion_agreement": [True, None, True], "emotion_label": ["happy", "sad", "sad"],
        "reconstruction_emotion_label": ["happy", None, "angry"], "psnr": [30.0, None, 25.0],
        "source_emotion": [[0.7, 0.2, 0.1], None, [0.4, 0.35, 0.25]]})
    m = check_metrics(table, truth, np.zeros(4, np.float32), 1.0, 2, 4)
    assert m["faces"] == 3 and m["found"] == 2 and m["no_face"] == 1
    assert m["identity_cosine_ge_0.9"] == 0.5 and not m["targets"]["identity_met"]
    assert m["emotion_agreement_aligned"] == 1.0 and m["targets"]["emotion_met"]
    assert m["emotion_agreement_generated"] == 0.5
    assert m["emotion_agreement_by_input_margin"]["median_margin_agreed"] == pytest.approx(0.275)   # 0.5, 0.05
    assert m["emotion_agreement_by_input_margin"]["median_margin_changed"] is None
    assert m["latent_error"]["n"] == 2 and m["latent_error"]["p10"] == pytest.approx(0.02, abs=1e-6)
    assert m["latent_error"]["mean"] == pytest.approx(0.1, abs=1e-6)            # |0.1 * ones(4)| / 1 / 2 faces


def test_agreement_by_the_judges_margin_on_the_input():
    """Near-ties on the input (a small top-2 margin) are where the label may change: the extra line
    says how agreement grows with the margin and where the changed labels sit."""
    probs = np.array([[0.5, 0.48, 0.02], [0.9, 0.05, 0.05], [0.6, 0.3, 0.1], [0.34, 0.33, 0.33]])
    margins = top2_margins(probs)
    np.testing.assert_allclose(margins, [0.02, 0.85, 0.3, 0.01])
    by = agreement_by_margin(margins, np.array([False, True, True, False]))
    assert [(b["min_margin"], b["faces"], b["agreement"]) for b in by["by_min_margin"]] == \
        [(0.05, 2, 1.0), (0.1, 2, 1.0), (0.2, 2, 1.0)]
    assert by["median_margin_changed"] == pytest.approx(0.015) and by["median_margin_agreed"] == pytest.approx(0.575)
    line = margin_line(by)
    assert "0.015 where the label changed" in line and "100.0% of 2 with margin >= 0.05" in line
    assert margin_line(agreement_by_margin(margins, np.ones(4, bool))) == "- (extra) no face changed its emotion label"
    assert ", - where it held" in margin_line(agreement_by_margin(margins, np.zeros(4, bool)))


def test_the_check_makes_its_own_input():
    with pytest.raises(ConfigError, match="invert.input.path"):
        from_dict(InvertCheckConfig, {"invert": {"input": {"path": "faces/"}}})
    assert from_dict(InvertCheckConfig, {"n_faces": 3}).n_faces == 3
