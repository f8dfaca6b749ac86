"""Load user-supplied weights of the paper's networks into models/paper_nets.py wrappers.

Nothing here downloads anything: every file is one the user obtained and points the preset at
(`model.weights.<role>=<path>`), or, for DeepFace, the file deepface itself would use, read from
$DEEPFACE_HOME without calling deepface's downloader. Files are read with torch.load(weights_only=True)
and loaded with strict keys and shapes (models.load.common).
Every loader returns its wrapper in eval mode with frozen parameters (pretrained judges: losses
differentiate w.r.t. the image only).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Mapping, Sequence

import torch
from torch import nn

from models.errors import WeightsError
from models.load.common import load_state_strict, read_torch_file, require_file
from models.paper_nets import (CELEBA_ATTRIBUTES, DEFAULT_VGG_LAYERS, CelebAAttributeRegressor, DeepFaceEmotion,
                               Landmark106, VGGPerceptual)

REGRESSOR_ROLE = "attribute regressor (ResNet50-40 CelebA)"
REGRESSOR_HINT = ("Expected the Enjoy Your Editing release's ResNet-50 CelebA regressor checkpoint "
                  "({'model': state_dict}: torchvision resnet50 keys, fc 2048->40) or a plain state dict of that "
                  "network; download it yourself and set model.weights.regressor=<path>.")
LANDMARKS_ROLE = "landmarks (ResNet18-106)"
LANDMARKS_HINT = ("Expected a torchvision resnet18 state dict with fc 512->212 (106 points, x0 y0 x1 y1 ...), "
                  "plain or under 'model'/'state_dict'; set model.weights.landmarks=<path>.")
PERCEPTUAL_ROLE = "perceptual (VGG19)"
PERCEPTUAL_HINT = ("Expected torchvision's vgg19 ImageNet weights file (e.g. vgg19-dcbb9e9d.pth, keys features.*/"
                   "classifier.*), downloaded by you; set model.weights.perceptual=<path>.")
EMOTION_ROLE = "emotion (DeepFace)"
DEEPFACE_WEIGHTS_NAME = "facial_expression_model_weights.pth"
EMOTION_HINT = (f"Place deepface's {DEEPFACE_WEIGHTS_NAME} (its emotion model release file) under "
                "$DEEPFACE_HOME/.deepface/weights/ (DEEPFACE_HOME defaults to your home directory), or set "
                "model.weights.emotion=<path to that file>; it is not downloaded at run time.")

# Keys under which training scripts commonly wrap a state dict ("model": Enjoy Your Editing).
WRAPPER_KEYS = ("model", "state_dict")
DATA_PARALLEL_PREFIX = "module."


def _is_state_dict(obj: object) -> bool:
    return isinstance(obj, Mapping) and len(obj) > 0 and all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items())


def unwrap_state_dict(checkpoint: object, role: str, path: Path, hint: str) -> dict[str, torch.Tensor]:
    """A plain state dict, from `sd` or {"model"|"state_dict": sd, ...}; strips DataParallel's "module."."""
    state = checkpoint
    if not _is_state_dict(state) and isinstance(state, Mapping):
        state = next((state[k] for k in WRAPPER_KEYS if _is_state_dict(state.get(k))), state)
    if not _is_state_dict(state):
        found = list(checkpoint)[:5] if isinstance(checkpoint, Mapping) else type(checkpoint).__name__
        raise WeightsError(f"{role}: {path} holds no state dict of tensors (plain, or under one of "
                           f"{list(WRAPPER_KEYS)}); found {found}. {hint}")
    return {k[len(DATA_PARALLEL_PREFIX):] if k.startswith(DATA_PARALLEL_PREFIX) else k: v for k, v in state.items()}


def read_state_dict(path: str | Path, role: str, hint: str) -> tuple[Path, dict[str, torch.Tensor]]:
    path = require_file(path, role, hint)
    return path, unwrap_state_dict(read_torch_file(path, role), role, path, hint)


def _frozen(module: nn.Module) -> nn.Module:
    return module.eval().requires_grad_(False)


def _load_into(module: nn.Module, net: nn.Module, state: dict, role: str, path: Path, hint: str) -> nn.Module:
    try:
        load_state_strict(net, state, role, path)
    except WeightsError as err:
        raise WeightsError(f"{err}. {hint}") from err
    return _frozen(module)


def load_celeba_regressor(path: str | Path, names: Sequence[str] = CELEBA_ATTRIBUTES, input_size: int | None = 256,
                          pixel_range: str = "signed", output: str = "clamp") -> CelebAAttributeRegressor:
    """ResNet50-40 regressor from {"model": sd} (Enjoy Your Editing) or a plain sd (torchvision keys).

    Preprocessing arguments: see CelebAAttributeRegressor (defaults: the Enjoy Your Editing regressor).
    """
    path, state = read_state_dict(path, REGRESSOR_ROLE, REGRESSOR_HINT)
    model = CelebAAttributeRegressor(names, input_size=input_size, pixel_range=pixel_range, output=output)
    return _load_into(model, model.net, state, REGRESSOR_ROLE, path, REGRESSOR_HINT)


def load_landmark106(path: str | Path, layout: str = "jd", input_size: int | None = 112, pixel_range: str = "unit",
                     channel_order: str = "rgb", head_range: str = "unit") -> Landmark106:
    """ResNet18-212 landmark model (torchvision resnet18 keys, plain or wrapped; "module." stripped).

    The other arguments describe how the checkpoint was trained: see Landmark106.
    """
    path, state = read_state_dict(path, LANDMARKS_ROLE, LANDMARKS_HINT)
    model = Landmark106(layout=layout, input_size=input_size, pixel_range=pixel_range,
                        channel_order=channel_order, head_range=head_range)
    return _load_into(model, model.net, state, LANDMARKS_ROLE, path, LANDMARKS_HINT)


def load_vgg19(path: str | Path, layers: Sequence[str] = DEFAULT_VGG_LAYERS, resize: int | None = None,
               rescale_to_unit: bool = True) -> VGGPerceptual:
    """VGG19 perceptual features from torchvision's vgg19 state dict file.

    Only features.* are used; classifier.* keys are ignored (any shape); all other keys must match
    torchvision's vgg19 features exactly.
    """
    path, state = read_state_dict(path, PERCEPTUAL_ROLE, PERCEPTUAL_HINT)
    features = {k: v for k, v in state.items() if not k.startswith("classifier.")}
    model = VGGPerceptual(layers, resize=resize, rescale_to_unit=rescale_to_unit)
    return _load_into(model, model, features, PERCEPTUAL_ROLE, path, PERCEPTUAL_HINT)


def deepface_weights_path(deepface_home: str | Path | None = None) -> Path:
    """Where deepface keeps the emotion weights: <home>/.deepface/weights/facial_expression_model_weights.pth,
    home = `deepface_home`, else $DEEPFACE_HOME, else the user's home (deepface's own rule)."""
    home = deepface_home if deepface_home is not None else os.environ.get("DEEPFACE_HOME") or Path.home()
    return Path(home).expanduser() / ".deepface" / "weights" / DEEPFACE_WEIGHTS_NAME


def deepface_emotion_net() -> nn.Module:
    """A fresh (random) instance of deepface's own EmotionModel class [n, 1, 48, 48] -> probs [n, 7].

    Imported here, not at module import: importing deepface's model module creates no folders and
    downloads nothing (only deepface.DeepFace does the former, only its load_model the latter).
    """
    from deepface.models.demography.pytorch.Emotion import EmotionModel
    return EmotionModel()



def load_deepface_emotion(deepface_home: str | Path | None = None, weights_file: str | Path | None = None,
                          analyze_size: int | None = 224) -> DeepFaceEmotion:
    """DeepFace's own emotion network (its EmotionModel class) with the weights deepface would use.

    Reads `weights_file` if given, else deepface_weights_path(deepface_home). Never calls deepface's
    loader (which downloads a missing file): the file is read here with weights_only=True and loaded
    strictly into a fresh EmotionModel.
    """
    path = Path(weights_file) if weights_file is not None else deepface_weights_path(deepface_home)
    path, state = read_state_dict(path, EMOTION_ROLE, EMOTION_HINT)
    net = deepface_emotion_net()
    model = DeepFaceEmotion(net, analyze_size=analyze_size)
    return _load_into(model, net, state, EMOTION_ROLE, path, EMOTION_HINT)
