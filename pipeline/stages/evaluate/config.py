"""Configuration of the `evaluate` stage (see pipeline/stages/evaluate/__init__.py)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

from pipeline.core.config import require
from pipeline.core.edits import EditMode
from pipeline.core.paths import PATH, default_work_dir
from pipeline.core.sampling import NoiseMode
from pipeline.infra.tracking import TrackingConfig
from pipeline.presets import ModelConfig

METHODS = ("baseline", "hfld")
GESTURE_FEATURES = ("Smiling", "Mouth_Slightly_Open", "Narrow_Eyes")


@dataclass(frozen=True)
class EvaluateConfig:
    """Evaluation of a baseline T (lambda4 = 0) against an HFLD T on one fixed set of faces.

    baseline, hfld: T's as directions files (.safetensors with the .json beside it) or MLflow URIs
      (runs:/<run_id>/directions, models:/<name>/<version>, read from the tracking store of
      `tracking`); may be left empty when the caller passes T's to run_evaluate (the `run` stage does).
    attributes: target attributes to edit; empty = the preset's default targets.
    gesture_features: attributes shown in the gesture table (Table IV) where the regressor has them.
    n_samples: faces in the fixed held-out set; seed: its seed (Stream.HELD_OUT) and the bootstrap's.
    edit_mode: "target" (s = t - R(x), t = 0 / 1) or "fixed" (s = -fixed_amount / +fixed_amount).
    top_k: rows of the change-ratio tables (the attributes that move most under either T).
    trajectory_faces / trajectory_steps: faces and edit steps of the trajectory figure.
    bootstrap_resamples / confidence: percentile bootstrap of every drift figure.
    output_dir: "" = <work_dir>/evaluate/<name>.
    """
    model: ModelConfig = field(default_factory=ModelConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    baseline: str = field(default="", metadata=PATH)
    hfld: str = field(default="", metadata=PATH)
    baseline_label: str = "baseline (lambda4 = 0)"
    hfld_label: str = "HFLD"
    attributes: tuple[str, ...] = ()
    gesture_features: tuple[str, ...] = GESTURE_FEATURES
    n_samples: int = 1000
    batch_size: int = 32
    seed: int = 0
    truncation: float = 1.0
    noise_mode: NoiseMode = "const"
    edit_mode: EditMode = "target"
    fixed_amount: float = 1.0
    top_k: int = 10
    trajectory_faces: int = 4
    trajectory_steps: int = 7
    bootstrap_resamples: int = 1000
    confidence: float = 0.95
    device: str = "auto"
    work_dir: str = field(default_factory=default_work_dir, metadata=PATH)
    run_name: str = ""
    output_dir: str = field(default="", metadata=PATH)

    def __post_init__(self):
        require(self.n_samples >= 2, "n_samples", self.n_samples, "must be >= 2 (a bootstrap needs faces)")
        require(self.batch_size >= 1, "batch_size", self.batch_size, "must be >= 1")
        require(0 < self.truncation <= 1, "truncation", self.truncation, "must be in (0, 1]")
        require(self.fixed_amount > 0 and math.isfinite(self.fixed_amount), "fixed_amount", self.fixed_amount,
                "must be a finite number > 0")
        require(self.top_k >= 1, "top_k", self.top_k, "must be >= 1")
        require(0 <= self.trajectory_faces <= self.n_samples, "trajectory_faces", self.trajectory_faces,
                f"must be between 0 and n_samples ({self.n_samples})")
        require(self.trajectory_steps >= 2, "trajectory_steps", self.trajectory_steps, "must be >= 2")
        require(self.bootstrap_resamples >= 100, "bootstrap_resamples", self.bootstrap_resamples, "must be >= 100")
        require(0 < self.confidence < 1, "confidence", self.confidence, "must be in (0, 1)")
        require(len(set(self.attributes)) == len(self.attributes), "attributes", self.attributes, "has duplicates")
        require(self.baseline_label.strip() != "" and self.hfld_label.strip() != ""
                and self.baseline_label != self.hfld_label, "hfld_label", self.hfld_label,
                "and baseline_label must be two different, non-empty names")

    @property
    def name(self) -> str:
        return self.run_name or f"evaluate-{self.model.preset}-n{self.n_samples}-seed{self.seed}"

    @property
    def out_dir(self) -> Path:
        if self.output_dir:
            return Path(self.output_dir).expanduser()
        return Path(self.work_dir).expanduser() / "evaluate" / self.name
