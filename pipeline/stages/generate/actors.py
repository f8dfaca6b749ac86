"""The per-chunk computation of the generate stage: generator, scorers, encoders. Each class is a Ray
Data actor (constructed once per actor, called per batch of chunks) and works the same in-process
(tests, benchmarks). Images travel as uint8 [B, H, W, 3]; measurements are taken on them.
"""

from __future__ import annotations

import io

import numpy as np
import torch

from pipeline.core.cuda_graphs import GraphedCall
from pipeline.core.metrics import landmark_drift, landmark_scale, total_variation
from pipeline.core.sampling import latents_from_z, sample_noise
from pipeline.presets import apply_fast_path, fast_measuring_networks
from pipeline.stages.generate.config import ImageConfig
from pipeline.stages.generate.job import GenerateJob
from pipeline.stages.generate.plan import concat_rows, object_array, pack_chunks, split_chunks


def autocast(device: torch.device, precision: str):
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=precision == "bf16")


def to_uint8_hwc(image: torch.Tensor) -> torch.Tensor:
    """image [B, 3, H, W] in [-1, 1] -> [B, H, W, 3] uint8 (round to nearest)."""
    return ((image.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).contiguous()


def from_uint8_hwc(pixels: torch.Tensor) -> torch.Tensor:
    """[B, H, W, 3] uint8 -> image [B, 3, H, W] float in [-1, 1]."""
    return pixels.permute(0, 3, 1, 2).float() / 127.5 - 1.0


def setup_torch(device: str, precision: str, threads: int) -> torch.device:
    torch.set_num_threads(threads)
    dev = torch.device(device)
    if dev.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = precision == "tf32"
        torch.backends.cudnn.allow_tf32 = precision == "tf32"
        torch.backends.cudnn.benchmark = False   # the same kernels every run: deterministic outputs
    return dev


def graphed(fn, device: torch.device, enabled: bool):
    """fn replayed from CUDA graphs (one per chunk shape) on a CUDA device when `enabled`, else fn."""
    return GraphedCall(fn) if enabled and device.type == "cuda" else fn


LATENT_KEYS = ("z", "wplus", "noise_flat")       # per-source inputs that stay in the generator actor


def source_noise(generator, chunk: dict, device) -> list[torch.Tensor]:
    """The sources' own noise maps (an inversion that optimised them): flat [u, N] -> per layer [u, 1, r, r]."""
    flat = torch.tensor(np.asarray(chunk["noise_flat"]), device=device, dtype=torch.float32)
    maps, start = [], 0
    for ref in generator.make_noise("const", 1):
        h, w = ref.shape[-2:]
        maps.append(flat[:, start:start + h * w].reshape(-1, 1, h, w))
        start += h * w
    assert start == flat.shape[1], f"noise maps: {flat.shape[1]} values per source, the generator takes {start}"
    return maps


class GeneratorStage:
    """Generator actor: chunk (z or given W+ latents, s, seeds) -> uint8 source images [u, H, W, 3] and
    variant images [b, H, W, 3].

    On CUDA the generator runs its fast path (cfg.model.fast_path) and, with resources.cuda_graph, the
    whole chunk computation (mapping, T, synthesis, quantisation) replays as one CUDA graph per chunk
    shape; the images it returns are then the graph's buffers, valid until the next call.
    """

    def __init__(self, job: GenerateJob):
        from models.editing import DirectionMatrix
        self.job = job
        self.device = setup_torch(job.device, job.cfg.precision, job.cfg.resources.torch_threads)
        generator = job.bundle_factory("cpu").generator                  # only what this actor runs
        apply_fast_path(job.cfg.model.fast_path, generator)
        self.generator = generator.to(self.device).eval()
        T = job.T
        self.T = DirectionMatrix(T.shape[0], T.shape[1], T.shape[2], layer_mask=job.directions.layer_mask or None)
        with torch.no_grad():
            self.T.T.copy_(T)
        self.T = self.T.to(self.device).eval()
        enabled = job.cfg.resources.cuda_graph
        self.pixels_from_z = graphed(self._pixels_from_z, self.device, enabled)
        self.pixels_from_w = graphed(self._pixels_from_w, self.device, enabled)

    @torch.no_grad()
    def images(self, chunk: dict) -> tuple[torch.Tensor, torch.Tensor]:
        """(source uint8 [u, H, W, 3], variant uint8 [b, H, W, 3]) on the actor's device."""
        cfg, g = self.job.cfg, self.generator
        from_sources = "wplus" in chunk                                     # --sources: latents given
        slot = torch.tensor(np.asarray(chunk["slot"]), device=self.device).long()
        s = torch.tensor(np.asarray(chunk["s"]), device=self.device)
        rngs = []
        if cfg.noise_mode == "random":  # the noise maps follow z in each source's own stream
            rngs = [torch.Generator().manual_seed(int(x)) for x in np.asarray(chunk["latent_seeds"])]
            for r in rngs:
                torch.randn(self.job.facts.z_dim, generator=r)
        # Noise is drawn on the host, outside a graph: the sources' own maps, or per-source random maps.
        noise = source_noise(g, chunk, self.device) if "noise_flat" in chunk else \
            sample_noise(g, cfg.noise_mode, rngs, self.device)
        maps = noise if isinstance(noise, list) else ()
        if from_sources:
            w = torch.tensor(np.asarray(chunk["wplus"]), device=self.device, dtype=torch.float32)
            return tuple(self.pixels_from_w(w, slot, s, *maps))
        z = torch.tensor(np.asarray(chunk["z"]), device=self.device)
        return tuple(self.pixels_from_z(z, slot, s, *maps))

    def _pixels_from_z(self, z: torch.Tensor, slot: torch.Tensor, s: torch.Tensor, *noise: torch.Tensor):
        """z [u, Z], slot [b], s [b, N], per-source noise maps -> uint8 (sources, variants)."""
        with autocast(self.device, self.job.cfg.precision):
            w = latents_from_z(self.generator, z, self.job.cfg.truncation)    # [u, L, w_dim]
        return self._pixels_from_w(w, slot, s, *noise)

    def _pixels_from_w(self, w: torch.Tensor, slot: torch.Tensor, s: torch.Tensor, *noise: torch.Tensor):
        """wplus [u, L, w_dim], slot [b], s [b, N], per-source noise maps -> uint8 (sources, variants)."""
        cfg, g = self.job.cfg, self.generator
        with autocast(self.device, cfg.precision):
            w_edit = self.T(w[slot], s)                                     # [b, L, w_dim]
            maps = [torch.cat([n, n[slot]]) for n in noise] if noise else cfg.noise_mode   # per-image maps
            images = g.synthesis(torch.cat([w, w_edit]), maps)
        pixels = to_uint8_hwc(images)
        return pixels[: len(w)], pixels[len(w):]

    def __call__(self, batch: dict) -> dict:
        outs = []
        for chunk in split_chunks(batch):
            src, var = self.images(chunk)
            out = {k: v for k, v in chunk.items() if k not in LATENT_KEYS}
            out["source_pixels"], out["variant_pixels"] = src.cpu().numpy(), var.cpu().numpy()
            outs.append(out)
        return pack_chunks(outs)


class Scorers:
    """The measuring networks on one device: emotion, landmarks, attributes, judges."""

    def __init__(self, job: GenerateJob, device: torch.device):
        bundle = job.bundle_factory("cpu")          # moved to the device below: only what this actor runs
        self.device, self.precision = device, job.cfg.precision
        self.emotion = bundle.emotion.to(device).eval()
        self.landmarks = bundle.landmarks.to(device).eval()
        self.regressor = bundle.regressor.to(device).eval()
        self.judges = {name: bundle.judges[name].to(device).eval() for name in job.cfg.judges}
        # NHWC conv weights (a factory other than build_bundle may skip them) and, with fast_path "compiled"
        # and model.compile_measuring, each network's forward torch.compile'd on CUDA (BN, activations,
        # casts and resizing fused; the CUDA graph below captures the compiled kernels)
        fast_measuring_networks(job.cfg.model, self.emotion, self.landmarks, self.regressor, *self.judges.values())
        self.keys = ("emotion", "landmarks", "attributes", *(f"judge_{k}" for k in self.judges))
        del bundle
        self.measure = graphed(self._measure, device, job.cfg.resources.cuda_graph)

    @torch.no_grad()
    def __call__(self, pixels: torch.Tensor) -> dict[str, np.ndarray]:
        """uint8 [B, H, W, 3] -> emotion [B, 7], landmarks [B, P, 2], attributes [B, A], judge_<name> [B, 7]."""
        out = self.measure(pixels.to(self.device))
        return {k: v.float().cpu().numpy() for k, v in zip(self.keys, out)}

    def _measure(self, pixels: torch.Tensor) -> tuple[torch.Tensor, ...]:
        image = from_uint8_hwc(pixels)
        with autocast(self.device, self.precision):
            out = [self.emotion(image), self.landmarks(image), self.regressor(image)]
            out += [m(image) for m in self.judges.values()]
        return tuple(v.float() for v in out)


def measure_rows(job: GenerateJob, chunk: dict, src: dict[str, np.ndarray], var: dict[str, np.ndarray]) -> dict:
    """Per-face columns of one chunk from the source/variant measurements (drift and QC included)."""
    slot, qc, labels = np.asarray(chunk["slot"]), job.cfg.qc, np.asarray(job.facts.emotion_labels)
    s_emotion, v_emotion = src["emotion"][slot], var["emotion"]
    s_points, v_points = src["landmarks"][slot], var["landmarks"]
    scale, _ = landmark_scale(s_points, job.facts.landmark_groups)
    e_drift = total_variation(s_emotion, v_emotion).astype(np.float32)
    l_drift = landmark_drift(s_points, v_points, scale).astype(np.float32)
    s_label, v_label = s_emotion.argmax(1), v_emotion.argmax(1)
    qc_pass = (e_drift <= qc.max_emotion_drift) & (l_drift <= qc.max_landmark_drift)
    if qc.keep_emotion_label:
        qc_pass &= s_label == v_label
    b = len(slot)
    out = {
        "source_emotion": s_emotion, "source_emotion_label": labels[s_label],
        "source_landmarks": s_points.reshape(b, -1), "source_attributes": src["attributes"][slot],
        "variant_emotion": v_emotion, "variant_emotion_label": labels[v_label],
        "variant_landmarks": v_points.reshape(b, -1), "variant_attributes": var["attributes"],
        "emotion_drift": e_drift, "landmark_drift": l_drift, "emotion_label_kept": s_label == v_label,
        "qc_pass": qc_pass,
    }
    for name in job.cfg.judges:
        js, jv = src[f"judge_{name}"][slot], var[f"judge_{name}"]
        out[f"judge_{name}_source_emotion"] = js
        out[f"judge_{name}_variant_emotion"] = jv
        out[f"judge_{name}_emotion_drift"] = total_variation(js, jv).astype(np.float32)
    return out


ROW_ID_COLUMNS = ("shard", "row_index", "source_index", "variant", "latent_seed", "edit_seed", "s")


class ScorerStage:
    """Scorer actor: chunk of uint8 images -> one row per face with every measurement (and the pixels,
    or the JPEG bytes when image.encoder is "gpu")."""

    def __init__(self, job: GenerateJob, device: torch.device | None = None):
        self.job = job
        self.device = device or setup_torch(job.device, job.cfg.precision, job.cfg.resources.torch_threads)
        self.scorers = Scorers(job, self.device)

    def rows(self, chunk: dict, src_pixels: torch.Tensor, var_pixels: torch.Tensor) -> dict:
        n_src = src_pixels.shape[0]
        scores = self.scorers(torch.cat([src_pixels.to(self.device), var_pixels.to(self.device)]))
        src = {k: v[:n_src] for k, v in scores.items()}
        var = {k: v[n_src:] for k, v in scores.items()}
        b = len(chunk["slot"])
        out = {k: (np.full(b, chunk[k], np.int64) if k == "shard" else np.asarray(chunk[k])) for k in ROW_ID_COLUMNS}
        out.update(measure_rows(self.job, chunk, src, var))
        image_cfg = self.job.cfg.image
        slot = torch.tensor(np.asarray(chunk["slot"])).long()
        if image_cfg.encoder == "gpu":
            out["image"] = gpu_jpeg(var_pixels.to(self.device), image_cfg.quality)
            if image_cfg.store_source:
                out["source_image"] = gpu_jpeg(src_pixels.to(self.device), image_cfg.quality)[slot.numpy()]
        else:
            out["variant_pixels"] = var_pixels.cpu().numpy()
            if image_cfg.store_source:
                out["source_pixels"] = src_pixels.cpu()[slot].numpy()
        return out

    def __call__(self, batch: dict) -> dict:
        # np.array copies: Ray hands out read-only views, which torch refuses to wrap silently.
        parts = [self.rows(c, torch.from_numpy(np.array(c["source_pixels"])),
                           torch.from_numpy(np.array(c["variant_pixels"]))) for c in split_chunks(batch)]
        return concat_rows(parts)


class FusedStage:
    """Generator and scorers in one actor: the images never leave the device until encoding."""

    def __init__(self, job: GenerateJob):
        self.generate = GeneratorStage(job)
        self.score = ScorerStage(job, self.generate.device)

    def __call__(self, batch: dict) -> dict:
        parts = []
        for chunk in split_chunks(batch):
            src, var = self.generate.images(chunk)
            parts.append(self.score.rows(chunk, src, var))
        return concat_rows(parts)


def gpu_jpeg(pixels: torch.Tensor, quality: int) -> np.ndarray:
    """uint8 [B, H, W, 3] -> object array of JPEG bytes with torchvision (nvJPEG in one batched call when
    the tensor is on CUDA; libjpeg on CPU)."""
    from torchvision.io import encode_jpeg
    if len(pixels) == 0:
        return object_array([])
    encoded = encode_jpeg(list(pixels.permute(0, 3, 1, 2).contiguous().unbind(0)), quality=quality)
    # one device-to-host copy for the whole chunk (one copy per image cost a sync each), split by length
    flat = torch.cat(encoded).cpu().numpy()
    ends = np.cumsum([e.numel() for e in encoded])[:-1]
    return object_array([part.tobytes() for part in np.split(flat, ends)])


def encode_image(pixels: np.ndarray, image_cfg: ImageConfig) -> bytes:
    """uint8 [H, W, 3] -> PNG / JPEG / WebP bytes, with fixed settings (deterministic)."""
    from PIL import Image
    buf = io.BytesIO()
    img = Image.fromarray(np.ascontiguousarray(pixels), mode="RGB")
    if image_cfg.format == "png":
        img.save(buf, format="PNG", compress_level=image_cfg.png_compress_level)
    elif image_cfg.format == "jpeg":
        img.save(buf, format="JPEG", quality=image_cfg.quality)
    else:
        img.save(buf, format="WEBP", quality=image_cfg.quality, method=4)
    return buf.getvalue()


class EncoderStage:
    """Encoder actor: variant (and source) pixels -> image bytes."""

    def __init__(self, image_cfg: ImageConfig):
        self.image_cfg = image_cfg

    def __call__(self, batch: dict) -> dict:
        out = {k: v for k, v in batch.items() if k not in ("variant_pixels", "source_pixels")}
        out["image"] = object_array([encode_image(p, self.image_cfg) for p in batch["variant_pixels"]])
        if "source_pixels" in batch:
            out["source_image"] = object_array([encode_image(p, self.image_cfg) for p in batch["source_pixels"]])
        return out
