"""Face tools around the presets for `hfld invert`: the face detector and the held-out identity
descriptors that measure how well an inversion kept the person.

Both come from the starter zoo (`hfld zoo fetch starter` puts @vladmandic/human 3.3.6's graph models in
$HFLD_CACHE/starter/human/models/), whatever the preset: BlazeFace finds faces for every preset, and
human's faceres descriptor is a face network that no preset uses in its inversion loss (the starter
uses face-api's descriptor, the FFHQ presets VGG19). The tiny preset has a random stand-in descriptor.
"""

from __future__ import annotations

import torch
from torch import nn

from pipeline.core.config import ConfigError
from pipeline.core.seeding import Stream, derive_seed
from pipeline.presets.registry import PRESETS, ModelConfig

HELDOUT_IDENTITIES = ("faceres", "tiny")


class FaceResDescriptor(nn.Module):
    """Identity role of human's faceres: image [B, 3, H, W] in [-1, 1] -> descriptor [B, 1024]."""

    def __init__(self, faceres: nn.Module):
        super().__init__()
        self.faceres = faceres

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.faceres.descriptor(image)


class TinyDescriptor(nn.Module):
    """Random stand-in descriptor for the tiny preset: image -> [B, 32] (its numbers mean nothing)."""

    def __init__(self):
        super().__init__()
        from models.tiny import TinyPerceptual
        self.features = TinyPerceptual(width=32)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.features(image)[-1].mean(dim=(2, 3))


def human_models(cfg: ModelConfig):
    """Folder of human's model files in the verified starter zoo cache (a short error says how to fetch)."""
    from models.load.human import human_models_dir
    from pipeline.presets.starter import zoo_root
    return human_models_dir(zoo_root(cfg, "starter").parent)


def build_face_detector(cfg: ModelConfig, min_score: float) -> nn.Module:
    """BlazeFace (human 3.3.6) from the starter zoo, frozen; `min_score` is the face threshold."""
    from models.load.human import load_human_blazeface
    return load_human_blazeface(human_models(cfg), max_faces=1, min_score=min_score)


def build_heldout_identity(cfg: ModelConfig, name: str = "") -> tuple[str, nn.Module]:
    """(name, descriptor) of the preset's held-out identity descriptor (or the one `name`d), frozen, eval."""
    name = name or PRESETS[cfg.preset].heldout_identity
    if name == "faceres":
        from models.load.human import load_human_faceres
        model: nn.Module = FaceResDescriptor(load_human_faceres(human_models(cfg)))
    elif name == "tiny":
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(derive_seed(1, Stream.INIT, 0))
            model = TinyDescriptor()
    else:
        raise ConfigError(f"heldout identity: {name!r} is not one of {list(HELDOUT_IDENTITIES)} (preset "
                          f"{cfg.preset!r} names {PRESETS[cfg.preset].heldout_identity!r})")
    model.eval().requires_grad_(False)
    return name, model
