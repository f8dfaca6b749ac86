"""Load face-api.js TF.js weights (npm `@vladmandic/face-api@1.7.15`, folder model/) into the torch ports.

`hfld zoo fetch starter` extracts the files to $HFLD_CACHE/starter/face_api/model/; every loader
here takes that folder. Mapping is strict: every torch parameter comes from exactly one named
TF.js tensor of the right shape and every tensor in the file is used, else WeightsError lists the
first few problems.

Sections: shared helpers; FaceFeatureExtractor nets (68 landmarks, expressions); below them is
the place for the other face-api nets (age/gender, face recognition).
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import torch
from torch import nn

from models.errors import WeightsError
from models.faceapi import FaceExpressionNet, FaceLandmark68Net
from models.load.common import load_state_strict, require_file
from models.load.tfjs import read_tfjs_weights, tf_conv_to_torch, tf_dense_to_torch, tf_depthwise_to_torch

FETCH_HINT = "run `hfld zoo fetch starter` (it puts face-api's model/ files under $HFLD_CACHE/starter/face_api/model/)"

Converter = Callable[[torch.Tensor], torch.Tensor]


# ---------------------------------------------------------------------------------------------
# Shared helpers
# ---------------------------------------------------------------------------------------------

def read_faceapi_model(model_dir: str | Path, model_name: str, role: str) -> tuple[Path, dict[str, torch.Tensor]]:
    """(manifest path, TF.js tensors by name) of `<model_dir>/<model_name>-weights_manifest.json`."""
    manifest = require_file(Path(model_dir) / f"{model_name}-weights_manifest.json", role, FETCH_HINT)
    try:
        return manifest, read_tfjs_weights(manifest)
    except WeightsError as err:
        raise WeightsError(f"{role}: {err}. {FETCH_HINT}") from err


def tfjs_tensor_to_torch(tf_name: str, tensor: torch.Tensor) -> tuple[str, torch.Tensor]:
    """Torch key suffix and layout for one TF.js tensor, chosen by the last part of its name.

    face-api names: .../filters (conv HWIO), .../depthwise_filter (HWC1), .../pointwise_filter
    (1x1 HWIO), .../bias, fc/weights ([in, out]); prefixes become dotted module paths.
    """
    prefix, _, leaf = tf_name.rpartition("/")
    module_path = prefix.replace("/", ".")
    layouts: dict[str, tuple[str, Converter]] = {
        "filters": ("weight", tf_conv_to_torch),
        "depthwise_filter": ("depthwise.weight", tf_depthwise_to_torch),
        "pointwise_filter": ("pointwise.weight", tf_conv_to_torch),
        "bias": ("bias", lambda t: t),
        "weights": ("weight", tf_dense_to_torch),
    }
    if leaf not in layouts:
        raise KeyError(tf_name)
    suffix, convert = layouts[leaf]
    return f"{module_path}.{suffix}", convert(tensor)


# ---------------------------------------------------------------------------------------------
# FaceFeatureExtractor nets: 68-point landmarks and 7 expressions
# ---------------------------------------------------------------------------------------------

LANDMARKS68_ROLE = "landmarks (face-api 68)"
EXPRESSION_ROLE = "emotion judge (face-api expression)"
LANDMARKS68_MODEL = "face_landmark_68_model"
EXPRESSION_MODEL = "face_expression_model"


def load_faceapi_landmarks68(model_dir: str | Path) -> FaceLandmark68Net:
    """FaceLandmark68Net from `<model_dir>/face_landmark_68_model-weights_manifest.json` + .bin."""
    return _load_feature_extractor_net(FaceLandmark68Net(), model_dir, LANDMARKS68_MODEL, LANDMARKS68_ROLE)


def load_faceapi_expression(model_dir: str | Path) -> FaceExpressionNet:
    """FaceExpressionNet from `<model_dir>/face_expression_model-weights_manifest.json` + .bin."""
    return _load_feature_extractor_net(FaceExpressionNet(), model_dir, EXPRESSION_MODEL, EXPRESSION_ROLE)


def feature_extractor_net_state_dict(tf_weights: dict[str, torch.Tensor], role: str, source: Path | str) -> dict[str, torch.Tensor]:
    """TF.js names (dense{i}/conv{j}/..., fc/...) -> state dict of FaceLandmark68Net / FaceExpressionNet.

    The extractor's tensors go under `extractor.`; `fc/*` maps onto the top-level `fc` layer.
    Unknown tensor names raise WeightsError (a strict load must use every tensor).
    """
    state: dict[str, torch.Tensor] = {}
    unknown: list[str] = []
    for tf_name, tensor in tf_weights.items():
        top = tf_name.split("/", 1)[0]
        if not (top == "fc" or (top.startswith("dense") and top[5:].isdigit())):
            unknown.append(tf_name)
            continue
        try:
            key, value = tfjs_tensor_to_torch(tf_name, tensor)
        except (KeyError, WeightsError):
            unknown.append(tf_name)
            continue
        state[key if top == "fc" else f"extractor.{key}"] = value
    if unknown:
        more = f" (+{len(unknown) - 5} more)" if len(unknown) > 5 else ""
        raise WeightsError(f"{role}: {source} has tensors this net does not use: "
                           f"{', '.join(unknown[:5])}{more}")
    return state


def _load_feature_extractor_net(net: nn.Module, model_dir: str | Path, model_name: str, role: str) -> nn.Module:
    manifest, tf_weights = read_faceapi_model(model_dir, model_name, role)
    state = feature_extractor_net_state_dict(tf_weights, role, manifest)
    load_state_strict(net, state, role, manifest)
    return net.eval()


# ---------------------------------------------------------------------------------------------
# Other face-api nets (age/gender, face recognition): loaders go below this line.
# ---------------------------------------------------------------------------------------------
