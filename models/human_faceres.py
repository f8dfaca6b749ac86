"""HSE face-recognition-lab "faceres" net from @vladmandic/human 3.3.6 (`models/faceres.json`) in torch,
and its AttributeRegressor role wrapper `HumanFaceRes` (a held-out attribute judge, independent of
face-api's age/gender net that sits in the training loop).

Graph (human 3.3.6 faceres.json, 283 nodes; generatedBy HSE-asavchenko/HSE_FaceRec_tf), input
`input_1` [N, 224, 224, 3] RGB in 0..255 (human: the face crop in [0, 1], resized to 224x224 and
multiplied by 255, `enhance` in src/face/faceres.ts). A MobileNet v1 (width 1.0) with batch norm folded:
    conv 3x3/2 'same' 3->32 (kernel with the BN scale merged in) + BN offset, ReLU6
    13 x [depthwise 3x3 'same' (stride 2 in blocks 2, 4, 6, 12), x BN scale + BN offset, ReLU6,
          1x1 conv (BN scale merged) + BN offset, ReLU6]          channels 64 128 128 256 256 512 x6 1024 1024
    global mean over H, W                        -> global_pooling/Mean [N, 1024]  (human's "descriptor")
    dense 1024->256 + ReLU ("feats"), then
        gender_pred: dense 256->1, Sigmoid        [N, 1]   (human: > 0.5 is male)
        age_pred:    dense 256->100, Softmax      [N, 100] (a distribution over ages 0..99 years)
ReLU6 appears in the graph as Relu -> Minimum(6) -> Maximum(0).

human turns the age distribution into years with its own rule around the arg max
(`age = i -/+ 10 * p[i -/+ 1]`, see `human_age`); the judge uses the differentiable expected value.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from models.faceapi_age_gender import Conv2dSame
from models.human_common import check_image, resize_square, square_crop

FACERES_INPUT_SIZE = 224
DESCRIPTOR_SIZE = 1024
N_AGE_CLASSES = 100

# (channels out, depthwise stride) of MobileNet v1's 13 depthwise-separable blocks, from the graph.
BLOCKS: tuple[tuple[int, int], ...] = (
    (64, 1), (128, 2), (128, 1), (256, 2), (256, 1), (512, 2),
    (512, 1), (512, 1), (512, 1), (512, 1), (512, 1), (1024, 2), (1024, 1),
)


def relu6_(x: torch.Tensor) -> torch.Tensor:
    """ReLU6 in place: only ever applied to a convolution's fresh output, which no backward needs
    (a convolution's backward reads its input and weight), so no copy of a large map is made."""
    return x.clamp_(0.0, 6.0)


class DepthwiseSeparable(nn.Module):
    """Depthwise 3x3 'same' (no bias) -> per-channel scale and offset -> ReLU6 -> 1x1 conv + offset -> ReLU6."""

    def __init__(self, in_channels: int, out_channels: int, stride: int):
        super().__init__()
        self.depthwise = Conv2dSame(in_channels, in_channels, 3, stride=stride, groups=in_channels, bias=False)
        self.dw_scale = nn.Parameter(torch.ones(in_channels))
        self.dw_offset = nn.Parameter(torch.zeros(in_channels))
        self.pointwise = nn.Conv2d(in_channels, out_channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # depthwise(x) * scale + offset == a depthwise conv with its kernels scaled and offset as bias:
        # one pass over the map instead of three
        weight = self.depthwise.weight * self.dw_scale.view(-1, 1, 1, 1)
        x = relu6_(self.depthwise.conv_same(x, weight, self.dw_offset))
        return relu6_(self.pointwise(x))


class FaceResNet(nn.Module):
    """x [B, 3, 224, 224] RGB in 0..255 -> (gender [B] P(male), age_probs [B, 100], descriptor [B, 1024])."""

    def __init__(self):
        super().__init__()
        self.stem = Conv2dSame(3, 32, 3, stride=2)
        channels = [32] + [c for c, _ in BLOCKS]
        self.blocks = nn.Sequential(*(DepthwiseSeparable(channels[i], c, s) for i, (c, s) in enumerate(BLOCKS)))
        self.feats = nn.Linear(DESCRIPTOR_SIZE, 256)
        self.gender = nn.Linear(256, 1)
        self.age = nn.Linear(256, N_AGE_CLASSES)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        if x.dim() != 4 or tuple(x.shape[1:]) != (3, FACERES_INPUT_SIZE, FACERES_INPUT_SIZE):
            raise ValueError(f"FaceResNet takes x [B, 3, 224, 224] RGB in 0..255, got {list(x.shape)}")
        features = self.blocks(relu6_(self.stem(x)))  # [B, 1024, 7, 7]
        descriptor = features.mean(dim=(2, 3))
        hidden = F.relu(self.feats(descriptor))
        gender = torch.sigmoid(self.gender(hidden))[:, 0]
        age_probs = torch.softmax(self.age(hidden), dim=1)
        return gender, age_probs, descriptor


def expected_age(age_probs: torch.Tensor) -> torch.Tensor:
    """age_probs [B, 100] over 0..99 years -> mean age [B] in years (differentiable)."""
    years = torch.arange(age_probs.shape[-1], dtype=age_probs.dtype, device=age_probs.device)
    return (age_probs * years).sum(dim=-1)


def human_age(age_probs: torch.Tensor) -> torch.Tensor:
    """human 3.3.6's reported age [B] (src/face/faceres.ts `predict`): from the arg max i, step towards
    the larger neighbour: i - 10 p[i-1] if p[i-1] > p[i+1] else i + 10 p[i+1], rounded to 0.1 year.

    Not differentiable (arg max); given for comparison with human. An out-of-range neighbour is JS
    `undefined`, which compares false: i = 0 takes the `i + 10 p[1]` branch like human; at i = 99 human
    gets NaN, this returns 99.
    """
    idx = age_probs.argmax(dim=-1)
    padded = F.pad(age_probs, (1, 1), value=float("nan"))  # NaN compares false like JS undefined
    below = padded.gather(-1, idx.unsqueeze(-1)).squeeze(-1)
    above = padded.gather(-1, (idx + 2).unsqueeze(-1)).squeeze(-1)
    step_down = below > above
    above = torch.nan_to_num(above, nan=0.0)
    age = torch.where(step_down, 10 * idx - 100 * below, 10 * idx + 100 * above)
    return torch.floor(age + 0.5) / 10  # JS Math.round: halves go up


class HumanFaceRes(nn.Module):
    """AttributeRegressor role: image [B, 3, H, W] RGB in [-1, 1] -> probs [B, 2] for names ("Male", "Young").

    - Male  = the net's sigmoid gender output.
    - Young = sigmoid((young_age - age) / temperature) of the expected age in years, exactly as the
      face-api regressor derives it (models.faceapi_age_gender.FaceApiAgeGender: young_age=30,
      temperature=5 years); strictly decreasing in age.
    Preprocessing: pixels (image + 1) * 127.5 in 0..255, padded to a centred square plus `margin` x side
    of black on every side, resized to 224x224 (torch bilinear). `age`, `age_probs`, `descriptor` expose
    the other outputs; `human_age` is human's own (non-differentiable) age rule.
    """

    names = ("Male", "Young")

    def __init__(self, net: FaceResNet, margin: float = 0.0, young_age: float = 30.0, temperature: float = 5.0):
        super().__init__()
        if temperature <= 0:
            raise ValueError(f"temperature must be > 0 years, got {temperature}")
        if not -0.25 <= margin <= 1.0:
            raise ValueError(f"margin must be in [-0.25, 1] (a fraction of the image side), got {margin}")
        self.net = net
        self.margin = float(margin)
        self.young_age = float(young_age)
        self.temperature = float(temperature)

    def predict(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """image [B, 3, H, W] in [-1, 1] -> (P(male) [B], age_probs [B, 100], descriptor [B, 1024])."""
        check_image(image, "HumanFaceRes")
        square, _ = square_crop((image + 1.0) * 127.5, self.margin, pad_value=0.0)
        return self.net(resize_square(square, FACERES_INPUT_SIZE))

    def age_probs(self, image: torch.Tensor) -> torch.Tensor:
        return self.predict(image)[1]

    def age(self, image: torch.Tensor) -> torch.Tensor:
        """Expected age [B] in years (differentiable)."""
        return expected_age(self.predict(image)[1])

    def human_age(self, image: torch.Tensor) -> torch.Tensor:
        """human's reported age [B] (arg max rule, not differentiable)."""
        return human_age(self.predict(image)[1])

    def descriptor(self, image: torch.Tensor) -> torch.Tensor:
        """The 1024-d globally pooled features [B, 1024] that human reports as the face descriptor."""
        return self.predict(image)[2]

    def young_probability(self, age: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid((self.young_age - age) / self.temperature)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        male, age_probs, _ = self.predict(image)
        probs = torch.stack([male, self.young_probability(expected_age(age_probs))], dim=1)
        assert probs.shape == (image.shape[0], len(self.names))
        return probs
