"""How well an inversion kept the face: measured on the uint8 aligned crop (the target) and the uint8
reconstruction (what the files hold), never with the inversion loss's own descriptor.

    psnr            10 log10(255^2 / MSE) over the pixels (capped at 100 dB for identical images)
    identity_cosine cosine of the held-out descriptor (the preset's `heldout_identity`, e.g. human's
                    faceres for the starter, whose loss uses face-api's descriptor) of crop and reconstruction
    landmark_error  mean point distance of the preset's landmark model H (which IS in the loss) between
                    crop and reconstruction, in inter-ocular distances of the crop (image sides without eyes)
    emotion         the preset's emotion judge (fer for the starter; not in the loss) on both: the
                    probabilities, the top labels, whether they agree, and the total variation between them
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from pipeline.core.metrics import landmark_drift, landmark_scale, total_variation

PSNR_CAP = 100.0


def psnr(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """uint8 [B, H, W, 3] pairs -> [B] PSNR in dB (capped at PSNR_CAP)."""
    mse = ((a.astype(np.float64) - b.astype(np.float64)) ** 2).reshape(len(a), -1).mean(axis=1)
    with np.errstate(divide="ignore"):
        value = 10 * np.log10(255.0 ** 2 / mse)
    return np.minimum(value, PSNR_CAP)


class QualityJudges:
    """The measuring networks on one device: held-out descriptor, landmark model, emotion judge."""

    def __init__(self, bundle, heldout_identity, device: torch.device):
        self.device = device
        self.identity = heldout_identity.to(device).eval()
        self.landmarks = bundle.landmarks.to(device).eval()
        self.emotion = bundle.emotion.to(device).eval()
        self.groups = {k: list(v) for k, v in getattr(bundle.landmarks, "groups", {}).items()}
        self.labels = np.asarray(getattr(bundle.emotion, "labels", [f"class{i}" for i in range(7)]))

    @torch.no_grad()
    def __call__(self, crops: torch.Tensor, recons: torch.Tensor) -> dict[str, np.ndarray]:
        """uint8 [B, R, R, 3] crops and reconstructions -> per-face measurements (numpy, [B] or [B, 7])."""
        if len(crops) == 0:
            return {}
        both = torch.cat([crops, recons]).to(self.device).permute(0, 3, 1, 2).float() / 127.5 - 1.0
        b = len(crops)
        desc = self.identity(both).float()
        points = self.landmarks(both).float().cpu().numpy()
        probs = self.emotion(both).float().cpu().numpy()
        scale, _ = landmark_scale(points[:b], self.groups)
        src, rec = probs[:b], probs[b:]
        return {"psnr": psnr(crops.cpu().numpy(), recons.cpu().numpy()).astype(np.float32),
                "identity_cosine": F.cosine_similarity(desc[:b], desc[b:], dim=1).cpu().numpy().astype(np.float32),
                "landmark_error": landmark_drift(points[:b], points[b:], scale).astype(np.float32),
                "source_emotion": src.astype(np.float32), "reconstruction_emotion": rec.astype(np.float32),
                "source_emotion_label": self.labels[src.argmax(1)],
                "reconstruction_emotion_label": self.labels[rec.argmax(1)],
                "emotion_agreement": src.argmax(1) == rec.argmax(1),
                "emotion_tv": total_variation(src, rec).astype(np.float32)}
