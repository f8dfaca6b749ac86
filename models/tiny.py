"""Tiny randomly initialised stand-ins for every role, so each stage runs on a CPU in seconds.

They honour the role contracts of docs/architecture.md (images in [-1, 1], own resizing, outputs in
the documented ranges) but have learned nothing: results obtained with them mean nothing.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from models.precision import float32_forward

EMOTION_LABELS = ("angry", "disgust", "fear", "happy", "sad", "surprise", "neutral")


def _trunk(width: int, size: int) -> nn.Sequential:
    """image [B, 3, size, size] -> features [B, width, size/4, size/4]."""
    return nn.Sequential(nn.Conv2d(3, width, 3, stride=2, padding=1), nn.LeakyReLU(0.2),
                         nn.Conv2d(width, width, 3, stride=2, padding=1), nn.LeakyReLU(0.2))


class _TinyBase(nn.Module):
    def __init__(self, width: int, size: int):
        super().__init__()
        self.size = size
        self.trunk = _trunk(width, size)

    def features(self, image: torch.Tensor) -> torch.Tensor:
        assert image.ndim == 4 and image.shape[1] == 3, f"image must be [B, 3, H, W], got {list(image.shape)}"
        x = F.interpolate(image, size=(self.size, self.size), mode="bilinear", align_corners=False)
        return self.trunk(x).mean(dim=(2, 3))


class TinyRegressor(_TinyBase):
    """AttributeRegressor: image -> probs [B, len(names)] in [0, 1]."""

    def __init__(self, names: Sequence[str], width: int = 8, size: int = 32):
        super().__init__(width, size)
        self.names = tuple(names)
        self.head = nn.Linear(width, len(self.names))

    def forward(self, image):
        return torch.sigmoid(self.head(self.features(image)))


class TinyLandmarks(_TinyBase):
    """LandmarkModel: image -> points [B, P, 2] in [0, 1], with named groups of point indices."""

    def __init__(self, groups: dict[str, Sequence[int]], width: int = 8, size: int = 32):
        super().__init__(width, size)
        self.groups = {k: list(v) for k, v in groups.items()}
        self.n_points = 1 + max(i for v in self.groups.values() for i in v)
        self.head = nn.Linear(width, self.n_points * 2)

    @float32_forward
    def forward(self, image):
        return torch.sigmoid(self.head(self.features(image))).view(-1, self.n_points, 2)


class TinyEmotion(_TinyBase):
    """EmotionModel: image -> probs [B, 7] (DeepFace label order)."""

    labels = EMOTION_LABELS

    def __init__(self, width: int = 8, size: int = 32):
        super().__init__(width, size)
        self.head = nn.Linear(width, len(EMOTION_LABELS))

    def forward(self, image):
        return self.expression_probs(self.expression_features(image))

    # the expression-net protocol of `hfld invert`'s expression term (as models.faceapi.FaceApiExpression)
    def expression_features(self, image):
        return self.features(image)

    def expression_probs(self, features):
        return torch.softmax(self.head(features), dim=1)


class TinyPerceptual(nn.Module):
    """PerceptualModel: image -> [features after conv1 [B, w, s/2, s/2], after conv2 [B, w, s/4, s/4]]."""

    def __init__(self, width: int = 8, size: int = 32):
        super().__init__()
        self.size = size
        self.conv1 = nn.Conv2d(3, width, 3, stride=2, padding=1)
        self.conv2 = nn.Conv2d(width, width, 3, stride=2, padding=1)

    def forward(self, image):
        x = F.interpolate(image, size=(self.size, self.size), mode="bilinear", align_corners=False)
        f1 = self.conv1(x)
        return [f1, self.conv2(F.leaky_relu(f1, 0.2))]


TINY_LANDMARK_GROUPS = {"jaw": [0, 1, 2], "brows": [3, 4], "eyes": [5, 6, 7], "nose": [8, 9], "mouth": [10, 11]}
# The tiny held-out landmark judge names its eyes like MediaPipe's mesh, so drift is inter-ocular normalised.
TINY_JUDGE_LANDMARK_GROUPS = {"right_eye": [0, 1], "left_eye": [2, 3], "outer_mouth": [4, 5, 6]}
