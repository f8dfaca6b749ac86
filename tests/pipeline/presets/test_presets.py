"""The starter presets: real offline networks wired to the role contracts (`starter`, the shipped
StyleGAN2, and `dcgan64`, its DCGAN teacher)."""

import json

import pytest
import torch

from models.errors import WeightsError
from pipeline.core.config import ConfigError
from pipeline.presets import PRESETS, ModelConfig, build_bundle
from pipeline.presets.preview import contact_sheet, sample_faces
from pipeline.presets.starter import total_kimg


@pytest.fixture(scope="module")
def starter(starter_cache):
    return build_bundle(ModelConfig(preset="starter", cache_dir=str(starter_cache.parent)), "cpu")


@pytest.fixture(scope="module")
def dcgan64(starter_cache):
    return build_bundle(ModelConfig(preset="dcgan64", cache_dir=str(starter_cache.parent)), "cpu")


def test_starter_roles(starter):
    from pipeline.presets import zoo
    assert starter.discriminator is not None and starter.generator.n_latent == 10 and starter.generator.w_dim == 256
    assert list(starter.regressor.names) == ["Male", "Young"]
    assert starter.emotion.labels == ("angry", "disgust", "fear", "happy", "sad", "surprise", "neutral")
    assert "face-api-expression" in starter.judges and starter.identity is not None
    assert starter.generator_id == "sha256:" + zoo.SHIPPED["stylegan2_starter64.safetensors"]
    assert not any("lambda3" in n for n in starter.notes) and PRESETS["starter"].has_discriminator
    # the note counts the kimg of the export the shipped run started from (its card counts from 0 again)
    card = json.loads(zoo.shipped_path("stylegan2_starter64.safetensors").with_suffix(".json").read_text())
    assert any(f"for {total_kimg(card):.0f} kimg" in n for n in starter.notes), starter.notes
    assert total_kimg(card) == card["training"]["kimg"] + card["training"]["init_from"]["kimg"]
    assert PRESETS["starter"].n_latent == starter.generator.n_latent
    with torch.no_grad():
        image = starter.generator.synthesis(starter.generator.mean_latent.reshape(1, 1, -1).expand(1, 10, -1))
        assert image.shape == (1, 3, 64, 64) and starter.discriminator(image).shape == (1, 1)


def test_dcgan64_roles(dcgan64):
    assert dcgan64.discriminator is None and dcgan64.generator.n_latent == 1
    assert list(dcgan64.regressor.names) == ["Male", "Young"]
    assert dcgan64.generator_id.startswith("sha256:")
    assert any("lambda3" in n for n in dcgan64.notes)
    assert "NO discriminator" in PRESETS["dcgan64"].description


def test_shipped_starter_weights_are_pinned_and_load_strictly(tmp_path):
    """The repository's starter StyleGAN2 matches its sha256 pin; a changed byte is refused."""
    import shutil

    from models.errors import WeightsError as LoadError
    from models.load.common import file_sha256
    from models.load.stylegan2 import load_hfld_gan
    from pipeline.presets import zoo
    path = zoo.shipped_path("stylegan2_starter64.safetensors")
    assert file_sha256(path) == zoo.SHIPPED[path.name] and path.stat().st_size <= 15e6
    weights, card = load_hfld_gan(path, expected_sha256=zoo.SHIPPED[path.name])
    assert card["architecture"]["n_latent"] == 10 and weights.discriminator is not None
    # issue 15's bar for the shipped model: closer to the teacher than the teacher blurred by 1 px
    assert card["quality"]["below_blur1"] and card["fd_face"] < card["quality"]["scale"]["blur1"]
    copy = tmp_path / path.name
    shutil.copyfile(path, copy)
    shutil.copyfile(path.with_suffix(".json"), copy.with_suffix(".json"))
    data = bytearray(copy.read_bytes())
    data[-1] ^= 0xFF
    copy.write_bytes(bytes(data))
    with pytest.raises(LoadError, match="sha256"):
        load_hfld_gan(copy, expected_sha256=zoo.SHIPPED[path.name])


def test_gradients_reach_the_latent_through_every_role(starter):
    g = starter.generator
    w = torch.randn(2, g.n_latent, g.w_dim, generator=torch.Generator().manual_seed(0)).requires_grad_(True)
    image = g.synthesis(w, "const")
    outputs = {"regressor": starter.regressor(image), "landmarks": starter.landmarks(image),
               "emotion": starter.emotion(image),
               "perceptual": torch.cat([f.flatten(1) for f in starter.perceptual(image)], 1),
               "identity": starter.identity(image)}
    for name, out in outputs.items():
        # a weighted sum: a plain sum of softmax probabilities is constant and has no gradient
        weights = torch.rand(out.shape, generator=torch.Generator().manual_seed(1))
        (grad,) = torch.autograd.grad((out * weights).sum(), w, retain_graph=True)
        assert torch.isfinite(grad).all() and grad.abs().sum() > 0, name


@torch.no_grad()
def anatomical_order(bundle, images) -> torch.Tensor:
    """[B] bool: brows above eyes above nose above mouth, right eye on the image's left, jaw side to side."""
    pts = bundle.landmarks(images)
    g = bundle.landmarks.groups
    y = lambda name: pts[:, g[name], 1].mean(1)  # noqa: E731
    x = lambda name: pts[:, g[name], 0].mean(1)  # noqa: E731
    return ((y("right_brow") < y("right_eye")) & (y("left_brow") < y("left_eye")) & (y("right_eye") < y("nose"))
            & (y("nose") < y("outer_mouth")) & (x("right_eye") < x("left_eye")) & (pts[:, 0, 0] < pts[:, 16, 0])
            & ((pts > 0) & (pts < 1)).all(2).all(1))


@torch.no_grad()
def test_starter_faces_are_mostly_in_anatomical_order(starter, dcgan64):
    """The shipped StyleGAN2: the share of its faces with face-api's 68 points inside the image and in
    anatomical order (its card measured 90.5% on 10k faces; the DCGAN teacher 92%). Issue 15 asks
    for >= 95%: not met by this model, stated in its card and the README."""
    share = anatomical_order(starter, sample_faces(starter, 64, seed=3)).float().mean().item()
    teacher = anatomical_order(dcgan64, sample_faces(dcgan64, 64, seed=3)).float().mean().item()
    print(f"anatomical order: starter {share:.3f}, dcgan64 {teacher:.3f}")
    assert share >= 0.8 and teacher >= 0.8


@torch.no_grad()
def test_landmarks_of_generated_faces_are_inside_and_in_anatomical_order(dcgan64):
    starter = dcgan64
    images = sample_faces(starter, 8, seed=0)
    pts = starter.landmarks(images)
    assert pts.shape == (8, 68, 2)
    assert ((pts > 0) & (pts < 1)).float().mean() > 0.99
    groups = starter.landmarks.groups
    y = lambda name: pts[:, groups[name], 1].mean(1)  # noqa: E731
    x = lambda name: pts[:, groups[name], 0].mean(1)  # noqa: E731
    # top to bottom: brows above eyes above nose tip above mouth; jaw's lowest point is the chin
    assert (y("right_brow") < y("right_eye")).all() and (y("left_brow") < y("left_eye")).all()
    assert (y("right_eye") < y("nose")).all() and (y("nose") < y("outer_mouth")).all()
    assert (pts[:, 8, 1] > pts[:, groups["outer_mouth"], 1].max(1).values).float().mean() >= 0.75
    # image left to right: the subject's right eye (iBUG 36-41) is on the image's left
    assert (x("right_eye") < x("left_eye")).all()
    # the jaw runs from one side of the face to the other
    assert (pts[:, 0, 0] < pts[:, 16, 0]).all()


def test_contact_sheet_size(starter):
    sheet = contact_sheet(starter, n=4, tile=64, columns=2)
    assert sheet.size == (128, 2 * (64 + 18))


def test_missing_weights_say_how_to_fetch(tmp_path):
    with pytest.raises(WeightsError, match=r"starter weights are not ready.*hfld zoo fetch starter"):
        build_bundle(ModelConfig(preset="starter", cache_dir=str(tmp_path)), "cpu")


def test_unknown_preset_lists_choices():
    with pytest.raises(ConfigError, match=r"model\.preset: 'nope' is not a preset; choose one of"):
        ModelConfig(preset="nope")


def test_fast_path_setting_reaches_the_stylegan2_networks():
    from pipeline.core.config import from_dict
    default = build_bundle(ModelConfig(preset="tiny"), "cpu")
    assert default.generator.fast_path.compile and default.discriminator.fast_path.compile   # default: compiled
    assert default.generator.fast_path.devices == ("cuda",)          # the CPU keeps the reference code
    eager = build_bundle(ModelConfig(preset="tiny", fast_path="eager"), "cpu")
    assert eager.generator.fast_path is not None and not eager.generator.fast_path.compile
    off = build_bundle(ModelConfig(preset="tiny", fast_path="off"), "cpu")
    assert off.generator.fast_path is None and off.discriminator.fast_path is None
    with pytest.raises(ConfigError, match="fast_path"):
        from_dict(ModelConfig, {"preset": "tiny", "fast_path": "turbo"}, "model")


def test_starter_declares_its_held_out_judges(starter):
    """Issue 14: MediaPipe's face mesh (landmarks) and HSE faceres (Male, Young) are held-out judges,
    of other lineages than the training H and R; every network says where it sits."""
    from models.human_facemesh import HumanFaceMesh
    from models.human_faceres import HumanFaceRes
    from pipeline.presets import HELD_OUT, IN_TRAINING, IN_TUNE
    assert isinstance(starter.landmark_judges["mediapipe-facemesh"], HumanFaceMesh)
    assert isinstance(starter.attribute_judges["hse-faceres"], HumanFaceRes)
    mesh = starter.landmark_models()["mediapipe-facemesh"]
    assert mesh["in_loop"] == HELD_OUT and {"right_eye", "left_eye"} <= set(mesh["groups"])
    assert starter.landmark_models()["training"]["in_loop"] == IN_TRAINING
    assert starter.attribute_models()["hse-faceres"]["names"] == ["Male", "Young"]
    lineage = {r["role"]: r["in_loop"] for r in starter.lineage()}
    assert lineage["regressor R (regressor loss)"] == IN_TRAINING and lineage["emotion (tune objective)"] == IN_TUNE
    assert lineage["landmark judge mediapipe-facemesh"] == HELD_OUT
    assert lineage["attribute judge hse-faceres"] == HELD_OUT
    assert lineage["emotion judge face-api-expression"] == HELD_OUT
    assert lineage["identity (face descriptor)"] == IN_TRAINING      # the perceptual net F itself
    with torch.no_grad():
        images = sample_faces(starter, 2, seed=0)
        assert starter.landmark_judges["mediapipe-facemesh"](images).shape == (2, 468, 2)
        assert starter.attribute_judges["hse-faceres"](images).shape == (2, 2)


def conv_weights(net: torch.nn.Module) -> list[torch.Tensor]:
    return [m.weight for m in net.modules() if isinstance(m, torch.nn.Conv2d)]


def test_measuring_networks_get_nhwc_conv_weights_on_every_device_unless_fast_path_is_off(starter_cache):
    """build_bundle stores the judges' conv weights NHWC (oneDNN and cuDNN both run them faster,
    benchmarks/bench_cpu_judges.py); fast_path "off" keeps the reference layout; same outputs."""
    nhwc = build_bundle(ModelConfig(preset="starter", cache_dir=str(starter_cache.parent)), "cpu")
    ref = build_bundle(ModelConfig(preset="starter", cache_dir=str(starter_cache.parent), fast_path="off"), "cpu")
    nets = nhwc.measuring_networks()
    assert len(nets) == len({id(n) for n in nets}) >= 7                 # every judge once
    assert nhwc.attribute_judges["hse-faceres"] in nets and nhwc.generator not in nets
    assert not any(p.requires_grad for net in nets for p in net.parameters())   # frozen judges
    for net in nets:
        assert all(w.is_contiguous(memory_format=torch.channels_last) for w in conv_weights(net)), type(net).__name__
    # a [C, 1, k, k] or 1x1 weight is both layouts at once; the full 3x3 convolutions show the change
    assert sum(not w.is_contiguous() for net in nets for w in conv_weights(net)) >= 10
    assert all(w.is_contiguous() for net in ref.measuring_networks() for w in conv_weights(net))
    image = torch.rand(3, 3, 64, 64, generator=torch.Generator().manual_seed(0)) * 2 - 1
    for a, b in zip(nets, ref.measuring_networks()):      # outputs, and gradients to the image (T's path)
        x_a, x_b = image.clone().requires_grad_(True), image.clone().requires_grad_(True)
        out_a, out_b = a(x_a), b(x_b)
        out_a, out_b = (out_a, out_b) if torch.is_tensor(out_a) else (out_a[0], out_b[0])
        torch.testing.assert_close(out_a, out_b, rtol=1e-4, atol=1e-4, msg=type(a).__name__)
        weights = torch.randn(out_a.shape, generator=torch.Generator().manual_seed(1))
        (out_a * weights).sum().backward()
        (out_b * weights).sum().backward()
        # relative to the gradient's norm: float rounding can flip a max-pool's winner, which moves a
        # few elements' gradient (the face-api descriptor: 4e-3 of its norm)
        assert (x_a.grad - x_b.grad).norm() <= 1e-2 * x_b.grad.norm(), type(a).__name__


def test_every_nhwc_conv_of_the_judges_reads_an_nhwc_input(starter_cache):
    """cuDNN's backward copies a conv's output gradient into its *input's* layout and back (twice the
    gradient's size: VGG's conv1_1 on the NCHW image, 6 ms per step at 1024 px on the H200), so the
    judges' convs are handed NHWC inputs (registry.nhwc_input), the image-reading first convs included.
    Checked on the CPU where the layout each conv receives is the same question; once per conv
    even when the fast path is applied twice."""
    from pipeline.presets.registry import channels_last_convs, nhwc_input
    bundle = build_bundle(ModelConfig(preset="starter", cache_dir=str(starter_cache.parent)), "cpu")
    nets = bundle.measuring_networks()
    channels_last_convs("compiled", *nets)                                # again: no second hook
    seen: list[tuple[str, bool]] = []

    def record(conv, args):
        seen.append((type(conv).__name__, args[0].is_contiguous(memory_format=torch.channels_last)))

    convs = [m for net in nets for m in net.modules() if isinstance(m, torch.nn.Conv2d)
             and not m.weight.is_contiguous()]         # 1x1 and depthwise weights are both layouts: no hook
    assert all(list(m._forward_pre_hooks.values()).count(nhwc_input) == 1 for m in convs)
    handles = [m.register_forward_pre_hook(record) for m in convs]     # runs after nhwc_input
    image = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(0)) * 2 - 1
    try:
        for net in nets:
            net(image)                                                    # NCHW image in
    finally:
        for h in handles:
            h.remove()
    assert len(seen) >= 20 and all(nhwc for _, nhwc in seen), [s for s in seen if not s[1]][:3]
    off = build_bundle(ModelConfig(preset="starter", cache_dir=str(starter_cache.parent), fast_path="off"), "cpu")
    assert not any(m._forward_pre_hooks for net in off.measuring_networks() for m in net.modules()
                   if isinstance(m, torch.nn.Conv2d))


def test_the_compiled_backward_of_vgg_gets_every_conv_input_nhwc():
    """What the GPU needs (2026-12-06 H200 profile at 1024 px: conv1_1's gradient copied to NCHW and
    back, 6 ms per step): in the graph torch.compile hands its backend, every convolution_backward
    reads an NHWC input, conv1_1's (the normalised image, NCHW without the hook) included. The graph's
    own strides are checked, so no code generation is needed; Inductor passes these strides on to
    convolution_backward (with layout optimisation off, as it evidently was for VGG on the GPU: its
    saved input was NCHW; on the CPU Inductor converts it anyway)."""
    from models.paper_nets import VGGPerceptual
    from pipeline.presets.registry import channels_last_convs
    from tests.backward_graphs import recording_convolution_backwards
    rows: list = []
    backend = recording_convolution_backwards(rows)

    torch._dynamo.reset()
    vgg = VGGPerceptual().eval().requires_grad_(False)
    channels_last_convs("compiled", vgg)
    image = (torch.rand(1, 3, 16, 16, generator=torch.Generator().manual_seed(0)) * 2 - 1).requires_grad_(True)
    sum(f.float().square().sum() for f in torch.compile(vgg, backend=backend)(image)).backward()
    nhwc_inputs = [input_nhwc for _, _, _, input_nhwc in rows]
    assert len(nhwc_inputs) == 4 and all(nhwc_inputs), rows            # conv1_1 .. conv2_2
    assert image.grad is not None and image.grad.abs().sum() > 0
