"""Configuration of the `generate` stage (see pipeline/stages/generate/__init__.py)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from pipeline.core.config import require, to_dict
from pipeline.core.paths import PATH, default_work_dir
from pipeline.core.policies import EditPolicyConfig
from pipeline.core.sampling import NoiseMode
from pipeline.infra.tracking import TrackingConfig
from pipeline.presets import ModelConfig

ImageFormat = Literal["png", "jpeg", "webp"]
Precision = Literal["fp32", "tf32", "bf16"]


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
    cuda_graph: on CUDA, replay each actor's per-chunk GPU work (generator; scorers) as a CUDA graph
      per chunk shape (the same kernels, the same bytes; one launch instead of hundreds).
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
    cuda_graph: bool = True

    def __post_init__(self):
        for name in ("generators", "scorers", "encoders", "torch_threads"):
            require(getattr(self, name) >= 1, f"resources.{name}", getattr(self, name), "must be >= 1")
        for name in ("gpus_per_generator", "gpus_per_scorer"):
            v = getattr(self, name)
            require(0 < v <= 8, f"resources.{name}", v, "must be in (0, 8]")
        require(0 < self.cpus_per_actor <= 64, "resources.cpus_per_actor", self.cpus_per_actor, "must be in (0, 64]")


@dataclass(frozen=True)
class SplitConfig:
    """The `split` column of a sources run (--sources): one split per source, so variants of a face
    never straddle train and test.

    fractions: split name -> fraction of the sources (>= 0, summing to 1), in the order given.
    column: the value that decides the split: "source_id", or a label column of the sources (e.g. a
      subject id, to keep every image of a person in one split).
    seed: another seed gives another (equally deterministic) assignment.
    A source's split is a function of (seed, its value) only: sha256 -> u in [0, 1) -> the first split
    whose cumulative fraction exceeds u (pipeline/stages/generate/sources.py `split_of`).
    """
    fractions: dict[str, float] = field(default_factory=lambda: {"train": 0.8, "val": 0.1, "test": 0.1})
    column: str = "source_id"
    seed: int = 0

    def __post_init__(self):
        require(len(self.fractions) >= 1, "split.fractions", self.fractions, "needs at least one split")
        require(all(name.strip() for name in self.fractions), "split.fractions", self.fractions,
                "has an empty split name")
        require(all(v >= 0 for v in self.fractions.values()), "split.fractions", self.fractions,
                "must all be >= 0")
        require(abs(sum(self.fractions.values()) - 1.0) < 1e-6, "split.fractions", self.fractions,
                f"must sum to 1 (they sum to {sum(self.fractions.values()):g})")


@dataclass(frozen=True)
class GenerateConfig:
    """A generate job: `n_sources` faces x `variants` edits each (rows = n_sources * variants).

    directions: T as a file path, "runs:/<run_id>/<artifact path>" or "models:/<name>/<version>".
    policy: the edit policy (pipeline/core/policies.py).
    judges: extra emotion models of the preset (bundle.judges names) measured on source and variant.
    batch_sources: sources per GPU batch; a batch holds them and all their variants
      (batch_sources * (variants + 1) images).
    shard_sources: sources per parquet file (rows per file = shard_sources * variants).
    truncation / noise_mode: as in training (psi towards the mean latent; generator noise).
    precision: fp32, tf32 (CUDA matmul/conv in TF32) or bf16 (autocast) for generator and scorers.
    output_dir: "" = <work_dir>/<name>.
    verify_existing: re-hash finished shards before skipping them on a rerun.
    sources: "" = random faces (z from seeds); else the output of `hfld invert` (folder or parquet
      file): source k is its k-th row with status "ok", its latent replaces w (n_sources and truncation
      do not apply), and every row also carries the source's id, its label columns (verbatim), the
      inversion quality and a `split` (see SplitConfig).
    sources_limit: with sources, use only the first `sources_limit` usable sources (0 = all).
    split: how a sources run assigns splits.
    """
    model: ModelConfig = field(default_factory=ModelConfig)
    directions: str = field(default="", metadata=PATH)
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
    output_dir: str = field(default="", metadata=PATH)
    work_dir: str = field(default_factory=default_work_dir, metadata=PATH)
    run_name: str = ""
    verify_existing: bool = True
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    sources: str = ""
    sources_limit: int = 0
    split: SplitConfig = field(default_factory=SplitConfig)

    def __post_init__(self):
        require(self.n_sources >= 1, "n_sources", self.n_sources, "must be >= 1")
        require(self.sources_limit >= 0, "sources_limit", self.sources_limit, "must be >= 0 (0 = all sources)")
        require(not self.sources or self.truncation == 1, "truncation", self.truncation,
                "does not apply to --sources (their latents are used as they are); leave it at 1")
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


# Keys of a sources run only: left out of a random-z job's record, whose files stay as they were.
SOURCES_FIELDS = ("sources", "sources_limit", "split")


def job_config(cfg: GenerateConfig) -> dict:
    """The output-affecting part of the config (recorded in job.json and the manifest)."""
    d = to_dict(cfg)
    for k in NON_OUTPUT_FIELDS + (() if cfg.sources else SOURCES_FIELDS):
        d.pop(k, None)
    return d
