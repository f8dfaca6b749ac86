"""The per-chunk computation of the invert stage: read, then decode + detect + align + project + measure.
Each class/function is a Ray Data actor or task and works the same in-process (tests, benchmarks).

A chunk is `batch_faces` consecutive input rows (within one shard). Per row it yields: status, the
face box / score / warp matrix, the latent (NaN rows where there is no face), the quality measures,
and the PNG bytes of the aligned crop and the reconstruction (b"" when not stored).
"""

from __future__ import annotations

import numpy as np
import torch

from pipeline.presets import fast_measuring_networks
from pipeline.stages.generate import ImageConfig, encode_image, object_array, pack_chunks, setup_torch, split_chunks
from pipeline.stages.invert.align import align_faces, decode_image, to_tensor, to_uint8, warp
from pipeline.stages.invert.job import InvertJob
from pipeline.stages.invert.project import Projection, Projector, face_seeds
from pipeline.stages.invert.quality import QualityJudges

FLOAT_COLUMNS = ("face_score", "psnr", "identity_cosine", "landmark_error", "emotion_tv", "loss_start", "loss_end")


def read_chunks(batch: dict, source, chunks: np.ndarray) -> dict:
    """Ray map_batches fn: chunk positions (column `data`) -> per chunk the shard, rows and image bytes."""
    out = []
    for i in batch["data"]:
        shard, start, stop = map(int, chunks[int(i)])
        rows = np.arange(start, stop, dtype=np.int64)
        data = source.read_images(rows)
        out.append({"shard": shard, "rows": rows, "image_bytes": object_array([d or b"" for d in data])})
    return pack_chunks(out)


class InvertStage:
    """Inverting actor: chunk (rows, image bytes) -> one output row per input row."""

    def __init__(self, job: InvertJob, counter=None):
        from pipeline.presets.faces import build_face_detector, build_heldout_identity
        self.job, cfg = job, job.cfg
        self.counter = counter          # a progress.RowCounter handle (or None): told of every finished chunk
        self.device = setup_torch(job.device, cfg.precision, cfg.resources.torch_threads)
        bundle = job.bundle_factory("cpu").to(self.device)
        # the loss networks on the fast path too (NHWC; compiled on CUDA, see ModelConfig.compile_measuring)
        fast_measuring_networks(cfg.model, bundle.perceptual, bundle.landmarks,
                                getattr(bundle.identity, "model", bundle.identity))
        self.projector = Projector(bundle, cfg.projection, precision=cfg.precision, w_std_seed=cfg.seed)
        self.detector = None
        if job.alignment.method != "none":
            self.detector = build_face_detector(cfg.model, cfg.align.min_score).to(self.device)
        _, heldout = build_heldout_identity(cfg.model, job.facts.heldout_identity)
        self.judges = QualityJudges(bundle, heldout, self.device)
        self.landmarks = bundle.landmarks if cfg.align.refine else None     # the second alignment pass
        self.image_cfg = ImageConfig(format="png", png_compress_level=cfg.png_compress_level)
        self.resolution = job.facts.resolution

    def empty_rows(self, chunk: dict) -> dict:
        """The chunk's rows with every measurement missing (NaN / "" / False)."""
        n, f = len(chunk["rows"]), self.job.facts
        latent = f.n_latent * f.w_dim
        noise = sum(h * w for h, w in f.noise_shapes)
        k = len(f.emotion_labels)
        out = {"shard": np.full(n, int(chunk["shard"]), np.int64), "row": np.asarray(chunk["rows"], np.int64),
               "status": np.full(n, "unreadable", dtype=object), "face_box": np.full((n, 4), np.nan, np.float32),
               "align_matrix": np.full((n, 6), np.nan, np.float32), "wplus": np.full((n, latent), np.nan, np.float32),
               "source_emotion": np.full((n, k), np.nan, np.float32),
               "reconstruction_emotion": np.full((n, k), np.nan, np.float32),
               "source_emotion_label": np.full(n, "", dtype=object),
               "reconstruction_emotion_label": np.full(n, "", dtype=object),
               "emotion_agreement": np.zeros(n, bool),
               "aligned_png": object_array([b""] * n), "reconstruction_png": object_array([b""] * n)}
        if noise:
            out["noise"] = np.full((n, noise), np.nan, np.float32)
        out.update({name: np.full(n, np.nan, np.float32) for name in FLOAT_COLUMNS})
        return out

    def rows(self, chunk: dict) -> dict:
        out = self.empty_rows(chunk)
        pixels = [decode_image(bytes(b)) for b in chunk["image_bytes"]]
        readable = [i for i, p in enumerate(pixels) if p is not None]
        if not readable:
            return out
        images = [to_tensor(pixels[i], self.device) for i in readable]
        aligned = align_faces(images, self.job.alignment, self.resolution, detector=self.detector,
                              landmarks=self.landmarks, min_score=self.job.cfg.align.min_score,
                              keep_framed=keep_framed_sigmas(self.job.cfg.align))
        found_k = [k for k, m in enumerate(aligned.matrices) if m is not None]    # positions in `images`
        found = [readable[k] for k in found_k]
        for k, i in enumerate(readable):
            face, matrix = aligned.faces[k], aligned.matrices[k]
            out["status"][i] = "no_face" if matrix is None else "ok"
            out["face_score"][i] = face.score          # the best candidate's, also below min_score
            out["face_box"][i] = face.box
            if matrix is not None:
                out["align_matrix"][i] = np.asarray(matrix).reshape(-1)
        if not found:
            return out
        crops = to_uint8(aligned.crops)                     # the target is exactly what the file stores
        seeds = face_seeds(self.job.cfg.seed, out["row"][found])
        second = second_framings(aligned, images, found_k, self.resolution) if self.job.cfg.align.fit_both else {}
        crops, result, chosen = project_best_framing(self.projector, crops, seeds, second)
        for j in chosen:                                   # the plain resize won: its warp is the output's
            out["align_matrix"][readable[found_k[j]]] = np.asarray(aligned.resized[found_k[j]]).reshape(-1)
        recons = to_uint8(result.images)
        quality = self.judges(crops, recons)
        idx = np.asarray(found)
        out["wplus"][idx] = result.wplus.reshape(len(found), -1).float().cpu().numpy()
        if result.noise is not None:
            out["noise"][idx] = torch.cat([n.reshape(len(found), -1) for n in result.noise], 1).cpu().numpy()
        out["loss_start"][idx] = result.loss_start.float().cpu().numpy()
        out["loss_end"][idx] = result.loss_end.float().cpu().numpy()
        for name, values in quality.items():
            out[name][idx] = values
        if self.job.cfg.store_images:
            crops_np, recons_np = crops.cpu().numpy(), recons.cpu().numpy()
            for k, i in enumerate(found):
                out["aligned_png"][i] = encode_image(crops_np[k], self.image_cfg)
                out["reconstruction_png"][i] = encode_image(recons_np[k], self.image_cfg)
        return out

    def __call__(self, batch: dict) -> dict:
        parts = []
        for chunk in split_chunks(batch):
            parts.append(self.rows(chunk))
            if self.counter is not None:
                self.counter.add.remote(len(chunk["rows"]))       # fire and forget: progress only
        return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}


def second_framings(aligned, images: list[torch.Tensor], found: list[int], size: int) -> dict[int, torch.Tensor]:
    """{position j among the found faces (images[found[j]]): uint8 crop [R, R, 3] of the plain resize} for
    every face the alignment moved (Aligned.resized), the other framing align.fit_both tries."""
    if not aligned.resized:
        return {}
    return {j: to_uint8(warp(images[k], aligned.resized[k], size)[None])[0]
            for j, k in enumerate(found) if aligned.resized[k] is not None}


def project_best_framing(projector: Projector, crops: torch.Tensor, seeds: list[int],
                         second: dict[int, torch.Tensor]) -> tuple[torch.Tensor, Projection, set[int]]:
    """Project uint8 crops [B, R, R, 3] and, in the same batch, the second framing of some of them (same
    seeds); per face keep the framing whose loss ends lower. -> (the kept crops [B, R, R, 3], their
    Projection, the positions whose second framing won)."""
    order = sorted(second)
    candidates = torch.cat([crops, torch.stack([second[j] for j in order])]) if order else crops
    result = projector.project(candidates.permute(0, 3, 1, 2).float() / 127.5 - 1.0,
                               seeds + [seeds[j] for j in order])
    if not order:
        return crops, result, set()
    pick = list(range(len(crops)))
    loss_end = result.loss_end.float().cpu()
    for n, j in enumerate(order, start=len(crops)):
        if loss_end[n] < loss_end[j]:
            pick[j] = n
    sel = torch.as_tensor(pick, device=result.wplus.device)      # every tensor here is on the projector's device
    return candidates[sel.to(candidates.device)], result.select(sel), {j for j in order if pick[j] != j}


def keep_framed_sigmas(align) -> float | None:
    """AlignConfig -> align_faces' keep_framed: keep_sigmas, or None (always warp to the template)."""
    return align.keep_sigmas if align.keep_framed else None
