"""Presets ffhq256 / ffhq1024: the paper's networks, from weight files the user supplies.

Roles and sources (model.weights.<role> = <path>; nothing is downloaded):
  generator      rosinality stylegan2-pytorch checkpoint (.pt) or our converted .safetensors
                 (`hfld convert` for NVIDIA stylegan2-ada pickles), at the preset's resolution
  discriminator  optional: another such file; by default the generator's own checkpoint's "d"
  regressor      ResNet50-40 CelebA regressor (Enjoy Your Editing's {"model": sd}, or a plain sd)
  landmarks      ResNet18-106 landmark model (torchvision resnet18 keys, fc 512->212, JD order)
  perceptual     torchvision's vgg19 ImageNet weights file (e.g. vgg19-dcbb9e9d.pth)
  emotion        optional: deepface's facial_expression_model_weights.pth; by default the copy in
                 $DEEPFACE_HOME/.deepface/weights/ (what DeepFace.analyze itself uses)

"""

from __future__ import annotations

from functools import partial
from pathlib import Path
from typing import Mapping

import torch
from torch import nn

from models.paper_nets import CELEBA_ATTRIBUTES, JD106_GROUPS
from models.load.common import file_sha256
from pipeline.presets.registry import AlignmentSpec, ModelBundle, Preset, register

PAPER_WEIGHT_ROLES = ("generator", "discriminator", "regressor", "landmarks", "perceptual", "emotion")
REQUIRED_ROLES = ("generator", "regressor", "landmarks", "perceptual")
# T's columns: all 40 CelebA attributes, as the paper's s (Fig. 2: s holds a desired change for every
# attribute the regressor knows, so the regressor loss also asks the others to stay where they were).
PAPER_T_ATTRIBUTES = tuple(CELEBA_ATTRIBUTES)
# Identity-level attributes (not expressions: "Smiling"/"Mouth_Slightly_Open" would fight the emotion
# preservation the method is about): PAPER_ATTRIBUTE_TARGETS are edited and evaluated by default.
PAPER_ATTRIBUTES = ("Male", "Bald", "Black_Hair", "Young", "Eyeglasses")
PAPER_ATTRIBUTE_TARGETS = ("Male", "Bald", "Black_Hair")

ROLE_NAMES = {
    "generator": "generator (StyleGAN2)",
    "regressor": "attribute regressor (ResNet50-40 CelebA)",
    "landmarks": "landmarks (ResNet18-106)",
    "perceptual": "perceptual (VGG19)",
}
ROLE_SOURCES = {
    "generator": "a rosinality stylegan2-pytorch checkpoint (.pt) or an `hfld convert`ed .safetensors",
    "regressor": "the Enjoy Your Editing release's ResNet-50 CelebA regressor checkpoint",
    "landmarks": "a ResNet18 106-point landmark state dict (fc 512->212)",
    "perceptual": "torchvision's vgg19 ImageNet weights file (vgg19-dcbb9e9d.pth), downloaded by you",
}


def checked_weight_files(weights: Mapping[str, str], preset: str) -> dict[str, Path]:
    """role -> existing file for every role the preset needs, checked before anything is loaded (a
    1024 px generator takes seconds to load; a missing VGG file should not wait for it)."""
    from models.errors import WeightsError
    from models.load.common import require_file
    from models.load import paper_nets, stylegan2

    missing = [role for role in REQUIRED_ROLES if not weights.get(role)]
    if missing:
        todo = "; ".join(f"{ROLE_NAMES[r]}: set model.weights.{r}=<path> ({ROLE_SOURCES[r]})" for r in missing)
        raise WeightsError(f"preset {preset!r} needs weight files it was not given: {todo}")
    hints = {"generator": stylegan2.HINT, "regressor": paper_nets.REGRESSOR_HINT,
             "landmarks": paper_nets.LANDMARKS_HINT, "perceptual": paper_nets.PERCEPTUAL_HINT}
    files = {role: require_file(weights[role], ROLE_NAMES[role], hints[role]) for role in REQUIRED_ROLES}
    if weights.get("discriminator"):
        files["discriminator"] = require_file(weights["discriminator"], "discriminator (StyleGAN2)",
                                              "Expected a rosinality checkpoint with 'd' or a converted "
                                              ".safetensors; set model.weights.discriminator=<path> or unset it.")
    emotion = weights.get("emotion") or paper_nets.deepface_weights_path()
    files["emotion"] = require_file(emotion, paper_nets.EMOTION_ROLE, paper_nets.EMOTION_HINT)
    return files


def build_paper_bundle(weights: Mapping[str, str], resolution: int, preset: str):
    """The ModelBundle of the paper's networks for a `resolution` px StyleGAN2 (weights: role -> path)."""
    from models.load.paper_nets import load_celeba_regressor, load_deepface_emotion, load_landmark106, load_vgg19
    from models.load.stylegan2 import load_stylegan2

    files = checked_weight_files(weights, preset)
    stylegan = load_stylegan2(files["generator"], expected_resolution=resolution)
    discriminator = stylegan.discriminator
    if "discriminator" in files:
        discriminator = load_stylegan2(files["discriminator"], expected_resolution=resolution).discriminator
    notes = []
    if discriminator is None:
        notes.append(f"{preset}: no discriminator in {files['generator'].name} (and model.weights.discriminator "
                     "not set), so lambda3 (adversarial) = 0")
    return ModelBundle(
        preset=preset, generator=stylegan.generator, discriminator=discriminator,
        regressor=load_celeba_regressor(files["regressor"]),
        landmarks=load_landmark106(files["landmarks"]),
        perceptual=load_vgg19(files["perceptual"]),
        emotion=load_deepface_emotion(weights_file=files["emotion"]), judges={}, identity=None,
        generator_id="sha256:" + file_sha256(files["generator"]),
        notes=tuple(notes), default_attributes=PAPER_T_ATTRIBUTES)


def random_paper_bundle(resolution: int = 256, seed: int = 0, emotion: bool = True) -> ModelBundle:
    """The ffhq<resolution> preset's networks with RANDOM weights (no weight file exists offline).

    Same architectures, input sizes and preprocessing as `build_paper_bundle` (StyleGAN2 config-f
    generator and discriminator, ResNet50-40 regressor, ResNet18-106 landmarks, VGG19 features,
    deepface's EmotionModel), so tests and benchmarks exercise exactly the code paths and costs of the
    real preset; the numbers mean nothing. Seeded (torch's global RNG is left as it was). On the CPU.
    emotion=False puts an identity module in the emotion judge's place (deepface not needed: for
    checks of T's training step, which never calls it).
    """
    from models.load.paper_nets import deepface_emotion_net
    from models.paper_nets import CelebAAttributeRegressor, DeepFaceEmotion, Landmark106, VGGPerceptual
    from models.stylegan2 import Discriminator, Generator
    from pipeline.presets.registry import tensor_hash

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        generator = Generator(resolution)
        generator.estimate_mean_latent(generator=torch.Generator().manual_seed(seed))
        bundle = ModelBundle(
            preset=f"ffhq{resolution}", generator=generator, discriminator=Discriminator(resolution),
            regressor=CelebAAttributeRegressor(), landmarks=Landmark106(), perceptual=VGGPerceptual(),
            emotion=DeepFaceEmotion(deepface_emotion_net()) if emotion else nn.Identity(), judges={}, identity=None,
            notes=(f"ffhq{resolution} with RANDOM weights (tests/benchmarks): results are meaningless",),
            default_attributes=PAPER_ATTRIBUTES)
    bundle.generator_id = "random:" + tensor_hash(generator)[:16]
    for module in (bundle.generator, bundle.discriminator, bundle.regressor, bundle.landmarks, bundle.perceptual,
                   bundle.emotion):
        module.eval().requires_grad_(False)
    return bundle


USER_FILE_LICENCE = "a file you supplied: hfld cannot know its terms; check them where you got it"
# What the usual sources are licensed under, recorded beside the file as a reminder (not a verification).
ROLE_LICENCE_NOTES = {
    "generator": "NVIDIA's official StyleGAN2 / StyleGAN2-ADA networks are under the NVIDIA Source Code "
                 "License-NC (non-commercial); FFHQ is CC BY-NC-SA 4.0",
    "discriminator": "NVIDIA's official StyleGAN2 / StyleGAN2-ADA networks are under the NVIDIA Source Code "
                     "License-NC (non-commercial)",
}
DEEPFACE_LICENCE = ("deepface (MIT) facial expression model; its training data (FER-2013) has its own terms: "
                    "check them before any non-research use")


def paper_weight_licences(cfg) -> dict[str, dict[str, str]]:
    """Role -> the user's file and what is (not) known about its terms."""
    from models.load.paper_nets import deepface_weights_path
    from pipeline.core.paths import absolute_text
    files = {role: absolute_text(path) for role, path in cfg.weights.items()}
    files.setdefault("emotion", str(deepface_weights_path()))
    out = {}
    for role, path in sorted(files.items()):
        licence = DEEPFACE_LICENCE if role == "emotion" else USER_FILE_LICENCE
        if role in ROLE_LICENCE_NOTES:
            licence += f" ({ROLE_LICENCE_NOTES[role]})"
        out[role] = {"source": path, "licence": licence}
    return out


def build_ffhq(cfg, resolution: int, preset: str):
    """Preset builder: cfg is a pipeline.presets.ModelConfig (only cfg.weights is used)."""
    return build_paper_bundle(cfg.weights, resolution, preset)


def paper_preset_description(resolution: int) -> str:
    return (f"The paper's setup at {resolution} px, from files you supply (nothing is downloaded): StyleGAN2 "
            f"FFHQ-{resolution} generator + its discriminator (model.weights.generator: rosinality .pt or "
            "`hfld convert`ed .safetensors), ResNet50-40 CelebA regressor (model.weights.regressor), "
            "ResNet18-106 landmarks (model.weights.landmarks), VGG19 (model.weights.perceptual: torchvision's "
            "vgg19 file), DeepFace emotion model ($DEEPFACE_HOME/.deepface/weights/"
            "facial_expression_model_weights.pth or model.weights.emotion).")


# Latent layers of the FFHQ StyleGAN2 configs (2 * log2(resolution) - 2).
PAPER_N_LATENT = {256: 14, 1024: 18}

for _resolution in (256, 1024):
    register(Preset(f"ffhq{_resolution}", paper_preset_description(_resolution),
                    partial(build_ffhq, resolution=_resolution, preset=f"ffhq{_resolution}"),
                    weight_roles=PAPER_WEIGHT_ROLES, default_attributes=PAPER_T_ATTRIBUTES,
                    default_attribute_targets=PAPER_ATTRIBUTE_TARGETS, has_discriminator=True,
                    landmark_groups=tuple(JD106_GROUPS), attribute_names=tuple(CELEBA_ATTRIBUTES),
                    n_latent=PAPER_N_LATENT[_resolution], tune_space="ffhq",
                    weight_licences=paper_weight_licences,
                    # FFHQ's own alignment rule; human's faceres measures identity (not in the loss: VGG19).
                    alignment=AlignmentSpec(method="ffhq", measured="FFHQ alignment rule (NVlabs ffhq-dataset)"),
                    heldout_identity="faceres"))
