"""The held-out check's numbers (pipeline/stages/invert/check.py) from an invert output table."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.core.config import ConfigError, from_dict
from pipeline.stages.invert import InvertCheckConfig
from pipeline.stages.invert.check import check_metrics, latent_errors


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
        "reconstruction_emotion_label": ["happy", None, "angry"], "psnr": [30.0, None, 25.0]})
    m = check_metrics(table, truth, np.zeros(4, np.float32), 1.0, 2, 4)
    assert m["faces"] == 3 and m["found"] == 2 and m["no_face"] == 1
    assert m["identity_cosine_ge_0.9"] == 0.5 and not m["targets"]["identity_met"]
    assert m["emotion_agreement_aligned"] == 1.0 and m["targets"]["emotion_met"]
    assert m["emotion_agreement_generated"] == 0.5
    assert m["latent_error"]["n"] == 2 and m["latent_error"]["p10"] == pytest.approx(0.02, abs=1e-6)
    assert m["latent_error"]["mean"] == pytest.approx(0.1, abs=1e-6)            # |0.1 * ones(4)| / 1 / 2 faces


def test_the_check_makes_its_own_input():
    with pytest.raises(ConfigError, match="invert.input.path"):
        from_dict(InvertCheckConfig, {"invert": {"input": {"path": "faces/"}}})
    assert from_dict(InvertCheckConfig, {"n_faces": 3}).n_faces == 3
