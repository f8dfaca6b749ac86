"""face-api.js's 68-point landmark net and 7-expression net in PyTorch, plus their role wrappers.

Both nets (vladmandic/face-api 1.7.15, `FaceLandmark68Net` and `FaceExpressionNet`) share one
architecture, `FaceFeatureExtractor`:

    pixels [B, 3, 112, 112] RGB in 0..255
      -> (x - mean RGB (122.782, 117.001, 104.298)) / 255
      -> 4 dense blocks (channels 32, 64, 128, 256; each halves H and W):
           out1 = relu(conv0(x))            conv0: plain 3x3 conv in dense0, separable in the others, stride 2
           out2 = conv1(out1)               conv1..3: 3x3 depthwise-separable, stride 1, + bias
           out3 = conv2(relu(out1 + out2))
           out4 = conv3(relu(out1 + out2 + out3))
           relu(out1 + out2 + out3 + out4)
      -> 7x7 average pool (the whole 7x7 map) -> features [B, 256]
followed by one fully connected layer: 136 numbers for landmarks (x0, y0, x1, y1, ... relative to
the 112x112 input), 7 logits for expressions (face-api order: neutral, happy, sad, angry, fearful,
disgusted, surprised; face-api applies softmax).

All convolutions use TF 'same' padding, which puts the odd extra pixel at the bottom/right (torch's
symmetric `padding=` cannot), so padding is explicit with F.pad.

The pure nets take face-api's own input (0..255 pixels, already 112x112) so they can be compared
with TF.js number for number; the role wrappers `FaceApiLandmarks68` / `FaceApiExpression` take the
generator's images ([-1, 1], any square size) and follow the contracts of docs/architecture.md.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from models.precision import float32_forward

INPUT_SIZE = 112
MEAN_RGB = (122.782, 117.001, 104.298)
FEATURE_CHANNELS = (32, 64, 128, 256)
N_LANDMARKS = 68

FACEAPI_EXPRESSION_LABELS = ("neutral", "happy", "sad", "angry", "fearful", "disgusted", "surprised")
DEEPFACE_EMOTION_LABELS = ("angry", "disgust", "fear", "happy", "sad", "surprise", "neutral")
# DEEPFACE_EMOTION_LABELS[i] is face-api's output FACEAPI_TO_DEEPFACE[i].
FACEAPI_TO_DEEPFACE = (3, 5, 4, 1, 2, 6, 0)

# iBUG 300-W 68-point groups, 0-based. "right"/"left" are the subject's own sides (iBUG convention),
# so right_brow / right_eye appear on the image's left.
IBUG68_GROUPS: dict[str, list[int]] = {
    "jaw": list(range(0, 17)),
    "right_brow": list(range(17, 22)),
    "left_brow": list(range(22, 27)),
    "nose": list(range(27, 36)),
    "right_eye": list(range(36, 42)),
    "left_eye": list(range(42, 48)),
    "outer_mouth": list(range(48, 60)),
    "inner_mouth": list(range(60, 68)),
}
# Coarser partition (each one a union of fine groups), for landmark subsets named like the paper's.
IBUG68_COARSE_GROUPS: dict[str, tuple[str, ...]] = {
    "jaw": ("jaw",),
    "brows": ("right_brow", "left_brow"),
    "nose": ("nose",),
    "eyes": ("right_eye", "left_eye"),
    "mouth": ("outer_mouth", "inner_mouth"),
}


def pad_same(x: torch.Tensor, kernel_size: int, stride: int) -> torch.Tensor:
    """Zero-pad x [B, C, H, W] like TF 'same': output size ceil(in / stride), odd extra pixel bottom/right."""

    def split(size: int) -> tuple[int, int]:
        out = -(-size // stride)
        total = max((out - 1) * stride + kernel_size - size, 0)
        return total // 2, total - total // 2

    top, bottom = split(x.shape[-2])
    left, right = split(x.shape[-1])
    return F.pad(x, (left, right, top, bottom))


class SameConv2d(nn.Module):
    """Plain conv with bias and TF 'same' padding (face-api's dense0/conv0)."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3, stride: int = 1):
        super().__init__()
        self.stride = stride
        self.kernel_size = kernel_size
        self.weight = nn.Parameter(torch.zeros(out_channels, in_channels, kernel_size, kernel_size))
        self.bias = nn.Parameter(torch.zeros(out_channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = pad_same(x, self.kernel_size, self.stride)
        return F.conv2d(x, self.weight, self.bias, stride=self.stride)


class SeparableConv2d(nn.Module):
    """TF separableConv2d + bias: depthwise kxk (stride s, 'same'), pointwise 1x1, then one bias."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3, stride: int = 1):
        super().__init__()
        self.stride = stride
        self.kernel_size = kernel_size
        self.depthwise = nn.Conv2d(in_channels, in_channels, kernel_size, stride=stride,
                                   groups=in_channels, bias=False)
        self.pointwise = nn.Conv2d(in_channels, out_channels, 1, bias=False)
        self.bias = nn.Parameter(torch.zeros(out_channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.depthwise(pad_same(x, self.kernel_size, self.stride))
        return self.pointwise(x) + self.bias.view(1, -1, 1, 1)


class DenseBlock4(nn.Module):
    """face-api's denseBlock4: a strided entry conv and three separable convs with dense sums."""

    def __init__(self, in_channels: int, out_channels: int, first_block: bool):
        super().__init__()
        entry = SameConv2d if first_block else SeparableConv2d
        self.conv0 = entry(in_channels, out_channels, 3, stride=2)
        self.conv1 = SeparableConv2d(out_channels, out_channels)
        self.conv2 = SeparableConv2d(out_channels, out_channels)
        self.conv3 = SeparableConv2d(out_channels, out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out1 = F.relu(self.conv0(x))
        out2 = self.conv1(out1)
        out3 = self.conv2(F.relu(out1 + out2))
        out4 = self.conv3(F.relu(out1 + out2 + out3))
        return F.relu(out1 + out2 + out3 + out4)


def normalise_pixels(pixels: torch.Tensor, mean_rgb: torch.Tensor | None = None) -> torch.Tensor:
    """face-api's normalisation: (pixels - mean RGB) / 255; pixels [B, 3, H, W] in 0..255.

    `mean_rgb` [1, 3, 1, 1]: the caller's buffer (on the input's device already: a constant built here
    from Python numbers would be a host-to-device copy, which CUDA-graph capture forbids).
    """
    if mean_rgb is None:
        mean_rgb = torch.tensor(MEAN_RGB, dtype=torch.float32, device=pixels.device).view(1, 3, 1, 1)
    return (pixels - mean_rgb.to(pixels.dtype)) / 255.0


class FaceFeatureExtractor(nn.Module):
    """pixels [B, 3, 112, 112] RGB 0..255 -> features [B, 256]."""

    def __init__(self):
        super().__init__()
        channels = (3,) + FEATURE_CHANNELS
        for i in range(4):
            self.add_module(f"dense{i}", DenseBlock4(channels[i], channels[i + 1], first_block=i == 0))
        # Non-persistent: face-api's weight files hold no such tensor; moved with .to() like the weights.
        self.register_buffer("mean_rgb", torch.tensor(MEAN_RGB, dtype=torch.float32).view(1, 3, 1, 1),
                             persistent=False)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        _check_pixels(pixels)
        x = normalise_pixels(pixels, self.mean_rgb)
        x = self.dense3(self.dense2(self.dense1(self.dense0(x))))  # [B, 256, 7, 7]
        # face-api: avgPool 7x7, stride 2, 'valid' on the 7x7 map, i.e. the mean over it.
        return F.avg_pool2d(x, kernel_size=7, stride=2).flatten(1)


class _FaceProcessor(nn.Module):
    """FaceFeatureExtractor + one fully connected layer (face-api's FaceProcessor)."""

    def __init__(self, n_outputs: int):
        super().__init__()
        self.extractor = FaceFeatureExtractor()
        self.fc = nn.Linear(FEATURE_CHANNELS[-1], n_outputs)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.fc(self.extractor(pixels))


class FaceLandmark68Net(_FaceProcessor):
    """pixels [B, 3, 112, 112] RGB 0..255 -> [B, 136] = 68 (x, y) pairs relative to the input (0..1)."""

    def __init__(self):
        super().__init__(2 * N_LANDMARKS)


class FaceExpressionNet(_FaceProcessor):
    """pixels [B, 3, 112, 112] RGB 0..255 -> logits [B, 7] in FACEAPI_EXPRESSION_LABELS order."""

    def __init__(self):
        super().__init__(len(FACEAPI_EXPRESSION_LABELS))


def _check_pixels(pixels: torch.Tensor) -> None:
    if pixels.dim() != 4 or tuple(pixels.shape[1:]) != (3, INPUT_SIZE, INPUT_SIZE):
        raise ValueError(
            f"face-api nets take pixels [B, 3, {INPUT_SIZE}, {INPUT_SIZE}], got {list(pixels.shape)}"
        )


def to_faceapi_pixels(image: torch.Tensor) -> torch.Tensor:
    """Generator image [B, 3, S, S] RGB in [-1, 1] -> face-api input [B, 3, 112, 112] in 0..255.

    face-api pads a non-square crop to a square before resizing; the generator's images are square,
    so this requires H == W instead of padding. The resize is torch's differentiable bilinear
    (half-pixel centres); face-api's own resize (tf.image.resizeBilinear without half-pixel centres)
    samples up to half a source pixel up/left of it, so only inputs that are already 112x112 match
    face-api exactly.
    """
    if image.dim() != 4 or image.shape[1] != 3:
        raise ValueError(f"expected image [B, 3, H, W], got {list(image.shape)}")
    if image.shape[2] != image.shape[3]:
        raise ValueError(
            f"face-api wrappers expect square images (H == W), got {image.shape[2]}x{image.shape[3]}"
        )
    if image.shape[2] != INPUT_SIZE:
        image = F.interpolate(image, size=(INPUT_SIZE, INPUT_SIZE), mode="bilinear",
                              align_corners=False, antialias=False)
    return (image + 1.0) * 127.5


class FaceApiLandmarks68(nn.Module):
    """LandmarkModel role: image [B, 3, S, S] RGB in [-1, 1] -> points [B, 68, 2] (x, y) in [0, 1].

    Coordinates are fractions of the input image's width/height (face-api predicts them relative
    to its 112x112 crop, which is the whole square image here). They are not clamped, so points can
    fall slightly outside [0, 1] and gradients stay intact.
    `groups` partitions the 68 iBUG points into 8 named index lists (0-based); `coarse_groups`
    partitions them into jaw, brows, nose, eyes, mouth (unions of the fine groups).
    The wrapped net is used as given; freezing it (requires_grad_(False)) is the caller's choice.
    """

    n_points = N_LANDMARKS

    def __init__(self, net: FaceLandmark68Net):
        super().__init__()
        self.net = net
        self.groups = {name: list(idx) for name, idx in IBUG68_GROUPS.items()}
        self.coarse_groups = {
            name: [i for part in parts for i in IBUG68_GROUPS[part]]
            for name, parts in IBUG68_COARSE_GROUPS.items()
        }

    @float32_forward
    def forward(self, image: torch.Tensor) -> torch.Tensor:
        flat = self.net(to_faceapi_pixels(image))  # [B, 136] = x0, y0, x1, y1, ...
        points = flat.view(image.shape[0], N_LANDMARKS, 2)
        assert points.shape == (image.shape[0], N_LANDMARKS, 2)
        return points


class FaceApiExpression(nn.Module):
    """EmotionModel role: image [B, 3, S, S] RGB in [-1, 1] -> probs [B, 7] in DeepFace label order.

    Softmax over face-api's 7 logits, then reordered from face-api's order (neutral, happy, sad,
    angry, fearful, disgusted, surprised) to `labels` (angry, disgust, fear, happy, sad, surprise,
    neutral).
    """

    labels = DEEPFACE_EMOTION_LABELS

    def __init__(self, net: FaceExpressionNet):
        super().__init__()
        self.net = net
        self.register_buffer("faceapi_index", torch.tensor(FACEAPI_TO_DEEPFACE), persistent=False)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.expression_probs(self.expression_features(image))

    def expression_features(self, image: torch.Tensor) -> torch.Tensor:
        """image [B, 3, S, S] in [-1, 1] -> the net's penultimate features [B, 256] (the 7x7 average pool,
        before the fully connected layer). With `expression_probs`, the expression-net protocol that
        `hfld invert`'s expression term uses (pipeline/stages/invert/project.py)."""
        return self.net.extractor(to_faceapi_pixels(image))

    def expression_probs(self, features: torch.Tensor) -> torch.Tensor:
        """Penultimate features [B, 256] -> probs [B, 7] in `labels` order (what forward returns)."""
        faceapi_probs = torch.softmax(self.net.fc(features), dim=1)
        probs = faceapi_probs.index_select(1, self.faceapi_index)
        assert probs.shape == (features.shape[0], len(self.labels))
        return probs
