"""@vladmandic/human 3.3.6 ports (facemesh, faceres, blazeface): parity with TF.js, strict loading,
role wrappers on generated starter faces.

Reference outputs: tests/fixtures/human/human_reference.npz, made by tools/reference/human/
(make_inputs.py -> human_reference.mjs with @tensorflow/tfjs 4.22.0's pure-JS CPU backend and
tf.loadGraphModel on the pinned model files -> to_npz.py). Inputs are stored as small uint8 sources and
upsampled by an integer nearest-neighbour factor, exactly as the Node script does.

The model files come from the zoo cache (`hfld zoo fetch starter`); without them the tests fail and say so.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from models.errors import WeightsError
from models.human_blazeface import (BLAZEFACE_INPUT_SIZE, KEYPOINT_NAMES, BlazeFaceDetector, BlazeFaceNet,
                                    blazeface_anchors, decode_blazeface, face_crop_boxes, non_max_suppression)
from models.human_common import square_crop
from models.human_facemesh import MEDIAPIPE_GROUPS, N_MESH_POINTS, FaceMeshNet, HumanFaceMesh
from models.human_faceres import FaceResNet, HumanFaceRes, expected_age, human_age
from models.load.human import (BLAZEFACE_ROLE, FACEMESH_ROLE, FACERES_ROLE, load_blazeface_net, load_facemesh_net,
                               load_faceres_net, load_human_blazeface, load_human_facemesh, load_human_faceres)

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "human" / "human_reference.npz"
MODEL_NAMES = ("facemesh", "faceres", "blazeface")
MODEL_FILES = tuple(f"{name}.{ext}" for name in MODEL_NAMES for ext in ("json", "bin"))
FACES = slice(2, 5)  # fixture images 2..4 are starter DCGAN faces (0 noise, 1 a colour pattern)
STARTER_FACE_SEED, STARTER_FACE_INDICES = 2025, (4, 11, 14)  # as tools/reference/human/make_inputs.py

# Tolerances; measured max abs differences torch (CPU, float32) vs TF.js are in the comments. They are
# at TF.js's own float32 rounding: a float64 torch run differs from TF.js by as much.
MESH_TOL_PX = 5e-4  # output_mesh, pixels of the 192 input (|values| <= 184): 0 batched, 1.2e-4 per image
POINT_TOL = 3e-6  # the same as fractions of the input: 6.6e-7
FLAG_TOL = 1e-5  # output_faceflag: 0 batched, 2e-9 per image
PROB_TOL = 1e-5  # faceres gender 1.8e-7, age distribution 1.9e-7
DESCRIPTOR_TOL = 1e-4  # faceres descriptor (|values| <= 3.6): 3.0e-6
BLAZEFACE_REL_TOL = 4e-6  # raw heads, relative to the largest |value| (up to 1273): <= 1.5e-6


@pytest.fixture(scope="module")
def models_dir(starter_cache: Path) -> Path:
    folder = starter_cache / "human" / "models"
    missing = [name for name in MODEL_FILES if not (folder / name).is_file()]
    if missing:
        pytest.fail(f"human model files {missing} not in {folder}: run `hfld zoo fetch starter` (the zoo now "
                    "includes @vladmandic/human 3.3.6) or set HFLD_CACHE")
    return folder


@pytest.fixture(scope="module")
def reference() -> dict[str, np.ndarray]:
    with np.load(FIXTURE, allow_pickle=False) as data:
        return {k: data[k] for k in data.files}


@pytest.fixture(scope="module")
def facemesh(models_dir) -> HumanFaceMesh:
    return load_human_facemesh(models_dir)


@pytest.fixture(scope="module")
def faceres(models_dir) -> HumanFaceRes:
    return load_human_faceres(models_dir)


@pytest.fixture(scope="module")
def blazeface(models_dir) -> BlazeFaceDetector:
    return load_human_blazeface(models_dir)


@pytest.fixture(scope="module")
def starter_faces(starter_cache) -> torch.Tensor:
    """Three frontal faces of the starter DCGAN [3, 3, 64, 64] in [-1, 1] (the fixture's faces, unquantised)."""
    from models.load.dcgan import load_dcgan_generator
    generator = load_dcgan_generator(starter_cache / "gan_face_generate" / "weights.tar")
    z = torch.randn(16, 100, generator=torch.Generator().manual_seed(STARTER_FACE_SEED))
    with torch.no_grad():
        return generator(z)[list(STARTER_FACE_INDICES)]


def upsample(src: np.ndarray, factor: int) -> torch.Tensor:
    """uint8 [N, h, w, 3] -> float [N, 3, h*factor, w*factor] in 0..255 (nearest neighbour, as the Node script)."""
    big = np.repeat(np.repeat(src, factor, axis=1), factor, axis=2)
    return torch.from_numpy(big).float().permute(0, 3, 1, 2)


def max_abs(a: torch.Tensor, b: np.ndarray) -> float:
    return float(np.abs(a.detach().double().numpy() - b).max())


def smooth_images(batch: int, height: int, width: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    coarse = torch.rand(batch, 3, 8, 8, generator=g) * 2 - 1
    return torch.nn.functional.interpolate(coarse, size=(height, width), mode="bilinear", align_corners=False)


# ---- parity with TF.js ---------------------------------------------------------------------------

def test_fixture_was_made_from_the_pinned_files():
    from pipeline.presets.zoo import STARTER
    pinned = {Path(m.dest).name: m.sha256 for a in STARTER if a.name == "human" for m in a.members}
    with np.load(FIXTURE, allow_pickle=False) as data:
        used = dict(zip(data["model_files"].tolist(), data["model_sha256"].tolist()))
        assert "tfjs=4.22.0" in data["versions"].tolist() and "backend=cpu" in data["versions"].tolist()
    assert used == pinned


def test_facemesh_net_matches_tfjs(facemesh, reference):
    x = upsample(reference["src64"], 3) / 255.0
    with torch.no_grad():
        mesh, flag, contours = facemesh.net(x)
        single = [facemesh.net(x[i:i + 1]) for i in range(x.shape[0])]
    assert mesh.shape == (5, 1404) and flag.shape == (5, 1) and contours.shape == (5, 266)
    for m, f, c in [(mesh, flag, contours)] + [tuple(torch.cat(t) for t in zip(*single))]:
        assert max_abs(m, reference["facemesh_mesh"]) < MESH_TOL_PX
        assert max_abs(m / 192, reference["facemesh_mesh"] / 192) < POINT_TOL
        assert max_abs(f[:, 0], reference["facemesh_faceflag"]) < FLAG_TOL
        assert max_abs(c, reference["facemesh_contours"]) < MESH_TOL_PX
    assert (reference["facemesh_faceflag"][FACES] > 0.99).all() and (reference["facemesh_faceflag"][:2] < 0.01).all()


def test_faceres_net_matches_tfjs(faceres, reference):
    with torch.no_grad():
        gender, age_probs, descriptor = faceres.net(upsample(reference["src56"], 4))
    assert gender.shape == (5,) and age_probs.shape == (5, 100) and descriptor.shape == (5, 1024)
    assert max_abs(gender, reference["faceres_gender"]) < PROB_TOL
    assert max_abs(age_probs, reference["faceres_age"]) < PROB_TOL
    assert max_abs(descriptor, reference["faceres_descriptor"]) < DESCRIPTOR_TOL


def test_blazeface_net_matches_tfjs(blazeface, reference):
    x = upsample(reference["src64"], 4) / 127.5 - 1.0
    with torch.no_grad():
        heads = blazeface.net.head_outputs(x)
        raw = blazeface.net(x)
    for name in ("scores16", "boxes16", "scores8", "boxes8"):
        ref = reference[f"blazeface_{name}"]
        got = heads[name][..., 0] if name.startswith("scores") else heads[name]
        assert got.shape == ref.shape
        assert max_abs(got, ref) <= BLAZEFACE_REL_TOL * np.abs(ref).max(), name
    # decoded as human does: sigmoid scores and pixel boxes agree closely too
    ref_raw = np.concatenate([
        np.concatenate([reference["blazeface_scores16"][..., None], reference["blazeface_boxes16"]], 2),
        np.concatenate([reference["blazeface_scores8"][..., None], reference["blazeface_boxes8"]], 2)], 1)
    anchors = blazeface_anchors()
    scores, boxes, keypoints = decode_blazeface(raw, anchors)
    ref_scores, ref_boxes, ref_keypoints = decode_blazeface(torch.from_numpy(ref_raw), anchors)
    assert max_abs(scores, ref_scores.numpy()) < 1e-5
    assert max_abs(boxes, ref_boxes.numpy()) < 1e-3 and max_abs(keypoints, ref_keypoints.numpy()) < 1e-3


@pytest.mark.parametrize("key, max_out, iou, min_score", [("blazeface_nms_default", 1, 0.1, 0.2),
                                                          ("blazeface_nms_loose", 10, 0.3, 0.01)])
def test_nms_keeps_what_tfjs_keeps(blazeface, reference, key, max_out, iou, min_score):
    with torch.no_grad():
        scores, boxes, _ = decode_blazeface(blazeface.net(upsample(reference["src64"], 4) / 127.5 - 1.0),
                                            blazeface.anchors)
    for i in range(scores.shape[0]):
        expected = [int(k) for k in reference[key][i] if k >= 0]
        assert non_max_suppression(boxes[i], scores[i], max_out, iou, min_score).tolist() == expected


def test_wrappers_match_tfjs_at_native_size(models_dir, reference):
    """With no margin and native-size input nothing is resized, so the wrappers reproduce TF.js."""
    mesh_wrapper = HumanFaceMesh(load_facemesh_net(models_dir), margin=0.0)
    res_wrapper = HumanFaceRes(load_faceres_net(models_dir), margin=0.0)
    detector = BlazeFaceDetector(load_blazeface_net(models_dir))
    image192 = upsample(reference["src64"], 3) / 127.5 - 1.0
    image224 = upsample(reference["src56"], 4) / 127.5 - 1.0
    image256 = upsample(reference["src64"], 4) / 127.5 - 1.0
    with torch.no_grad():
        points = mesh_wrapper(image192)
        points3d = mesh_wrapper.points3d(image192)
        score = mesh_wrapper.face_score(image192)
        probs = res_wrapper(image224)
        age = res_wrapper.age(image224)
        descriptor = res_wrapper.descriptor(image224)
        found = detector.detect(image256)
    ref_mesh = reference["facemesh_mesh"].reshape(5, N_MESH_POINTS, 3) / 192
    assert points.shape == (5, N_MESH_POINTS, 2)
    assert max_abs(points, ref_mesh[..., :2]) < POINT_TOL and max_abs(points3d, ref_mesh) < POINT_TOL
    assert max_abs(score, reference["facemesh_faceflag"]) < FLAG_TOL
    ref_age = (reference["faceres_age"] * np.arange(100)).sum(1)
    assert max_abs(age, ref_age) < 1e-3  # years
    assert max_abs(probs[:, 0], reference["faceres_gender"]) < PROB_TOL
    assert max_abs(probs[:, 1], 1 / (1 + np.exp(-(30.0 - ref_age) / 5.0))) < PROB_TOL
    assert max_abs(descriptor, reference["faceres_descriptor"]) < DESCRIPTOR_TOL
    _, ref_boxes, _ = decode_blazeface(torch.from_numpy(np.concatenate([
        np.concatenate([reference["blazeface_scores16"][..., None], reference["blazeface_boxes16"]], 2),
        np.concatenate([reference["blazeface_scores8"][..., None], reference["blazeface_boxes8"]], 2)], 1)),
        blazeface_anchors())
    for i, faces in enumerate(found):
        kept = [int(k) for k in reference["blazeface_nms_default"][i] if k >= 0]
        assert len(faces) == len(kept)
        if kept:
            assert max_abs(faces.boxes, ref_boxes[i, kept].numpy()) < 1e-3


# ---- strict loading ------------------------------------------------------------------------------

@pytest.mark.parametrize("loader, role, name", [(load_human_facemesh, FACEMESH_ROLE, "facemesh"),
                                                (load_human_faceres, FACERES_ROLE, "faceres"),
                                                (load_human_blazeface, BLAZEFACE_ROLE, "blazeface")])
def test_missing_files_name_the_role_path_and_fix(tmp_path, models_dir, loader, role, name):
    with pytest.raises(WeightsError) as err:
        loader(tmp_path)
    message = str(err.value)
    assert role in message and str(tmp_path / f"{name}.json") in message and "hfld zoo fetch starter" in message
    shutil.copy(models_dir / f"{name}.json", tmp_path)  # the model.json without its weight shard
    with pytest.raises(WeightsError, match=rf"{role.replace('(', '[(]').replace(')', '[)]')}.*{name}\.bin"):
        loader(tmp_path)


def _copy_model(models_dir: Path, tmp_path: Path, name: str) -> dict:
    shutil.copy(models_dir / f"{name}.bin", tmp_path)
    return json.loads((models_dir / f"{name}.json").read_text())


def test_renamed_tensor_is_missing_and_unexpected(tmp_path, models_dir):
    model = _copy_model(models_dir, tmp_path, "facemesh")
    old = "StatefulPartitionedCall/model_1/p_re_lu_3/Neg"
    for spec in model["weightsManifest"][0]["weights"]:
        if spec["name"] == old:
            spec["name"] = "p_re_lu_3/alpha"
    (tmp_path / "facemesh.json").write_text(json.dumps(model))
    with pytest.raises(WeightsError) as err:
        load_human_facemesh(tmp_path)
    message = str(err.value)
    assert FACEMESH_ROLE in message and str(tmp_path / "facemesh.json") in message
    assert f"missing graph weights: {old}" in message and "unexpected graph weights: p_re_lu_3/alpha" in message


def test_wrong_shape_is_refused(tmp_path, models_dir):
    """Same byte count, transposed kernel layout: the strict state-dict check names the parameter."""
    model = _copy_model(models_dir, tmp_path, "blazeface")
    for spec in model["weightsManifest"][0]["weights"]:
        if spec["name"] == "unknown":
            assert spec["shape"] == [5, 5, 3, 24]
            spec["shape"] = [5, 5, 24, 3]
    (tmp_path / "blazeface.json").write_text(json.dumps(model))
    with pytest.raises(WeightsError, match=r"face detector \(human blazeface\).*stem\.weight \[3, 24, 5, 5\] "
                                           r"!= expected \[24, 3, 5, 5\]"):
        load_human_blazeface(tmp_path)


def test_changed_graph_wiring_is_refused(tmp_path, models_dir):
    """A depthwise conv whose stride differs from the port's is caught from the GraphDef."""
    model = _copy_model(models_dir, tmp_path, "faceres")
    for node in model["modelTopology"]["node"]:
        if node["name"] == "conv_dw_2/depthwise":
            node["attr"]["strides"]["list"]["i"] = ["1", "1", "1", "1"]
    (tmp_path / "faceres.json").write_text(json.dumps(model))
    with pytest.raises(WeightsError, match=r"graph wiring differs: conv_dw_2/depthwise_kernel feeds "
                                           r"DepthwiseConv2dNative strides \[1, 1, 1, 1\]"):
        load_human_faceres(tmp_path)


def test_wrong_model_file_is_refused(tmp_path, models_dir):
    """faceres's files under the facemesh name: nothing matches, and the error says so."""
    model = _copy_model(models_dir, tmp_path, "faceres")
    model["weightsManifest"][0]["paths"] = ["facemesh.bin"]
    shutil.move(tmp_path / "faceres.bin", tmp_path / "facemesh.bin")
    (tmp_path / "facemesh.json").write_text(json.dumps(model))
    with pytest.raises(WeightsError, match=r"landmark judge \(human facemesh\).*does not fit.*missing graph weights"
                                           r".*unexpected graph weights.*graph input is 224x224"):
        load_human_facemesh(tmp_path)


def test_manifests_list_only_the_fetched_shards(models_dir):
    for name in MODEL_NAMES:
        model = json.loads((models_dir / f"{name}.json").read_text())
        assert model["format"] == "graph-model"
        assert [g["paths"] for g in model["weightsManifest"]] == [[f"{name}.bin"]]


def test_zoo_pins_exactly_these_files():
    from pipeline.presets.zoo import STARTER
    (human,) = [a for a in STARTER if a.name == "human"]
    assert (human.registry, human.spec) == ("npm", "@vladmandic/human@3.3.6")
    assert human.archive == "vladmandic-human-3.3.6.tgz"
    assert [(m.source, m.dest) for m in human.members] == [
        (f"package/models/{f}", f"starter/human/models/{f}") for f in MODEL_FILES]
    assert human.licence == "MIT"


# ---- role wrappers on generated starter faces ----------------------------------------------------

def test_facemesh_points_on_starter_faces_are_anatomical(facemesh, starter_faces):
    with torch.no_grad():
        points = facemesh(starter_faces)
        score = facemesh.face_score(starter_faces)
    assert points.shape == (3, N_MESH_POINTS, 2) and facemesh.n_points == N_MESH_POINTS
    assert (score > 0.9).all()
    assert ((points > 0) & (points < 1)).all()  # every point inside the image
    centre = {name: points[:, idx].mean(dim=1) for name, idx in facemesh.groups.items()}
    eyes_y = (centre["right_eye"][:, 1] + centre["left_eye"][:, 1]) / 2
    assert (centre["right_brow"][:, 1] < centre["right_eye"][:, 1]).all()
    assert (centre["left_brow"][:, 1] < centre["left_eye"][:, 1]).all()
    assert (eyes_y < centre["nose"][:, 1]).all() and (centre["nose"][:, 1] < centre["outer_mouth"][:, 1]).all()
    assert (centre["right_eye"][:, 0] < centre["left_eye"][:, 0]).all()  # subject's right eye on image left
    iod = (centre["right_eye"] - centre["left_eye"]).norm(dim=1)
    assert ((iod > 0.2) & (iod < 0.5)).all()  # measured 0.30 median on starter faces


def test_blazeface_finds_one_face_around_the_face(models_dir, facemesh, starter_faces):
    strict = load_human_blazeface(models_dir, max_faces=10, min_score=0.5)
    with torch.no_grad():
        found = strict.detect(starter_faces)
        points = facemesh(starter_faces) * 64
    assert [len(f) for f in found] == [1, 1, 1]
    for faces, mesh in zip(found, points):
        (x1, y1, x2, y2), kp = faces.boxes[0].tolist(), faces.keypoints[0]
        assert faces.scores[0] > 0.5 and faces.boxes.shape == (1, 4) and kp.shape == (6, 2)
        assert 0.5 * 64 < x2 - x1 < 1.1 * 64 and 0.5 * 64 < y2 - y1 < 1.1 * 64
        for group in ("right_eye", "left_eye", "nose", "outer_mouth"):
            cx, cy = mesh[MEDIAPIPE_GROUPS[group]].mean(dim=0).tolist()
            assert x1 < cx < x2 and y1 < cy < y2, group
        name = {n: kp[KEYPOINT_NAMES.index(n)] for n in KEYPOINT_NAMES}
        assert name["right_eye"][0] < name["left_eye"][0] and name["right_ear"][0] < name["left_ear"][0]
        assert max(name["right_eye"][1], name["left_eye"][1]) < name["mouth"][1]


def test_blazeface_maps_back_to_non_square_and_scaled_images(blazeface, starter_faces):
    """Boxes come back in the input image's pixels: a 64x48 strip is padded to the square the net sees,
    and a 2x larger image gives 2x larger coordinates."""
    strip = starter_faces[:1, :, 8:56, :]  # [1, 3, 48, 64]
    padded = torch.nn.functional.pad(strip, (0, 0, 8, 8), value=-1.0)  # the square the detector builds
    larger = torch.nn.functional.interpolate(starter_faces[:1], scale_factor=2, mode="bilinear", align_corners=False)
    with torch.no_grad():
        (from_strip,), (from_square,) = blazeface.detect(strip), blazeface.detect(padded)
        (small,), (large,) = blazeface.detect(starter_faces[:1]), blazeface.detect(larger)
    shift = torch.tensor([0.0, 8.0])
    assert len(from_strip) == len(from_square) == 1
    assert torch.allclose(from_strip.boxes[0] + shift.repeat(2), from_square.boxes[0], atol=1e-4)
    assert torch.allclose(from_strip.keypoints[0] + shift, from_square.keypoints[0], atol=1e-4)
    assert len(large) == len(small) == 1
    # the two 256x256 net inputs differ slightly (64->256 vs 64->128->256 bilinear): measured 2.3 px of 128
    assert (large.boxes[0] - 2 * small.boxes[0]).abs().max() < 4.0


def test_faceres_wrapper_names_range_and_age(faceres, starter_faces):
    assert tuple(faceres.names) == ("Male", "Young")
    with torch.no_grad():
        probs = faceres(starter_faces)
        male, age_probs, descriptor = faceres.predict(starter_faces)
        age = faceres.age(starter_faces)
    assert probs.shape == (3, 2) and ((probs >= 0) & (probs <= 1)).all()
    assert torch.allclose(probs[:, 0], male) and descriptor.shape == (3, 1024)
    assert torch.allclose(probs[:, 1], torch.sigmoid((30.0 - age) / 5.0))
    assert torch.allclose(age_probs.sum(1), torch.ones(3)) and ((age > 5) & (age < 80)).all()
    assert faceres.human_age(starter_faces).shape == (3,)


def test_young_is_decreasing_in_age():
    wrapper = HumanFaceRes(FaceResNet())
    young = wrapper.young_probability(torch.linspace(0.0, 90.0, 91))
    assert (young[1:] < young[:-1]).all() and young[30].item() == pytest.approx(0.5)
    with pytest.raises(ValueError, match="temperature"):
        HumanFaceRes(FaceResNet(), temperature=0.0)


def test_human_age_rule():
    probs = torch.zeros(3, 100)
    probs[0, [29, 30, 31]] = torch.tensor([0.2, 0.7, 0.1])  # 30 - 10 * 0.2 = 28
    probs[1, [29, 30, 31]] = torch.tensor([0.1, 0.6, 0.3])  # 30 + 10 * 0.3 = 33
    probs[2, [0, 1]] = torch.tensor([0.9, 0.1])  # index 0: JS undefined > x is false -> 0 + 10 * 0.1 = 1
    assert human_age(probs).tolist() == pytest.approx([28.0, 33.0, 1.0])
    assert expected_age(probs).tolist() == pytest.approx([29.9, 30.2, 0.1])


def test_gradients_reach_the_input_image(facemesh, faceres):
    image = smooth_images(2, 64, 64, seed=1).requires_grad_(True)
    facemesh(image).sum().backward()
    assert image.grad is not None and torch.isfinite(image.grad).all() and image.grad.abs().sum() > 0
    image = smooth_images(2, 64, 64, seed=2).requires_grad_(True)
    faceres(image).sum().backward()
    assert image.grad is not None and torch.isfinite(image.grad).all() and image.grad.abs().sum() > 0


def test_loaded_models_are_frozen_and_in_eval_mode(facemesh, faceres, blazeface):
    for wrapper in (facemesh, faceres, blazeface):
        assert not wrapper.training and not any(p.requires_grad for p in wrapper.parameters())


def test_mesh_groups_fit_the_pipeline():
    from pipeline.core.metrics import EYE_GROUP_PAIRS
    wrapper = HumanFaceMesh(FaceMeshNet())
    assert EYE_GROUP_PAIRS[0] == ("right_eye", "left_eye") and set(EYE_GROUP_PAIRS[0]) <= set(wrapper.groups)
    assert {"right_brow", "left_brow", "nose", "outer_mouth", "inner_mouth", "face_oval"} <= set(wrapper.groups)
    sizes = {name: len(idx) for name, idx in wrapper.groups.items()}
    assert sizes == {"face_oval": 36, "right_brow": 10, "left_brow": 10, "nose": 24, "right_eye": 16,
                     "left_eye": 16, "outer_mouth": 20, "inner_mouth": 20}
    everything = [i for idx in wrapper.groups.values() for i in idx]
    assert len(everything) == len(set(everything)) and max(everything) < N_MESH_POINTS  # disjoint, in range
    assert sorted(wrapper.coarse_groups["eyes"]) == sorted(wrapper.groups["right_eye"] + wrapper.groups["left_eye"])
    assert 33 in wrapper.groups["right_eye"] and 263 in wrapper.groups["left_eye"]  # outer eye corners


def test_wrappers_accept_non_square_images_and_margins(facemesh, faceres):
    image = smooth_images(2, 48, 80)
    with torch.no_grad():
        assert facemesh(image).shape == (2, N_MESH_POINTS, 2) and faceres(image).shape == (2, 2)
    with pytest.raises(ValueError, match=r"\[B, 3, H, W\]"):
        facemesh(torch.zeros(2, 1, 64, 64))
    with pytest.raises(ValueError, match="margin"):
        HumanFaceMesh(FaceMeshNet(), margin=2.0)


def test_square_crop_geometry_round_trips():
    image = torch.zeros(1, 3, 30, 50)
    square, crop = square_crop(image, margin=0.1)
    assert square.shape == (1, 3, 60, 60) and (crop.left, crop.top, crop.side) == (5, 15, 60)
    # the square's pixel centre (q * side) maps to the image pixel q * side - offset
    q = torch.tensor([[[0.5, 0.5], [5 / 60, 15 / 60]]])
    assert crop.to_image(q, 30, 50).tolist() == [[[0.5, 0.5], [0.0, 0.0]]]
    same, identity = square_crop(torch.zeros(1, 3, 8, 8))
    assert same.shape == (1, 3, 8, 8) and (identity.left, identity.top, identity.side) == (0, 0, 8)


# ---- detector pieces -----------------------------------------------------------------------------

def test_anchors_follow_humans_layout():
    anchors = blazeface_anchors()
    assert anchors.shape == (896, 2)
    assert anchors[:4].tolist() == [[8, 8], [8, 8], [24, 8], [24, 8]]  # 16x16 grid, 2 per cell, x fastest
    assert anchors[511].tolist() == [248, 248] and anchors[512:518].tolist() == [[16, 16]] * 6
    assert anchors[-1].tolist() == [240, 240]


def test_decode_and_crop_box():
    raw = torch.zeros(1, 896, 17)
    raw[0, 0, :5] = torch.tensor([0.0, 2.0, -1.0, 20.0, 10.0])  # logit 0, centre (8+2, 8-1), 20 x 10
    raw[0, 0, 5:7] = torch.tensor([1.0, 1.0])
    scores, boxes, keypoints = decode_blazeface(raw, blazeface_anchors())
    assert scores[0, 0].item() == 0.5 and boxes[0, 0].tolist() == [0.0, 2.0, 20.0, 12.0]
    assert keypoints[0, 0, 0].tolist() == [9.0, 9.0]
    assert face_crop_boxes(boxes[0, 0], 1.4).tolist() == pytest.approx([-4.0, -7.0, 24.0, 21.0])


def test_nms_rules():
    boxes = torch.tensor([[0, 0, 10, 10], [1, 1, 11, 11], [20, 20, 30, 30], [0, 0, 10, 10.0]])
    scores = torch.tensor([0.9, 0.8, 0.7, 0.9])
    assert non_max_suppression(boxes, scores, 10, 0.5, 0.0).tolist() == [0, 2]  # tie keeps the lower index
    assert non_max_suppression(boxes, scores, 10, 0.7, 0.0).tolist() == [0, 1, 2]  # IoU(0, 1) = 0.68
    assert non_max_suppression(boxes, scores, 1, 0.5, 0.0).tolist() == [0]
    assert non_max_suppression(boxes, scores, 10, 0.5, 0.9).tolist() == []  # score must exceed the threshold


def test_pure_nets_run_with_random_weights():
    with torch.no_grad():
        mesh, flag, contours = FaceMeshNet()(torch.rand(2, 3, 192, 192))
        gender, age_probs, descriptor = FaceResNet()(torch.rand(2, 3, 224, 224) * 255)
        raw = BlazeFaceNet()(torch.rand(2, 3, BLAZEFACE_INPUT_SIZE, BLAZEFACE_INPUT_SIZE) * 2 - 1)
    assert mesh.shape == (2, 1404) and flag.shape == (2, 1) and contours.shape == (2, 266)
    assert gender.shape == (2,) and age_probs.shape == (2, 100) and descriptor.shape == (2, 1024)
    assert raw.shape == (2, 896, 17)
    with pytest.raises(ValueError, match="192"):
        FaceMeshNet()(torch.rand(1, 3, 64, 64))
