"""Configuration of the `evaluate` stage (see pipeline/stages/evaluate/__init__.py)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

from pipeline.core.config import require
from pipeline.core.edits import EditMode
from pipeline.core.paths import PATH, default_work_dir
from pipeline.core.sampling import NoiseMode
from pipeline.core.strength import JUDGE_STRENGTH_FLOOR, STRENGTH_FLOOR
from pipeline.infra.tracking import TrackingConfig
from pipeline.presets import ModelConfig

METHODS = ("baseline", "hfld")
GESTURE_FEATURES = ("Smiling", "Mouth_Slightly_Open", "Narrow_Eyes")


@dataclass(frozen=True)
class EvaluateConfig:
    """Evaluation of baseline T's (lambda4 = 0) against HFLD T's on one fixed set of faces.

    baseline, hfld: each arm's T's, one per training seed: a directions file (.safetensors with the
      .json beside it) or MLflow URI (runs:/<run_id>/directions, models:/<name>/<version>, read from
      the tracking store of `tracking`), or a list of them; may be left empty when the caller passes
      T's to run_evaluate (the `run` stage does). Intervals resample seeds, then faces.
    attributes: target attributes to edit; empty = the preset's default targets.
    gesture_features: attributes shown in the gesture table (Table IV) where the regressor has them.
    n_samples: faces in the fixed held-out set; seed: its seed (Stream.HELD_OUT) and the bootstrap's.
    edit_mode: "target" (s = t - R(x), t = 0 / 1) or "fixed" (s = -fixed_amount / +fixed_amount).
    alphas: edit scales: every T is also evaluated with s multiplied by alpha, tracing drift against
      strength; must contain 1 (the paper's fixed-target protocol, t in {0, 1}).
    strength_levels: strengths at which the two arms are compared (matched edit strength).
    match_by: the attribute model whose strength is matched: "auto" (the preset's first held-out
      attribute judge that scores the attribute, else the training regressor), "regressor", or a judge.
    strength_floor: strength by R below which a T is "not editing" (no drift claim for that attribute);
    judge_strength_floor: strength by a held-out attribute judge below which a T passing R is
      "fooling R" (no claim either), or "unconfirmed" when that judge's natural span on the unedited
      faces is itself below this floor (pipeline/core/strength.py). -1 disables a gate (exploratory
      runs, tests).
    top_k: rows of the change-ratio tables (the attributes that move most under either T).
    trajectory_faces / trajectory_steps: faces and edit steps of the trajectory figure.
    bootstrap_resamples / confidence: percentile bootstrap of every drift figure.
    output_dir: "" = <work_dir>/evaluate/<name>.
    """
    model: ModelConfig = field(default_factory=ModelConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    baseline: tuple[str, ...] | str = field(default="", metadata=PATH)
    hfld: tuple[str, ...] | str = field(default="", metadata=PATH)
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
    alphas: tuple[float, ...] = (0.5, 1.0, 1.5, 2.0)
    strength_levels: tuple[float, ...] = (0.5, 0.7)
    match_by: str = "auto"
    strength_floor: float = STRENGTH_FLOOR
    judge_strength_floor: float = JUDGE_STRENGTH_FLOOR
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
        require(bool(self.alphas) and all(math.isfinite(a) and a > 0 for a in self.alphas), "alphas", self.alphas,
                "must be a non-empty list of finite scales > 0")
        require(len(set(self.alphas)) == len(self.alphas) and 1.0 in self.alphas, "alphas", self.alphas,
                "must hold distinct scales including 1 (the fixed-target protocol)")
        require(all(0 < v <= 1 for v in self.strength_levels), "strength_levels", self.strength_levels,
                "must be strengths in (0, 1]")
        for name in ("strength_floor", "judge_strength_floor"):
            require(-1 <= getattr(self, name) <= 1, name, getattr(self, name), "must be in [-1, 1]")
        for name in ("baseline", "hfld"):
            sources = self.sources(name)
            require(all(isinstance(x, str) and x.strip() for x in sources) and len(set(sources)) == len(sources),
                    name, getattr(self, name), "must be a T (path or URI) or a list of distinct ones")
        require(0 <= self.trajectory_faces <= self.n_samples, "trajectory_faces", self.trajectory_faces,
                f"must be between 0 and n_samples ({self.n_samples})")
        require(self.trajectory_steps >= 2, "trajectory_steps", self.trajectory_steps, "must be >= 2")
        require(self.bootstrap_resamples >= 100, "bootstrap_resamples", self.bootstrap_resamples, "must be >= 100")
        require(0 < self.confidence < 1, "confidence", self.confidence, "must be in (0, 1)")
        require(len(set(self.attributes)) == len(self.attributes), "attributes", self.attributes, "has duplicates")
        require(self.baseline_label.strip() != "" and self.hfld_label.strip() != ""
                and self.baseline_label != self.hfld_label, "hfld_label", self.hfld_label,
                "and baseline_label must be two different, non-empty names")

    def sources(self, arm: str) -> tuple[str, ...]:
        """The configured T's of an arm ("baseline" or "hfld"): () when none."""
        value = getattr(self, arm)
        if isinstance(value, str):
            return (value,) if value else ()
        return tuple(value)

    @property
    def sorted_alphas(self) -> tuple[float, ...]:
        return tuple(sorted(self.alphas))

    @property
    def name(self) -> str:
        return self.run_name or f"evaluate-{self.model.preset}-n{self.n_samples}-seed{self.seed}"

    @property
    def out_dir(self) -> Path:
        if self.output_dir:
            return Path(self.output_dir).expanduser()
        return Path(self.work_dir).expanduser() / "evaluate" / self.name
