"""Offline quality of a generator against its data: FD_face, landmark order, emotion distribution, pictures.

FD_face (defined here; docs/gan.md documents it): the Frechet distance between Gaussians fitted to the
face-api.js FaceRecognitionNet 128-d descriptors (the starter preset's `identity` net, images resized
to its 150 px input by the net itself) of N generated and N data images,

    FD = ||mu_1 - mu_2||^2 + tr(S_1 + S_2 - 2 (S_1^1/2 S_2 S_1^1/2)^1/2),

the FID recipe with a face-descriptor space instead of Inception features (no Inception weights can
be fetched offline). Its numbers only mean something next to a scale measured the same way, with
the same N, on the data itself:
    noise_floor   two independent data sets (the teacher's seeds 0 and 1; two halves of a dataset);
    jpeg30        the data vs JPEG (quality 30) copies of the same images;
    blur1         the data vs Gaussian-blurred (sigma 1 px) copies of the same images.
A student below blur1 is closer to the data than a slightly blurred copy of the data is.

Also per set: the share of faces whose 68 face-api landmarks all lie inside the image in anatomical
order (`landmarks_in_order`), and the distribution of fer's top emotion label (compared by total
variation). Pictures: an 8x8 contact sheet (student | data) and the FD_face-over-kimg curve.
"""

from __future__ import annotations

import io
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Iterable, Iterator

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from pipeline.core.seeding import Stream, rng_for
from pipeline.stages.gan.data import to_uint8

# 68-point iBUG indices (models/faceapi.py IBUG68_GROUPS; "right" = the subject's right = image left)
JAW, CHIN = list(range(0, 17)), 8
BROWS = list(range(17, 27))
RIGHT_EYE, LEFT_EYE = list(range(36, 42)), list(range(42, 48))
NOSE_BOTTOM = 33
MOUTH = list(range(48, 68))
MOUTH_RIGHT, MOUTH_LEFT = 48, 54


@dataclass
class QualityJudges:
    """identity: image [B, 3, H, W] in [-1, 1] -> descriptor [B, D]; landmarks -> [B, 68, 2] in [0, 1] (or
    None / another point count: the order check is skipped); emotion -> probs [B, K] (or None)."""
    identity: nn.Module
    landmarks: nn.Module | None = None
    emotion: nn.Module | None = None
    name: str = ""

    @classmethod
    def from_bundle(cls, bundle) -> "QualityJudges":
        if bundle.identity is None:
            raise ValueError(f"quality.judges: preset {bundle.preset!r} has no identity (face descriptor) network; "
                             "FD_face needs one (use the starter preset's)")
        return cls(bundle.identity, bundle.landmarks, bundle.emotion, bundle.preset)

    @property
    def emotion_labels(self) -> list[str]:
        return list(getattr(self.emotion, "labels", [])) if self.emotion is not None else []


@dataclass
class SetStats:
    """What one image set looks like to the judges."""
    n: int
    mu: np.ndarray                      # [D] float64
    cov: np.ndarray                     # [D, D] float64
    emotion_hist: np.ndarray | None     # [K] share of each top label
    landmark_share: float | None        # share of faces with landmarks inside and in order

    def summary(self) -> dict:
        return {"n": self.n, "landmark_order_share": self.landmark_share,
                "emotion_hist": None if self.emotion_hist is None else [float(v) for v in self.emotion_hist]}


# ---------------------------------------------------------------------------------------------
# Pure measures
# ---------------------------------------------------------------------------------------------

def _sqrt_psd(m: np.ndarray) -> np.ndarray:
    vals, vecs = np.linalg.eigh((m + m.T) / 2)
    return (vecs * np.sqrt(np.clip(vals, 0, None))) @ vecs.T


def frechet_distance(mu1: np.ndarray, cov1: np.ndarray, mu2: np.ndarray, cov2: np.ndarray) -> float:
    """Frechet distance between N(mu1, cov1) and N(mu2, cov2), via symmetric eigendecompositions
    (tr sqrt(S1 S2) = tr sqrt(S1^1/2 S2 S1^1/2), a PSD matrix): float64, no scipy."""
    mu1, mu2 = np.asarray(mu1, np.float64), np.asarray(mu2, np.float64)
    cov1, cov2 = np.asarray(cov1, np.float64), np.asarray(cov2, np.float64)
    s1 = _sqrt_psd(cov1)
    inner = s1 @ cov2 @ s1
    tr_sqrt = np.sqrt(np.clip(np.linalg.eigvalsh((inner + inner.T) / 2), 0, None)).sum()
    value = float(((mu1 - mu2) ** 2).sum() + np.trace(cov1) + np.trace(cov2) - 2 * tr_sqrt)
    return max(value, 0.0)


def fd_between(a: SetStats, b: SetStats) -> float:
    return frechet_distance(a.mu, a.cov, b.mu, b.cov)


def total_variation(p: np.ndarray | None, q: np.ndarray | None) -> float | None:
    if p is None or q is None:
        return None
    return float(0.5 * np.abs(np.asarray(p, np.float64) - np.asarray(q, np.float64)).sum())


def landmarks_in_order(points: torch.Tensor) -> torch.Tensor:
    """points [B, 68, 2] (x, y in [0, 1], y down) -> bool [B]: every point inside the image, and
    brows above eyes above the nose bottom above the mouth above the chin; the subject's right eye,
    mouth corner and jaw end left of their left counterparts in the image; the nose bottom between the
    eye centres."""
    assert points.ndim == 3 and points.shape[1:] == (68, 2), f"points must be [B, 68, 2], got {list(points.shape)}"
    x, y = points[..., 0], points[..., 1]
    inside = ((points >= 0) & (points <= 1)).flatten(1).all(1)
    brow_y, eye_y = y[:, BROWS].mean(1), y[:, RIGHT_EYE + LEFT_EYE].mean(1)
    mouth_y = y[:, MOUTH].mean(1)
    vertical = (brow_y < eye_y) & (eye_y < y[:, NOSE_BOTTOM]) & (y[:, NOSE_BOTTOM] < mouth_y) & (mouth_y < y[:, CHIN])
    r_eye_x, l_eye_x = x[:, RIGHT_EYE].mean(1), x[:, LEFT_EYE].mean(1)
    horizontal = ((r_eye_x < l_eye_x) & (x[:, MOUTH_RIGHT] < x[:, MOUTH_LEFT]) & (x[:, JAW[0]] < x[:, JAW[-1]])
                  & (r_eye_x < x[:, NOSE_BOTTOM]) & (x[:, NOSE_BOTTOM] < l_eye_x))
    return inside & vertical & horizontal


# ---------------------------------------------------------------------------------------------
# Degraded copies (the scale)
# ---------------------------------------------------------------------------------------------

def jpeg_copies(images: torch.Tensor, quality: int = 30) -> torch.Tensor:
    """[B, 3, R, R] in [-1, 1] -> the same images after a JPEG round trip at `quality` (PIL, 4:2:0)."""
    from PIL import Image

    u8 = to_uint8(images).permute(0, 2, 3, 1).cpu().numpy()
    out = []
    for arr in u8:
        buf = io.BytesIO()
        Image.fromarray(arr, "RGB").save(buf, format="JPEG", quality=quality)
        buf.seek(0)
        with Image.open(buf) as im:
            out.append(np.asarray(im.convert("RGB")))
    back = torch.from_numpy(np.stack(out)).permute(0, 3, 1, 2).to(images.device)
    return back.float() / 127.5 - 1


def gaussian_blur(images: torch.Tensor, sigma: float = 1.0) -> torch.Tensor:
    """Separable Gaussian blur (taps out to 3 sigma, reflect padding) of [B, C, H, W]."""
    radius = max(1, math.ceil(3 * sigma))
    t = torch.arange(-radius, radius + 1, dtype=torch.float32, device=images.device)
    k = torch.exp(-(t ** 2) / (2 * sigma ** 2))
    k = k / k.sum()
    c = images.shape[1]
    x = F.pad(images.float(), (radius, radius, radius, radius), mode="reflect")
    x = F.conv2d(x, k.view(1, 1, 1, -1).repeat(c, 1, 1, 1), groups=c)
    return F.conv2d(x, k.view(1, 1, -1, 1).repeat(c, 1, 1, 1), groups=c)


# ---------------------------------------------------------------------------------------------
# Measuring sets
# ---------------------------------------------------------------------------------------------

@torch.no_grad()
def measure(judges: QualityJudges, batches: Iterable[torch.Tensor],
            transform: Callable[[torch.Tensor], torch.Tensor] | None = None) -> SetStats:
    """Descriptor mean/covariance (float64), top-emotion histogram and landmark-order share of a set."""
    n, s1, s2 = 0, None, None
    hist = None
    ok = 0
    order_checked = False
    for images in batches:
        if transform is not None:
            images = transform(images)
        feats = judges.identity(images).double()
        s1 = feats.sum(0) if s1 is None else s1 + feats.sum(0)
        s2 = feats.T @ feats if s2 is None else s2 + feats.T @ feats
        n += feats.shape[0]
        if judges.emotion is not None:
            probs = judges.emotion(images)
            counts = torch.bincount(probs.argmax(1), minlength=probs.shape[1]).double()
            hist = counts if hist is None else hist + counts
        if judges.landmarks is not None and getattr(judges.landmarks, "n_points", None) == 68:
            ok += int(landmarks_in_order(judges.landmarks(images).float()).sum())
            order_checked = True
    if n < 2:
        raise ValueError(f"quality: a set needs at least 2 images, got {n}")
    mu = (s1 / n).cpu().numpy()
    cov = ((s2 - n * torch.outer(s1 / n, s1 / n)) / (n - 1)).cpu().numpy()
    return SetStats(n, mu, cov, None if hist is None else (hist / n).cpu().numpy(),
                    ok / n if order_checked else None)


@torch.no_grad()
def generated_batches(G: nn.Module, n: int, batch_size: int, seed: int, device: torch.device,
                      stream_index: int = 3000) -> Iterator[torch.Tensor]:
    """n images of G (random noise, no truncation) from a fixed seed: the same faces at every evaluation."""
    rng = rng_for(seed, Stream.HELD_OUT, stream_index, device)
    for start in range(0, n, batch_size):
        b = min(batch_size, n - start)
        z = torch.randn(b, G.z_dim, generator=rng, device=device)
        wplus = G.broadcast(G.mapping(z))
        noise = G.make_noise("random", b, generator=rng, device=device)
        yield G.synthesis(wplus, noise).float().clamp(-1, 1)


def compute_scale(judges: QualityJudges, reference: Callable[[int], Iterator[torch.Tensor]]) -> tuple[SetStats, dict]:
    """The reference statistics (set 0) and the scale: noise floor (set 0 vs set 1), JPEG-30 and blur-1 copies
    of set 0. `reference(set_index)` yields that set's batches. Also the floors of the other measures
    (set 1's emotion total variation against set 0, both landmark shares)."""
    a = measure(judges, reference(0))
    b = measure(judges, reference(1))
    jpeg = measure(judges, reference(0), transform=jpeg_copies)
    blur = measure(judges, reference(0), transform=gaussian_blur)
    scale = {"n": min(a.n, b.n), "noise_floor": fd_between(a, b), "jpeg30": fd_between(a, jpeg),
             "blur1": fd_between(a, blur), "data_landmark_order_share": a.landmark_share,
             "data_set1_landmark_order_share": b.landmark_share,
             "emotion_tv_noise_floor": total_variation(a.emotion_hist, b.emotion_hist),
             "data_emotion_hist": None if a.emotion_hist is None else [float(v) for v in a.emotion_hist]}
    return a, scale


def evaluate_generator(judges: QualityJudges, G: nn.Module, reference: SetStats, *, n: int, batch_size: int,
                       seed: int, device: torch.device) -> dict:
    """FD_face, landmark-order share and emotion TV of G's samples against the reference statistics."""
    student = measure(judges, generated_batches(G, n, batch_size, seed, device))
    return {"fd_face": fd_between(student, reference), "n": student.n,
            "landmark_order_share": student.landmark_share,
            "emotion_tv": total_variation(student.emotion_hist, reference.emotion_hist),
            "emotion_hist": None if student.emotion_hist is None else [float(v) for v in student.emotion_hist]}


def stats_tensors(stats: SetStats) -> dict[str, torch.Tensor]:
    out = {"mu": torch.from_numpy(stats.mu), "cov": torch.from_numpy(stats.cov)}
    if stats.emotion_hist is not None:
        out["emotion_hist"] = torch.from_numpy(np.asarray(stats.emotion_hist, np.float64))
    return out


def stats_from_tensors(t: dict[str, torch.Tensor], n: int, landmark_share: float | None) -> SetStats:
    hist = t["emotion_hist"].numpy() if "emotion_hist" in t else None
    return SetStats(n, t["mu"].numpy(), t["cov"].numpy(), hist, landmark_share)


# ---------------------------------------------------------------------------------------------
# Pictures
# ---------------------------------------------------------------------------------------------

def image_grid(images: torch.Tensor, columns: int = 8, tile: int | None = None):
    """[N, 3, R, R] in [-1, 1] -> a PIL image, `columns` tiles per row (upscaled to `tile` px with nearest)."""
    from PIL import Image

    u8 = to_uint8(images).permute(0, 2, 3, 1).cpu().numpy()
    n, r = u8.shape[0], u8.shape[1]
    tile = tile or r
    rows = max(1, math.ceil(n / columns))
    sheet = Image.new("RGB", (columns * tile, rows * tile), "black")
    for i, arr in enumerate(u8):
        im = Image.fromarray(arr, "RGB")
        if tile != r:
            im = im.resize((tile, tile), Image.Resampling.NEAREST)
        sheet.paste(im, ((i % columns) * tile, (i // columns) * tile))
    return sheet


def contact_sheet(student: torch.Tensor, data: torch.Tensor, path: Path, tile: int = 64) -> Path:
    """Two 8x8 grids side by side: the student's samples (left) and data images (right), with titles."""
    from PIL import Image, ImageDraw

    left, right = image_grid(student[:64], 8, tile), image_grid(data[:64], 8, tile)
    gap, title = 16, 20
    sheet = Image.new("RGB", (left.width + gap + right.width, title + max(left.height, right.height)), "white")
    sheet.paste(left, (0, title))
    sheet.paste(right, (left.width + gap, title))
    draw = ImageDraw.Draw(sheet)
    draw.text((4, 4), "student (G_ema)", fill="black")
    draw.text((left.width + gap + 4, 4), "data / teacher", fill="black")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(path)
    return path


def fd_curve(history: list[dict], scale: dict | None, path: Path) -> Path:
    """FD_face over kimg (log y), with the scale's levels as horizontal lines."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.2), dpi=110)
    if history:
        ax.plot([h["kimg"] for h in history], [max(h["fd_face"], 1e-9) for h in history], "o-", label="student FD_face")
    styles = {"noise_floor": ("noise floor (teacher vs teacher)", "green"),
              "jpeg30": ("teacher vs JPEG-30 copies", "orange"), "blur1": ("teacher vs blur sigma 1 px", "red")}
    for key, (label, colour) in styles.items():
        if scale and scale.get(key) is not None:
            ax.axhline(max(scale[key], 1e-9), ls="--", color=colour, label=f"{label}: {scale[key]:.4g}")
    ax.set_yscale("log")
    ax.set_xlabel("kimg (thousands of real images shown to D)")
    ax.set_ylabel("FD_face (face-api 128-d descriptors)")
    n = scale.get("n") if scale else None
    ax.set_title("FD_face over training" + (f" (N = {n} per set)" if n else ""))
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path


def where_on_scale(fd: float, scale: dict) -> str:
    """A sentence placing an FD_face on the scale."""
    levels = sorted((v, k) for k, v in scale.items() if k in ("noise_floor", "jpeg30", "blur1") and v is not None)
    below = [k for v, k in levels if fd < v]
    if not below:
        return f"FD_face {fd:.4g} is above every level of the scale (worst: {levels[-1][1]} {levels[-1][0]:.4g})"
    return f"FD_face {fd:.4g} is below {', '.join(below)} (" + ", ".join(f"{k} {v:.4g}" for v, k in levels) + ")"


def as_dict(stats: SetStats) -> dict:
    d = asdict(stats)
    d.pop("mu"), d.pop("cov")
    return d
