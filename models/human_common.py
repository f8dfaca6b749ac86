"""Pieces shared by the torch ports of @vladmandic/human 3.3.6's face graph models.

The three ports (models/human_blazeface.py, models/human_facemesh.py, models/human_faceres.py) take
human's TF.js *graph* models (npm `@vladmandic/human@3.3.6`, package/models/*.json + *.bin) and
reproduce each GraphDef op by op:

    TF.js graph op                      torch here
    _FusedConv2D (BiasAdd[+Relu|Prelu]) Conv2dSame / nn.Conv2d + bias, then the fused activation
    Conv2D + Add (folded batch norm)    nn.Conv2d with bias (the folded 'sub' tensor)
    DepthwiseConv2dNative               Conv2dSame(groups=C, bias=False)
    Mul + Add after a depthwise conv    per-channel scale and bias (kept separate, as in the graph)
    Prelu                               nn.PReLU(C)   (TF.js: x < 0 ? alpha * x : x)
    Relu, Minimum(6), Maximum(0)        ReLU6 (clamp to [0, 6])
    MaxPool 2x2/2 VALID or SAME         F.max_pool2d (on the even sizes used here both are the same)
    Pad [[0,0],[0,0],[0,0],[0,k]]       zero channels appended (shortcut of a widening block)
    Reshape / Identity                  flatten / reshape of the NHWC layout
    Mean over H, W; _FusedMatMul        x.mean((2, 3)); nn.Linear
    Sigmoid, Softmax                    torch.sigmoid, torch.softmax

TF 'SAME' padding puts the odd extra pixel at the bottom/right; `Conv2dSame` (models.faceapi_age_gender,
shared with the face-api ports) pads explicitly with F.pad, which torch's symmetric `padding=` cannot.

The nets take exactly the tensors the TF.js graphs take (NCHW instead of NHWC), so they can be
compared with TF.js number for number; the role wrappers take the generator's images [B, 3, H, W]
in [-1, 1] and do the preprocessing (`square_crop`, `resize_square`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from models.faceapi_age_gender import Conv2dSame

Activation = Literal["relu", "prelu"]


class BlazeBlock(nn.Module):
    """MediaPipe's residual block (BlazeFace / face mesh backbones); x [B, C_in, H, W] -> [B, C_out, H/s, W/s].

        y        = pointwise_1x1(depthwise_3x3(x, stride s, TF 'same')) + bias
        shortcut = x, or for s = 2 a 2x2/2 max pool of x; zero channels appended when C_out > C_in
        out      = activation(y + shortcut)          activation: ReLU (BlazeFace) or PReLU (face mesh)

    Graph evidence (human 3.3.6 blazeface.json / facemesh.json): DepthwiseConv2dNative (SAME) ->
    _FusedConv2D 1x1 (VALID, BiasAdd) -> AddV2 with the (MaxPool 2x2/2 [-> Pad channels]) input -> Relu/Prelu.
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1, activation: Activation = "relu"):
        super().__init__()
        if stride not in (1, 2) or out_channels < in_channels:
            raise ValueError(f"BlazeBlock needs stride 1 or 2 and out_channels >= in_channels, got "
                             f"{in_channels}->{out_channels} stride {stride}")
        self.stride = stride
        self.extra_channels = out_channels - in_channels
        self.depthwise = Conv2dSame(in_channels, in_channels, 3, stride=stride, groups=in_channels, bias=False)
        self.pointwise = nn.Conv2d(in_channels, out_channels, 1)
        self.act = nn.PReLU(out_channels) if activation == "prelu" else nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.pointwise(self.depthwise(x))
        shortcut = x
        if self.stride == 2:
            if x.shape[-1] % 2 or x.shape[-2] % 2:  # VALID (face mesh) and SAME (BlazeFace) pools differ then
                raise ValueError(f"BlazeBlock stride 2 expects even H and W, got {list(x.shape[-2:])}")
            shortcut = F.max_pool2d(x, 2, 2)
        if self.extra_channels:
            shortcut = F.pad(shortcut, (0, 0, 0, 0, 0, self.extra_channels))
        return self.act(y + shortcut)


@dataclass(frozen=True)
class SquareCrop:
    """Where the square fed to a net lies in the input image, in input pixels.

    The square's top-left corner is at (-left, -top) and its side is `side`; a point q in [0, 1]
    of the square is at x = q_x * side - left, y = q_y * side - top in the input image.
    """
    left: int
    top: int
    side: int

    def to_image(self, points: torch.Tensor, height: int, width: int) -> torch.Tensor:
        """points [..., 2] as fractions of the square -> fractions of the input image's width/height."""
        x = (points[..., 0] * self.side - self.left) / width
        y = (points[..., 1] * self.side - self.top) / height
        return torch.stack([x, y], dim=-1)


def square_crop(image: torch.Tensor, margin: float = 0.0, pad_value: float = 0.0) -> tuple[torch.Tensor, SquareCrop]:
    """image [B, C, H, W] -> (square [B, C, S, S], its SquareCrop).

    The shorter side is padded to a centred square (odd extra pixel after, i.e. bottom/right), then
    round(margin * max(H, W)) pixels of `pad_value` are added on every side (a negative margin crops).
    human crops faces from a detector box enlarged 1.4x and squared (`util.enlargeBox`,
    `util.squarifyBox`, src/face/facemeshutil.ts) and fills what lies outside the image with 0
    (`tf.image.cropAndResize` extrapolation); the margin plays the role of that enlargement for
    images that are already face crops.
    """
    if image.dim() != 4:
        raise ValueError(f"expected image [B, C, H, W], got {list(image.shape)}")
    height, width = image.shape[-2:]
    longest = max(height, width)
    pad = round(margin * longest)
    side = longest + 2 * pad
    if side < 1:
        raise ValueError(f"margin {margin} leaves nothing of a {height}x{width} image")
    left = (longest - width) // 2 + pad
    top = (longest - height) // 2 + pad
    if left == top == 0 and side == width == height:
        return image, SquareCrop(0, 0, side)
    padded = F.pad(image, (left, side - width - left, top, side - height - top), value=pad_value)
    return padded, SquareCrop(left, top, side)


def resize_square(x: torch.Tensor, size: int) -> torch.Tensor:
    """Differentiable bilinear resize of x [B, C, S, S] to [B, C, size, size] (no-op at that size).

    torch's half-pixel-centre bilinear (align_corners=False, no antialiasing, like the face-api
    wrappers). human resizes with tf.image.resizeBilinear / cropAndResize, which sample without
    half-pixel centres (up to half a source pixel up/left of this); the networks are therefore
    compared with TF.js at their native input sizes, where no resizing happens.
    """
    if x.shape[-2:] == (size, size):
        return x
    return F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=False)


def check_image(image: torch.Tensor, who: str) -> None:
    if image.dim() != 4 or image.shape[1] != 3:
        raise ValueError(f"{who} takes images [B, 3, H, W] in [-1, 1], got {list(image.shape)}")
