"""face-api.js landmark-68 and expression ports: TF.js weight reader, parity with TF.js, role wrappers.

Reference outputs: tests/fixtures/faceapi/landmarks_expression_reference.npz, made by
tools/reference/faceapi_reference.mjs (+ faceapi_reference_npz.py) with @tensorflow/tfjs 4.22.0's
CPU backend and face-api 1.7.15's own net classes.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from models.errors import WeightsError
from models.faceapi import (
    FACEAPI_EXPRESSION_LABELS,
    FaceApiExpression,
    FaceApiLandmarks68,
    FaceLandmark68Net,
    pad_same,
)
from models.load.faceapi import load_faceapi_expression, load_faceapi_landmarks68
from models.load.tfjs import read_tfjs_weights, tf_conv_to_torch, tf_depthwise_to_torch

FIXTURE = Path(__file__).parents[1] / "fixtures" / "faceapi" / "landmarks_expression_reference.npz"
PARITY_TOL = 1e-4


@pytest.fixture(scope="module")
def model_dir(starter_cache: Path) -> Path:
    return starter_cache / "face_api" / "model"


@pytest.fixture(scope="module")
def reference() -> dict[str, np.ndarray]:
    with np.load(FIXTURE, allow_pickle=False) as data:
        return {k: data[k] for k in data.files}


@pytest.fixture(scope="module")
def pixels(reference) -> torch.Tensor:
    """The TF.js inputs as [B, 3, 112, 112] float 0..255."""
    return torch.from_numpy(reference["inputs_u8"]).permute(0, 3, 1, 2).float()


@pytest.fixture(scope="module")
def landmark_net(model_dir):
    return load_faceapi_landmarks68(model_dir)


@pytest.fixture(scope="module")
def expression_net(model_dir):
    return load_faceapi_expression(model_dir)


def max_abs(a: torch.Tensor, b: np.ndarray) -> float:
    return float(np.abs(a.detach().numpy() - b).max())


# ---------------------------------------------------------------------------------------------
# 1. TF.js manifest reader
# ---------------------------------------------------------------------------------------------

def write_tiny_model(folder: Path) -> Path:
    """A manifest of 4 tensors over 2 shards, one tensor split across the shard boundary."""
    specs = [
        {"name": "q8", "shape": [2, 2], "dtype": "float32",
         "quantization": {"dtype": "uint8", "scale": 0.5, "min": -1.0}},
        {"name": "plain", "shape": [2], "dtype": "float32"},
        {"name": "ints", "shape": [3], "dtype": "int32"},
        {"name": "q16", "shape": [2], "dtype": "float32",
         "quantization": {"dtype": "uint16", "scale": 0.25, "min": 10.0}},
    ]
    data = (bytes([0, 1, 2, 255])
            + np.array([1.5, -2.25], dtype="<f4").tobytes()
            + np.array([7, -3, 100000], dtype="<i4").tobytes()
            + np.array([0, 1000], dtype="<u2").tobytes())
    (folder / "tiny-shard1of2.bin").write_bytes(data[:10])  # boundary inside "plain"
    (folder / "tiny-shard2of2.bin").write_bytes(data[10:])
    manifest = folder / "tiny-weights_manifest.json"
    manifest.write_text(json.dumps([{"paths": ["tiny-shard1of2.bin", "tiny-shard2of2.bin"], "weights": specs}]))
    return manifest


def test_reader_dequantises_and_keeps_shapes(tmp_path):
    weights = read_tfjs_weights(write_tiny_model(tmp_path))
    assert list(weights) == ["q8", "plain", "ints", "q16"]
    # q * scale + min, worked by hand: 0->-1, 1->-0.5, 2->0, 255->126.5
    assert weights["q8"].dtype == torch.float32 and weights["q8"].shape == (2, 2)
    assert weights["q8"].tolist() == [[-1.0, -0.5], [0.0, 126.5]]
    assert weights["plain"].tolist() == [1.5, -2.25]
    assert weights["ints"].dtype == torch.int32 and weights["ints"].tolist() == [7, -3, 100000]
    assert weights["q16"].tolist() == [10.0, 260.0]  # 1000 * 0.25 + 10


def test_reader_missing_shard_names_the_file(tmp_path):
    manifest = write_tiny_model(tmp_path)
    (tmp_path / "tiny-shard2of2.bin").unlink()
    with pytest.raises(WeightsError, match="tiny-shard2of2.bin"):
        read_tfjs_weights(manifest)


def test_reader_rejects_byte_count_mismatch(tmp_path):
    manifest = write_tiny_model(tmp_path)
    shard = tmp_path / "tiny-shard2of2.bin"
    shard.write_bytes(shard.read_bytes() + b"\0")
    with pytest.raises(WeightsError, match="shards hold"):
        read_tfjs_weights(manifest)
    shard.write_bytes(shard.read_bytes()[:-3])
    with pytest.raises(WeightsError, match="truncated"):
        read_tfjs_weights(manifest)


def test_reader_rejects_unknown_dtype_and_missing_manifest(tmp_path):
    manifest = write_tiny_model(tmp_path)
    groups = json.loads(manifest.read_text())
    groups[0]["weights"][0]["quantization"]["dtype"] = "int4"
    manifest.write_text(json.dumps(groups))
    with pytest.raises(WeightsError, match="int4"):
        read_tfjs_weights(manifest)
    with pytest.raises(WeightsError, match="not found"):
        read_tfjs_weights(tmp_path / "absent-weights_manifest.json")


def test_tf_layout_converters_match_tf_indexing():
    hwio = torch.randn(3, 3, 4, 5)
    assert torch.equal(tf_conv_to_torch(hwio)[4, 2, 1, 0], hwio[1, 0, 2, 4])  # [o,i,h,w] == [h,w,i,o]
    hwc1 = torch.randn(3, 3, 6, 1)
    assert tf_depthwise_to_torch(hwc1).shape == (6, 1, 3, 3)
    assert torch.equal(tf_depthwise_to_torch(hwc1)[5, 0, 2, 1], hwc1[2, 1, 5, 0])


def test_pad_same_puts_odd_pixel_bottom_right():
    x = torch.ones(1, 1, 112, 112)
    padded = pad_same(x, kernel_size=3, stride=2)  # out 56: total pad 1 -> (0 before, 1 after)
    assert padded.shape == (1, 1, 113, 113)
    assert padded[0, 0, 0, 0] == 1 and padded[0, 0, -1, -1] == 0
    assert pad_same(x, 3, 1).shape == (1, 1, 114, 114)


# ---------------------------------------------------------------------------------------------
# 2. Parity with TF.js (face-api's own classes, @tensorflow/tfjs CPU backend)
# ---------------------------------------------------------------------------------------------

def test_landmarks_match_tfjs(landmark_net, pixels, reference):
    with torch.no_grad():
        features = landmark_net.extractor(pixels)
        raw = landmark_net.fc(features)
    assert max_abs(features, reference["landmarks_features"]) < PARITY_TOL
    assert max_abs(raw, reference["landmarks_raw"]) < PARITY_TOL
    # face-api's postProcess is the identity for a square 112x112 input.
    assert max_abs(raw, reference["landmarks_forward"]) < PARITY_TOL


def test_expression_matches_tfjs(expression_net, pixels, reference):
    with torch.no_grad():
        features = expression_net.extractor(pixels)
        logits = expression_net(pixels)
    assert max_abs(features, reference["expression_features"]) < PARITY_TOL
    assert max_abs(logits, reference["expression_logits"]) < PARITY_TOL
    assert max_abs(torch.softmax(logits, dim=1), reference["expression_probs"]) < PARITY_TOL


def test_reference_was_made_from_these_weights(reference, model_dir):
    import hashlib
    for name, digest in zip(reference["model_files"], reference["model_sha256"]):
        assert hashlib.sha256((model_dir / str(name)).read_bytes()).hexdigest() == digest, name


# ---------------------------------------------------------------------------------------------
# 3. Role wrappers
# ---------------------------------------------------------------------------------------------

def as_generator_image(pixels: torch.Tensor) -> torch.Tensor:
    return pixels / 127.5 - 1.0


def test_landmark_wrapper_matches_tfjs_on_112px_images(landmark_net, pixels, reference):
    model = FaceApiLandmarks68(landmark_net)
    with torch.no_grad():
        points = model(as_generator_image(pixels))
    assert points.shape == (4, 68, 2)
    assert max_abs(points, reference["landmarks_forward"].reshape(4, 68, 2)) < PARITY_TOL


def test_landmark_wrapper_range_and_gradient(landmark_net, pixels):
    model = FaceApiLandmarks68(landmark_net)
    assert model.n_points == 68
    cartoon_face = as_generator_image(pixels[2:3])
    image = torch.nn.functional.interpolate(cartoon_face, size=(64, 64), mode="bilinear",
                                            align_corners=False).requires_grad_(True)
    points = model(image)
    assert points.shape == (1, 68, 2)
    assert points.min() > -0.05 and points.max() < 1.05
    points[..., 1].mean().backward()
    assert image.grad is not None and torch.isfinite(image.grad).all() and image.grad.abs().sum() > 0


def test_expression_wrapper_probs_and_label_order(expression_net, pixels):
    model = FaceApiExpression(expression_net)
    assert model.labels == ("angry", "disgust", "fear", "happy", "sad", "surprise", "neutral")
    image = as_generator_image(pixels).requires_grad_(True)
    probs = model(image)
    assert probs.shape == (4, 7)
    assert torch.allclose(probs.sum(dim=1), torch.ones(4), atol=1e-6)
    faceapi_probs = torch.softmax(expression_net(pixels), dim=1)
    faceapi_name = {"angry": "angry", "disgust": "disgusted", "fear": "fearful", "happy": "happy",
                    "sad": "sad", "surprise": "surprised", "neutral": "neutral"}
    for i, label in enumerate(model.labels):
        j = FACEAPI_EXPRESSION_LABELS.index(faceapi_name[label])
        assert torch.allclose(probs[:, i], faceapi_probs[:, j], atol=1e-6), label
    probs[:, model.labels.index("happy")].sum().backward()
    assert image.grad is not None and image.grad.abs().sum() > 0


def test_wrappers_reject_non_square_images():
    model = FaceApiLandmarks68(FaceLandmark68Net())
    with pytest.raises(ValueError, match="square"):
        model(torch.zeros(1, 3, 64, 48))


# ---------------------------------------------------------------------------------------------
# 4. Landmark groups
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("attribute", ["groups", "coarse_groups"])
def test_groups_partition_the_68_points(attribute):
    groups = getattr(FaceApiLandmarks68(FaceLandmark68Net()), attribute)
    indices = sorted(i for idx in groups.values() for i in idx)
    assert indices == list(range(68))


def test_fine_groups_follow_ibug():
    groups = FaceApiLandmarks68(FaceLandmark68Net()).groups
    assert groups["jaw"] == list(range(17)) and groups["right_eye"] == list(range(36, 42))
    assert groups["inner_mouth"] == list(range(60, 68))


# ---------------------------------------------------------------------------------------------
# Loader errors
# ---------------------------------------------------------------------------------------------

def test_loader_missing_files_name_role_path_and_fix(tmp_path):
    with pytest.raises(WeightsError) as err:
        load_faceapi_landmarks68(tmp_path)
    message = str(err.value)
    assert "landmarks (face-api 68)" in message and "hfld zoo fetch starter" in message
    assert str(tmp_path / "face_landmark_68_model-weights_manifest.json") in message
    with pytest.raises(WeightsError, match=r"emotion judge \(face-api expression\)"):
        load_faceapi_expression(tmp_path)


def test_loader_is_strict_about_tensor_names(tmp_path, model_dir):
    for name in ("face_expression_model-weights_manifest.json", "face_expression_model.bin"):
        shutil.copy(model_dir / name, tmp_path / name)
    manifest = tmp_path / "face_expression_model-weights_manifest.json"
    groups = json.loads(manifest.read_text())
    groups[0]["weights"][-1]["name"] = "fc/extra_bias"  # was fc/bias
    manifest.write_text(json.dumps(groups))
    with pytest.raises(WeightsError, match="fc/extra_bias"):
        load_faceapi_expression(tmp_path)
    groups[0]["weights"][-1]["name"] = "dense9/conv0/bias"
    manifest.write_text(json.dumps(groups))
    with pytest.raises(WeightsError, match="dense9"):
        load_faceapi_expression(tmp_path)
