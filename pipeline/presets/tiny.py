"""Preset `tiny`: random tiny networks for tests and smoke runs (its numbers mean nothing)."""

from __future__ import annotations

import torch

from models.tiny import TINY_LANDMARK_GROUPS, TINY_JUDGE_LANDMARK_GROUPS
from pipeline.core.seeding import Stream, derive_seed
from pipeline.presets.registry import AlignmentSpec, ModelBundle, ModelConfig, Preset, register, tensor_hash

TINY_ATTRIBUTES = ("Male", "Young", "Smiling", "Eyeglasses")
TINY_CHANNELS = {4: 16, 8: 16, 16: 8, 32: 8}
TINY_N_LATENT = 8           # a 32 px StyleGAN2: 2 * log2(32) - 2 latent layers


def build_tiny(cfg: ModelConfig) -> ModelBundle:
    from models.stylegan2 import Discriminator, Generator
    from models.tiny import TinyEmotion, TinyLandmarks, TinyPerceptual, TinyRegressor

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(derive_seed(0, Stream.INIT, 0))
        g = Generator(32, w_dim=32, n_mlp=2, channels=TINY_CHANNELS)
        g.estimate_mean_latent(n=256)
        bundle = ModelBundle(
            preset="tiny", generator=g, discriminator=Discriminator(32, channels=TINY_CHANNELS),
            regressor=TinyRegressor(TINY_ATTRIBUTES), landmarks=TinyLandmarks(TINY_LANDMARK_GROUPS),
            perceptual=TinyPerceptual(), emotion=TinyEmotion(), judges={"tiny-judge": TinyEmotion()},
            landmark_judges={"tiny-mesh": TinyLandmarks(TINY_JUDGE_LANDMARK_GROUPS)},
            attribute_judges={"tiny-attributes": TinyRegressor(("Male", "Young"))},
            notes=("tiny preset: randomly initialised networks, for tests and smoke runs; results are meaningless",),
            default_attributes=("Male", "Young"))
    bundle.generator_id = "random:" + tensor_hash(g)[:16]
    return bundle


register(Preset("tiny", "Random tiny StyleGAN2 (32 px, 8 latent layers, w_dim 32) with a discriminator, and tiny "
                "random regressor/landmark/emotion/perceptual nets. For tests and smoke runs only: "
                "its numbers mean nothing.",
                build_tiny, default_attributes=("Male", "Young"), default_attribute_targets=("Male", "Young"),
                landmark_groups=tuple(TINY_LANDMARK_GROUPS), attribute_names=TINY_ATTRIBUTES,
                n_latent=TINY_N_LATENT, tune_space="tiny",
                weight_licences=lambda cfg: {"tiny": {"source": "random initialisation (seeded)",
                                                      "licence": "none: no pretrained weights"}},
                # Its random images are not faces: inputs are taken as already framed (tests override it).
                alignment=AlignmentSpec(method="none"), heldout_identity="tiny"))
