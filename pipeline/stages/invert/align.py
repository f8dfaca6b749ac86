"""Find the face in a photo and warp it to the framing of the generator's own faces.

    decode_image(bytes) -> uint8 [H, W, 3] or None            (PIL; EXIF orientation applied)
    detect(detector, images) -> best face candidate per image  (BlazeFace on a 256 px letterbox with a border)
    align_faces(...) -> aligned crops [B, 3, R, R] + the 2x3 matrices that made them

Coordinates are continuous pixel coordinates: pixel (i, j) covers [j, j+1] x [i, i+1], its centre is
at (j + 0.5, i + 0.5); BlazeFace keypoints and landmark fractions (x / width) are already in that
convention. A warp is a 2x3 matrix M with source = M @ (u, v, 1) for the output pixel position (u, v)
in [0, R]; `grid_sample` does the resampling (bilinear, reflected at the border, differentiable).

Three face points fix the transform: the subject's right eye, left eye and mouth centre (`THREE`).
The preset's AlignmentSpec (pipeline/presets/registry.py) says how they map to the crop:
  template: least-squares similarity (Umeyama, no reflection) onto fixed template points;
  ffhq:     the FFHQ rule from the eye centres and the mouth centre (ffhq_matrix).
First pass: BlazeFace's keypoints. Second pass (when the spec has a landmark template, or for ffhq,
and the landmark model H has two eye groups and mouth groups): H on the first-pass crop, which is
framed like the faces H sees in training, gives sharper eye/mouth centres; they are mapped back to
the photo and the transform is computed again from them.
keep_framed (align.keep_framed / keep_sigmas): the spec's framing_centre / framing_spread say how this
alignment frames the generator's own faces (measure_templates); a face whose warp lies within k spreads
of that (by either reading, when the detector's and the landmark model's disagree: keep_or_move) is
only resized, any other is moved only to the edge of that range (nearest_framed).
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from pipeline.core.metrics import eye_groups
from pipeline.presets.registry import AlignmentSpec

DETECTOR_SIZE = 256
# Black border added around every photo before detection, per side, as a fraction of its longer side.
# BlazeFace scores a face that fills its whole input poorly (a tight crop, e.g. a generated face): on
# 32 held-out starter faces 7 scored below 0.5 without a border (min 0.24), 1 with this one (min 0.33,
# median 0.67 -> 0.83), while the non-faces of tests/pipeline/stages/invert stayed below 0.28 (0.25
# without); a border of 0.25 let a random-pixel image reach 0.41, 0.5 one reach 0.59.
DETECTOR_MARGIN = 0.125
# BlazeFace keypoint order (models.human_blazeface.KEYPOINT_NAMES): right_eye, left_eye, nose, mouth, ...
DETECTOR_POINTS = (0, 1, 3)
THREE = ("right_eye", "left_eye", "mouth")
MAX_PIXELS = 64 * 2**20          # refuse larger images (decompression bombs) as unreadable


# ---------------------------------------------------------------------------------------------
# Decoding
# ---------------------------------------------------------------------------------------------

def decode_image(data: bytes | None) -> np.ndarray | None:
    """Encoded image bytes -> uint8 [H, W, 3] RGB (EXIF orientation applied), or None when unreadable."""
    if not data:
        return None
    from PIL import Image, ImageOps
    try:
        with Image.open(io.BytesIO(data)) as img:
            if img.width * img.height > MAX_PIXELS:
                return None
            img = ImageOps.exif_transpose(img)
            rgb = np.array(img.convert("RGB"), dtype=np.uint8)
    except Exception:     # PIL raises many types for bad data (OSError, SyntaxError, ValueError, ...)
        return None
    if rgb.ndim != 3 or rgb.shape[0] < 8 or rgb.shape[1] < 8:
        return None
    return np.ascontiguousarray(rgb)


def to_tensor(pixels: np.ndarray, device) -> torch.Tensor:
    """uint8 [H, W, 3] -> float [3, H, W] in [-1, 1]."""
    return torch.from_numpy(pixels).to(device).permute(2, 0, 1).float() / 127.5 - 1.0


def to_uint8(image: torch.Tensor) -> torch.Tensor:
    """[B, 3, R, R] in [-1, 1] -> uint8 [B, R, R, 3] (round to nearest)."""
    return ((image.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).contiguous()


# ---------------------------------------------------------------------------------------------
# Transforms
# ---------------------------------------------------------------------------------------------

def similarity_matrix(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """Least-squares similarity dst ~ s R src + t (Umeyama 1991, rotation without reflection).

    src, dst [n, 2] -> A [2, 3] with dst = A @ (x, y, 1).
    """
    src, dst = np.asarray(src, np.float64), np.asarray(dst, np.float64)
    mu_s, mu_d = src.mean(0), dst.mean(0)
    a, b = src - mu_s, dst - mu_d
    var_s = (a ** 2).sum() / len(src)
    if var_s <= 1e-12:
        raise ValueError("similarity_matrix: the source points coincide")
    cov = b.T @ a / len(src)
    u, sing, vt = np.linalg.svd(cov)
    d = np.diag([1.0, np.sign(np.linalg.det(u @ vt)) or 1.0])
    rot = u @ d @ vt
    scale = np.trace(np.diag(sing) @ d) / var_s
    t = mu_d - scale * rot @ mu_s
    return np.concatenate([scale * rot, t[:, None]], axis=1)


def invert_affine(a: np.ndarray) -> np.ndarray:
    """[2, 3] affine -> its inverse [2, 3]."""
    lin = np.linalg.inv(a[:, :2])
    return np.concatenate([lin, -lin @ a[:, 2:]], axis=1)


def apply_affine(a: np.ndarray, points: np.ndarray) -> np.ndarray:
    """[2, 3] affine on points [n, 2] -> [n, 2]."""
    return points @ a[:, :2].T + a[:, 2]


def template_matrix(points: np.ndarray, template, size: int) -> np.ndarray:
    """Warp matrix (output pixel -> photo pixel) putting the three photo `points` [3, 2] on `template`
    (fractions of a `size` crop)."""
    to_crop = similarity_matrix(points, np.asarray(template, np.float64) * size)
    return invert_affine(to_crop)


def ffhq_matrix(points: np.ndarray, size: int) -> np.ndarray:
    """Warp matrix of the FFHQ alignment rule (NVlabs ffhq-dataset) from the photo's right eye, left eye
    and mouth centre [3, 2] (subject's sides: the right eye is on the image's left).

        eye_to_eye = image-right eye - image-left eye,  eye_to_mouth = mouth - eye_avg
        x = eye_to_eye - rot(eye_to_mouth), with rot(a, b) = (-b, a)
        x = x / |x| * max(2 |eye_to_eye|, 1.8 |eye_to_mouth|),  y = (-x_y, x_x)
        c = eye_avg + 0.1 eye_to_mouth;  the crop is the square c +- x +- y
    """
    right, left, mouth = (np.asarray(p, np.float64) for p in points)
    eye_avg = (right + left) / 2
    eye_to_eye = left - right
    eye_to_mouth = mouth - eye_avg
    x = eye_to_eye - np.array([-eye_to_mouth[1], eye_to_mouth[0]])
    norm = np.hypot(*x)
    if norm <= 1e-9:
        raise ValueError("ffhq_matrix: degenerate face points")
    x = x / norm * max(np.hypot(*eye_to_eye) * 2.0, np.hypot(*eye_to_mouth) * 1.8)
    y = np.array([-x[1], x[0]])
    c = eye_avg + 0.1 * eye_to_mouth
    # output (u, v) in [0, size] -> c + x (2u/size - 1) + y (2v/size - 1)
    return np.stack([np.array([2 * x[0] / size, 2 * y[0] / size, c[0] - x[0] - y[0]]),
                     np.array([2 * x[1] / size, 2 * y[1] / size, c[1] - x[1] - y[1]])])


def centre_square_matrix(height: int, width: int, size: int) -> np.ndarray:
    """Warp matrix of the centre square of a photo resized to `size` (alignment method "none")."""
    side = min(height, width)
    k = side / size
    return np.array([[k, 0.0, (width - side) / 2], [0.0, k, (height - side) / 2]])


@dataclass(frozen=True)
class FramedTolerance:
    """How far one warp may differ from another and still count as the same framing: relative scale
    within 1 +- scale, rotation within `degrees`, crop centre within `shift` x size."""
    scale: float
    degrees: float
    shift: float


FRAMING_PARAMETERS = ("log_scale", "degrees", "shift_x", "shift_y")


def framing_parameters(base: np.ndarray, matrix: np.ndarray, size: int) -> np.ndarray:
    """[4] (log relative scale, rotation in degrees, crop-centre shift x and y in crop fractions) of warp
    `matrix` against warp `base` (both similarities, output pixel -> photo pixel; zeros = the same crop)."""
    rel = np.linalg.inv(np.vstack([base, [0, 0, 1]])) @ np.vstack([matrix, [0, 0, 1]])
    scale = float(np.sqrt(abs(np.linalg.det(rel[:2, :2]))))
    degrees = float(np.degrees(np.arctan2(rel[1, 0], rel[0, 0])))
    centre = (rel[:2] @ np.array([size / 2, size / 2, 1.0]) - size / 2) / size
    return np.array([np.log(scale), degrees, centre[0], centre[1]])


def framing_matrix(base: np.ndarray, params, size: int) -> np.ndarray:
    """The warp whose framing_parameters against `base` are `params` (the inverse of framing_parameters)."""
    log_scale, degrees, dx, dy = (float(v) for v in params)
    c, s = np.cos(np.radians(degrees)), np.sin(np.radians(degrees))
    lin = np.exp(log_scale) * np.array([[c, -s], [s, c]])
    half = np.array([size / 2, size / 2])
    rel = np.vstack([np.concatenate([lin, (half + np.array([dx, dy]) * size - lin @ half)[:, None]], 1), [0, 0, 1]])
    return (np.vstack([base, [0, 0, 1]]) @ rel)[:2]


def relative_framing(base: np.ndarray, matrix: np.ndarray, size: int) -> tuple[float, float, float]:
    """(relative scale, rotation in degrees, crop-centre shift in crop fractions) of warp `matrix`
    against warp `base` (both output pixel -> photo pixel; 1, 0, 0 = the same crop)."""
    log_scale, degrees, dx, dy = framing_parameters(base, matrix, size)
    return float(np.exp(log_scale)), float(degrees), float(np.hypot(dx, dy))


def within(framing: tuple[float, float, float], tol: FramedTolerance) -> bool:
    scale, degrees, shift = framing
    return abs(scale - 1) <= tol.scale and abs(degrees) <= tol.degrees and shift <= tol.shift


def relative_to_centre_square(matrix: np.ndarray, height: int, width: int, size: int) -> tuple[float, float, float]:
    """relative_framing of warp `matrix` against the centre-square resize of a height x width photo."""
    return relative_framing(centre_square_matrix(height, width, size), matrix, size)


# A second pass only refines the first: on the starter's own 64 px faces the landmark model on a
# first-pass crop sometimes returns points that imply a 130-160 degree turn or half the scale; such a
# "refinement" is refused and the first pass kept.
REFINE_TOLERANCE = FramedTolerance(scale=0.25, degrees=20.0, shift=0.15)


def agrees(second: np.ndarray, first: np.ndarray, size: int, tol: FramedTolerance = REFINE_TOLERANCE) -> bool:
    """Whether warp `second` is within `tol` of warp `first` (both output pixel -> photo pixel)."""
    return within(relative_framing(first, second, size), tol)


def nearest_framed(matrix: np.ndarray, height: int, width: int, size: int, spec: AlignmentSpec,
                   sigmas: float) -> tuple[np.ndarray, bool]:
    """The crop of a height x width photo closest to its plain centre-square resize that frames the face
    the way the generator frames its own faces, and whether that crop is the plain resize itself.

    `matrix` is the face's alignment warp (it puts the face on the template). The generator's own faces,
    plainly resized, need warps whose framing_parameters against the resize lie around
    spec.framing_centre with spread spec.framing_spread (measure_templates). The face's parameters p are
    clipped to centre +- sigmas x spread (q); the crop X with framing_parameters(X, matrix) = q is
    returned: X = the resize when p is inside (kept), else the face is moved only to the edge of the
    generator's range, not all the way to the template.
    """
    base = centre_square_matrix(height, width, size)
    p = framing_parameters(base, matrix, size)
    centre, spread = np.asarray(spec.framing_centre, np.float64), np.asarray(spec.framing_spread, np.float64)
    q = np.clip(p, centre - sigmas * spread, centre + sigmas * spread)
    if np.array_equal(p, q):
        return base, True
    rel = np.vstack([framing_matrix(np.array([[1.0, 0, 0], [0, 1.0, 0]]), q, size), [0, 0, 1]])
    return (np.vstack([matrix, [0, 0, 1]]) @ np.linalg.inv(rel))[:2], False


def keep_or_move(matrix: np.ndarray, height: int, width: int, size: int, spec: AlignmentSpec, sigmas: float,
                 refused: np.ndarray | None = None) -> tuple[np.ndarray, bool]:
    """nearest_framed of the face's warp `matrix`, with a second opinion: `refused` is the landmark
    model's reading of the same face when it disagreed with the detector's (a refused refinement).
    Two readings that disagree mean one of them is wrong; if either says the photo is already framed
    like the generator's faces, it is only resized: a warp would add the wrong reading's error and a
    resampling blur (on 32 held-out starter faces, 4 of the 5 that were moved had a refused
    refinement, and none of the 5 kept its identity; every kept face did)."""
    crop, kept = nearest_framed(matrix, height, width, size, spec, sigmas)
    if kept or refused is None:
        return crop, kept
    other, other_kept = nearest_framed(refused, height, width, size, spec, sigmas)
    return (other, True) if other_kept else (crop, False)


def robust_framing(params: np.ndarray) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """framing_parameters of many faces [n, 4] -> (median, 1.4826 x median absolute deviation) per parameter."""
    centre = np.median(params, axis=0)
    spread = 1.4826 * np.median(np.abs(params - centre), axis=0)
    return tuple(round(float(v), 4) for v in centre), tuple(round(float(v), 4) for v in spread)


def warp(image: torch.Tensor, matrix: np.ndarray, size: int) -> torch.Tensor:
    """image [3, H, W] in [-1, 1], matrix [2, 3] (output pixel -> image pixel) -> crop [3, size, size].

    Shrinking by more than 1.5x first resizes the photo with an antialiasing filter (like the FFHQ
    script's shrink step), so the bilinear resampling does not alias. Outside the photo the image is
    reflected (the FFHQ script pads by reflection too). Differentiable in `image`.
    """
    _, h, w = image.shape
    m = np.asarray(matrix, np.float64).copy()
    shrink = float(np.sqrt(abs(np.linalg.det(m[:, :2]))))
    if shrink > 1.5:
        nh, nw = max(1, round(h / shrink)), max(1, round(w / shrink))
        image = F.interpolate(image[None], size=(nh, nw), mode="bilinear", align_corners=False, antialias=True)[0]
        m[0] *= nw / w
        m[1] *= nh / h
        h, w = nh, nw
    # normalised output (xn, yn) in [-1, 1] -> pixels u = (xn + 1) size / 2 -> image pixels -> normalised
    out_to_px = np.array([[size / 2, 0, size / 2], [0, size / 2, size / 2], [0, 0, 1]])
    px_to_norm = np.array([[2 / w, 0, -1], [0, 2 / h, -1]])
    theta = px_to_norm @ np.vstack([m, [0, 0, 1]]) @ out_to_px
    theta_t = torch.tensor(theta, dtype=image.dtype, device=image.device)[None]
    grid = F.affine_grid(theta_t, [1, 3, size, size], align_corners=False)
    return F.grid_sample(image[None], grid, mode="bilinear", padding_mode="reflection", align_corners=False)[0]


# ---------------------------------------------------------------------------------------------
# Detection
# ---------------------------------------------------------------------------------------------

@dataclass
class Face:
    """The best face of one photo, in photo pixels: score, box (x1, y1, x2, y2), the three points [3, 2]."""
    score: float
    box: np.ndarray
    points: np.ndarray


def letterbox(image: torch.Tensor, size: int, margin: float = 0.0) -> tuple[torch.Tensor, float, float, float]:
    """[3, H, W] -> ([3, size, size] padded with -1 to a centred square of side (1 + 2 margin) max(H, W),
    resized), pixels per box pixel, left pad, top pad (so photo = box * k - pad)."""
    _, h, w = image.shape
    side = max(h, w) + 2 * round(margin * max(h, w))
    left, top = (side - w) // 2, (side - h) // 2
    square = F.pad(image, (left, side - w - left, top, side - h - top), value=-1.0)
    if side != size:
        square = F.interpolate(square[None], size=(size, size), mode="bilinear", align_corners=False,
                               antialias=side > size)[0]
    return square, side / size, float(left), float(top)


@torch.no_grad()
def detect(detector, images: list[torch.Tensor]) -> list[Face]:
    """The best face candidate of each photo ([3, H, W] in [-1, 1], any sizes); the caller decides by
    its score whether it is a face.

    The photos are letterboxed (with a DETECTOR_MARGIN border) to 256 px and decoded in one batch; with one face wanted, human's NMS
    keeps the highest-scoring box, so the arg max is taken directly.
    """
    if not images:
        return []
    boxed = [letterbox(im, DETECTOR_SIZE, DETECTOR_MARGIN) for im in images]
    scores, boxes, keypoints = detector.decode(torch.stack([b[0] for b in boxed]))
    best = scores.argmax(dim=1)
    out = []
    for i, (_, k, left, top) in enumerate(boxed):
        j = int(best[i])
        offset = np.array([left, top])
        box = boxes[i, j].double().cpu().numpy() * k - np.tile(offset, 2)
        points = keypoints[i, j, list(DETECTOR_POINTS)].double().cpu().numpy() * k - offset
        out.append(Face(float(scores[i, j]), box, points))
    return out


# ---------------------------------------------------------------------------------------------
# Landmark refinement
# ---------------------------------------------------------------------------------------------

def three_point_groups(groups: dict) -> tuple[list[int], list[int], list[int]] | None:
    """(right eye, left eye, mouth) point indices of a landmark model's groups; None without them."""
    eyes = eye_groups(groups)
    mouth = sorted({i for name, idx in groups.items() if "mouth" in name for i in idx})
    if eyes is None or not mouth:
        return None
    return eyes[0], eyes[1], mouth


def three_points(points: torch.Tensor, index) -> torch.Tensor:
    """Landmarks [B, P, 2] -> [B, 3, 2] centroids of the right-eye, left-eye and mouth groups."""
    return torch.stack([points[:, list(i)].mean(dim=1) for i in index], dim=1)


# ---------------------------------------------------------------------------------------------
# Alignment
# ---------------------------------------------------------------------------------------------

@dataclass
class Aligned:
    """Aligned crops of a batch: crops [B, 3, R, R] in [-1, 1] (for the found faces only), and per
    photo the best face candidate and the warp matrix [2, 3] (None when no candidate reached min_score);
    kept[i]: the photo was already framed like the generator's faces and was only resized (keep_framed);
    resized[i]: for a face keep_framed moved, the plain resize's warp (the other candidate framing,
    align.fit_both), else None."""
    crops: torch.Tensor
    faces: list[Face]
    matrices: list[np.ndarray | None]
    kept: list[bool] | None = None
    resized: list[np.ndarray | None] | None = None


def first_pass_matrix(spec: AlignmentSpec, points: np.ndarray, size: int) -> np.ndarray:
    if spec.method == "ffhq":
        return ffhq_matrix(points, size)
    return template_matrix(points, spec.detector_template, size)


def second_pass_matrix(spec: AlignmentSpec, points: np.ndarray, size: int) -> np.ndarray:
    if spec.method == "ffhq":
        return ffhq_matrix(points, size)
    return template_matrix(points, spec.landmark_template, size)


def refines(spec: AlignmentSpec, landmark_index) -> bool:
    """Whether the second pass (landmark model on the first crop) runs for this spec and model."""
    return landmark_index is not None and (spec.method == "ffhq" or spec.landmark_template is not None)


@torch.no_grad()
def align_faces(images: list[torch.Tensor], spec: AlignmentSpec, size: int, *, detector=None, landmarks=None,
                min_score: float = 0.5, keep_framed: float | None = None) -> Aligned:
    """Photos [3, H, W] in [-1, 1] -> aligned crops of the found faces (see the module docstring).

    keep_framed: k (align.keep_sigmas), or None = always warp to the template. With k, and a spec whose
    framing was measured (spec.framing_spread), a found face whose final warp lies within k spreads of
    how the generator frames its own faces is cropped by the plain centre-square resize instead
    (Aligned.kept marks it): the photo is already framed like the generator's faces, and re-framing
    it would only add the keypoints' noise and resampling blur. Any other face is moved only to the
    edge of that range (nearest_framed).
    """
    if spec.method == "none":
        matrices = [centre_square_matrix(im.shape[1], im.shape[2], size) for im in images]
        # no detection ran: no score, box or points
        faces = [Face(float("nan"), np.full(4, np.nan), np.full((3, 2), np.nan)) for _ in matrices]
    else:
        if detector is None:
            raise ValueError(f"alignment method {spec.method!r} needs a face detector")
        faces = detect(detector, images)
        matrices = [None if f.score < min_score else first_pass_matrix(spec, f.points, size) for f in faces]
    found = [i for i, m in enumerate(matrices) if m is not None]
    crops = [warp(images[i], matrices[i], size) for i in found]
    index = three_point_groups(getattr(landmarks, "groups", {})) if landmarks is not None else None
    refused: dict[int, np.ndarray] = {}     # face -> a landmark reading that disagreed with the detector's
    if spec.method != "none" and found and refines(spec, index):
        pts = three_points(landmarks(torch.stack(crops)), index).double().cpu().numpy() * size   # crop pixels
        for k, i in enumerate(found):
            photo_points = apply_affine(matrices[i], pts[k])
            try:
                second = second_pass_matrix(spec, photo_points, size)
            except ValueError:      # degenerate landmark points: keep the first pass
                continue
            if not agrees(second, matrices[i], size):
                refused[i] = second  # one of the two readings failed: keep the first pass's warp
                continue
            matrices[i] = second
            faces[i].points = photo_points
            crops[k] = warp(images[i], matrices[i], size)
    kept = [False] * len(images)
    resized: list[np.ndarray | None] = [None] * len(images)
    if spec.method != "none" and keep_framed is not None and spec.framing_spread is not None:
        for k, i in enumerate(found):
            h, w = images[i].shape[1:]
            matrices[i], kept[i] = keep_or_move(matrices[i], h, w, size, spec, keep_framed, refused.get(i))
            crops[k] = warp(images[i], matrices[i], size)
            if not kept[i]:
                resized[i] = centre_square_matrix(h, w, size)
    stacked = torch.stack(crops) if crops else torch.zeros(0, 3, size, size)
    return Aligned(stacked, faces, matrices, kept, resized)


# ---------------------------------------------------------------------------------------------
# Measuring a generator's framing (the templates of AlignmentSpec)
# ---------------------------------------------------------------------------------------------

@torch.no_grad()
def measure_templates(generator, landmarks, detector, *, n: int, seed: int, batch: int = 32,
                      min_score: float = 0.3) -> dict:
    """Where the generator puts eyes and mouth, and how the alignment frames its faces, on `n` generated
    faces (the AlignmentSpec fields of a "template" preset).

    detector_template: mean BlazeFace keypoints 0, 1, 3 of the faces it finds (score >= min_score);
    landmark_template: mean centroids of the landmark model's eye and mouth groups (None without them);
    framing_centre / framing_spread: robust_framing of the framing_parameters of the alignment's final
    warp (both passes, these templates) against the plain resize, over the same found faces.
    Faces are the held-out faces of `seed` (pipeline.core.sampling.held_out_faces), quantised to
    uint8 like the files they would be written to.
    """
    from pipeline.core.sampling import held_out_faces
    size = int(generator.resolution)
    index = three_point_groups(getattr(landmarks, "groups", {}))
    det_points, lm_points, scores, found_images = [], [], [], []
    for start in range(0, n, batch):
        faces = held_out_faces(generator, list(range(start, min(n, start + batch))), seed=seed)
        images = generator.synthesis(faces.wplus, faces.noise)
        images = to_uint8(images).permute(0, 3, 1, 2).float() / 127.5 - 1.0
        for image, face in zip(images, detect(detector, list(images))):
            scores.append(face.score)
            if face.score >= min_score:
                det_points.append(face.points / size)
                found_images.append(image)
        if index is not None:
            lm_points.append(three_points(landmarks(images), index).double().cpu().numpy())
    det = np.stack(det_points) if det_points else np.zeros((0, 3, 2))
    lm = np.concatenate(lm_points) if lm_points else None
    rounded = lambda a: tuple(tuple(round(float(v), 4) for v in p) for p in a)  # noqa: E731
    out = {"n": n, "seed": seed, "detected": len(det_points), "min_score": min_score,
           "score_quantiles": [float(q) for q in np.quantile(scores, [0.0, 0.1, 0.5])] if scores else [],
           "detector_template": rounded(det.mean(0)) if len(det) else None,
           "detector_std": rounded(det.std(0)) if len(det) else None,
           "landmark_template": rounded(lm.mean(0)) if lm is not None else None,
           "landmark_std": rounded(lm.std(0)) if lm is not None else None,
           "framing_centre": None, "framing_spread": None}
    if len(det):
        spec = AlignmentSpec(method="template", detector_template=out["detector_template"],
                             landmark_template=out["landmark_template"])
        params = []
        for start in range(0, len(found_images), batch):
            part = found_images[start:start + batch]
            aligned = align_faces(part, spec, size, detector=detector, landmarks=landmarks, min_score=0.0)
            params += [framing_parameters(centre_square_matrix(size, size, size), m, size) for m in aligned.matrices]
        out["framing_centre"], out["framing_spread"] = robust_framing(np.stack(params))
    return out
