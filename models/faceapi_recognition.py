"""face-api.js FaceRecognitionNet (ResNet-34-like, 128-d face descriptor) ported to torch, and its
PerceptualModel role wrapper.

face-api (npm `@vladmandic/face-api`, src/faceRecognitionNet/*.ts), on normalised input
x = (rgb0..255 - (122.782, 117.001, 104.298)) / 255 of size 150x150:
- Every conv layer is conv (+bias) followed by a per-channel "scale" layer x * weights + biases
  (dlib's folded batch norm), optionally ReLU.
- conv32_down: 7x7 stride 2 'valid' (3->32) + ReLU -> 72x72; max pool 3x3/2 'valid' -> 35x35.
- residual blocks: relu(conv3x3 'same' + ReLU -> conv3x3 'same' + x).
- residualDown blocks: first conv 3x3 stride 2 'valid'; the shortcut is a 2x2/2 'valid' average pool
  of the input, zero-padded in channels when the block widens. When the two branches' sizes differ
  (8x8 -> 3x3 vs 4x4, then 4x4 -> 1x1 vs 2x2) face-api appends one zero row (bottom) and one zero
  column (right) to the conv branch; we do the same.
- Stages: 3 x 32 (35x35), down + 3 x 64 (17x17), down + 2 x 128 (8x8), down + 2 x 256 (4x4),
  down (2x2); global mean; fc 256 -> 128 without bias = the descriptor.

face-api compares descriptors with Euclidean distance (same person below ~0.6).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from models.faceapi_age_gender import faceapi_mean_rgb, normalise_faceapi, pad_same, to_faceapi_input

RECOGNITION_INPUT_SIZE = 150
DESCRIPTOR_SIZE = 128


class ScaleLayer(nn.Module):
    """Per-channel affine x * weight + bias (face-api's `scale` with `weights`/`biases`)."""

    def __init__(self, channels: int):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.weight.view(1, -1, 1, 1) + self.bias.view(1, -1, 1, 1)


class ConvLayer(nn.Module):
    """conv (+bias) -> scale -> optional ReLU; padding 'same' (TF style, explicit) or 'valid'."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int,
                 padding: str, relu: bool):
        super().__init__()
        assert padding in ("same", "valid"), padding
        self.padding = padding
        self.relu = relu
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size, stride=stride, padding=0)
        self.scale = ScaleLayer(out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.padding == "same":
            x = pad_same(x, self.conv.kernel_size[0], self.conv.stride[0])
        out = self.scale(self.conv(x))
        return F.relu(out) if self.relu else out


class ResidualBlock(nn.Module):
    """Two 3x3 'same' conv layers with an identity shortcut, then ReLU."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv1 = ConvLayer(channels, channels, 3, 1, "same", relu=True)
        self.conv2 = ConvLayer(channels, channels, 3, 1, "same", relu=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.conv2(self.conv1(x)) + x)


class ResidualDownBlock(nn.Module):
    """Strided 'valid' conv branch plus an average-pooled (channel zero-padded) shortcut, then ReLU."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        assert out_channels in (in_channels, 2 * in_channels), "face-api pads channels by doubling"
        self.conv1 = ConvLayer(in_channels, out_channels, 3, 2, "valid", relu=True)
        self.conv2 = ConvLayer(out_channels, out_channels, 3, 1, "same", relu=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv2(self.conv1(x))
        pooled = F.avg_pool2d(x, kernel_size=2, stride=2)
        if pooled.shape[-2:] != out.shape[-2:]:
            out = F.pad(out, (0, 1, 0, 1))  # one zero column right, one zero row bottom, as face-api
        if pooled.shape[1] != out.shape[1]:
            pooled = torch.cat([pooled, torch.zeros_like(pooled)], dim=1)
        return F.relu(out + pooled)


class FaceRecognitionNet(nn.Module):
    """face-api's FaceRecognitionNet on normalised x [B,3,150,150] -> descriptor [B,128]."""

    # Blocks whose outputs `forward_features` returns, one per resolution stage.
    FEATURE_BLOCKS = ("conv32_3", "conv64_3", "conv128_2", "conv256_2")

    def __init__(self):
        super().__init__()
        self.conv32_down = ConvLayer(3, 32, 7, 2, "valid", relu=True)
        self.conv32_1 = ResidualBlock(32)
        self.conv32_2 = ResidualBlock(32)
        self.conv32_3 = ResidualBlock(32)
        self.conv64_down = ResidualDownBlock(32, 64)
        self.conv64_1 = ResidualBlock(64)
        self.conv64_2 = ResidualBlock(64)
        self.conv64_3 = ResidualBlock(64)
        self.conv128_down = ResidualDownBlock(64, 128)
        self.conv128_1 = ResidualBlock(128)
        self.conv128_2 = ResidualBlock(128)
        self.conv256_down = ResidualDownBlock(128, 256)
        self.conv256_1 = ResidualBlock(256)
        self.conv256_2 = ResidualBlock(256)
        self.conv256_down_out = ResidualDownBlock(256, 256)
        self.fc = nn.Linear(256, DESCRIPTOR_SIZE, bias=False)

    def _blocks(self) -> list[tuple[str, nn.Module]]:
        return [(name, module) for name, module in self.named_children() if name not in ("conv32_down", "fc")]

    def forward_features(self, x: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor]:
        """x [B,3,150,150] -> ([conv32_3 [B,32,35,35], conv64_3 [B,64,17,17], conv128_2 [B,128,8,8],
        conv256_2 [B,256,4,4]], descriptor [B,128])."""
        assert x.dim() == 4 and x.shape[1] == 3, f"expected x [B,3,150,150], got {list(x.shape)}"
        out = F.max_pool2d(self.conv32_down(x), kernel_size=3, stride=2)
        features = []
        for name, block in self._blocks():
            out = block(out)
            if name in self.FEATURE_BLOCKS:
                features.append(out)
        descriptor = self.fc(out.mean(dim=(2, 3)))
        return features, descriptor

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_features(x)[1]


class FaceApiDescriptor(nn.Module):
    """PerceptualModel role from face-api's face descriptor net.

    forward(image [B,3,H,W] RGB in [-1,1]) -> [conv32_3 [B,32,35,35], conv64_3 [B,64,17,17],
    conv128_2 [B,128,8,8], conv256_2 [B,256,4,4], descriptor [B,128]]: the last block output of each
    resolution stage (low-level texture up to identity-level structure) and the final descriptor, so
    a perceptual loss compares both appearance and identity. `descriptor(image)` -> [B,128] alone,
    for identity similarity (face-api: Euclidean distance < 0.6 means the same person).
    Images are padded to square and resized to 150x150 like face-api, then normalised.
    """

    feature_names = FaceRecognitionNet.FEATURE_BLOCKS + ("descriptor",)

    def __init__(self, net: FaceRecognitionNet | None = None):
        super().__init__()
        self.net = net if net is not None else FaceRecognitionNet()
        # Non-persistent: not in the state dict, but moved with .to() (no host copy inside forward).
        self.register_buffer("mean_rgb", faceapi_mean_rgb(), persistent=False)

    def _normalised(self, image: torch.Tensor) -> torch.Tensor:
        return normalise_faceapi(to_faceapi_input(image, RECOGNITION_INPUT_SIZE), self.mean_rgb)

    def forward(self, image: torch.Tensor) -> list[torch.Tensor]:
        features, descriptor = self.net.forward_features(self._normalised(image))
        return [*features, descriptor]

    def descriptor(self, image: torch.Tensor) -> torch.Tensor:
        descriptor = self.net(self._normalised(image))
        assert descriptor.shape == (image.shape[0], DESCRIPTOR_SIZE), f"descriptor {list(descriptor.shape)}"
        return descriptor
