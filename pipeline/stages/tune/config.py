"""Configuration of the `tune` stage (see pipeline/stages/tune/__init__.py)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from pipeline.core.config import require
from pipeline.core.edits import EditMode
from pipeline.core.paths import NAME_OR_PATH, PATH, default_work_dir
from pipeline.core.strength import STRENGTH_FLOOR
from pipeline.infra.tracking import TrackingConfig
from pipeline.stages.train import ScalingConfig, TrainConfig


@dataclass(frozen=True)
class SchedulerConfig:
    """Length of every trial and early stopping.

    kind: "asha" (asynchronous successive halving: at each rung grace_period * reduction_factor^k
      steps, a trial whose score is not in the best 1/reduction_factor is stopped) or "fifo" (none).
    max_steps: training steps of every trial (its TrainConfig.iterations); ASHA's rungs all lie before it.
    eval_every: steps between intermediate objective evaluations (also the trial's checkpoint_every).
    grace_period: steps a trial runs before ASHA may stop it (= max_steps: no early stopping).
    reduction_factor: ASHA's halving rate (> 1).
    """
    kind: Literal["asha", "fifo"] = "asha"
    max_steps: int = 5000
    eval_every: int = 500
    grace_period: int = 1000
    reduction_factor: float = 3.0

    def __post_init__(self):
        require(self.max_steps >= 1, "scheduler.max_steps", self.max_steps, "must be >= 1")
        require(1 <= self.eval_every <= self.max_steps, "scheduler.eval_every", self.eval_every,
                f"must be between 1 and scheduler.max_steps ({self.max_steps})")
        require(1 <= self.grace_period <= self.max_steps, "scheduler.grace_period", self.grace_period,
                f"must be between 1 and scheduler.max_steps ({self.max_steps})")
        require(self.reduction_factor > 1 and math.isfinite(self.reduction_factor), "scheduler.reduction_factor",
                self.reduction_factor, "must be a finite number > 1")


@dataclass(frozen=True)
class ObjectiveConfig:
    """The held-out objective (objective.py).

    n_samples: faces of the held-out set (final evaluation of every trial).
    intermediate_samples: its first faces, measured every scheduler.eval_every steps (ASHA's input).
    seed: seed of the held-out faces (Stream.HELD_OUT); keep it different from the evaluate stage's.
    judge: the emotion judge: "training" (the preset's training emotion model) or a held-out judge.
    edit_mode / fixed_amount: edits to the attribute extremes, as in evaluate ("target": to 0 and 1).
    strength_floor: ABSOLUTE edit-strength floor (probability units): a trial whose weakest attribute's
      strength is below it is infeasible (the baseline too; its strength is reported, not the bar).
    strength_by: what scores strength: "regressor" (the training R) or a held-out attribute judge of
      the preset (independent of R, slower).
    penalty: score cost per unit of strength below the floor (1000 = 10 per 0.01).
    batch_size: faces per forward pass; device: where this process builds the held-out set.
    """
    n_samples: int = 64
    intermediate_samples: int = 16
    seed: int = 1
    judge: str = "training"
    edit_mode: EditMode = "target"
    fixed_amount: float = 1.0
    strength_floor: float = STRENGTH_FLOOR
    strength_by: str = "regressor"
    penalty: float = 1000.0
    batch_size: int = 32
    device: str = "auto"

    def __post_init__(self):
        require(self.n_samples >= 2, "objective.n_samples", self.n_samples, "must be >= 2")
        require(1 <= self.intermediate_samples <= self.n_samples, "objective.intermediate_samples",
                self.intermediate_samples, f"must be between 1 and objective.n_samples ({self.n_samples})")
        require(-1 <= self.strength_floor <= 1, "objective.strength_floor", self.strength_floor,
                "must be in [-1, 1] (a difference of probabilities)")
        require(bool(self.strength_by.strip()), "objective.strength_by", self.strength_by,
                "must be 'regressor' or the name of an attribute judge of the preset")
        require(self.penalty >= 0 and math.isfinite(self.penalty), "objective.penalty", self.penalty,
                "must be a finite number >= 0")
        require(self.fixed_amount > 0 and math.isfinite(self.fixed_amount), "objective.fixed_amount",
                self.fixed_amount, "must be a finite number > 0")
        require(self.batch_size >= 1, "objective.batch_size", self.batch_size, "must be >= 1")


def default_trial_scaling() -> ScalingConfig:
    return ScalingConfig(num_workers=1, cpus_per_worker=1.0)


@dataclass(frozen=True)
class TuneConfig:
    """A sweep over lambda4 and landmark subsets (see the module docstring).

    train: the base training config every trial starts from (model, attributes, other lambdas, lr,
      batch size, seed...). Per trial, lambda4 / landmark_groups / attributes / layer_mask come from the
      space, iterations and checkpoint_every from `scheduler`, scaling from `trial_scaling`; its
      work_dir, run_name, resume and tracking are replaced (trials run under the sweep's folder).
      best_train.yaml is this config with the winning choices (and its own iterations and scaling).
    space: search space YAML: a path, or the name of a file in tune_spaces/ ("starter").
    num_samples: lambda4 draws per combination of the space's named choices.
    search_seed: seed of Tune's sampler (BasicVariantGenerator).
    max_concurrent_trials: trials running at once.
    trial_scaling: Ray Train workers of every trial (num_workers >= 1; gpus_per_worker may be a
      fraction so trials share a GPU). Its storage_path is where Ray keeps the sweep's state (Tune's
      experiments baseline/ and sweep/, and the trials' Train checkpoints in train/): "" =
      <sweep dir>/ray; otherwise <storage_path>/tune/<name>, a path every node mounts or a URI
      (s3://bucket/prefix) on a multi-node cluster.
    driver_memory_mb: memory Ray reserves for each trial's driver (which holds no CPU).
    resume: "" = a new sweep (an existing sweep folder of the same name is an error); "auto" = if the
      folder holds a finished sweep (summary.json), return its results without running anything.
    verbose: Ray Tune's console output (0 silent, 1 status, 2 every result).
    """
    train: TrainConfig = field(default_factory=TrainConfig)
    space: str = field(default="starter", metadata=NAME_OR_PATH)
    num_samples: int = 4
    search_seed: int = 0
    max_concurrent_trials: int = 1
    scheduler: SchedulerConfig = field(default_factory=SchedulerConfig)
    trial_scaling: ScalingConfig = field(default_factory=default_trial_scaling)
    driver_memory_mb: int = 256
    objective: ObjectiveConfig = field(default_factory=ObjectiveConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    work_dir: str = field(default_factory=default_work_dir, metadata=PATH)
    run_name: str = ""
    resume: Literal["", "auto"] = ""
    verbose: int = 1

    def __post_init__(self):
        require(self.num_samples >= 1, "num_samples", self.num_samples, "must be >= 1")
        require(self.max_concurrent_trials >= 1, "max_concurrent_trials", self.max_concurrent_trials, "must be >= 1")
        require(self.trial_scaling.num_workers >= 1, "trial_scaling.num_workers", self.trial_scaling.num_workers,
                "must be >= 1: every trial is a Ray Train run")
        require(self.driver_memory_mb >= 1, "driver_memory_mb", self.driver_memory_mb, "must be >= 1")
        require(self.verbose in (0, 1, 2), "verbose", self.verbose, "must be 0, 1 or 2")
        require(bool(str(self.space).strip()), "space", self.space, "must name a search space file")

    @property
    def name(self) -> str:
        return self.run_name or f"tune-{self.train.model.preset}-{Path(self.space).stem}-seed{self.search_seed}"

    @property
    def out_dir(self) -> Path:
        return Path(self.work_dir).expanduser().resolve() / "tune" / self.name
