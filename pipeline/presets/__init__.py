"""Model presets: the registry, one module per preset family (each registers itself on import), the
zoo fetch step for registry-packaged weights, and the preview contact sheet.

    from pipeline.presets import PRESETS, ModelConfig, build_bundle
    bundle = build_bundle(ModelConfig(preset="starter"), "cpu")
"""

from pipeline.presets.registry import (FAST_PATHS, HELD_OUT, IN_TRAINING, IN_TUNE, PRESETS, ROLES, TRAINING_JUDGE,
                                       ModelBundle, ModelConfig, Preset, apply_fast_path, build_bundle,
                                       channels_last_convs, fast_measuring_networks, fast_path, register, tensor_hash)
from pipeline.presets import paper, starter, tiny  # noqa: F401  (each registers its presets)

__all__ = ["FAST_PATHS", "HELD_OUT", "IN_TRAINING", "IN_TUNE", "PRESETS", "ROLES", "TRAINING_JUDGE", "ModelBundle",
           "ModelConfig", "Preset", "apply_fast_path", "build_bundle", "channels_last_convs", "fast_measuring_networks", "fast_path", "register",
           "tensor_hash"]
