"""face-api age/gender and face-recognition ports: parity with TF.js, role wrappers, strict loading.

Reference outputs: tests/fixtures/faceapi/age_gender_recognition_reference.npz, made by
tools/reference/faceapi_extra_reference.mjs (TF.js 4.22.0 CPU backend, face-api 1.7.15); the inputs
are stored there too (uint8 HWC), fed at the nets' native sizes.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from models.errors import WeightsError
from models.faceapi_age_gender import (AgeGenderNet, FaceApiAgeGender, normalise_faceapi,
                                       pad_to_square_like_faceapi, same_padding)
from models.faceapi_recognition import FaceApiDescriptor, FaceRecognitionNet
from models.load.faceapi_extra import (AGE_GENDER_ROLE, RECOGNITION_ROLE, load_faceapi_age_gender,
                                       load_faceapi_recognition)

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "faceapi" / "age_gender_recognition_reference.npz"
PARITY_TOLERANCE = 1e-4
MODEL_FILES = ("age_gender_model-weights_manifest.json", "age_gender_model.bin",
               "face_recognition_model-weights_manifest.json", "face_recognition_model.bin")


@pytest.fixture(scope="module")
def model_dir(starter_cache: Path) -> Path:
    return starter_cache / "face_api" / "model"


@pytest.fixture(scope="module")
def reference() -> dict[str, np.ndarray]:
    with np.load(FIXTURE) as data:
        return {k: data[k] for k in data.files}


@pytest.fixture(scope="module")
def age_gender(model_dir: Path) -> FaceApiAgeGender:
    return load_faceapi_age_gender(model_dir)


@pytest.fixture(scope="module")
def recognition(model_dir: Path) -> FaceApiDescriptor:
    return load_faceapi_recognition(model_dir)


def nchw_pixels(images_uint8: np.ndarray) -> torch.Tensor:
    """uint8 [B,H,W,3] -> float [B,3,H,W] in 0..255."""
    return torch.from_numpy(images_uint8).float().permute(0, 3, 1, 2)


def max_abs(a: torch.Tensor, b: np.ndarray) -> float:
    return float(np.abs(a.detach().numpy() - b).max())


# ---- parity with TF.js -------------------------------------------------------------------------

def test_age_gender_net_matches_tfjs(age_gender, reference):
    with torch.no_grad():
        age, gender_logits = age_gender.net(normalise_faceapi(nchw_pixels(reference["age_gender_inputs"])))
    assert age.shape == (3,) and gender_logits.shape == (3, 2)
    assert max_abs(age, reference["age"]) < PARITY_TOLERANCE  # measured 9.5e-7 years
    assert max_abs(gender_logits, reference["gender_logits"]) < PARITY_TOLERANCE  # measured 1.2e-7
    assert max_abs(torch.softmax(gender_logits, 1), reference["gender_probs"]) < PARITY_TOLERANCE


def test_recognition_net_matches_tfjs(recognition, reference):
    with torch.no_grad():
        descriptor = recognition.net(normalise_faceapi(nchw_pixels(reference["recognition_inputs"])))
    assert descriptor.shape == (3, 128)
    assert max_abs(descriptor, reference["descriptors"]) < PARITY_TOLERANCE  # measured 2.1e-7


def test_wrappers_match_tfjs_on_native_size_images(age_gender, recognition, reference):
    """At the nets' own input sizes the wrappers do no resizing, so they must reproduce face-api."""
    ag_image = nchw_pixels(reference["age_gender_inputs"]) / 127.5 - 1.0
    rec_image = nchw_pixels(reference["recognition_inputs"]) / 127.5 - 1.0
    with torch.no_grad():
        probs = age_gender(ag_image)
        descriptor = recognition.descriptor(rec_image)
        features = recognition(rec_image)
    young = 1.0 / (1.0 + np.exp(-(30.0 - reference["age"]) / 5.0))
    assert max_abs(probs[:, 0], reference["gender_probs"][:, 0]) < PARITY_TOLERANCE  # Male = index 0
    assert max_abs(probs[:, 1], young) < PARITY_TOLERANCE
    assert max_abs(descriptor, reference["descriptors"]) < PARITY_TOLERANCE
    assert max_abs(features[-1], reference["descriptors"]) < PARITY_TOLERANCE


# ---- role wrappers -----------------------------------------------------------------------------

def smooth_images(batch: int, height: int, width: int, seed: int = 0) -> torch.Tensor:
    """Generator-like images [B,3,H,W] in [-1,1] (upsampled noise, so they look like blurry faces)."""
    g = torch.Generator().manual_seed(seed)
    coarse = torch.rand(batch, 3, 8, 8, generator=g) * 2 - 1
    return torch.nn.functional.interpolate(coarse, size=(height, width), mode="bilinear", align_corners=False)


def test_age_gender_wrapper_shapes_and_range(age_gender):
    assert tuple(age_gender.names) == ("Male", "Young")
    for h, w in [(64, 64), (80, 50)]:
        with torch.no_grad():
            probs = age_gender(smooth_images(2, h, w))
        assert probs.shape == (2, 2)
        assert torch.isfinite(probs).all() and (probs >= 0).all() and (probs <= 1).all()


def test_young_is_smooth_and_decreasing_in_age():
    wrapper = FaceApiAgeGender(AgeGenderNet(), young_age=30.0, temperature=5.0)
    ages = torch.linspace(0.0, 90.0, 91)
    young = wrapper.young_probability(ages)
    assert (young[1:] < young[:-1]).all()
    assert young[30].item() == pytest.approx(0.5)
    assert young[0].item() > 0.99 and young[-1].item() < 0.01
    with pytest.raises(ValueError, match="temperature"):
        FaceApiAgeGender(AgeGenderNet(), temperature=0.0)


def test_descriptor_wrapper_shapes(recognition):
    with torch.no_grad():
        features = recognition(smooth_images(2, 64, 64))
        descriptor = recognition.descriptor(smooth_images(2, 64, 64))
    shapes = [tuple(f.shape) for f in features]
    assert shapes == [(2, 32, 35, 35), (2, 64, 17, 17), (2, 128, 8, 8), (2, 256, 4, 4), (2, 128)]
    assert len(recognition.feature_names) == len(features)
    assert torch.equal(descriptor, features[-1])


def test_gradients_reach_the_input_image(age_gender, recognition):
    image = smooth_images(2, 64, 64, seed=1).requires_grad_(True)
    age_gender(image).sum().backward()
    assert image.grad is not None and torch.isfinite(image.grad).all() and image.grad.abs().sum() > 0

    image = smooth_images(2, 64, 64, seed=2).requires_grad_(True)
    sum(f.square().mean() for f in recognition(image)).backward()
    assert image.grad is not None and torch.isfinite(image.grad).all() and image.grad.abs().sum() > 0


def test_loaded_models_are_frozen_and_in_eval_mode(age_gender, recognition):
    for wrapper in (age_gender, recognition):
        assert not wrapper.training
        assert not any(p.requires_grad for p in wrapper.parameters())


def test_descriptor_separates_different_images_and_matches_same(recognition):
    images = smooth_images(2, 64, 64, seed=3)
    with torch.no_grad():
        d = recognition.descriptor(torch.cat([images, images[:1]]))
    assert torch.allclose(d[0], d[2], atol=1e-5)
    assert (d[0] - d[1]).norm() > 1e-3


# ---- TF 'same' padding / face-api square padding --------------------------------------------------

def test_tf_same_padding_puts_the_extra_pixel_after():
    assert same_padding(112, 3, 2) == (0, 1)
    assert same_padding(56, 3, 2) == (0, 1)
    assert same_padding(7, 3, 1) == (1, 1)
    assert same_padding(28, 1, 2) == (0, 0)


def test_pad_to_square_matches_faceapi_split():
    x = torch.ones(1, 3, 3, 6)
    padded = pad_to_square_like_faceapi(x)
    assert padded.shape == (1, 3, 6, 6)
    rows = padded[0, 0, :, 0]
    assert rows.tolist() == [0, 1, 1, 1, 0, 0]  # face-api: round(3/2)=2 after, 1 before


def test_pure_nets_accept_random_weights():
    with torch.no_grad():
        age, logits = AgeGenderNet()(torch.randn(2, 3, 112, 112))
        descriptor = FaceRecognitionNet()(torch.randn(2, 3, 150, 150))
    assert age.shape == (2,) and logits.shape == (2, 2) and descriptor.shape == (2, 128)


# ---- loading errors ----------------------------------------------------------------------------

@pytest.mark.parametrize("loader, role, model", [
    (load_faceapi_age_gender, AGE_GENDER_ROLE, "age_gender_model"),
    (load_faceapi_recognition, RECOGNITION_ROLE, "face_recognition_model"),
])
def test_missing_files_name_the_role_path_and_fix(tmp_path, loader, role, model):
    with pytest.raises(WeightsError) as err:
        loader(tmp_path)
    message = str(err.value)
    assert role in message and str(tmp_path / f"{model}-weights_manifest.json") in message
    assert "hfld zoo fetch starter" in message


def test_missing_bin_names_the_role(tmp_path, model_dir):
    shutil.copy(model_dir / "age_gender_model-weights_manifest.json", tmp_path)
    with pytest.raises(WeightsError, match=r"attribute regressor \(face-api age/gender\).*age_gender_model\.bin"):
        load_faceapi_age_gender(tmp_path)


def test_renamed_tensor_is_reported_as_missing_and_unexpected(tmp_path, model_dir):
    shutil.copy(model_dir / "age_gender_model.bin", tmp_path)
    manifest = json.loads((model_dir / "age_gender_model-weights_manifest.json").read_text())
    for spec in manifest[0]["weights"]:
        if spec["name"] == "fc/age/bias":
            spec["name"] = "fc/age/offset"
    (tmp_path / "age_gender_model-weights_manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(WeightsError) as err:
        load_faceapi_age_gender(tmp_path)
    message = str(err.value)
    assert AGE_GENDER_ROLE in message
    assert "missing TF.js weights: fc/age/bias" in message
    assert "unexpected TF.js weights: fc/age/offset" in message


def test_wrong_model_file_is_rejected(tmp_path, model_dir):
    """The recognition files under the age/gender name: nothing matches, the error says so."""
    shutil.copy(model_dir / "face_recognition_model.bin", tmp_path / "face_recognition_model.bin")
    manifest = json.loads((model_dir / "face_recognition_model-weights_manifest.json").read_text())
    manifest[0]["paths"] = ["age_gender_model.bin"]
    shutil.move(tmp_path / "face_recognition_model.bin", tmp_path / "age_gender_model.bin")
    (tmp_path / "age_gender_model-weights_manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(WeightsError, match=r"attribute regressor \(face-api age/gender\).*does not fit"):
        load_faceapi_age_gender(tmp_path)
