"""Stage `generate`: many labelled appearances of each face, scored and written to parquet with Ray Data.

    cfg = load_config(GenerateConfig, "generate.yaml")
    result = run_generation(cfg)          # validation, then an MLflow run around run_generate

N source faces x K variants. Source face i has the latent z_i (from its own seed); variant v of it
is G(w_i + T s_iv) with s_iv from the edit policy (pipeline/policies.py). Every row is one variant
(variants 0..K-1 are all edits; the recipe "none" gives an unedited copy when wanted); the labels
measured on the unedited source face are stored on each of its rows.

Row identifiers and seeds (every row can be regenerated from what it stores):
    row_index   = source_index * K + variant      (global, the sort order of the files)
    latent_seed = derive_seed(seed, Stream.GENERATE, source_index)
                  z = randn(z_dim) from torch.Generator seeded with it (then the noise maps, when
                  noise_mode is "random"); w = mapping(z), truncated with `truncation`.
    edit_seed   = derive_seed(latent_seed, Stream.GENERATE, variant)
                  s = policy.edit(edit_seed, variant); a child of the source's seed, so the edit draws
                  never share a seed with a latent draw.

The Ray Data pipeline (no loop over rows on the driver):
    range(chunks) -> latents (z, s, seeds per chunk; fused into the generator actors by Ray)
      -> generator actors (x = G(w), x' = G(w + T s), quantised to uint8; GPU when there is one)
      -> scorer actors (emotion, landmarks, attributes, judges on the uint8 images; drift and QC;
         one output row per face; JPEG on the GPU when image.encoder = "gpu")
      -> encoder actors (PNG / JPEG / WebP with PIL) -> one shard-writer actor.
A chunk (the unit of GPU batching) is `batch_sources` sources with all their variants, laid out
inside shards, so every face is computed in the same batch composition in every run: outputs do
not depend on how Ray groups work, and a resumed run writes the same bytes as an uninterrupted one
(same hardware, software and resources.torch_threads).

Output directory:
    part-00000-of-00042.parquet ...   shard i = sources [i*shard_sources, (i+1)*shard_sources), row order
    _meta/job.json                    the job's output-affecting config + identifiers (written first)
    _meta/part-00000-of-00042.json    per-shard record: rows, sha256, bytes, QC count (before the rename)
    manifest.json                     counts, schema, config, every shard's hash (written last)
Each shard is written to a hidden temp file, hashed, recorded, then renamed: a partial file never
has a final name. A rerun skips shards whose file matches its record and writes only the others.

Measurements (DESIGN.md section 6 columns):
    emotion_drift  = total variation 0.5 * sum_k |p_k(x') - p_k(x)| of the 7 emotion probabilities, in [0, 1].
    landmark_drift = mean over points of ||p'(x') - p(x)|| divided by the source face's inter-ocular
                     distance (pipeline.metrics.landmark_drift), or by the image side without eye groups.
    qc_pass        = emotion_drift <= qc.max_emotion_drift and landmark_drift <= qc.max_landmark_drift
                     and (when qc.keep_emotion_label) the variant's emotion label equals the source's.
All measurements are taken on the uint8 images (what the files hold before encoding).
"""

from __future__ import annotations

import functools
import io
import json
import logging
import math
import os
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Literal

import numpy as np
import torch

from pipeline.config import ConfigError, flatten, require, to_dict
from pipeline.directions_source import ResolvedDirections, check_fits_generator, resolve_directions
from pipeline.policies import EditPolicy, EditPolicyConfig, build_policy
from pipeline.presets import ModelBundle, ModelConfig, build_bundle
from pipeline.seeding import Stream, derive_seed
from pipeline.tracking import TrackingConfig, open_tracker, resolve_tracking_uri
from models.load.common import file_sha256
from pipeline.checkpoints import atomic_write_bytes as atomic_write, current_umask
from pipeline.train import NoiseMode, check_output_locations, default_work_dir, latents_from_z, sample_noise

FORMAT = "hfld-generate"
FORMAT_VERSION = 1
ROW_GROUP_ROWS = 128            # parquet row group: small enough for streaming readers of large images
FAULT_ENV = "HFLD_FAULT_AFTER_SHARDS"  # test hook: the driver exits (status 17) after k committed shards
ImageFormat = Literal["png", "jpeg", "webp"]
Precision = Literal["fp32", "tf32", "bf16"]


# ---------------------------------------------------------------------------------------------
# Configuration
# ---------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class ImageConfig:
    """How faces are stored.

    format: png (lossless, default), jpeg or webp (with `quality`, for bulk runs).
    quality: 1..100 for jpeg/webp.
    png_compress_level: zlib level 0..9 for png (1 is much faster, files ~10% larger).
    encoder: "cpu" (PIL in encoder actors) or "gpu" (torchvision nvJPEG in the scorer actors; jpeg only).
    store_source: also store the unedited source face (column source_image) on every row.
    """
    format: ImageFormat = "png"
    quality: int = 90
    png_compress_level: int = 6
    encoder: Literal["cpu", "gpu"] = "cpu"
    store_source: bool = False

    def __post_init__(self):
        require(1 <= self.quality <= 100, "image.quality", self.quality, "must be in 1..100")
        require(0 <= self.png_compress_level <= 9, "image.png_compress_level", self.png_compress_level,
                "must be in 0..9")
        require(self.encoder == "cpu" or self.format == "jpeg", "image.encoder", self.encoder,
                f"'gpu' encodes JPEG only; set image.format=jpeg or image.encoder=cpu (format is {self.format!r})")


@dataclass(frozen=True)
class QCConfig:
    """Thresholds of the per-row QC flag (see the module docstring for the drift definitions).

    max_emotion_drift: in [0, 1] (total variation of the 7 emotion probabilities).
    max_landmark_drift: >= 0, in inter-ocular distances (image sides without eye groups).
    keep_emotion_label: also require the variant's top emotion to equal the source's.
    """
    max_emotion_drift: float = 0.25
    max_landmark_drift: float = 0.1
    keep_emotion_label: bool = True

    def __post_init__(self):
        require(0 <= self.max_emotion_drift <= 1, "qc.max_emotion_drift", self.max_emotion_drift,
                "must be in [0, 1] (a total-variation distance)")
        require(0 <= self.max_landmark_drift < math.inf, "qc.max_landmark_drift", self.max_landmark_drift,
                "must be a finite number >= 0")


@dataclass(frozen=True)
class GenerateResources:
    """Ray placement. Actor counts are pool sizes; fractional CPUs keep small machines from starving.

    address: Ray address to connect to ("" = the running instance, else start a local one).
    generators / scorers / encoders: actor pool sizes (one shard-writer actor always).
    fuse_scoring: score inside the generator actors (no scorer pool, no image hop through the object store).
    gpus_per_generator / gpus_per_scorer: GPU share of each actor when the device is CUDA.
    cpus_per_actor: CPU share reserved by every actor (the rest of a core is for Ray's read tasks).
    torch_threads: torch intra-op threads per actor (part of the determinism contract).
    writer_on_driver_node: place the shard-writer actor on the driver's node, so output_dir only has
      to exist there (set false on a cluster whose output_dir is a shared filesystem, to let Ray place it).
    """
    address: str = ""
    generators: int = 1
    scorers: int = 1
    encoders: int = 1
    fuse_scoring: bool = False
    gpus_per_generator: float = 0.5
    gpus_per_scorer: float = 0.5
    cpus_per_actor: float = 0.25
    torch_threads: int = 1
    writer_on_driver_node: bool = True

    def __post_init__(self):
        for name in ("generators", "scorers", "encoders", "torch_threads"):
            require(getattr(self, name) >= 1, f"resources.{name}", getattr(self, name), "must be >= 1")
        for name in ("gpus_per_generator", "gpus_per_scorer"):
            v = getattr(self, name)
            require(0 < v <= 8, f"resources.{name}", v, "must be in (0, 8]")
        require(0 < self.cpus_per_actor <= 64, "resources.cpus_per_actor", self.cpus_per_actor, "must be in (0, 64]")


@dataclass(frozen=True)
class GenerateConfig:
    """A generate job: `n_sources` faces x `variants` edits each (rows = n_sources * variants).

    directions: T as a file path, "runs:/<run_id>/<artifact path>" or "models:/<name>/<version>".
    policy: the edit policy (pipeline/policies.py).
    judges: extra emotion models of the preset (bundle.judges names) measured on source and variant.
    batch_sources: sources per GPU batch; a batch holds them and all their variants
      (batch_sources * (variants + 1) images).
    shard_sources: sources per parquet file (rows per file = shard_sources * variants).
    truncation / noise_mode: as in training (psi towards the mean latent; generator noise).
    precision: fp32, tf32 (CUDA matmul/conv in TF32) or bf16 (autocast) for generator and scorers.
    output_dir: "" = <work_dir>/<name>.
    verify_existing: re-hash finished shards before skipping them on a rerun.
    """
    model: ModelConfig = field(default_factory=ModelConfig)
    directions: str = ""
    policy: EditPolicyConfig = field(default_factory=EditPolicyConfig)
    n_sources: int = 100
    variants: int = 4
    seed: int = 0
    truncation: float = 1.0
    noise_mode: NoiseMode = "const"
    judges: tuple[str, ...] = ()
    batch_sources: int = 8
    shard_sources: int = 256
    image: ImageConfig = field(default_factory=ImageConfig)
    qc: QCConfig = field(default_factory=QCConfig)
    resources: GenerateResources = field(default_factory=GenerateResources)
    device: str = "auto"
    precision: Precision = "fp32"
    output_dir: str = ""
    work_dir: str = field(default_factory=default_work_dir)
    run_name: str = ""
    verify_existing: bool = True
    tracking: TrackingConfig = field(default_factory=TrackingConfig)

    def __post_init__(self):
        require(self.n_sources >= 1, "n_sources", self.n_sources, "must be >= 1")
        require(self.variants >= 1, "variants", self.variants, "must be >= 1")
        require(self.batch_sources >= 1, "batch_sources", self.batch_sources, "must be >= 1")
        require(self.shard_sources >= 1, "shard_sources", self.shard_sources, "must be >= 1")
        require(0 < self.truncation <= 1, "truncation", self.truncation, "must be in (0, 1]")
        require(self.device in ("auto", "cpu", "cuda") or self.device.startswith("cuda:"), "device", self.device,
                "must be auto, cpu or cuda")
        require(len(set(self.judges)) == len(self.judges), "judges", self.judges, "has duplicates")

    @property
    def name(self) -> str:
        return self.run_name or f"generate-{self.model.preset}-seed{self.seed}"

    @property
    def out_dir(self) -> Path:
        return Path(self.output_dir or Path(self.work_dir) / self.name).expanduser().resolve()

    @property
    def n_rows(self) -> int:
        return self.n_sources * self.variants


# Fields that do not change a single output byte: where things go, how Ray places work, tracking.
NON_OUTPUT_FIELDS = ("resources", "output_dir", "work_dir", "run_name", "verify_existing", "tracking")


def job_config(cfg: GenerateConfig) -> dict:
    """The output-affecting part of the config (recorded in job.json and the manifest)."""
    d = to_dict(cfg)
    for k in NON_OUTPUT_FIELDS:
        d.pop(k, None)
    return d


# ---------------------------------------------------------------------------------------------
# The plan: shards and chunks
# ---------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Plan:
    n_sources: int
    variants: int
    shard_sources: int
    batch_sources: int

    @property
    def n_shards(self) -> int:
        return -(-self.n_sources // self.shard_sources)

    def shard_sources_range(self, shard: int) -> tuple[int, int]:
        start = shard * self.shard_sources
        return start, min(self.n_sources, start + self.shard_sources)

    def shard_rows(self, shard: int) -> int:
        a, b = self.shard_sources_range(shard)
        return (b - a) * self.variants

    def shard_name(self, shard: int) -> str:
        return f"part-{shard:05d}-of-{self.n_shards:05d}"

    def chunks(self, shards) -> np.ndarray:
        """[C, 3] int64 (shard, first source, end source) of the given shards' chunks, in order."""
        rows = []
        for shard in shards:
            a, b = self.shard_sources_range(shard)
            starts = np.arange(a, b, self.batch_sources)
            rows.append(np.stack([np.full_like(starts, shard), starts,
                                  np.minimum(starts + self.batch_sources, b)], axis=1))
        return np.concatenate(rows).astype(np.int64) if rows else np.zeros((0, 3), np.int64)


# ---------------------------------------------------------------------------------------------
# The job: everything the actors need, validated on the driver before any work
# ---------------------------------------------------------------------------------------------

BundleFactory = Callable[[str], ModelBundle]


@dataclass
class ModelFacts:
    """What the driver learns from the bundle (and records in every file)."""
    generator_id: str
    n_latent: int
    w_dim: int
    z_dim: int
    resolution: int
    emotion_labels: tuple[str, ...]
    regressor_names: tuple[str, ...]
    landmark_points: int
    landmark_groups: dict[str, list[int]]
    judge_labels: dict[str, tuple[str, ...]]


@dataclass
class GenerateJob:
    cfg: GenerateConfig
    plan: Plan
    directions: ResolvedDirections
    policy: EditPolicy
    facts: ModelFacts
    bundle_factory: BundleFactory
    device: str                       # "cuda" or "cpu" for the actors ("auto" until Ray is up)
    out_dir: Path

    @property
    def T(self) -> torch.Tensor:
        return self.directions.T

    def file_metadata(self) -> dict:
        """The `hfld` key of every shard's parquet metadata (plus the shard index, added per file)."""
        f = self.facts
        return {
            "format": FORMAT, "format_version": FORMAT_VERSION,
            "edit_attributes": list(self.directions.attributes),
            "regressor_attributes": list(f.regressor_names),
            "emotion_labels": list(f.emotion_labels),
            "judges": {k: list(v) for k, v in f.judge_labels.items()},
            "landmark_points": f.landmark_points,
            "landmark_layout": "x0, y0, x1, y1, ... in [0, 1] of the image width/height",
            "landmark_drift_unit": "inter-ocular distance" if has_eye_groups(f.landmark_groups) else "image side",
            "emotion_drift": "total variation 0.5 * sum |p - q| of the emotion probabilities",
            "generator_id": f.generator_id, "resolution": f.resolution,
            "directions_source": self.directions.source, "directions_sha256": self.directions.sha256,
            "directions_run_id": self.directions.run_id,
            "policy": self.policy.describe(), "seed": self.cfg.seed, "variants": self.cfg.variants,
            "n_sources": self.cfg.n_sources, "truncation": self.cfg.truncation, "noise_mode": self.cfg.noise_mode,
            "qc": to_dict(self.cfg.qc), "image_format": self.cfg.image.format,
            "seeds": "latent_seed = derive_seed(seed, GENERATE, source_index); "
                     "edit_seed = derive_seed(latent_seed, GENERATE, variant)",
        }

    def job_record(self) -> dict:
        """_meta/job.json: what must match for a rerun to continue this output directory."""
        return {"format": FORMAT, "format_version": FORMAT_VERSION, "config": job_config(self.cfg),
                "generator_id": self.facts.generator_id, "directions_sha256": self.directions.sha256,
                "n_shards": self.plan.n_shards, "n_rows": self.cfg.n_rows}


def has_eye_groups(groups: dict) -> bool:
    from pipeline.metrics import eye_groups
    return eye_groups(groups) is not None


def resolve_generate_device(cfg: GenerateConfig) -> str:
    """The actors' device once Ray is up (auto -> cuda when the cluster has GPUs, else cpu), checked
    against what the cluster has: an actor pool that cannot be placed would wait forever."""
    import ray
    cluster = ray.cluster_resources() if ray.is_initialized() else {}
    gpus = cluster.get("GPU", 0) if cluster else int(torch.cuda.is_available())
    if cfg.device == "auto":
        device = "cuda" if gpus > 0 else "cpu"
    else:
        device = "cuda" if cfg.device.startswith("cuda") else "cpu"
    if device == "cuda" and gpus <= 0:
        raise ConfigError(f"device: {cfg.device!r} asked for but the Ray cluster has no GPU; use 'cpu' or 'auto'")
    if cfg.image.encoder == "gpu" and device != "cuda":
        raise ConfigError("image.encoder: 'gpu' needs a CUDA device and the Ray cluster has none; "
                          "use image.encoder=cpu")
    if cluster:
        check_placement(cfg, device == "cuda", cluster.get("CPU", 0), gpus)
    return device


def check_placement(cfg: GenerateConfig, gpu: bool, cpus: float, gpus: float) -> None:
    """Every actor (and one latents task) must fit at once, or Ray Data waits for them forever."""
    res = cfg.resources
    gpu_actors = [(res.generators, res.gpus_per_generator)]
    if not res.fuse_scoring:
        gpu_actors.append((res.scorers, res.gpus_per_scorer))
    actors = sum(n for n, _ in gpu_actors) + (res.encoders if cfg.image.encoder == "cpu" else 0) + 1
    need_cpus = (actors + 1) * res.cpus_per_actor
    if need_cpus > cpus + 1e-9:
        raise ConfigError(f"resources: {actors} actors x cpus_per_actor {res.cpus_per_actor} (+ one latents task) "
                          f"need {need_cpus:g} CPUs, the Ray cluster has {cpus:g}; lower cpus_per_actor or the "
                          "actor counts")
    need_gpus = sum(n * share for n, share in gpu_actors)
    if gpu and need_gpus > gpus + 1e-9:
        raise ConfigError(f"resources: the GPU actors need {need_gpus:g} GPUs (generators x gpus_per_generator"
                          f"{'' if res.fuse_scoring else ' + scorers x gpus_per_scorer'}), the Ray cluster has "
                          f"{gpus:g}")


def check_output_dir(path: Path) -> None:
    """Create the output directory and prove it is writable (a probe file, removed at once)."""
    try:
        if path.exists() and not path.is_dir():
            raise ConfigError(f"output_dir: {path} exists and is not a directory")
        path.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(dir=path, prefix=".write-probe-")
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise ConfigError(f"output_dir: {path} is not writable ({e.strerror or e}); "
                          "choose another output_dir") from None


def model_facts(bundle: ModelBundle, judges: tuple[str, ...]) -> ModelFacts:
    g = bundle.generator
    unknown = [j for j in judges if j not in bundle.judges]
    if unknown:
        raise ConfigError(f"judges: {unknown} not in the {bundle.preset!r} preset; it has {sorted(bundle.judges)}")
    return ModelFacts(
        generator_id=bundle.generator_id or "unknown", n_latent=int(g.n_latent), w_dim=int(g.w_dim),
        z_dim=int(getattr(g, "z_dim", g.w_dim)), resolution=int(g.resolution),
        emotion_labels=tuple(bundle.emotion.labels), regressor_names=tuple(bundle.regressor.names),
        landmark_points=int(bundle.landmarks.n_points),
        landmark_groups={k: list(v) for k, v in getattr(bundle.landmarks, "groups", {}).items()},
        judge_labels={j: tuple(getattr(bundle.judges[j], "labels", bundle.emotion.labels)) for j in judges})


def prepare(cfg: GenerateConfig, bundle_factory: BundleFactory | None = None) -> GenerateJob:
    """Every check that can fail, before any work: output dir, T, policy, preset, judges, an older job.

    Raises ConfigError (or WeightsError for missing preset weights) naming the field. The output
    directory is checked last and only created (empty) when everything else is valid; nothing already
    in it is touched.
    """
    from_mlflow = cfg.directions.startswith(("runs:", "models:"))
    tracking_uri = resolve_tracking_uri(cfg.tracking, cfg.work_dir) if from_mlflow else None
    directions = resolve_directions(cfg.directions, tracking_uri)
    policy = build_policy(cfg.policy, directions.attributes)
    factory = bundle_factory or functools.partial(build_bundle, cfg.model)
    bundle = factory("cpu")
    check_fits_generator(directions, bundle.generator)
    facts = model_facts(bundle, cfg.judges)
    del bundle
    out_dir = cfg.out_dir
    check_output_dir(out_dir)
    plan = Plan(cfg.n_sources, cfg.variants, cfg.shard_sources, cfg.batch_sources)
    job = GenerateJob(cfg, plan, directions, policy, facts, factory, "auto", out_dir)
    check_same_job(job)
    return job


def check_same_job(job: GenerateJob) -> None:
    """An output directory holds one job: a rerun with different output-affecting settings is refused."""
    path = job.out_dir / "_meta" / "job.json"
    if not path.is_file():
        return
    try:
        old = json.loads(path.read_text())
    except json.JSONDecodeError:
        raise ConfigError(f"output_dir: {path} is not valid JSON; remove it only if the shards beside it are "
                          "yours to regenerate") from None
    new = json.loads(json.dumps(job.job_record()))
    if old != new:
        a, b = flatten(old), flatten(new)
        diff = sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))
        raise ConfigError(f"output_dir: {job.out_dir} holds a different generate job (differs in {diff[:6]}); "
                          "use another output_dir, or the same settings to resume it")


# ---------------------------------------------------------------------------------------------
# Per-chunk computation (used by the Ray actors and by tests / benchmarks in-process)
# ---------------------------------------------------------------------------------------------

def chunk_latents(job_seed: int, K: int, z_dim: int, policy: EditPolicy, shard: int, src_start: int,
                  src_stop: int) -> dict[str, Any]:
    """Seeds, z [u, z_dim] and edits s [b, N] of one chunk (sources src_start..src_stop-1, all variants)."""
    sources = np.arange(src_start, src_stop, dtype=np.int64)
    latent_seeds = np.array([derive_seed(job_seed, Stream.GENERATE, int(i)) for i in sources], dtype=np.int64)
    z = torch.stack([torch.randn(z_dim, generator=torch.Generator().manual_seed(int(s))) for s in latent_seeds])
    slot = np.repeat(np.arange(len(sources), dtype=np.int32), K)
    variant = np.tile(np.arange(K, dtype=np.int32), len(sources))
    edit_seeds = np.array([derive_seed(int(latent_seeds[j]), Stream.GENERATE, int(v)) for j, v in zip(slot, variant)],
                          dtype=np.int64)
    return {"shard": shard, "source_ids": sources, "latent_seeds": latent_seeds, "z": z.numpy(),
            "slot": slot, "source_index": sources[slot], "variant": variant,
            "row_index": sources[slot] * K + variant, "latent_seed": latent_seeds[slot], "edit_seed": edit_seeds,
            "s": policy.edits(edit_seeds, variant)}


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


class GeneratorStage:
    """Generator actor: chunk (z, s, seeds) -> uint8 source images [u, H, W, 3] and variant images [b, H, W, 3]."""

    def __init__(self, job: GenerateJob):
        from models.editing import DirectionMatrix
        self.job = job
        self.device = setup_torch(job.device, job.cfg.precision, job.cfg.resources.torch_threads)
        self.generator = job.bundle_factory("cpu").generator.to(self.device).eval()  # only what this actor runs
        T = job.T
        self.T = DirectionMatrix(T.shape[0], T.shape[1], T.shape[2], layer_mask=job.directions.layer_mask or None)
        with torch.no_grad():
            self.T.T.copy_(T)
        self.T = self.T.to(self.device).eval()

    @torch.no_grad()
    def images(self, chunk: dict) -> tuple[torch.Tensor, torch.Tensor]:
        """(source uint8 [u, H, W, 3], variant uint8 [b, H, W, 3]) on the actor's device."""
        cfg, g = self.job.cfg, self.generator
        z = torch.tensor(np.asarray(chunk["z"]), device=self.device)
        slot = torch.tensor(np.asarray(chunk["slot"]), device=self.device).long()
        s = torch.tensor(np.asarray(chunk["s"]), device=self.device)
        rngs = []
        if cfg.noise_mode == "random":  # the noise maps follow z in each source's own stream
            rngs = [torch.Generator().manual_seed(int(x)) for x in np.asarray(chunk["latent_seeds"])]
            for r in rngs:
                torch.randn(int(z.shape[1]), generator=r)
        with autocast(self.device, cfg.precision):
            w = latents_from_z(g, z, cfg.truncation)                        # [u, L, w_dim]
            w_edit = self.T(w[slot], s)                                     # [b, L, w_dim]
            noise = sample_noise(g, cfg.noise_mode, rngs, self.device)
            if isinstance(noise, list):                                     # per-source maps -> per-image
                noise = [torch.cat([n, n[slot]]) for n in noise]
            images = g.synthesis(torch.cat([w, w_edit]), noise)
        pixels = to_uint8_hwc(images)
        return pixels[: len(z)], pixels[len(z):]

    def __call__(self, batch: dict) -> dict:
        outs = []
        for chunk in split_chunks(batch):
            src, var = self.images(chunk)
            out = {k: v for k, v in chunk.items() if k != "z"}
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
        del bundle

    @torch.no_grad()
    def __call__(self, pixels: torch.Tensor) -> dict[str, np.ndarray]:
        """uint8 [B, H, W, 3] -> emotion [B, 7], landmarks [B, P, 2], attributes [B, A], judge_<name> [B, 7]."""
        image = from_uint8_hwc(pixels.to(self.device))
        with autocast(self.device, self.precision):
            out = {"emotion": self.emotion(image), "landmarks": self.landmarks(image),
                   "attributes": self.regressor(image)}
            out.update({f"judge_{k}": m(image) for k, m in self.judges.items()})
        return {k: v.float().cpu().numpy() for k, v in out.items()}


def measure_rows(job: GenerateJob, chunk: dict, src: dict[str, np.ndarray], var: dict[str, np.ndarray]) -> dict:
    """Per-face columns of one chunk from the source/variant measurements (drift and QC included)."""
    from pipeline.metrics import landmark_drift, landmark_scale, total_variation
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
    encoded = encode_jpeg([p.permute(2, 0, 1).contiguous() for p in pixels], quality=quality)
    return object_array([e.cpu().numpy().tobytes() for e in encoded])


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


# ---------------------------------------------------------------------------------------------
# Batches of chunks (ragged arrays in object columns)
# ---------------------------------------------------------------------------------------------

def object_array(items: list) -> np.ndarray:
    arr = np.empty(len(items), dtype=object)
    for i, x in enumerate(items):
        arr[i] = x
    return arr


def split_chunks(batch: dict) -> list[dict]:
    n = len(batch["shard"])
    return [{k: v[i] for k, v in batch.items()} for i in range(n)]


def pack_chunks(chunks: list[dict]) -> dict:
    """One Ray row per chunk: scalar columns as int64, array columns as object arrays (ragged OK)."""
    keys = chunks[0].keys()
    return {k: (np.array([c[k] for c in chunks], dtype=np.int64) if np.ndim(chunks[0][k]) == 0
                else object_array([np.asarray(c[k]) for c in chunks])) for k in keys}


def concat_rows(parts: list[dict]) -> dict:
    return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}


def plan_latents(batch: dict, job_seed: int, K: int, z_dim: int, policy: EditPolicy, chunks: np.ndarray) -> dict:
    """Ray map_batches fn: chunk positions (column `data`) -> chunk rows with seeds, z and s."""
    return pack_chunks([chunk_latents(job_seed, K, z_dim, policy, *map(int, chunks[int(i)])) for i in batch["data"]])


# ---------------------------------------------------------------------------------------------
# Parquet shards
# ---------------------------------------------------------------------------------------------

def output_schema(job: GenerateJob, shard: int):
    """The arrow schema of every shard (identical across shards but for the shard index in metadata)."""
    import pyarrow as pa
    floats, image = pa.list_(pa.float32()), pa.struct([("bytes", pa.binary()), ("path", pa.string())])
    fields = [("image", image)]
    if job.cfg.image.store_source:
        fields.append(("source_image", image))
    fields += [("row_index", pa.int64()), ("source_index", pa.int64()), ("variant", pa.int32()),
               ("latent_seed", pa.int64()), ("edit_seed", pa.int64()), ("generator_id", pa.string()),
               ("directions_sha256", pa.string()), ("directions_run_id", pa.string()), ("s", floats),
               ("source_emotion", floats), ("source_emotion_label", pa.string()), ("source_landmarks", floats),
               ("source_attributes", floats), ("variant_emotion", floats), ("variant_emotion_label", pa.string()),
               ("variant_landmarks", floats), ("variant_attributes", floats), ("emotion_drift", pa.float32()),
               ("landmark_drift", pa.float32()), ("emotion_label_kept", pa.bool_()), ("qc_pass", pa.bool_())]
    for name in job.cfg.judges:
        fields += [(f"judge_{name}_source_emotion", floats), (f"judge_{name}_variant_emotion", floats),
                   (f"judge_{name}_emotion_drift", pa.float32())]
    hf_features = {"image": {"_type": "Image"}}
    if job.cfg.image.store_source:
        hf_features["source_image"] = {"_type": "Image"}
    meta = {**job.file_metadata(), "shard": shard, "n_shards": job.plan.n_shards}
    return pa.schema(fields, metadata={
        "hfld": json.dumps(meta, sort_keys=True),
        # datasets.load_dataset("parquet") reads this and decodes the image structs as PIL images.
        "huggingface": json.dumps({"info": {"features": hf_features}}, sort_keys=True)})


def build_table(job: GenerateJob, shard: int, rows: dict):
    """Rows of one shard (numpy columns, any order) -> arrow table in row_index order."""
    import pyarrow as pa
    schema = output_schema(job, shard)
    order = np.argsort(np.asarray(rows["row_index"]), kind="stable")
    n = len(order)
    consts = {"generator_id": job.facts.generator_id, "directions_sha256": job.directions.sha256,
              "directions_run_id": job.directions.run_id}
    columns = []
    for f in schema:
        if f.name in consts:
            columns.append(pa.array([consts[f.name]] * n, f.type))
        elif f.name in ("image", "source_image"):
            data = pa.array(list(rows[f.name][order]), pa.binary())
            columns.append(pa.StructArray.from_arrays([data, pa.nulls(n, pa.string())], fields=list(f.type)))
        elif pa.types.is_list(f.type):
            values = np.stack(list(rows[f.name]))[order].astype(np.float32) if rows[f.name].dtype == object \
                else np.asarray(rows[f.name], np.float32)[order]
            k = values.shape[1]
            offsets = pa.array(np.arange(0, (n + 1) * k, k, dtype=np.int32))
            columns.append(pa.ListArray.from_arrays(offsets, pa.array(values.reshape(-1))))
        elif pa.types.is_string(f.type):
            columns.append(pa.array(np.asarray(rows[f.name])[order].astype(str).tolist(), f.type))
        else:
            columns.append(pa.array(np.asarray(rows[f.name])[order], f.type))
    return pa.Table.from_arrays(columns, schema=schema)


def column_compression(schema) -> dict[str, str]:
    """zstd for every parquet leaf column except the image bytes (already compressed: a waste of CPU)."""
    import pyarrow as pa

    def leaves(name: str, tp) -> list[str]:
        if pa.types.is_struct(tp):
            return [p for i in range(tp.num_fields) for p in leaves(f"{name}.{tp.field(i).name}", tp.field(i).type)]
        if pa.types.is_list(tp):
            return leaves(f"{name}.list.element", tp.value_type)
        return [name]
    return {leaf: "none" if f.name in ("image", "source_image") else "zstd"
            for f in schema for leaf in leaves(f.name, f.type)}


def write_shard(job: GenerateJob, shard: int, rows: dict) -> dict:
    """Write one shard atomically: temp file -> sha256 -> record (_meta) -> rename. Returns the record."""
    import pyarrow.parquet as pq
    table = build_table(job, shard, rows)
    name = job.plan.shard_name(shard)
    final = job.out_dir / f"{name}.parquet"
    fd, tmp = tempfile.mkstemp(dir=job.out_dir, prefix=f".{name}.parquet.", suffix=".tmp")
    os.close(fd)
    try:
        pq.write_table(table, tmp, row_group_size=ROW_GROUP_ROWS, compression=column_compression(table.schema),
                       use_dictionary=["generator_id", "directions_sha256", "directions_run_id",
                                       "source_emotion_label", "variant_emotion_label"],
                       write_statistics=False)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~current_umask())
        record = {"file": final.name, "shard": shard, "rows": table.num_rows, "bytes": os.path.getsize(tmp),
                  "sha256": file_sha256(Path(tmp)), "qc_pass": int(np.asarray(rows["qc_pass"]).sum())}
        atomic_write(record_path(job, shard), json.dumps(record, sort_keys=True, indent=1).encode())
        os.replace(tmp, final)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return record


def record_path(job: GenerateJob, shard: int) -> Path:
    return job.out_dir / "_meta" / f"{job.plan.shard_name(shard)}.json"


def finished_record(job: GenerateJob, shard: int, verify: bool) -> dict | None:
    """The shard's record when its file is complete and (if `verify`) matches the recorded hash."""
    final, rec_path = job.out_dir / f"{job.plan.shard_name(shard)}.parquet", record_path(job, shard)
    if not (final.is_file() and rec_path.is_file()):
        return None
    try:
        record = json.loads(rec_path.read_text())
    except json.JSONDecodeError:
        return None
    if record.get("rows") != job.plan.shard_rows(shard) or record.get("bytes") != final.stat().st_size:
        return None
    if verify and file_sha256(final) != record.get("sha256"):
        return None
    return record


class ShardWriter:
    """The writer actor: collects the rows of each shard (they arrive in any order) and writes a shard
    as soon as all its rows are in. Emits one small row per written shard."""

    def __init__(self, job: GenerateJob):
        self.job = job
        self.pending: dict[int, list[dict]] = {}
        self.counts: dict[int, int] = {}

    def __call__(self, batch: dict) -> dict:
        done = []
        shards = np.asarray(batch["shard"])
        for shard in np.unique(shards):
            sel = shards == shard
            self.pending.setdefault(int(shard), []).append({k: np.asarray(v)[sel] for k, v in batch.items()})
            self.counts[int(shard)] = self.counts.get(int(shard), 0) + int(sel.sum())
            if self.counts[int(shard)] == self.job.plan.shard_rows(int(shard)):
                rows = concat_rows(self.pending.pop(int(shard)))
                done.append(write_shard(self.job, int(shard), rows))
        return {"shard": np.array([d["shard"] for d in done], np.int64),
                "rows": np.array([d["rows"] for d in done], np.int64),
                "record": np.array([json.dumps(d, sort_keys=True) for d in done], dtype=np.str_)}


# ---------------------------------------------------------------------------------------------
# Driver
# ---------------------------------------------------------------------------------------------

@dataclass
class GenerateResult:
    out_dir: Path
    manifest_path: Path
    n_rows: int
    n_shards: int
    shards_written: int
    rows_written: int
    qc_pass_rate: float
    seconds: float
    faces_per_s: float
    manifest: dict = field(default_factory=dict)
    progress: list[tuple[float, int]] = field(default_factory=list)   # (seconds since start, rows written)

    def steady_faces_per_s(self, skip: float = 0.5) -> float:
        """Rows/s from the first shard written after `skip` of this run's rows to the last one: actor
        start-up and the burst of work queued meanwhile are left out (needs a run of many shards)."""
        if len(self.progress) < 3:
            return self.faces_per_s
        start = next(i for i, (_, rows) in enumerate(self.progress) if rows >= skip * self.rows_written)
        start = min(start, len(self.progress) - 2)
        (t0, r0), (t1, r1) = self.progress[start], self.progress[-1]
        return (r1 - r0) / max(t1 - t0, 1e-9)


def ensure_ray(address: str) -> bool:
    """Connect to Ray: the running instance, else `address`, else $RAY_ADDRESS (set by `ray job submit`),
    else a new private local instance (never a stray cluster found through /tmp/ray). True when this
    call connected (the caller then shuts it down)."""
    import ray
    if ray.is_initialized():
        return False
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    address = address or os.environ.get("RAY_ADDRESS", "")
    if address:
        ray.init(address=address, log_to_driver=False)
    else:
        ray.init(address="local", log_to_driver=False, include_dashboard=False)
    return True


def quiet_ray_data() -> None:
    from ray.data import DataContext
    ctx = DataContext.get_current()
    ctx.enable_progress_bars = False
    ctx.print_on_execution_start = False
    ctx.verbose_stats_logs = False
    logging.getLogger("ray.data").setLevel(logging.WARNING)
    try:  # the per-actor memory advice is printed every 30 s on stdout; our actors hold models on purpose
        ctx.issue_detectors_config.high_memory_detector_config.detection_time_interval_s = -1
    except AttributeError:
        pass


def build_dataset(job: GenerateJob, todo_shards: list[int]):
    """The Ray Data pipeline over the chunks of the shards still to write (lazy; see the module docstring)."""
    import ray
    from ray.data import ActorPoolStrategy
    cfg, res = job.cfg, job.cfg.resources
    chunks = job.plan.chunks(todo_shards)
    gpu = job.device == "cuda"
    actor = {"num_cpus": res.cpus_per_actor}
    # Chunk ids as in-memory blocks: no read tasks (they would want a whole CPU each, which a small
    # machine with the actors placed does not have), and enough blocks to keep every actor busy.
    n_blocks = max(1, min(len(chunks), max(len(todo_shards), 4 * max(res.generators, res.scorers))))
    ds = ray.data.from_numpy([part for part in np.array_split(np.arange(len(chunks)), n_blocks) if len(part)])
    ds = ds.map_batches(plan_latents, batch_size=1, num_cpus=res.cpus_per_actor,
                        fn_kwargs={"job_seed": cfg.seed, "K": cfg.variants, "z_dim": job.facts.z_dim,
                                   "policy": job.policy, "chunks": chunks})
    if res.fuse_scoring:
        ds = ds.map_batches(FusedStage, fn_constructor_args=(job,), batch_size=1,
                            compute=ActorPoolStrategy(size=res.generators),
                            num_gpus=res.gpus_per_generator if gpu else 0, **actor)
    else:
        ds = ds.map_batches(GeneratorStage, fn_constructor_args=(job,), batch_size=1,
                            compute=ActorPoolStrategy(size=res.generators),
                            num_gpus=res.gpus_per_generator if gpu else 0, **actor)
        ds = ds.map_batches(ScorerStage, fn_constructor_args=(job,), batch_size=1,
                            compute=ActorPoolStrategy(size=res.scorers),
                            num_gpus=res.gpus_per_scorer if gpu else 0, **actor)
    if cfg.image.encoder == "cpu":
        ds = ds.map_batches(EncoderStage, fn_constructor_args=(cfg.image,), batch_size=32,
                            compute=ActorPoolStrategy(size=res.encoders), **actor)
    placement = {}
    if res.writer_on_driver_node:
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy
        here = NodeAffinitySchedulingStrategy(ray.get_runtime_context().get_node_id(), soft=False)
        placement["ray_remote_args_fn"] = lambda: {"scheduling_strategy": here}
    return ds.map_batches(ShardWriter, fn_constructor_args=(job,), batch_size=None,
                          compute=ActorPoolStrategy(size=1), **actor, **placement)


def remove_stale_temps(out_dir: Path) -> int:
    """Temp files of an interrupted run (hidden, ending in .tmp): never a finished shard."""
    stale = list(out_dir.glob(".*.tmp")) + list((out_dir / "_meta").glob(".*.tmp"))
    for p in stale:
        p.unlink(missing_ok=True)
    return len(stale)


def schema_summary(job: GenerateJob) -> dict:
    schema = output_schema(job, 0)
    return {"fields": [{"name": f.name, "type": str(f.type)} for f in schema],
            "metadata": json.loads(schema.metadata[b"hfld"]) | {"shard": None}}


def write_manifest(job: GenerateJob, records: list[dict]) -> tuple[Path, dict]:
    total_rows = sum(r["rows"] for r in records)
    qc = sum(r["qc_pass"] for r in records)
    manifest = {
        "format": FORMAT, "format_version": FORMAT_VERSION,
        "config": job_config(job.cfg),
        "identifiers": {"generator_id": job.facts.generator_id, "directions_source": job.directions.source,
                        "directions_sha256": job.directions.sha256, "directions_run_id": job.directions.run_id},
        "counts": {"sources": job.cfg.n_sources, "variants": job.cfg.variants, "rows": total_rows,
                   "shards": len(records), "qc_pass": qc, "qc_pass_rate": qc / max(total_rows, 1)},
        "schema": schema_summary(job),
        "shards": [{k: r[k] for k in ("file", "rows", "bytes", "sha256", "qc_pass")} for r in records],
    }
    path = job.out_dir / "manifest.json"
    atomic_write(path, json.dumps(manifest, indent=1, sort_keys=True).encode())
    return path, manifest


def fault_after() -> int | None:
    value = os.environ.get(FAULT_ENV, "")
    return int(value) if value.strip() else None


def run_generate(cfg: GenerateConfig, tracker=None, *, bundle_factory: BundleFactory | None = None,
                 job: GenerateJob | None = None, print_fn=print) -> GenerateResult:
    """Generate (or finish) the dataset of `cfg`; validation first (see `prepare`), then Ray Data."""
    job = job or prepare(cfg, bundle_factory)
    out, plan = job.out_dir, job.plan
    records = {i: r for i in range(plan.n_shards) if (r := finished_record(job, i, cfg.verify_existing))}
    todo = [i for i in range(plan.n_shards) if i not in records]
    t0 = time.perf_counter()
    started = ensure_ray(cfg.resources.address) if todo else False
    try:
        if todo:
            job.device = resolve_generate_device(cfg)     # the last check (it needs the cluster's resources)
        rows_written, progress = execute(job, records, todo, tracker, t0, print_fn)
    finally:
        if started:
            import ray
            ray.shutdown()
    seconds = time.perf_counter() - t0
    missing = [i for i in range(plan.n_shards) if i not in records]
    if missing:
        raise RuntimeError(f"generate: shards {missing[:5]} were not written; rerun to finish them")
    manifest_path, manifest = write_manifest(job, [records[i] for i in range(plan.n_shards)])
    counts = manifest["counts"]
    result = GenerateResult(out, manifest_path, counts["rows"], plan.n_shards, len(todo), rows_written,
                            counts["qc_pass_rate"], seconds, rows_written / max(seconds, 1e-9), manifest, progress)
    print_fn(f"[generate] done: {counts['rows']} rows ({rows_written} written now in {seconds:.1f}s, "
             f"{result.faces_per_s:.1f} faces/s); QC pass rate {counts['qc_pass_rate']:.3f}; manifest {manifest_path}")
    if tracker:
        tracker.log_metrics({"rows": counts["rows"], "rows_written": rows_written, "shards": plan.n_shards,
                             "shards_written": len(todo), "qc_pass_rate": counts["qc_pass_rate"],
                             "faces_per_s": result.faces_per_s, "seconds": seconds})
        tracker.log_artifact(manifest_path)
    return result


def execute(job: GenerateJob, records: dict[int, dict], todo: list[int], tracker, t0: float,
            print_fn) -> tuple[int, list[tuple[float, int]]]:
    """Record the job, clean up after an interrupted run, write the missing shards (records is updated)."""
    cfg, out, plan = job.cfg, job.out_dir, job.plan
    atomic_write(out / "_meta" / "job.json", json.dumps(job.job_record(), indent=1, sort_keys=True).encode())
    stale = remove_stale_temps(out)
    print_fn(f"[generate] {cfg.n_sources} sources x {cfg.variants} variants = {cfg.n_rows} rows in "
             f"{plan.n_shards} shards -> {out}")
    print_fn(f"[generate] T: {job.directions.source} (sha256 {job.directions.sha256[:12]}, attributes "
             f"{job.directions.attributes}, run {job.directions.run_id}); policy {cfg.policy.kind}; "
             f"device {job.device}")
    if records or stale:
        print_fn(f"[generate] resuming: {len(records)} shards already complete, {len(todo)} to write"
                 + (f" ({stale} stale temp files removed)" if stale else ""))
    if tracker:
        tracker.log_params(to_dict(cfg))
        if hasattr(tracker, "set_tags"):
            tracker.set_tags({"directions_run_id": job.directions.run_id, "directions_source": job.directions.source,
                              "directions_sha256": job.directions.sha256, "generator_id": job.facts.generator_id,
                              "output_dir": str(out), "preset": cfg.model.preset})
    return write_missing_shards(job, records, todo, t0, print_fn) if todo else (0, [])


def write_missing_shards(job: GenerateJob, records: dict[int, dict], todo: list[int], t0: float,
                         print_fn) -> tuple[int, list[tuple[float, int]]]:
    """Run the Ray Data pipeline; the driver only sees one small row per written shard (progress)."""
    quiet_ray_data()
    rows_todo = sum(job.plan.shard_rows(i) for i in todo)
    limit = fault_after()
    rows_written, progress = 0, []
    for n, rec in enumerate(build_dataset(job, todo).iter_rows(), start=1):
        shard = int(rec["shard"])
        records[shard] = json.loads(rec["record"])
        rows_written += int(rec["rows"])
        progress.append((time.perf_counter() - t0, rows_written))
        print_fn(f"[generate] shard {shard} written: {n}/{len(todo)} shards, {rows_written}/{rows_todo} rows, "
                 f"{rows_written / max(progress[-1][0], 1e-9):.1f} faces/s", flush=True)
        if limit is not None and n >= limit:
            print_fn(f"[generate] {FAULT_ENV}={limit}: exiting abruptly (test hook)", flush=True)
            os._exit(17)
    return rows_written, progress


def generate_tracker(cfg: GenerateConfig):
    """The MLflow run of one generate invocation (a null tracker when tracking is disabled)."""
    return open_tracker(cfg.tracking, work_dir=cfg.work_dir, run_name=cfg.name, stage="generate",
                        tags={"preset": cfg.model.preset})


def run_generation(cfg: GenerateConfig, *, bundle_factory: BundleFactory | None = None,
                   print_fn=print) -> GenerateResult:
    """What `hfld generate` runs: validate (no MLflow run for a bad config), then track the job."""
    check_output_locations({"work_dir": cfg.work_dir, "output_dir": cfg.output_dir})
    job = prepare(cfg, bundle_factory)
    with generate_tracker(cfg) as tracker:
        return run_generate(cfg, tracker, job=job, print_fn=print_fn)
