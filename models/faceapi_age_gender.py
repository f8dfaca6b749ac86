"""face-api.js AgeGenderNet ported to torch, and its AttributeRegressor role wrapper.

face-api (npm `@vladmandic/face-api`, src/xception/TinyXception.ts and src/ageGenderNet/AgeGenderNet.ts):
- Input: RGB 0..255, padded to a square with zeros (centred), resized to 112x112, then
  `(x - mean_rgb) / 255` with mean_rgb = (122.782, 117.001, 104.298).
- TinyXception(2): conv 3x3 stride 2 (3->32) + ReLU; reduction blocks 32->64 (input not activated)
  and 64->128; 2 main blocks (128); exit reduction block 128->256; separable conv 256->512 + ReLU.
  A reduction block is relu? -> sepconv -> relu -> sepconv -> maxpool 3x3/2 'same', plus a 1x1
  stride-2 conv of the block input; a main block is three (relu -> sepconv) plus the block input.
  Every convolution and pooling uses TF 'same' padding, which puts the odd extra pixel at the
  bottom/right; torch's symmetric `padding=` cannot express that, so we pad explicitly with F.pad.
- Head: average pool 7x7 stride 2 'valid' (the 7x7 map becomes 1x1), then two dense layers:
  age (512 -> 1, years, plain regression) and gender (512 -> 2 logits; softmax index 0 = male,
  1 = female, as `predictAgeAndGender` reads `probMale = gender[0]`).

The helpers `pad_same`, `to_faceapi_input` and `normalise_faceapi` are also used by the face-api
recognition port (models/faceapi_recognition.py), which shares the preprocessing.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

FACEAPI_MEAN_RGB = (122.782, 117.001, 104.298)
AGE_GENDER_INPUT_SIZE = 112
GENDER_LABELS = ("male", "female")  # order of face-api's gender softmax


def same_padding(size: int, kernel: int, stride: int) -> tuple[int, int]:
    """TF 'same' padding (before, after) for one spatial dimension: the extra pixel goes after."""
    out = math.ceil(size / stride)
    total = max((out - 1) * stride + kernel - size, 0)
    return total // 2, total - total // 2


def pad_same(x: torch.Tensor, kernel: int, stride: int, value: float = 0.0) -> torch.Tensor:
    """Pad x [B,C,H,W] as TF 'same' would for a kernel/stride, before an unpadded torch op."""
    top, bottom = same_padding(x.shape[-2], kernel, stride)
    left, right = same_padding(x.shape[-1], kernel, stride)
    if top == bottom == left == right == 0:
        return x
    return F.pad(x, (left, right, top, bottom), value=value)


def pad_to_square_like_faceapi(x: torch.Tensor) -> torch.Tensor:
    """Zero-pad the shorter side of x [B,C,H,W] to a square, as face-api's padToSquare(centred).

    face-api appends round(diff / 2) (JS rounding: halves up) and prepends the rest.
    """
    height, width = x.shape[-2:]
    diff = abs(height - width)
    if diff == 0:
        return x
    after = math.floor(diff / 2 + 0.5)
    before = diff - after
    if height > width:
        return F.pad(x, (before, after, 0, 0))
    return F.pad(x, (0, 0, before, after))


def to_faceapi_input(image: torch.Tensor, size: int) -> torch.Tensor:
    """Generator image [B,3,H,W] RGB in [-1,1] -> face-api's batch tensor [B,3,size,size] in 0..255.

    Square padding as face-api does, then a differentiable bilinear resize (align_corners=False,
    no antialiasing; face-api's own tf.image.resizeBilinear samples slightly differently, which only
    matters when the input is not already size x size).
    """
    assert image.dim() == 4 and image.shape[1] == 3, f"expected image [B,3,H,W], got {list(image.shape)}"
    pixels = pad_to_square_like_faceapi((image + 1.0) * 127.5)
    if pixels.shape[-2:] != (size, size):
        pixels = F.interpolate(pixels, size=(size, size), mode="bilinear", align_corners=False, antialias=False)
    return pixels


def faceapi_mean_rgb() -> torch.Tensor:
    """face-api's mean RGB as a [1, 3, 1, 1] float32 tensor (for a module's non-persistent buffer)."""
    return torch.tensor(FACEAPI_MEAN_RGB, dtype=torch.float32).view(1, 3, 1, 1)


def normalise_faceapi(pixels: torch.Tensor, mean_rgb: torch.Tensor | None = None) -> torch.Tensor:
    """face-api's normalisation of a batch [B,3,H,W] of 0..255 RGB: (x - mean_rgb) / 255.

    Modules pass their `mean_rgb` buffer ([1, 3, 1, 1], already on the input's device): building the
    constant here from Python numbers would be a host-to-device copy on every call, which CUDA-graph
    capture forbids. Without one (plain function use) the constant is built on the input's device.
    """
    if mean_rgb is None:
        mean_rgb = faceapi_mean_rgb().to(pixels.device)
    return (pixels - mean_rgb.to(pixels.dtype)) / 255.0


class Conv2dSame(nn.Conv2d):
    """nn.Conv2d with TF 'same' padding (extra pixel bottom/right), applied explicitly."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int = 1,
                 groups: int = 1, bias: bool = True):
        super().__init__(in_channels, out_channels, kernel_size, stride=stride, padding=0,
                         groups=groups, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv_same(x, self.weight, self.bias)

    def conv_same(self, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        """This layer's 'same' convolution with the given weight [out, in / groups, k, k] and bias [out]."""
        k, s = self.kernel_size[0], self.stride[0]
        top, bottom = same_padding(x.shape[-2], k, s)
        left, right = same_padding(x.shape[-1], k, s)
        if top == bottom and left == right:
            # symmetric (odd kernel, stride 1): the convolution pads itself, without a padded copy of x
            return F.conv2d(x, weight, bias, s, (top, left), self.dilation, self.groups)
        return F.conv2d(F.pad(x, (left, right, top, bottom)), weight, bias, s, 0, self.dilation, self.groups)


def max_pool_same(x: torch.Tensor, kernel: int, stride: int) -> torch.Tensor:
    """TF max pooling with 'same' padding: padded cells never win, so pad with -inf."""
    return F.max_pool2d(pad_same(x, kernel, stride, value=float("-inf")), kernel, stride)


class SeparableConv(nn.Module):
    """tf.separableConv2d (3x3 depthwise, 1x1 pointwise, both unbiased, 'same') plus one bias."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.depthwise = Conv2dSame(in_channels, in_channels, 3, groups=in_channels, bias=False)
        self.pointwise = nn.Conv2d(in_channels, out_channels, 1, bias=False)
        self.bias = nn.Parameter(torch.zeros(out_channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pointwise(self.depthwise(x)) + self.bias.view(1, -1, 1, 1)


class ReductionBlock(nn.Module):
    """Halves the resolution: separable convs + max pool, plus a strided 1x1 conv shortcut."""

    def __init__(self, in_channels: int, out_channels: int, activate_input: bool = True):
        super().__init__()
        self.activate_input = activate_input
        self.separable_conv0 = SeparableConv(in_channels, out_channels)
        self.separable_conv1 = SeparableConv(out_channels, out_channels)
        self.expansion_conv = Conv2dSame(in_channels, out_channels, 1, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(x) if self.activate_input else x
        out = self.separable_conv0(out)
        out = self.separable_conv1(F.relu(out))
        out = max_pool_same(out, 3, 2)
        return out + self.expansion_conv(x)  # shortcut sees the un-activated input, as in face-api


class MainBlock(nn.Module):
    """Three (ReLU -> separable conv) steps with an identity shortcut."""

    def __init__(self, channels: int):
        super().__init__()
        self.separable_conv0 = SeparableConv(channels, channels)
        self.separable_conv1 = SeparableConv(channels, channels)
        self.separable_conv2 = SeparableConv(channels, channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.separable_conv0(F.relu(x))
        out = self.separable_conv1(F.relu(out))
        out = self.separable_conv2(F.relu(out))
        return out + x


class TinyXception(nn.Module):
    """face-api's TinyXception feature extractor: [B,3,112,112] normalised -> [B,512,7,7]."""

    def __init__(self, num_main_blocks: int = 2):
        super().__init__()
        self.conv_in = Conv2dSame(3, 32, 3, stride=2)
        self.reduction_block_0 = ReductionBlock(32, 64, activate_input=False)
        self.reduction_block_1 = ReductionBlock(64, 128)
        self.main_blocks = nn.ModuleList(MainBlock(128) for _ in range(num_main_blocks))
        self.exit_reduction_block = ReductionBlock(128, 256)
        self.exit_separable_conv = SeparableConv(256, 512)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.conv_in(x))
        out = self.reduction_block_0(out)
        out = self.reduction_block_1(out)
        for block in self.main_blocks:
            out = block(out)
        out = self.exit_reduction_block(out)
        return F.relu(self.exit_separable_conv(out))


class AgeGenderNet(nn.Module):
    """face-api's AgeGenderNet on normalised input x [B,3,112,112] -> (age [B] in years, gender_logits [B,2]).

    Gender logits are ordered (male, female); face-api reports softmax(gender_logits).
    """

    def __init__(self, num_main_blocks: int = 2):
        super().__init__()
        self.features = TinyXception(num_main_blocks)
        self.fc_age = nn.Linear(512, 1)
        self.fc_gender = nn.Linear(512, 2)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        assert x.dim() == 4 and x.shape[1] == 3, f"expected x [B,3,112,112], got {list(x.shape)}"
        features = self.features(x)
        pooled = F.avg_pool2d(features, kernel_size=7, stride=2)
        assert pooled.shape[-2:] == (1, 1), (
            f"AgeGenderNet expects 112x112 input (a 7x7 feature map); got features {list(features.shape)}")
        pooled = pooled.flatten(1)
        age = self.fc_age(pooled).squeeze(1)
        gender_logits = self.fc_gender(pooled)
        return age, gender_logits


class FaceApiAgeGender(nn.Module):
    """AttributeRegressor role from face-api's age/gender net: image [B,3,H,W] in [-1,1] -> probs [B,2].

    names = ("Male", "Young"):
    - Male  = face-api's softmax probability of "male".
    - Young = sigmoid((young_age - age) / temperature) of the predicted age in years. The paper's
      regressor predicts CelebA attributes, and CelebA's "Young" roughly means "looks under ~30", so
      the default young_age=30 puts the 0.5 point there; temperature=5 years makes the transition
      smooth (0.27..0.73 between 25 and 35) so the BCE loss on it has useful gradients everywhere.
      The mapping is strictly decreasing in age.
    """

    names = ("Male", "Young")

    def __init__(self, net: AgeGenderNet | None = None, young_age: float = 30.0, temperature: float = 5.0):
        super().__init__()
        if temperature <= 0:
            raise ValueError(f"temperature must be > 0 years, got {temperature}")
        self.net = net if net is not None else AgeGenderNet()
        self.young_age = float(young_age)
        self.temperature = float(temperature)
        # Non-persistent: not in the state dict (the checkpoint format is unchanged), but moved with .to().
        self.register_buffer("mean_rgb", faceapi_mean_rgb(), persistent=False)

    def young_probability(self, age: torch.Tensor) -> torch.Tensor:
        """age [B] in years -> P(Young) [B], a smooth decreasing function of age."""
        return torch.sigmoid((self.young_age - age) / self.temperature)

    def predict(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """image [B,3,H,W] in [-1,1] -> (age [B] in years, gender_probs [B,2] as (male, female))."""
        x = normalise_faceapi(to_faceapi_input(image, AGE_GENDER_INPUT_SIZE), self.mean_rgb)
        age, gender_logits = self.net(x)
        return age, torch.softmax(gender_logits, dim=1)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        age, gender_probs = self.predict(image)
        probs = torch.stack([gender_probs[:, 0], self.young_probability(age)], dim=1)
        assert probs.shape == (image.shape[0], len(self.names)), f"probs {list(probs.shape)}"
        return probs
