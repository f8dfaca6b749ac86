"""Configuration of the `train` stage: which T to optimise, how, where, and with how many workers."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from models.losses import LossWeights
from models.editing import EditSampling
from pipeline.core.config import require
from pipeline.core.paths import PATH, default_work_dir
from pipeline.core.sampling import NoiseMode
from pipeline.infra.tracking import TrackingConfig
from pipeline.presets import ModelConfig

Precision = Literal["fp32", "bf16"]


@dataclass(frozen=True)
class ScalingConfig:
    """How many workers optimise T, and with which resources.

    num_workers: 0 = run in this process without Ray; >= 1 = Ray Train (TorchTrainer, DDP over T)
      with that many workers, each drawing its own `batch_size` samples per step (global batch =
      num_workers * batch_size).
    use_gpu: one GPU per worker (NCCL); false = CPU workers (gloo).
    cpus_per_worker: CPUs Ray reserves per worker (fractions allowed, e.g. 0.5).
    gpus_per_worker: GPUs per worker when use_gpu (fractions allowed).
    max_failures: worker-group restarts from the latest checkpoint before the run fails (-1 = no limit).
    storage_path: where Ray keeps checkpoints ("" = <work_dir>/ray): on a multi-node cluster a path every
      node mounts (NFS) or a URI Ray's pyarrow filesystems take (s3://bucket/prefix, gs://...).
    """
    num_workers: int = 0
    use_gpu: bool = False
    cpus_per_worker: float = 1.0
    gpus_per_worker: float = 1.0
    max_failures: int = 0
    storage_path: str = field(default="", metadata=PATH)

    def __post_init__(self):
        require(self.num_workers >= 0, "scaling.num_workers", self.num_workers, "must be >= 0 (0 = no Ray)")
        require(self.cpus_per_worker > 0 and math.isfinite(self.cpus_per_worker), "scaling.cpus_per_worker",
                self.cpus_per_worker, "must be a finite number > 0")
        require(self.gpus_per_worker >= 0 and math.isfinite(self.gpus_per_worker), "scaling.gpus_per_worker",
                self.gpus_per_worker, "must be a finite number >= 0")
        require(not self.use_gpu or self.gpus_per_worker > 0, "scaling.gpus_per_worker", self.gpus_per_worker,
                "must be > 0 when scaling.use_gpu is true")
        require(self.max_failures >= -1, "scaling.max_failures", self.max_failures, "must be >= 0, or -1 for no limit")


@dataclass(frozen=True)
class TrainConfig:
    """Training of T. Defaults follow the paper (Adam 1e-4, batch 4, 50,000 iterations).

    attributes: edited attributes (T's columns), names of the regressor; empty = preset default.
    landmark_groups: groups of the landmark model the HFLD loss covers; empty = all.
    layer_mask: latent layers T may edit; empty = all.
    edit_sampling: "uniform" (s ~ U[-1,1], paper) or "target" (s = U[0,1] - R(x), reference code).
    truncation: psi applied to the sampled training latents (1 = none).
    noise_mode: generator noise for x and x' (always the same for both): const, random, zero.
    resume: "" (fresh run), "auto" (the run dir's latest checkpoint, if any) or a checkpoint path.
      A checkpoint trained with settings that change results (see stages/train/resume.py) is refused...
    resume_force: ...unless this is true; then directions.json ("config_history") and the MLflow run
      record the previous config, the changed values and the step where they changed.
    cuda_graph: on a single CUDA device (T not DDP-wrapped), capture the whole step (both passes,
      backward, Adam) as one CUDA graph after 3 eager warm-up steps and replay it: the step is
      launch-bound at the paper's batch of 4, so this removes most of its CPU overhead.
    concurrent_passes: on CUDA, run the step's independent passes on parallel streams (x's pass
      beside x' = G(w + T s); regressor, landmarks, perceptual net and D on x' side by side, forward
      and backward): at a small batch no single network fills the GPU. Same numbers either way.
    scaling: in-process (num_workers 0) or Ray Train workers; see ScalingConfig.
    tracking: MLflow run of this stage; see pipeline.infra.tracking.TrackingConfig.
    """
    model: ModelConfig = field(default_factory=ModelConfig)
    attributes: tuple[str, ...] = ()
    landmark_groups: tuple[str, ...] = ()
    layer_mask: tuple[int, ...] = ()
    losses: LossWeights = field(default_factory=LossWeights)
    edit_sampling: EditSampling = "uniform"
    truncation: float = 1.0
    noise_mode: NoiseMode = "const"
    iterations: int = 50_000
    batch_size: int = 4
    lr: float = 1e-4
    betas: tuple[float, float] = (0.5, 0.99)
    init_std: float = 0.02
    seed: int = 0
    device: str = "auto"
    precision: Precision = "fp32"
    cuda_graph: bool = True
    concurrent_passes: bool = True
    log_every: int = 50
    checkpoint_every: int = 1000
    work_dir: str = field(default_factory=default_work_dir, metadata=PATH)
    run_name: str = ""
    resume: str = field(default="", metadata=PATH)
    resume_force: bool = False
    scaling: ScalingConfig = field(default_factory=ScalingConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)

    def __post_init__(self):
        require(self.iterations >= 1, "iterations", self.iterations, "must be >= 1")
        require(self.batch_size >= 1, "batch_size", self.batch_size, "must be >= 1")
        require(self.lr > 0, "lr", self.lr, "must be > 0")
        require(all(0 <= b < 1 for b in self.betas), "betas", self.betas, "must be in [0, 1)")
        require(0 < self.truncation <= 1, "truncation", self.truncation, "must be in (0, 1]")
        require(self.log_every >= 1, "log_every", self.log_every, "must be >= 1")
        require(self.checkpoint_every >= 1, "checkpoint_every", self.checkpoint_every, "must be >= 1")
        require(self.init_std > 0, "init_std", self.init_std, "must be > 0")
        for name in ("regressor", "perceptual", "adversarial", "landmark"):
            v = getattr(self.losses, name)
            require(v >= 0 and math.isfinite(v), f"losses.{name}", v, "must be a finite number >= 0")
        require(len(set(self.attributes)) == len(self.attributes), "attributes", self.attributes, "has duplicates")

    @property
    def name(self) -> str:
        """Deterministic run name: given, or derived from preset, lambda4 and seed."""
        return self.run_name or f"train-{self.model.preset}-l4_{self.losses.landmark:g}-seed{self.seed}"

    @property
    def run_dir(self) -> Path:
        return Path(self.work_dir).expanduser() / self.name


class NonFiniteLoss(RuntimeError):
    """A loss became NaN/inf; T was left as it was before that step."""


class RayTrainFailed(RuntimeError):
    """The Ray Train run failed (after exhausting scaling.max_failures); the message says why."""


@dataclass
class TrainResult:
    run_dir: Path
    directions_path: Path
    steps: int
    final_metrics: dict
    history: list[dict] = field(default_factory=list)
