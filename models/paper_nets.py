"""The paper's networks as role wrappers, for user-supplied weights (presets ffhq256 / ffhq1024).

Every wrapper takes the generator's images image [B, 3, H, W] RGB in [-1, 1] (any H, W), does its
own resizing (bilinear, align_corners=False, antialias=False) and normalisation, and stays
differentiable w.r.t. the image. The torchvision backbones are always built with weights=None:
weights come only from files the user supplies (see models/load/paper_nets.py).

Sources of the preprocessing facts (read for facts, no code copied):
- Attribute regressor, "Enjoy Your Editing" (Zhuang et al. 2021, github.com/KelestZ/Latent2im):
  `graphs/stylegan_v2_real/transform_base.py` builds torch.hub resnet50 with fc = Linear(2048, 40),
  loads `ckpt['model']`, and calls the regressor on the StyleGAN2 output directly (256 px, [-1, 1]),
  with no resizing and no mean/std normalisation; its BCE uses the raw outputs as probabilities
  (only clamped away from 0 and 1 by an epsilon). Their regressor training script
  (`scene_regressor_256.py`, same {"model", "optm"} checkpoint format) uses Resize(256),
  CenterCrop(256), ToTensor, Normalize(0.5, 0.5), i.e. [-1, 1] images of 256 px, and an MSE loss on
  the labels (hence no sigmoid). So the defaults here are 256 px, pixels in [-1, 1], clamp(raw, 0, 1).
- Perceptual: the same file's content loss runs torchvision's vgg19 `features` and takes the
  outputs of the first four convolutions (conv1_1, conv1_2, conv2_1, conv2_2) before their ReLU,
  MSE per layer, averaged. It applies the ImageNet mean/std to the [-1, 1] image as it is (without
  mapping it to [0, 1] first); VGGPerceptual maps to [0, 1] first, which is what the ImageNet VGG19
  was trained on; `rescale_to_unit=False` reproduces the reference code's input exactly.
- Landmarks, 106 points: two orderings of the same JD-landmark markup exist.
  "jd": the JD-landmark dataset's own order (ICME 2019 106-point challenge), as output by JD AI's
  FaceX-Zoo face_sdk (JDAI-CV/FaceX-Zoo, face_sdk/api_usage/test_images/test1_landmark_res0.txt and
  utils/lms_trans.py: eye centres 104/105, nose tip 54, mouth corners 84/90; checked that each group
  below is a spatially coherent region of that file's face). Its PFLD model: 112x112 crop,
  ToTensor pixels in [0, 1], output in [0, 1] of the crop.
  "insightface": InsightFace's 2d106det (alignment/coordinate_reg, "ordered by point names"):
  192x192 crop, raw 0..255 RGB pixels (python-package/insightface/model_zoo/landmark.py: mean 0,
  std 1 when the graph starts with Sub/Mul, swapRB=True), output in [-1, 1] of the crop
  ((pred + 1) * 96). Its groups follow the common community grouping (contour 0-32, eye 33-42,
  brow 43-51, mouth 52-71, nose 72-86, eye 87-96, brow 97-105); InsightFace does not document
  which side is which, so those groups are named _a/_b.
  Both lay the 212 numbers out as x0, y0, x1, y1, ...
- Emotion: deepface 0.0.103's pytorch backend (deepface/models/demography/pytorch/Emotion.py
  EmotionModel, used as is). DeepFace.analyze(..., detector_backend="skip") takes the whole image,
  scales it to [0, 1], letterboxes it to 224x224 (deepface/modules/preprocessing.py resize_image:
  keep the aspect ratio, zero-pad to centre), then converts BGR->gray (0.299 R + 0.587 G + 0.114 B)
  and resizes to 48x48 (cv2 bilinear), and feeds [n, 1, 48, 48] in [0, 1]; the model ends in softmax.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from models.precision import float32_forward

# torchvision is imported where a backbone is built, not here: importing it pulls in torch._dynamo
# (~1.7 s on a 2-core machine), and every `hfld` process, Ray actor and Ray Train worker imports this
# module through the preset registry, while only the paper presets build these networks.

# list_attr_celeba.txt column order (CelebA).
CELEBA_ATTRIBUTES: tuple[str, ...] = (
    "5_o_Clock_Shadow", "Arched_Eyebrows", "Attractive", "Bags_Under_Eyes", "Bald", "Bangs", "Big_Lips",
    "Big_Nose", "Black_Hair", "Blond_Hair", "Blurry", "Brown_Hair", "Bushy_Eyebrows", "Chubby",
    "Double_Chin", "Eyeglasses", "Goatee", "Gray_Hair", "Heavy_Makeup", "High_Cheekbones", "Male",
    "Mouth_Slightly_Open", "Mustache", "Narrow_Eyes", "No_Beard", "Oval_Face", "Pale_Skin", "Pointy_Nose",
    "Receding_Hairline", "Rosy_Cheeks", "Sideburns", "Smiling", "Straight_Hair", "Wavy_Hair",
    "Wearing_Earrings", "Wearing_Hat", "Wearing_Lipstick", "Wearing_Necklace", "Wearing_Necktie", "Young",
)
DEEPFACE_EMOTION_LABELS: tuple[str, ...] = ("angry", "disgust", "fear", "happy", "sad", "surprise", "neutral")

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# How a network wants its pixels, starting from the generator's [-1, 1]:
#   signed: [-1, 1] as is; unit: [0, 1]; imagenet: [0, 1] then ImageNet mean/std; byte: [0, 255].
PIXEL_RANGES = ("signed", "unit", "imagenet", "byte")

# ------------------------------------------------------------------------------------------------
# shared preprocessing
# ------------------------------------------------------------------------------------------------


def check_image(image: torch.Tensor) -> None:
    assert image.ndim == 4 and image.shape[1] == 3, f"image must be [B, 3, H, W], got {list(image.shape)}"


def resize(image: torch.Tensor, size: tuple[int, int] | int | None) -> torch.Tensor:
    """Bilinear resize to `size` (square when an int); None or the same size leaves it alone."""
    if size is None:
        return image
    size = (size, size) if isinstance(size, int) else tuple(size)
    if tuple(image.shape[-2:]) == size:
        return image
    return F.interpolate(image, size=size, mode="bilinear", align_corners=False, antialias=False)


def check_choice(name: str, value: str, choices: Sequence[str]) -> str:
    if value not in choices:
        raise ValueError(f"{name} must be one of {list(choices)}, got {value!r}")
    return value


class PixelRange(nn.Module):
    """image [B, 3, H, W] in [-1, 1] -> the pixel range a network was trained on (see PIXEL_RANGES)."""

    def __init__(self, pixel_range: str):
        super().__init__()
        self.pixel_range = check_choice("pixel_range", pixel_range, PIXEL_RANGES)
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        if self.pixel_range == "signed":
            return image
        if self.pixel_range == "byte":
            return (image + 1.0) * 127.5
        unit = (image + 1.0) * 0.5
        return unit if self.pixel_range == "unit" else (unit - self.mean) / self.std

    def extra_repr(self) -> str:
        return self.pixel_range


# ------------------------------------------------------------------------------------------------
# AttributeRegressor: ResNet50 -> 40 CelebA attributes
# ------------------------------------------------------------------------------------------------

REGRESSOR_OUTPUTS = ("clamp", "sigmoid")


class CelebAAttributeRegressor(nn.Module):
    """AttributeRegressor role: image [B, 3, H, W] in [-1, 1] -> probs [B, 40] in [0, 1].

    `net` is torchvision's resnet50 with fc 2048 -> len(names) (state-dict keys as torchvision's).
    Defaults follow the "Enjoy Your Editing" regressor (module docstring): input_size 256,
    pixel_range "signed" (the [-1, 1] image as is), output "clamp" = clamp(raw, 0, 1) (the network
    was trained by regression, its raw outputs are the probabilities). A classifier trained with
    logits uses output="sigmoid"; an ImageNet-style one pixel_range="imagenet", input_size=224.
    `names` are in the head's output order (default: CelebA's list_attr_celeba order).
    """

    def __init__(self, names: Sequence[str] = CELEBA_ATTRIBUTES, input_size: int | None = 256,
                 pixel_range: str = "signed", output: str = "clamp"):
        super().__init__()
        self.names = tuple(names)
        self.input_size = input_size
        self.output = check_choice("output", output, REGRESSOR_OUTPUTS)
        self.pixels = PixelRange(pixel_range)
        import torchvision
        self.net = torchvision.models.resnet50(weights=None, num_classes=len(self.names))

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        check_image(image)
        raw = self.net(self.pixels(resize(image, self.input_size)))
        probs = raw.clamp(0.0, 1.0) if self.output == "clamp" else torch.sigmoid(raw)
        assert probs.shape == (image.shape[0], len(self.names))
        return probs


# ------------------------------------------------------------------------------------------------
# LandmarkModel: ResNet18 -> 212 = 106 (x, y)
# ------------------------------------------------------------------------------------------------

N_LANDMARKS_106 = 106


def _span(first: int, last: int) -> list[int]:
    """Inclusive index range."""
    return list(range(first, last + 1))


# "right"/"left" are the subject's own sides (as for iBUG 68 in models/faceapi.py): in the JD order
# the contour runs from the image's left, and the first brow/eye (33-41, 66-74) lie on the image's
# left, i.e. the subject's right. Each eye group holds its 8 lid points, its eyeball centre and the
# duplicate eye centre appended at 104/105.
JD106_GROUPS: dict[str, list[int]] = {
    "contour": _span(0, 32),
    "right_brow": _span(33, 41),
    "left_brow": _span(42, 50),
    "nose": _span(51, 65),
    "right_eye": _span(66, 74) + [104],
    "left_eye": _span(75, 83) + [105],
    "outer_mouth": _span(84, 95),
    "inner_mouth": _span(96, 103),
}
INSIGHTFACE106_GROUPS: dict[str, list[int]] = {
    "contour": _span(0, 32),
    "eye_a": _span(33, 42),
    "brow_a": _span(43, 51),
    "mouth": _span(52, 71),
    "nose": _span(72, 86),
    "eye_b": _span(87, 96),
    "brow_b": _span(97, 105),
}
LANDMARK106_LAYOUTS = {"jd": JD106_GROUPS, "insightface": INSIGHTFACE106_GROUPS}
# Coarse partition (unions of the fine groups), named like the other landmark models' coarse groups.
LANDMARK106_COARSE = {
    "jd": {"jaw": ("contour",), "brows": ("right_brow", "left_brow"), "nose": ("nose",),
           "eyes": ("right_eye", "left_eye"), "mouth": ("outer_mouth", "inner_mouth")},
    "insightface": {"jaw": ("contour",), "brows": ("brow_a", "brow_b"), "nose": ("nose",),
                    "eyes": ("eye_a", "eye_b"), "mouth": ("mouth",)},
}
HEAD_RANGES = ("unit", "signed")
CHANNEL_ORDERS = ("rgb", "bgr")


class Landmark106(nn.Module):
    """LandmarkModel role: image [B, 3, H, W] in [-1, 1] -> points [B, 106, 2] (x, y) in [0, 1].

    `net` is torchvision's resnet18 with fc 512 -> 212 (x0, y0, x1, y1, ...). The whole image is the
    crop the network sees (generator faces are aligned). Hyperparameters describe how the user's
    checkpoint was trained; defaults are the JD-landmark family's (module docstring):
      layout "jd" | "insightface"     which 106-point ordering (sets `groups`);
      input_size 112 (InsightFace 2d106det: 192);
      pixel_range "unit" (InsightFace: "byte"), channel_order "rgb" (FaceX-Zoo feeds cv2 BGR: "bgr");
      head_range "unit": the raw head is already in [0, 1] of the crop; "signed": it is in [-1, 1]
      (InsightFace) and is mapped by (raw + 1) / 2.
    Points are not clamped, so gradients stay intact. `groups` is a partition of 0..105 into named
    fine groups; `coarse_groups` one into jaw, brows, nose, eyes, mouth.
    """

    n_points = N_LANDMARKS_106

    def __init__(self, layout: str = "jd", input_size: int | None = 112, pixel_range: str = "unit",
                 channel_order: str = "rgb", head_range: str = "unit"):
        super().__init__()
        self.layout = check_choice("layout", layout, tuple(LANDMARK106_LAYOUTS))
        self.input_size = input_size
        self.channel_order = check_choice("channel_order", channel_order, CHANNEL_ORDERS)
        self.head_range = check_choice("head_range", head_range, HEAD_RANGES)
        self.pixels = PixelRange(pixel_range)
        self.groups = {name: list(idx) for name, idx in LANDMARK106_LAYOUTS[layout].items()}
        self.coarse_groups = {name: [i for part in parts for i in self.groups[part]]
                              for name, parts in LANDMARK106_COARSE[layout].items()}
        import torchvision
        self.net = torchvision.models.resnet18(weights=None, num_classes=2 * self.n_points)

    @float32_forward
    def forward(self, image: torch.Tensor) -> torch.Tensor:
        check_image(image)
        x = resize(image, self.input_size)
        if self.channel_order == "bgr":
            x = x.flip(1)
        raw = self.net(self.pixels(x)).view(image.shape[0], self.n_points, 2)
        points = (raw + 1.0) * 0.5 if self.head_range == "signed" else raw
        assert points.shape == (image.shape[0], self.n_points, 2)
        return points


# ------------------------------------------------------------------------------------------------
# PerceptualModel: VGG19 features, pre-ReLU conv outputs
# ------------------------------------------------------------------------------------------------

VGG19_BLOCKS = (2, 2, 4, 4, 4)  # convolutions per block of torchvision's vgg19 (config "E")


def vgg19_conv_indices() -> dict[str, int]:
    """"convB_C" -> index of that Conv2d in torchvision's vgg19().features (conv1_1 -> 0, conv2_1 -> 5...).

    Each conv is followed by a ReLU, each block by a max pool: index advances 2 per conv, 1 per pool.
    """
    table, index = {}, 0
    for block, n_convs in enumerate(VGG19_BLOCKS, start=1):
        for conv in range(1, n_convs + 1):
            table[f"conv{block}_{conv}"] = index
            index += 2
        index += 1
    return table


VGG19_CONV_INDEX = vgg19_conv_indices()
DEFAULT_VGG_LAYERS = ("conv1_1", "conv1_2", "conv2_1", "conv2_2")


def vgg19_features() -> nn.Sequential:
    """torchvision's vgg19 `features` (random init, weights=None equivalent), without building the
    120 M-parameter classifier that `torchvision.models.vgg19()` would allocate and throw away. ReLUs
    are made out-of-place so pre-ReLU outputs we keep are not overwritten."""
    from torchvision.models import vgg as tv_vgg
    features = tv_vgg.make_layers(tv_vgg.cfgs["E"], batch_norm=False)
    for layer in features:
        if isinstance(layer, nn.ReLU):
            layer.inplace = False
    return features


class VGGPerceptual(nn.Module):
    """PerceptualModel role: image [B, 3, H, W] in [-1, 1] -> [features of each chosen layer].

    layers: conv names "convB_C" (pre-ReLU output of that convolution, as the reference code) or
      "reluB_C" (the output after its ReLU), returned in the given order; feature i is
      [B, C_i, H_i, W_i] at the (resized) input's resolution divided by 2 per max pool before it.
    resize: side of the square image fed to VGG (None: the generator's resolution, as the reference).
    rescale_to_unit: map [-1, 1] to [0, 1] before the ImageNet mean/std (True, what VGG was trained
      on); False applies mean/std to the [-1, 1] image directly, as the Enjoy Your Editing code does.
    `features` holds all of vgg19's convolutions (state-dict keys features.N.*, as torchvision's) so
    a torchvision vgg19 file loads strictly; forward stops after the deepest chosen layer.
    """

    def __init__(self, layers: Sequence[str] = DEFAULT_VGG_LAYERS, resize: int | None = None,
                 rescale_to_unit: bool = True):
        super().__init__()
        self.layers = tuple(layers)
        if not self.layers:
            raise ValueError("VGGPerceptual needs at least one layer")
        self.layer_index = [self._index_of(name) for name in self.layers]
        self.resize = resize
        self.rescale_to_unit = rescale_to_unit
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)
        self.features = vgg19_features()

    @staticmethod
    def _index_of(name: str) -> int:
        """Index in `features` whose output is layer `name` (a ReLU sits right after its conv)."""
        after_relu = name.startswith("relu")
        conv_name = "conv" + name[len("relu"):] if after_relu else name
        if conv_name not in VGG19_CONV_INDEX:
            raise ValueError(f"unknown VGG19 layer {name!r}; use convB_C or reluB_C with B_C one of "
                             f"{[k[len('conv'):] for k in VGG19_CONV_INDEX]}")
        return VGG19_CONV_INDEX[conv_name] + (1 if after_relu else 0)

    def forward(self, image: torch.Tensor) -> list[torch.Tensor]:
        check_image(image)
        x = resize(image, self.resize)
        if self.rescale_to_unit:
            x = (x + 1.0) * 0.5
        x = (x - self.mean) / self.std
        wanted = set(self.layer_index)
        found: dict[int, torch.Tensor] = {}
        for index in range(max(wanted) + 1):
            x = self.features[index](x)
            if index in wanted:
                found[index] = x
        return [found[i] for i in self.layer_index]


# ------------------------------------------------------------------------------------------------
# EmotionModel: deepface's own pytorch emotion network
# ------------------------------------------------------------------------------------------------

DEEPFACE_ANALYZE_SIZE = 224   # deepface letterboxes every face to 224x224 before the attribute models
DEEPFACE_EMOTION_SIZE = 48
LUMA_RGB = (0.299, 0.587, 0.114)  # cv2's BGR2GRAY weights, listed for R, G, B


def letterbox(image: torch.Tensor, size: int) -> torch.Tensor:
    """Fit [B, C, H, W] into size x size keeping the aspect ratio, zero-padded around the centre.

    Mirrors deepface's preprocessing.resize_image: new size int(H f) x int(W f) with
    f = min(size / H, size / W), then pad (diff // 2, diff - diff // 2) on each axis.
    """
    h, w = image.shape[-2:]
    factor = min(size / h, size / w)
    new_h, new_w = int(h * factor), int(w * factor)
    x = resize(image, (new_h, new_w))
    dh, dw = size - new_h, size - new_w
    if dh or dw:
        x = F.pad(x, (dw // 2, dw - dw // 2, dh // 2, dh - dh // 2))
    return resize(x, size)  # deepface's own safety net for rounding; a no-op in practice


class DeepFaceEmotion(nn.Module):
    """EmotionModel role: image [B, 3, H, W] in [-1, 1] -> probs [B, 7] in DeepFace's label order.

    Wraps deepface's pytorch EmotionModel (`net`, its own class, its own state-dict keys; made by
    models.load.paper_nets.deepface_emotion_net) with the
    preprocessing DeepFace.analyze(..., detector_backend="skip") applies (module docstring):
    [0, 1] scale, gray, letterbox to 224, resize to 48; differentiable end to end. Gray and
    bilinear resizing are both linear, so taking gray first (cheaper) gives the same numbers.
    analyze_size=None skips the 224 letterbox (a single resize to 48).
    """

    labels = DEEPFACE_EMOTION_LABELS

    def __init__(self, net: nn.Module, analyze_size: int | None = DEEPFACE_ANALYZE_SIZE):
        super().__init__()
        self.net = net
        self.analyze_size = analyze_size
        self.register_buffer("luma", torch.tensor(LUMA_RGB).view(1, 3, 1, 1), persistent=False)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        check_image(image)
        unit = (image + 1.0) * 0.5
        gray = (unit * self.luma).sum(dim=1, keepdim=True)
        if self.analyze_size is not None:
            gray = letterbox(gray, self.analyze_size)
        probs = self.net(resize(gray, DEEPFACE_EMOTION_SIZE))
        assert probs.shape == (image.shape[0], len(self.labels))
        return probs
