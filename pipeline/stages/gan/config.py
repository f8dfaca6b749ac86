"""Configuration of the `gan` stage: which StyleGAN2 to train, on what data, how, where, with how many workers.

Defaults are StyleGAN2's (Karras et al. 2020, config-f training; its public implementations) scaled
to a small 64 px face model: non-saturating logistic loss, lazy R1 every 16 D steps, path-length
regularisation every 4 G steps, style mixing with p = 0.9, Adam (lr 0.0025, betas (0, 0.99)) with
the lazy-regularisation correction, G_ema with a 10 kimg half-life.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Literal

from pipeline.core.config import require
from pipeline.core.paths import PATH, default_work_dir
from pipeline.infra.tracking import DEFAULT_MODEL_NAME, TrackingConfig
from pipeline.presets import PRESETS, ModelConfig
from pipeline.stages.train import ScalingConfig

Precision = Literal["fp32", "bf16"]
SourceKind = Literal["teacher", "folder", "parquet", "hf"]
TeacherFilter = Literal["none", "landmarks_in_order"]
TEACHER_FILTERS: tuple[str, ...] = ("none", "landmarks_in_order")
ExportDtype = Literal["fp16", "fp32"]

GAN_MODEL_NAME = "hfld-stylegan2"      # registered MLflow model of the final weights


@dataclass(frozen=True)
class ArchitectureConfig:
    """The StyleGAN2 G and D (models/stylegan2.py, rosinality layout).

    resolution: output size R (power of two >= 8); n_latent = 2 log2(R) - 2 (10 at 64 px).
    w_dim: style (and z) dimension.
    n_mlp: mapping-network depth.
    channels: explicit table {4: c4, 8: c8, ..., R: cR} for G and D; empty = the rule
      c(r) = min(channel_base // r, channel_max) (ada's rule with small numbers). The defaults give
      {4: 128, 8: 64, 16: 32, 32: 16, 64: 8}: G + D 1.58M parameters (3.2 MB in fp16), chosen so that
      a T-training step on the starter judges costs no more on a 2-core CPU than with the DCGAN
      (benchmarks/bench_starter_step.py; docs/gan.md has the numbers). channel_base 4096 gives
      {128, 128, 128, 128, 64} (3.57M parameters, ~7 MB), a stronger generator whose T step is ~2x slower.
    lr_mlp: learning-rate multiplier of the mapping network (StyleGAN2: 0.01).
    conv_clamp: None, or ada's activation clamp (256) for every G/D layer it clamps.
    """
    resolution: int = 64
    w_dim: int = 256
    n_mlp: int = 8
    channels: dict[int, int] = field(default_factory=dict)
    channel_base: int = 512
    channel_max: int = 128
    lr_mlp: float = 0.01
    conv_clamp: float | None = None

    def __post_init__(self):
        r = self.resolution
        require(r >= 8 and r & (r - 1) == 0, "arch.resolution", r, "must be a power of two >= 8")
        require(self.w_dim >= 1, "arch.w_dim", self.w_dim, "must be >= 1")
        require(self.n_mlp >= 1, "arch.n_mlp", self.n_mlp, "must be >= 1")
        require(self.channel_base >= 1 and self.channel_max >= 1, "arch.channel_base/channel_max",
                (self.channel_base, self.channel_max), "must be >= 1")
        require(self.lr_mlp > 0, "arch.lr_mlp", self.lr_mlp, "must be > 0")
        require(self.conv_clamp is None or self.conv_clamp > 0, "arch.conv_clamp", self.conv_clamp,
                "must be null or > 0")
        if self.channels:
            needed = resolutions(r)
            missing = [k for k in needed if k not in self.channels]
            require(not missing, "arch.channels", self.channels, f"lacks resolutions {missing} (needs {needed})")
            require(all(self.channels[k] >= 1 for k in needed), "arch.channels", self.channels,
                    "must hold widths >= 1")

    def channel_table(self) -> dict[int, int]:
        """{4: c4, ..., R: cR}: the explicit table, or the channel_base / channel_max rule."""
        if self.channels:
            return {k: int(self.channels[k]) for k in resolutions(self.resolution)}
        return {k: max(1, min(self.channel_base // k, self.channel_max)) for k in resolutions(self.resolution)}

    @property
    def n_latent(self) -> int:
        return 2 * int(math.log2(self.resolution)) - 2

    def as_card(self) -> dict:
        return {"resolution": self.resolution, "w_dim": self.w_dim, "z_dim": self.w_dim, "n_mlp": self.n_mlp,
                "n_latent": self.n_latent, "channels": {str(k): v for k, v in self.channel_table().items()},
                "lr_mlp": self.lr_mlp, "conv_clamp": self.conv_clamp}

    def differences(self, saved: dict) -> list[str]:
        """Where an architecture recorded in a checkpoint or card (`as_card()` form, as read from JSON)
        differs from this one: ["key: saved X, this run Y", ...]; [] when they are the same."""
        mine = json.loads(json.dumps(self.as_card()))          # JSON-normalised, like what was saved
        return [f"{k}: saved {saved.get(k)!r}, this run {mine.get(k)!r}"
                for k in sorted(set(saved) | set(mine)) if saved.get(k) != mine.get(k)]


def resolutions(resolution: int) -> list[int]:
    return [2 ** i for i in range(2, int(math.log2(resolution)) + 1)]


@dataclass(frozen=True)
class DataConfig:
    """Where real images come from (one interface, pipeline/stages/gan/data.py).

    source: "teacher" (a preset's generator: fresh samples every step, drawn on the training device),
      "folder" (image files under `path`, recursively), "parquet" (a .parquet file, a folder of them or a
      glob: the generate stage's format, an `image_column` of struct {bytes, path}) or "hf" (a Hugging
      Face dataset saved with save_to_disk at `path`, optionally one `split` of a DatasetDict).
    teacher: the teacher preset (source "teacher"; default dcgan64, the starter's teacher); its generator
      only is used for data.
    teacher_truncation: psi of the teacher's samples (1 = none).
    teacher_filter: "none", or "landmarks_in_order": train only on the teacher samples whose 68 landmarks
      (by the teacher preset's landmark net, face-api's for dcgan64) lie inside the image in anatomical
      order, the check of the quality report's landmark share (the teacher itself passes it for ~92% of
      its faces; the student learns the rest from it). Quality is still measured against the unfiltered
      teacher.
    path / image_column / split: the dataset (sources other than "teacher").
    max_images: use at most this many images of a dataset (0 = all), the first ones in file order.
    cache_dir: where the resized uint8 copy of a dataset goes ("" = <work_dir>/gan-data-cache); it is
      keyed by the file list and the resolution, so a second run (or a resume) reads it in a second.
    mirror: random horizontal flips of dataset images (p = 0.5); no effect on a teacher.
    """
    source: SourceKind = "teacher"
    teacher: ModelConfig = field(default_factory=lambda: ModelConfig(preset="dcgan64"))
    teacher_truncation: float = 1.0
    teacher_filter: TeacherFilter = "none"
    path: str = ""
    image_column: str = "image"
    split: str = ""
    max_images: int = 0
    cache_dir: str = ""
    mirror: bool = False

    def __post_init__(self):
        require(self.source == "teacher" or bool(self.path), "data.path", self.path,
                f"must name the dataset for data.source={self.source!r}")
        require(0 < self.teacher_truncation <= 1, "data.teacher_truncation", self.teacher_truncation,
                "must be in (0, 1]")
        require(self.teacher_filter in TEACHER_FILTERS, "data.teacher_filter", self.teacher_filter,
                f"must be one of {', '.join(TEACHER_FILTERS)}")
        require(self.teacher_filter == "none" or self.source == "teacher", "data.teacher_filter",
                self.teacher_filter, f"filters a teacher's samples; data.source is {self.source!r}")
        require(self.max_images >= 0, "data.max_images", self.max_images, "must be >= 0 (0 = all)")
        require(bool(self.image_column), "data.image_column", self.image_column, "must not be empty")

    def describe(self) -> str:
        if self.source == "teacher":
            kept = "" if self.teacher_filter == "none" else f", only those with {self.teacher_filter.replace('_', ' ')}"
            return f"teacher preset {self.teacher.preset!r} generator (fresh samples every step{kept})"
        return f"{self.source} dataset {self.path}" + (f" (split {self.split})" if self.split else "")


@dataclass(frozen=True)
class QualityConfig:
    """FD_face and the other offline quality measures (pipeline/stages/gan/quality.py).

    every_kimg: FD_face of G_ema every that many kimg (0 = only at the end); the curve PNG shows them.
    n_images: images per set (generated and data): the issue asks for >= 10,000.
    judges: preset whose face-api descriptor (identity), 68 landmarks and fer emotion are the judges;
      "" = no quality measures at all.
    batch_size: judge batch.
    final: also measure at the end of the run (landmark order, emotion TV, contact sheet, the scale).
    """
    every_kimg: float = 250.0
    n_images: int = 10_000
    judges: str = "starter"
    batch_size: int = 500
    final: bool = True

    def __post_init__(self):
        require(self.every_kimg >= 0, "quality.every_kimg", self.every_kimg, "must be >= 0 (0 = at the end only)")
        require(self.n_images >= 2, "quality.n_images", self.n_images, "must be >= 2")
        require(self.batch_size >= 1, "quality.batch_size", self.batch_size, "must be >= 1")
        require(self.judges == "" or self.judges in PRESETS, "quality.judges", self.judges,
                f"is not a preset; choose one of {sorted(PRESETS)} or '' (off)")


@dataclass(frozen=True)
class ExportConfig:
    """The shipped files: G_ema + D + w_avg in one safetensors file, a JSON card beside it.

    dtype: fp16 (half the size) or fp32. name: file stem under <run_dir>/export/.
    max_mb: refuse an export bigger than this (the repository's cap for committed weights).
    command: the exact command that produced the run, recorded in the card ("" = this process's argv).
    """
    dtype: ExportDtype = "fp16"
    name: str = "stylegan2"
    max_mb: float = 15.0
    command: str = ""

    def __post_init__(self):
        require(bool(self.name) and "/" not in self.name, "export.name", self.name, "must be a plain file stem")
        require(self.max_mb > 0, "export.max_mb", self.max_mb, "must be > 0")


def default_gan_tracking() -> TrackingConfig:
    return TrackingConfig(model_name=GAN_MODEL_NAME)


@dataclass(frozen=True)
class GanConfig:
    """StyleGAN2 training (see the module docstring for where the defaults come from).

    batch_size: images per worker and step (global batch = workers x batch_size).
    lr / betas: Adam of G and D before the lazy-regularisation correction (lr x c, beta^c with
      c = every / (every + 1)).
    r1_gamma / r1_every: R1 = gamma/2 E||grad D(x)||^2 on reals, applied every r1_every D steps (x r1_every).
    pl_weight / pl_every / pl_decay / pl_batch_shrink: path-length regularisation (0 = off), on
      batch_size // pl_batch_shrink images every pl_every G steps, running mean with decay pl_decay.
    style_mixing: probability that a sample's styles switch from one z to another at a random layer.
    ema_kimg / ema_rampup: G_ema half-life in kimg; with a ramp r > 0 the half-life is
      min(ema_kimg, r x images seen so far) (ada's ramp; 0 = no ramp).
    w_avg_beta: decay of the tracked average w (truncation centre), per step.
    total_kimg: training length in thousands of real images shown to D (global).
    time_limit_min: stop training after this many minutes of this invocation (0 = none), leaving
      time_reserve_min for the final checkpoint, quality and export; resume continues.
    snapshot_kimg / grid_kimg: checkpoint / sample grid every that many kimg (and at the end).
    log_every: steps between progress lines and logged metrics (the only host syncs of the loop).
    precision: bf16 = autocast for the main forward passes (R1 and path length stay fp32).
    channels_last: NHWC memory format on CUDA (faster convolutions with bf16).
    resume: "" (fresh), "auto" (this run's latest checkpoint, if any) or a checkpoint folder (a
      run dir, its checkpoints/ folder, or one step-... folder).
    init_weights: a gan-stage export (`<name>.safetensors` with its card beside it) to start from
      instead of random weights: G and G_ema take its G_ema, D its D, w_avg its tracked average;
      optimisers, counters and histories start fresh, and the card of this run records where the
      weights came from. Why: an export (like the shipped starter, zoo/) keeps no trainer state, so
      continuing its training needs this. Used only when no checkpoint is restored (with resume=auto
      the later invocations of a time-boxed run continue their own checkpoints). "" = random init.
    """
    arch: ArchitectureConfig = field(default_factory=ArchitectureConfig)
    data: DataConfig = field(default_factory=DataConfig)
    batch_size: int = 64
    lr: float = 0.0025
    betas: tuple[float, float] = (0.0, 0.99)
    r1_gamma: float = 0.05
    r1_every: int = 16
    pl_weight: float = 2.0
    pl_every: int = 4
    pl_decay: float = 0.01
    pl_batch_shrink: int = 2
    style_mixing: float = 0.9
    ema_kimg: float = 10.0
    ema_rampup: float = 0.05
    w_avg_beta: float = 0.995
    total_kimg: float = 1500.0
    time_limit_min: float = 0.0
    time_reserve_min: float = 1.0
    snapshot_kimg: float = 100.0
    grid_kimg: float = 100.0
    log_every: int = 50
    seed: int = 0
    device: str = "auto"
    precision: Precision = "fp32"
    channels_last: bool = False
    quality: QualityConfig = field(default_factory=QualityConfig)
    export: ExportConfig = field(default_factory=ExportConfig)
    work_dir: str = field(default_factory=default_work_dir)
    run_name: str = ""
    resume: str = ""
    init_weights: str = field(default="", metadata=PATH)
    scaling: ScalingConfig = field(default_factory=ScalingConfig)
    tracking: TrackingConfig = field(default_factory=default_gan_tracking)

    def __post_init__(self):
        require(self.batch_size >= 2, "batch_size", self.batch_size, "must be >= 2 (the minibatch-stddev layer)")
        require(self.lr > 0, "lr", self.lr, "must be > 0")
        require(all(0 <= b < 1 for b in self.betas), "betas", self.betas, "must be in [0, 1)")
        require(self.r1_gamma >= 0, "r1_gamma", self.r1_gamma, "must be >= 0 (0 = off)")
        for name in ("r1_every", "pl_every", "log_every", "pl_batch_shrink"):
            require(getattr(self, name) >= 1, name, getattr(self, name), "must be >= 1")
        require(self.pl_weight >= 0, "pl_weight", self.pl_weight, "must be >= 0 (0 = off)")
        require(0 < self.pl_decay <= 1, "pl_decay", self.pl_decay, "must be in (0, 1]")
        require(0 <= self.style_mixing <= 1, "style_mixing", self.style_mixing, "must be in [0, 1]")
        require(self.ema_kimg >= 0, "ema_kimg", self.ema_kimg, "must be >= 0 (0 = G_ema is G)")
        require(self.ema_rampup >= 0, "ema_rampup", self.ema_rampup, "must be >= 0 (0 = no ramp)")
        require(0 <= self.w_avg_beta < 1, "w_avg_beta", self.w_avg_beta, "must be in [0, 1)")
        require(self.total_kimg > 0, "total_kimg", self.total_kimg, "must be > 0")
        require(self.time_limit_min >= 0, "time_limit_min", self.time_limit_min, "must be >= 0 (0 = none)")
        require(self.time_reserve_min >= 0, "time_reserve_min", self.time_reserve_min, "must be >= 0")
        require(self.snapshot_kimg > 0, "snapshot_kimg", self.snapshot_kimg, "must be > 0")
        require(self.grid_kimg >= 0, "grid_kimg", self.grid_kimg, "must be >= 0 (0 = at the end only)")
        if self.tracking.model_name == DEFAULT_MODEL_NAME:
            # A `tracking:` section without model_name gets TrackingConfig's default, the name of the T
            # models; generator weights must not become versions of it.
            object.__setattr__(self, "tracking", replace(self.tracking, model_name=GAN_MODEL_NAME))

    @property
    def name(self) -> str:
        """Deterministic run name: given, or derived from the data source, resolution and seed."""
        what = self.data.teacher.preset if self.data.source == "teacher" else Path(self.data.path).stem or "data"
        return self.run_name or f"gan-{what}-{self.arch.resolution}px-seed{self.seed}"

    @property
    def run_dir(self) -> Path:
        return Path(self.work_dir).expanduser() / self.name


@dataclass
class GanResult:
    run_dir: Path
    weights_path: Path                 # the exported safetensors (written at the end of every invocation)
    card_path: Path                    # its JSON card
    kimg: float
    steps: int
    quality: dict = field(default_factory=dict)
    history: list[dict] = field(default_factory=list)
