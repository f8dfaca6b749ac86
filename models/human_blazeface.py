"""BlazeFace face detector from @vladmandic/human 3.3.6 (`models/blazeface.json`) in torch, with human's
anchor decoding and a greedy NMS.

human's default config uses `face.detector.modelPath: 'blazeface.json'` (src/config.ts); in 3.3.6 that
file is the 256x256 BlazeFace "back camera" model (MediaPipe, converted by PINTO; 896 anchors).

Graph (human 3.3.6 blazeface.json, 257 nodes), input `input` [1, 256, 256, 3] RGB in [-1, 1]:
    conv 5x5/2 'same' 3->24 + ReLU                                  -> 128x128
    BlazeBlocks (ReLU): 7 x 24, /2 24, 7 x 24, /2 24->48, 7 x 48,
                        /2 48->96, 7 x 96                           -> 16x16x96 (31 blocks)
    down: depthwise 3x3/2 'same' + 1x1 conv 96->96 + ReLU, no shortcut -> 8x8x96
    heads (1x1 convs + bias): 16x16: scores 2/cell, boxes 32/cell; 8x8: scores 6/cell, boxes 96/cell
    outputs: Identity [1,512,1], Identity_2 [1,512,16], Identity_1 [1,384,1], Identity_3 [1,384,16]
The graph's Reshape constants hard-code batch 1 ([1, 512, 1] ...); this port runs any batch.

Decoding (human src/face/blazeface.ts `getBoxes`/`decodeBoxes`, src/face/facemeshutil.ts
`generateAnchors`): the outputs are concatenated per anchor as [score logit, 16 regressors] with the
512 anchors of the 16x16 grid first; anchors are cell centres stride * (i + 0.5) in input pixels for
strides (16, 32) with (2, 6) anchors per cell, y-major then x. Regressors are pixels of the 256 input:
    centre = (r[1], r[2]) + anchor,  size = (r[3], r[4]) (width, height),
    keypoint k = (r[5 + 2k], r[6 + 2k]) + anchor,  score = sigmoid(r[0]).
human keeps boxes through `tf.image.nonMaxSuppression(boxes, scores, maxDetected=1,
iouThreshold=0.1, scoreThreshold=0.2)` (config defaults) and then enlarges the kept box 1.4x and
squares it to crop the face for the mesh (`face_crop_boxes` here).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from models.faceapi_age_gender import Conv2dSame
from models.human_common import BlazeBlock, check_image, resize_square, square_crop

BLAZEFACE_INPUT_SIZE = 256
N_ANCHORS = 896
N_KEYPOINTS = 6
# Keypoint order of the BlazeFace model. Sides are the subject's own (like the iBUG groups of
# models/faceapi.py): keypoint 0 is the subject's right eye, which appears on the image's left.
# Checked on generated starter faces (tests/models/test_human.py); human names 0/1 leftEye/rightEye
# (viewer's sides, src/face/facemeshcoords.ts `blazeFaceLandmarks`).
KEYPOINT_NAMES = ("right_eye", "left_eye", "nose", "mouth", "right_ear", "left_ear")

# (channels in, channels out, stride) of the 31 BlazeBlocks, from the graph's tensor shapes.
BACKBONE: tuple[tuple[int, int, int], ...] = (
    ((24, 24, 1),) * 7 + ((24, 24, 2),) + ((24, 24, 1),) * 7 + ((24, 48, 2),) + ((48, 48, 1),) * 7
    + ((48, 96, 2),) + ((96, 96, 1),) * 7
)
ANCHOR_STRIDES = (16, 32)
ANCHORS_PER_CELL = (2, 6)

# human 3.3.6 config defaults (src/config.ts, face.detector)
DEFAULT_MAX_FACES = 1
DEFAULT_IOU_THRESHOLD = 0.1
DEFAULT_MIN_SCORE = 0.2
DEFAULT_CROP_SCALE = 1.4


class SeparableDown(nn.Module):
    """Depthwise 3x3/2 'same' + 1x1 conv + bias + ReLU, no shortcut (the 16x16 -> 8x8 step)."""

    def __init__(self, channels: int):
        super().__init__()
        self.depthwise = Conv2dSame(channels, channels, 3, stride=2, groups=channels, bias=False)
        self.pointwise = nn.Conv2d(channels, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.pointwise(self.depthwise(x)))


def _per_anchor(x: torch.Tensor, per_anchor: int) -> torch.Tensor:
    """Head output [B, A*k, H, W] -> [B, H*W*A, k] in TF's NHWC reshape order (y, x, anchor)."""
    return x.permute(0, 2, 3, 1).reshape(x.shape[0], -1, per_anchor)


class BlazeFaceNet(nn.Module):
    """x [B, 3, 256, 256] RGB in [-1, 1] -> raw [B, 896, 17] = per anchor (score logit, 16 regressors).

    `head_outputs` gives the graph's four outputs separately.
    """

    def __init__(self):
        super().__init__()
        self.stem = Conv2dSame(3, 24, 5, stride=2)
        self.backbone = nn.Sequential(*(BlazeBlock(i, o, s, "relu") for i, o, s in BACKBONE))
        self.down = SeparableDown(96)
        self.scores16 = nn.Conv2d(96, ANCHORS_PER_CELL[0], 1)
        self.boxes16 = nn.Conv2d(96, ANCHORS_PER_CELL[0] * 16, 1)
        self.scores8 = nn.Conv2d(96, ANCHORS_PER_CELL[1], 1)
        self.boxes8 = nn.Conv2d(96, ANCHORS_PER_CELL[1] * 16, 1)

    def head_outputs(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Graph outputs by role: scores16 [B,512,1], boxes16 [B,512,16], scores8 [B,384,1], boxes8 [B,384,16]."""
        if x.dim() != 4 or tuple(x.shape[1:]) != (3, BLAZEFACE_INPUT_SIZE, BLAZEFACE_INPUT_SIZE):
            raise ValueError(f"BlazeFaceNet takes x [B, 3, 256, 256] in [-1, 1], got {list(x.shape)}")
        f16 = self.backbone(F.relu(self.stem(x)))  # [B, 96, 16, 16]
        f8 = self.down(f16)  # [B, 96, 8, 8]
        return {
            "scores16": _per_anchor(self.scores16(f16), 1), "boxes16": _per_anchor(self.boxes16(f16), 16),
            "scores8": _per_anchor(self.scores8(f8), 1), "boxes8": _per_anchor(self.boxes8(f8), 16),
        }

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.head_outputs(x)
        raw = torch.cat([torch.cat([h["scores16"], h["boxes16"]], 2), torch.cat([h["scores8"], h["boxes8"]], 2)], 1)
        assert raw.shape == (x.shape[0], N_ANCHORS, 17)
        return raw


def blazeface_anchors(input_size: int = BLAZEFACE_INPUT_SIZE) -> torch.Tensor:
    """Anchor centres [896, 2] (x, y) in input pixels, in the order of BlazeFaceNet's output."""
    centres = []
    for stride, per_cell in zip(ANCHOR_STRIDES, ANCHORS_PER_CELL):
        cells = -(-input_size // stride)
        grid = (torch.arange(cells, dtype=torch.float64) + 0.5) * stride
        y, x = torch.meshgrid(grid, grid, indexing="ij")
        xy = torch.stack([x, y], dim=-1).reshape(-1, 1, 2).expand(-1, per_cell, 2)
        centres.append(xy.reshape(-1, 2))
    return torch.cat(centres).float()


def decode_blazeface(raw: torch.Tensor, anchors: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """raw [B, 896, 17] -> (scores [B, 896], boxes [B, 896, 4] (x1, y1, x2, y2), keypoints [B, 896, 6, 2]).

    Boxes and keypoints in pixels of the 256x256 net input.
    """
    centre = raw[..., 1:3] + anchors
    half = raw[..., 3:5] / 2
    boxes = torch.cat([centre - half, centre + half], dim=-1)
    keypoints = raw[..., 5:17].reshape(*raw.shape[:-1], N_KEYPOINTS, 2) + anchors.unsqueeze(-2)
    return torch.sigmoid(raw[..., 0]), boxes, keypoints


def box_iou(box: torch.Tensor, others: torch.Tensor) -> torch.Tensor:
    """IoU of one box [4] with boxes [N, 4], all (x1, y1, x2, y2); 0 where the union is empty."""
    lo = torch.maximum(box[:2], others[:, :2])
    hi = torch.minimum(box[2:], others[:, 2:])
    inter = (hi - lo).clamp(min=0).prod(dim=1)
    area = (box[2:] - box[:2]).clamp(min=0).prod()
    areas = (others[:, 2:] - others[:, :2]).clamp(min=0).prod(dim=1)
    union = area + areas - inter
    return torch.where(union > 0, inter / union.clamp(min=torch.finfo(union.dtype).tiny), torch.zeros_like(union))


def non_max_suppression(boxes: torch.Tensor, scores: torch.Tensor, max_output: int, iou_threshold: float,
                        score_threshold: float) -> torch.Tensor:
    """Greedy hard NMS with tf.image.nonMaxSuppression's rules -> kept indices [K] (best score first).

    Candidates need score > score_threshold; the best remaining box is kept and every box whose
    IoU with it exceeds iou_threshold is dropped; at most max_output boxes. Ties keep the lower index.
    """
    order = [i for i in torch.argsort(scores, descending=True, stable=True).tolist()
             if scores[i] > score_threshold]
    kept: list[int] = []
    while order and len(kept) < max_output:
        best = order.pop(0)
        kept.append(best)
        if order:
            ious = box_iou(boxes[best], boxes[order])
            order = [i for i, iou in zip(order, ious.tolist()) if iou <= iou_threshold]
    return torch.tensor(kept, dtype=torch.long)


def face_crop_boxes(boxes: torch.Tensor, scale: float = DEFAULT_CROP_SCALE) -> torch.Tensor:
    """Detector boxes [..., 4] -> the squares human crops for the face mesh (enlarged `scale`x, squared).

    Same centre; side = scale * max(width, height) (human `enlargeBox` then `squarifyBox`, without
    its rounding to whole pixels).
    """
    centre = (boxes[..., :2] + boxes[..., 2:]) / 2
    half = scale * (boxes[..., 2:] - boxes[..., :2]).abs().amax(dim=-1, keepdim=True) / 2
    return torch.cat([centre - half, centre + half], dim=-1)


@dataclass
class FaceDetections:
    """The faces found in one image, best first, in pixels of that image.

    boxes [K, 4] (x1, y1, x2, y2); keypoints [K, 6, 2] (x, y) in KEYPOINT_NAMES order; scores [K] in (0, 1).
    """
    boxes: torch.Tensor
    keypoints: torch.Tensor
    scores: torch.Tensor

    def __len__(self) -> int:
        return int(self.scores.shape[0])


class BlazeFaceDetector(nn.Module):
    """Face detector: image [B, 3, H, W] in [-1, 1], any size -> list of B FaceDetections.

    Preprocessing: the image is padded to a centred square with black (-1; human's optional
    `face.detector.square` mode, instead of its default of stretching the image to 256x256), resized
    to 256x256 (torch bilinear) and fed as [-1, 1] (human: pixels / 127.5 - 1). Outputs are decoded
    as human does, filtered by a greedy NMS (human's defaults: at most 1 face, IoU 0.1, score > 0.2)
    and mapped back to the input image's pixels. `raw` / `decode` expose the undecided candidates.
    """

    keypoint_names = KEYPOINT_NAMES

    def __init__(self, net: BlazeFaceNet, max_faces: int = DEFAULT_MAX_FACES,
                 iou_threshold: float = DEFAULT_IOU_THRESHOLD, min_score: float = DEFAULT_MIN_SCORE):
        super().__init__()
        if max_faces < 1 or not 0 <= iou_threshold <= 1 or not 0 <= min_score < 1:
            raise ValueError(f"need max_faces >= 1, iou_threshold in [0, 1], min_score in [0, 1); got "
                             f"{max_faces}, {iou_threshold}, {min_score}")
        self.net = net
        self.max_faces = int(max_faces)
        self.iou_threshold = float(iou_threshold)
        self.min_score = float(min_score)
        self.register_buffer("anchors", blazeface_anchors(), persistent=False)

    def decode(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """All 896 candidates: (scores [B, 896], boxes [B, 896, 4], keypoints [B, 896, 6, 2]) in image pixels."""
        check_image(image, "BlazeFaceDetector")
        square, crop = square_crop(image, 0.0, pad_value=-1.0)
        raw = self.net(resize_square(square, BLAZEFACE_INPUT_SIZE))
        scores, boxes, keypoints = decode_blazeface(raw, self.anchors)
        unit = crop.side / BLAZEFACE_INPUT_SIZE
        offset = torch.tensor([crop.left, crop.top], dtype=boxes.dtype, device=boxes.device)
        boxes = boxes * unit - offset.repeat(2)
        keypoints = keypoints * unit - offset
        return scores, boxes, keypoints

    @torch.no_grad()
    def detect(self, image: torch.Tensor) -> list[FaceDetections]:
        scores, boxes, keypoints = self.decode(image)
        found = []
        for b in range(image.shape[0]):
            keep = non_max_suppression(boxes[b], scores[b], self.max_faces, self.iou_threshold, self.min_score)
            keep = keep.to(boxes.device)
            found.append(FaceDetections(boxes[b, keep], keypoints[b, keep], scores[b, keep]))
        return found

    def forward(self, image: torch.Tensor) -> list[FaceDetections]:
        return self.detect(image)
