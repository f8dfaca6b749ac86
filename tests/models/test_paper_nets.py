"""The paper's networks (models/paper_nets.py) and their loaders (models/load/paper_nets.py).

No real weights exist offline, so every test writes randomly initialised state dicts of the
reference architectures (torchvision's resnet50/resnet18/vgg19, deepface's own EmotionModel) in the
accepted file formats and checks strict loading, shapes, ranges, preprocessing and gradients.
"""

from __future__ import annotations

import socket
import time

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import torchvision

from models.errors import WeightsError
from models.load.paper_nets import (deepface_weights_path, load_celeba_regressor, load_deepface_emotion,
                                    load_landmark106, load_vgg19)
from models.paper_nets import (CELEBA_ATTRIBUTES, DEEPFACE_EMOTION_LABELS, IMAGENET_MEAN, IMAGENET_STD,
                               LANDMARK106_LAYOUTS, VGG19_CONV_INDEX, CelebAAttributeRegressor, DeepFaceEmotion,
                               Landmark106, VGGPerceptual)

IMAGENET_MEAN_T = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
IMAGENET_STD_T = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)


def images(batch=2, size=64, seed=0, height=None):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(batch, 3, height or size, size, generator=g) * 2 - 1


def bilinear(x, size):
    return F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=False)


# ------------------------------------------------------------------------------------------------
# reference state dicts, written once per module
# ------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def resnet50_40():
    """torchvision resnet50 with a 40-way head, scaled so the raw outputs straddle [0, 1] (random
    features are ~10 in size: fc weights / 200, bias 0.5), one certainly above 1 and one below 0."""
    torch.manual_seed(1)
    net = torchvision.models.resnet50(weights=None, num_classes=40).eval()
    with torch.no_grad():
        net.fc.weight.div_(200.0)
        net.fc.bias.fill_(0.5)
        net.fc.bias[0] = 5.0    # certainly above 1 -> clamped to 1
        net.fc.bias[1] = -5.0   # certainly below 0 -> clamped to 0
    return net


@pytest.fixture(scope="module")
def resnet18_212():
    torch.manual_seed(2)
    return torchvision.models.resnet18(weights=None, num_classes=212).eval()


@pytest.fixture(scope="module")
def vgg19_state():
    """A torchvision-vgg19-shaped file content: random features.* plus (small stand-in) classifier.* keys."""
    torch.manual_seed(3)
    features = torchvision.models.vgg.make_layers(torchvision.models.vgg.cfgs["E"])
    state = {f"features.{k}": v for k, v in features.state_dict().items()}
    state.update({"classifier.0.weight": torch.zeros(4, 8), "classifier.0.bias": torch.zeros(4),
                  "classifier.6.weight": torch.zeros(1000, 4), "classifier.6.bias": torch.zeros(1000)})
    return state


@pytest.fixture(scope="module")
def files(tmp_path_factory, resnet50_40, resnet18_212, vgg19_state):
    d = tmp_path_factory.mktemp("paper_nets")
    sd50 = resnet50_40.state_dict()
    optimizer_state = {"state": {}, "param_groups": [{"lr": 1e-4, "betas": (0.5, 0.99), "params": [0, 1]}]}
    paths = {
        "regressor_eye": d / "eye_regressor.model",
        "regressor_plain": d / "regressor_plain.pt",
        "regressor_dp": d / "regressor_dataparallel.pt",
        "landmarks_plain": d / "landmarks.pth",
        "landmarks_wrapped": d / "landmarks_wrapped.pth",
        "vgg": d / "vgg19-random.pth",
    }
    torch.save({"model": sd50, "optm": optimizer_state}, paths["regressor_eye"])  # Enjoy Your Editing format
    torch.save(sd50, paths["regressor_plain"])
    torch.save({f"module.{k}": v for k, v in sd50.items()}, paths["regressor_dp"])
    torch.save(resnet18_212.state_dict(), paths["landmarks_plain"])
    torch.save({"state_dict": {f"module.{k}": v for k, v in resnet18_212.state_dict().items()}, "epoch": 3},
               paths["landmarks_wrapped"])
    torch.save(vgg19_state, paths["vgg"])
    return paths


# ------------------------------------------------------------------------------------------------
# attribute regressor
# ------------------------------------------------------------------------------------------------

def test_celeba_names_are_the_40_list_attr_celeba_columns():
    assert len(CELEBA_ATTRIBUTES) == len(set(CELEBA_ATTRIBUTES)) == 40
    assert CELEBA_ATTRIBUTES[0] == "5_o_Clock_Shadow" and CELEBA_ATTRIBUTES[-1] == "Young"
    assert CELEBA_ATTRIBUTES.index("Male") == 20 and CELEBA_ATTRIBUTES.index("Smiling") == 31


@pytest.mark.parametrize("fmt", ["regressor_eye", "regressor_plain", "regressor_dp"])
def test_regressor_formats_load_strictly(files, resnet50_40, fmt):
    model = load_celeba_regressor(files[fmt])
    assert model.names == CELEBA_ATTRIBUTES
    assert not model.training and not any(p.requires_grad for p in model.parameters())
    loaded, expected = model.net.state_dict(), resnet50_40.state_dict()
    assert loaded.keys() == expected.keys()
    assert all(torch.equal(loaded[k], expected[k]) for k in expected)


def test_regressor_default_preprocessing_is_enjoy_your_editings(files, resnet50_40):
    model = load_celeba_regressor(files["regressor_eye"])
    x = images(2, 128)
    with torch.no_grad():
        probs = model(x)
        raw = resnet50_40(bilinear(x, 256))  # Enjoy Your Editing: 256 px, the [-1, 1] image as is
    assert probs.shape == (2, 40)
    assert probs.min() >= 0 and probs.max() <= 1
    torch.testing.assert_close(probs, raw.clamp(0, 1), rtol=0, atol=1e-5)
    assert (probs[:, 0] == 1).all() and (probs[:, 1] == 0).all()  # clamped, not squashed
    inside = (raw > 0.05) & (raw < 0.95)
    assert inside.sum() > 10
    torch.testing.assert_close(probs[inside], raw[inside], rtol=0, atol=1e-5)


def test_regressor_sigmoid_and_imagenet_options(files, resnet50_40):
    model = load_celeba_regressor(files["regressor_plain"], input_size=224, pixel_range="imagenet", output="sigmoid")
    x = images(2, 96)
    with torch.no_grad():
        expected = torch.sigmoid(resnet50_40(((bilinear(x, 224) + 1) / 2 - IMAGENET_MEAN_T) / IMAGENET_STD_T))
        probs = model(x)
    torch.testing.assert_close(probs, expected, rtol=0, atol=1e-5)
    assert ((probs > 0) & (probs < 1)).all()


def test_regressor_rejects_unknown_options():
    with pytest.raises(ValueError, match="output must be one of"):
        CelebAAttributeRegressor(output="softmax")
    with pytest.raises(ValueError, match="pixel_range must be one of"):
        CelebAAttributeRegressor(pixel_range="0-255")


def test_regressor_missing_file_names_role_path_and_how_to_obtain(tmp_path):
    missing = tmp_path / "nowhere" / "regressor.model"
    with pytest.raises(WeightsError) as err:
        load_celeba_regressor(missing)
    msg = str(err.value)
    assert "attribute regressor (ResNet50-40 CelebA)" in msg and str(missing) in msg
    assert "Enjoy Your Editing" in msg and "model.weights.regressor=<path>" in msg and "{'model'" in msg


def test_regressor_missing_and_unexpected_keys_are_listed(tmp_path, resnet50_40):
    sd = dict(resnet50_40.state_dict())
    del sd["layer4.2.bn3.running_var"]
    sd["head.extra"] = torch.zeros(3)
    path = tmp_path / "bad.pt"
    torch.save({"model": sd}, path)
    with pytest.raises(WeightsError, match=r"attribute regressor \(ResNet50-40 CelebA\): .*bad\.pt does not fit the "
                       r"model: missing keys: layer4\.2\.bn3\.running_var; unexpected keys: head\.extra"):
        load_celeba_regressor(path)


def test_regressor_head_shape_mismatch_is_reported(tmp_path):
    sd = torchvision.models.resnet50(weights=None, num_classes=10).state_dict()
    path = tmp_path / "ten.pt"
    torch.save(sd, path)
    with pytest.raises(WeightsError, match=r"shape mismatch: fc\.weight \[10, 2048\] != expected \[40, 2048\]"):
        load_celeba_regressor(path)


@pytest.mark.parametrize("content,found", [([1, 2, 3], "list"), ({"epoch": 3, "optm": {}}, "epoch"),
                                           ({"model": {"a": 1}}, "model")])
def test_not_a_state_dict_is_refused(tmp_path, content, found):
    path = tmp_path / "odd.pt"
    torch.save(content, path)
    with pytest.raises(WeightsError, match=rf"holds no state dict of tensors.*found .*{found}"):
        load_celeba_regressor(path)


# ------------------------------------------------------------------------------------------------
# landmarks
# ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("layout", sorted(LANDMARK106_LAYOUTS))
def test_landmark_groups_cover_each_of_the_106_points_once(layout):
    model = Landmark106(layout=layout)
    for groups in (model.groups, model.coarse_groups):
        every = sorted(i for idx in groups.values() for i in idx)
        assert every == list(range(106)), f"{layout}: not a partition of 0..105"
    assert set(model.coarse_groups) == {"jaw", "brows", "nose", "eyes", "mouth"}
    assert model.groups["contour"] == list(range(33)) and len(model.coarse_groups["mouth"]) == 20
    assert len(model.coarse_groups["nose"]) == 15 and len(model.coarse_groups["eyes"]) == 20


def test_jd_layout_landmarks_of_known_index():
    groups = Landmark106(layout="jd").groups
    # JD order: eye centres 104/105, nose tip 54, mouth corners 84 and 90.
    assert 104 in groups["right_eye"] and 105 in groups["left_eye"] and 54 in groups["nose"]
    assert {84, 90} <= set(groups["outer_mouth"])


@pytest.mark.parametrize("fmt", ["landmarks_plain", "landmarks_wrapped"])
def test_landmarks_load_and_match_torchvision(files, resnet18_212, fmt):
    model = load_landmark106(files[fmt])
    x = images(2, 80)
    with torch.no_grad():
        points = model(x)
        raw = resnet18_212(bilinear((x + 1) / 2, 112))
    assert points.shape == (2, 106, 2) and model.n_points == 106
    torch.testing.assert_close(points, raw.view(2, 106, 2), rtol=0, atol=1e-5)  # x0, y0, x1, y1, ...


def test_landmarks_signed_head_bgr_and_byte_options(files, resnet18_212):
    model = load_landmark106(files["landmarks_plain"], layout="insightface", input_size=192, pixel_range="byte",
                             channel_order="bgr", head_range="signed")
    x = images(1, 64)
    with torch.no_grad():
        raw = resnet18_212((bilinear(x, 192).flip(1) + 1) * 127.5).view(1, 106, 2)
        torch.testing.assert_close(model(x), (raw + 1) / 2, rtol=0, atol=1e-5)
    assert "eye_a" in model.groups and model.input_size == 192


def test_landmarks_missing_file_and_wrong_head(tmp_path):
    with pytest.raises(WeightsError, match=r"landmarks \(ResNet18-106\): weight file not found: .*lm\.pth.*"
                       r"fc 512->212.*model\.weights\.landmarks=<path>"):
        load_landmark106(tmp_path / "lm.pth")
    path = tmp_path / "lm68.pth"
    torch.save(torchvision.models.resnet18(weights=None, num_classes=136).state_dict(), path)
    with pytest.raises(WeightsError, match=r"fc\.weight \[136, 512\] != expected \[212, 512\]"):
        load_landmark106(path)


# ------------------------------------------------------------------------------------------------
# perceptual
# ------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def torchvision_vgg19_features(vgg19_state):
    """torchvision's own vgg19().features (the full model, built with weights=None) with the file's weights."""
    vgg = torchvision.models.vgg19(weights=None)
    features = vgg.features.eval()
    features.load_state_dict({k[len("features."):]: v for k, v in vgg19_state.items() if k.startswith("features.")})
    return features


def run_torchvision_features(features, x, upto):
    """Manual pass through torchvision's features; a copy of each output (its ReLUs are in-place)."""
    outputs = []
    for index in range(upto + 1):
        x = features[index](x)
        outputs.append(x.clone())
    return outputs


def test_vgg_layer_names_map_to_torchvision_indices():
    assert VGG19_CONV_INDEX["conv1_1"] == 0 and VGG19_CONV_INDEX["conv2_2"] == 7
    assert VGG19_CONV_INDEX["conv3_1"] == 10 and VGG19_CONV_INDEX["conv5_4"] == 34
    features = torchvision.models.vgg.make_layers(torchvision.models.vgg.cfgs["E"])
    assert all(isinstance(features[i], torch.nn.Conv2d) for i in VGG19_CONV_INDEX.values())
    assert sum(isinstance(m, torch.nn.Conv2d) for m in features) == len(VGG19_CONV_INDEX) == 16


@pytest.mark.parametrize("layers", [("conv1_1", "conv1_2", "conv2_1", "conv2_2"), ("conv3_1", "relu2_2", "conv5_4")])
def test_vgg_returns_pre_relu_features_of_chosen_layers(files, torchvision_vgg19_features, layers):
    model = load_vgg19(files["vgg"], layers=layers)
    x = images(2, 32)
    with torch.no_grad():
        got = model(x)
        ref_all = run_torchvision_features(torchvision_vgg19_features, ((x + 1) / 2 - IMAGENET_MEAN_T) / IMAGENET_STD_T,
                                           34)
    assert len(got) == len(layers)
    for name, feat in zip(layers, got):
        index = VGG19_CONV_INDEX["conv" + name[4:]] + 1 if name.startswith("relu") else VGG19_CONV_INDEX[name]
        torch.testing.assert_close(feat, ref_all[index], rtol=1e-4, atol=1e-4)
        if name.startswith("conv"):
            assert feat.min() < 0, f"{name} should be taken before its ReLU"
        else:
            assert feat.min() >= 0
    assert got[0].shape[0] == 2


def test_vgg_default_layers_shapes_and_reference_normalisation(files, torchvision_vgg19_features):
    x = images(1, 32)
    default = load_vgg19(files["vgg"])
    assert default.layers == ("conv1_1", "conv1_2", "conv2_1", "conv2_2")
    shapes = [tuple(f.shape) for f in default(x)]
    assert shapes == [(1, 64, 32, 32), (1, 64, 32, 32), (1, 128, 16, 16), (1, 128, 16, 16)]
    reference = load_vgg19(files["vgg"], resize=48, rescale_to_unit=False)
    with torch.no_grad():
        expected = run_torchvision_features(torchvision_vgg19_features,
                                            (bilinear(x, 48) - IMAGENET_MEAN_T) / IMAGENET_STD_T, 7)[7]
        torch.testing.assert_close(reference(x)[3], expected, rtol=1e-4, atol=1e-4)


def test_vgg_unknown_layer():
    with pytest.raises(ValueError, match="unknown VGG19 layer 'conv6_1'"):
        VGGPerceptual(layers=("conv6_1",))


def test_vgg_file_problems(tmp_path, vgg19_state):
    with pytest.raises(WeightsError, match=r"perceptual \(VGG19\): weight file not found: .*vgg19\.pth.*"
                       r"torchvision's vgg19 ImageNet weights file.*model\.weights\.perceptual=<path>"):
        load_vgg19(tmp_path / "vgg19.pth")
    bad = dict(vgg19_state)
    del bad["features.34.bias"]
    bad["extra.weight"] = torch.zeros(1)
    path = tmp_path / "bad.pth"
    torch.save(bad, path)
    with pytest.raises(WeightsError, match=r"missing keys: features\.34\.bias; unexpected keys: extra\.weight"):
        load_vgg19(path)


# ------------------------------------------------------------------------------------------------
# emotion: deepface's own model
# ------------------------------------------------------------------------------------------------

def deepface_labels():
    from deepface.models.demography.DemographyUtils import EMOTION_LABELS
    return tuple(EMOTION_LABELS)


def sharpened_emotion_state(seed: int = 0, gain: float = 2.5) -> dict[str, torch.Tensor]:
    """Random EmotionModel weights scaled so its probabilities spread out (default init gives ~1/7
    each, which any preprocessing would reproduce) and react to preprocessing mistakes."""
    from deepface.models.demography.pytorch.Emotion import EmotionModel
    torch.manual_seed(seed)
    net = EmotionModel()
    with torch.no_grad():
        for p in net.parameters():
            p.mul_(gain)
    return net.state_dict()


def test_deepface_labels_are_deepfaces():
    assert DeepFaceEmotion.labels == DEEPFACE_EMOTION_LABELS == deepface_labels()


def test_deepface_missing_weights_error_is_fast_and_offline(tmp_path, monkeypatch):
    monkeypatch.setenv("DEEPFACE_HOME", str(tmp_path))
    start = time.monotonic()
    with pytest.raises(WeightsError) as err:
        load_deepface_emotion()
    msg = str(err.value)
    assert "emotion (DeepFace)" in msg and str(tmp_path / ".deepface" / "weights") in msg
    assert "facial_expression_model_weights.pth" in msg and "$DEEPFACE_HOME/.deepface/weights/" in msg
    assert time.monotonic() - start < 5
    assert not (tmp_path / ".deepface").exists()  # nothing was created or fetched


@pytest.fixture
def no_network(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError(f"network access attempted: {args[1:] if len(args) > 1 else args}")
    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


@pytest.fixture
def deepface_home(tmp_path, monkeypatch):
    """A private DEEPFACE_HOME holding a random (sharpened) state dict of deepface's EmotionModel.

    deepface reads DEEPFACE_HOME when it looks for weights (folder_utils.get_deepface_home), not only
    at import, so a per-test value works and leaves conftest's session folder untouched. Its model
    cache is cleared around the test, and its Emotion client is kept on the CPU (same arithmetic as
    ours, no TF32) by hiding CUDA from it.
    """
    from deepface.modules import modeling
    monkeypatch.setenv("DEEPFACE_HOME", str(tmp_path))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    path = deepface_weights_path()
    path.parent.mkdir(parents=True)
    torch.save(sharpened_emotion_state(), path)

    def forget_deepface_emotion():
        getattr(modeling, "cached_models", {}).get("facial_attribute", {}).pop("Emotion", None)

    forget_deepface_emotion()
    yield tmp_path
    forget_deepface_emotion()


def test_deepface_home_argument_and_explicit_file(deepface_home):
    path = deepface_weights_path()
    assert path == deepface_home / ".deepface" / "weights" / "facial_expression_model_weights.pth"
    a = load_deepface_emotion(deepface_home=deepface_home)
    b = load_deepface_emotion(weights_file=path)
    x = images(2, 64)
    torch.testing.assert_close(a(x), b(x))
    assert type(a.net).__module__ == "deepface.models.demography.pytorch.Emotion"


def bgr_test_images() -> list[np.ndarray]:
    """uint8 BGR images: smooth colour patterns plus noise, square (generator-like) and not."""
    rng = np.random.default_rng(0)
    out = []
    for h, w in ((256, 256), (64, 64), (100, 80)):
        yy, xx = np.mgrid[0:h, 0:w] / max(h, w)
        base = np.stack([np.sin(6 * xx + c) * np.cos(4 * yy - c) for c in range(3)], axis=-1)
        out.append(np.clip((base * 0.4 + 0.5) * 255 + rng.normal(0, 20, (h, w, 3)), 0, 255).astype(np.uint8))
    return out


def to_generator_image(bgr: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(bgr[..., ::-1].copy()).permute(2, 0, 1)[None].float() / 127.5 - 1


# Both paths run the same float32 network on the CPU; their inputs differ only by float rounding in
# preprocessing (deepface: cv2 resizes in float64/float32; ours: torch float32). Measured max abs
# difference of the probabilities: 3.6e-7 (256x256), 1.8e-7 (64x64), 6e-8 (100x80). 1e-5 leaves ~30x
# headroom and is >100x below the preprocessing mistakes checked below (skipping the 224 letterbox:
# >= 1.3e-3; BGR luma weights on RGB: >= 5.8e-2).
DEEPFACE_TOLERANCE = 1e-5


def test_deepface_emotion_agrees_with_deepface_analyze(deepface_home, no_network):
    from deepface import DeepFace
    ours = load_deepface_emotion()
    rgb_swapped = DeepFaceEmotion(ours.net)
    rgb_swapped.luma = rgb_swapped.luma.flip(1)  # a plausible mistake: BGR weights on RGB input
    single_resize = DeepFaceEmotion(ours.net, analyze_size=None)
    for bgr in bgr_test_images():
        result = DeepFace.analyze(bgr, actions=["emotion"], detector_backend="skip", enforce_detection=False,
                                  silent=True)
        reference = np.array([result[0]["emotion"][label] for label in DEEPFACE_EMOTION_LABELS]) / 100.0
        assert result[0]["dominant_emotion"] == DEEPFACE_EMOTION_LABELS[int(reference.argmax())]
        x = to_generator_image(bgr)
        with torch.no_grad():
            probs = ours(x)[0].double().numpy()
            mistakes = [m(x)[0].double().numpy() for m in (rgb_swapped, single_resize)]
        assert probs.shape == (7,) and abs(probs.sum() - 1) < 1e-5
        assert reference.max() - reference.min() > 0.05, "test model too flat to tell preprocessings apart"
        np.testing.assert_allclose(probs, reference, rtol=0, atol=DEEPFACE_TOLERANCE)
        for wrong in mistakes:  # the tolerance does discriminate
            assert np.abs(wrong - reference).max() > 10 * DEEPFACE_TOLERANCE


# ------------------------------------------------------------------------------------------------
# every role: differentiable w.r.t. the image
# ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("role", ["regressor", "landmarks", "perceptual", "emotion"])
def test_gradient_reaches_the_input_image(files, deepface_home, role):
    loaders = {
        # 64 px instead of 256 keeps the ResNet50 backward pass fast on a CPU; the code path is the same
        "regressor": lambda: load_celeba_regressor(files["regressor_eye"], input_size=64),
        "landmarks": lambda: load_landmark106(files["landmarks_plain"]),
        "perceptual": lambda: load_vgg19(files["vgg"]),
        "emotion": lambda: load_deepface_emotion(),
    }
    model = loaders[role]()
    x = images(2, 48, height=40).requires_grad_(True)  # non-square: every wrapper resizes itself
    out = model(x)
    total = sum(o.square().sum() for o in out) if isinstance(out, list) else out.square().sum()
    total.backward()
    assert x.grad is not None and torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    assert x.grad[0].abs().sum() > 0 and x.grad[1].abs().sum() > 0


# ------------------------------------------------------------------------------------------------
# presets ffhq256 / ffhq1024 builder (pipeline/presets/paper.py)
# ------------------------------------------------------------------------------------------------

def test_paper_bundle_builds_from_user_files(files, deepface_home, stylegan2_fixtures):
    from pipeline.presets.paper import PAPER_ATTRIBUTES, build_paper_bundle
    generator = stylegan2_fixtures / "rosinality_small64.pt"
    weights = {"generator": str(generator), "regressor": str(files["regressor_eye"]),
               "landmarks": str(files["landmarks_plain"]), "perceptual": str(files["vgg"])}
    bundle = build_paper_bundle(weights, resolution=64, preset="ffhq-test")
    assert isinstance(bundle.regressor, CelebAAttributeRegressor) and isinstance(bundle.landmarks, Landmark106)
    assert isinstance(bundle.perceptual, VGGPerceptual) and isinstance(bundle.emotion, DeepFaceEmotion)
    assert set(PAPER_ATTRIBUTES) <= set(bundle.regressor.names)
    assert bundle.default_attributes == tuple(CELEBA_ATTRIBUTES)
    assert bundle.generator_id.startswith("sha256:") and bundle.generator.resolution == 64
    with torch.no_grad():
        wplus = bundle.generator.broadcast(bundle.generator.mapping(torch.randn(1, bundle.generator.w_dim)))
        image = bundle.generator.synthesis(wplus)
        assert bundle.regressor(image).shape == (1, 40) and bundle.landmarks(image).shape == (1, 106, 2)
        assert bundle.emotion(image).shape == (1, 7)
        if bundle.discriminator is not None:
            assert bundle.discriminator(image).shape == (1, 1)
        else:
            assert any("lambda3" in n for n in bundle.notes)

    with pytest.raises(WeightsError, match=r"is a 64 px generator, but the preset expects 256 px"):
        build_paper_bundle(weights, resolution=256, preset="ffhq256")


def test_paper_bundle_names_every_missing_role(tmp_path, files):
    from pipeline.presets.paper import build_paper_bundle
    with pytest.raises(WeightsError) as err:
        build_paper_bundle({"regressor": str(files["regressor_eye"])}, 256, "ffhq256")
    msg = str(err.value)
    for role in ("generator", "landmarks", "perceptual"):
        assert f"model.weights.{role}=<path>" in msg
    assert "model.weights.regressor" not in msg
    with pytest.raises(WeightsError, match=r"perceptual \(VGG19\): weight file not found: .*absent\.pth"):
        build_paper_bundle({"generator": str(files["vgg"]), "regressor": str(files["regressor_eye"]),
                            "landmarks": str(files["landmarks_plain"]), "perceptual": str(tmp_path / "absent.pth")},
                           256, "ffhq256")


def test_paper_presets_ffhq256_and_ffhq1024_are_registered():
    from pipeline.presets import PRESETS
    from pipeline.presets.paper import PAPER_ATTRIBUTE_TARGETS, PAPER_WEIGHT_ROLES
    registry = {name: p for name, p in PRESETS.items()
                if getattr(p.build, "func", p.build).__module__ == "pipeline.presets.paper"}
    assert sorted(registry) == ["ffhq1024", "ffhq256"]
    for preset in registry.values():
        assert preset.weight_roles == PAPER_WEIGHT_ROLES and preset.has_discriminator
        assert preset.default_attribute_targets == PAPER_ATTRIBUTE_TARGETS == ("Male", "Bald", "Black_Hair")
        assert set(preset.default_attributes) <= set(CELEBA_ATTRIBUTES)
        # issue 14: T has a column for every CelebA attribute (the paper's s), targets are chosen separately
        assert preset.default_attributes == tuple(CELEBA_ATTRIBUTES) and len(preset.default_attributes) == 40
