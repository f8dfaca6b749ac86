"""Stage `tune`: Ray Tune sweeps lambda4 and the landmark subset against the held-out emotion-drift objective.

    cfg = load_config(TuneConfig, "tune.yaml", ["num_samples=8"])
    result = run_tune(cfg)          # result.best_config_path: a TrainConfig YAML for `hfld train --config`

Search space: a YAML file (`space`: a path, or the name of a file in tune_spaces/), validated before
anything starts (unknown keys, unknown landmark groups or attributes of the configured preset, bad
ranges and empty subsets are ConfigErrors naming the file and the key):

    presets: [starter]                  # optional: presets whose landmark model the group names fit
    lambda4: {distribution: loguniform, low: 1.0e-2, high: 1.0e+4}   # or uniform, or choice + values
    landmark_subsets:                   # name -> groups of the preset's landmark model
      mouth: [outer_mouth, inner_mouth]
    attribute_sets: {male: [Male]}      # optional: name -> edited attributes
    layer_masks: {coarse: [0, 1, 2, 3]} # optional: name -> latent layers T may edit ([] = all)

Trials: every combination of the named choices (subset x attribute set x layer mask: a grid) is tried
with `num_samples` values of lambda4 each, drawn by Tune's BasicVariantGenerator seeded with
`search_seed`. The baseline (lambda4 = 0, the exact point, no landmark loss) is trained first, once
per (attribute set, layer mask): every other trial's score needs the baseline's edit success (see
pipeline/objective.py: score = emotion drift, subject to edit success staying within `tolerance_pp` of
the baseline's at the same step), and ASHA compares intermediate scores while the sweep runs, so the
baseline must be known before the first trial reports. The baselines are rows of the results
(role "baseline") and can win: a sweep may find that no lambda4 > 0 beats lambda4 = 0.

Each trial is a Ray Train run (the Tune + Train pattern of Ray 2.60, see pipeline/ray_train.py): a
function trainable (`trial_driver`, holding no CPU: {"CPU": 0, "memory": driver_memory_mb}) builds
the trial's TrainConfig and calls `run_train_ray` with `callbacks=[TuneReportCallback()]` and an
`ObjectiveProbe`: every `scheduler.eval_every` steps (the trial's checkpoint interval) rank 0
measures the objective on the first `objective.intermediate_samples` held-out faces and its report
carries it to Tune, where ASHA (time attribute "step") stops the trials that fall behind; after the
last step it measures the whole held-out set. `trial_scaling` sets each trial's workers (num_workers
>= 1, cpus_per_worker, use_gpu, gpus_per_worker: fractions share a GPU between trials) and
`max_concurrent_trials` how many run at once. A trial that fails (a crashed worker, a NaN loss) is an
ERROR row; the sweep goes on. A failing baseline stops the sweep (there is nothing to compare with).

Outputs, in <work_dir>/tune/<name>/: best_train.yaml (the base `train` config with the winning
lambda4, landmark groups, attributes and layer mask: `hfld train --config best_train.yaml`),
trials.csv (every trial: status COMPLETED / STOPPED (early stopping; its metrics are the last
intermediate ones) / ERROR, its choices, every objective component, score, feasibility, MLflow run
id, the trial's T; a first line starting with "#" states the score's definition, so read it with
pandas.read_csv(path, comment="#") or pipeline.tune.read_table), pareto.png (edit success vs.
emotion drift, baseline and best marked), held_out.safetensors (the fixed faces and edits),
summary.json, space.yaml (a copy of the space) and config.yaml. The best is the argmin of `score`
over COMPLETED trials. Trial runs live in trials/, Ray's state in ray/ (see trial_scaling).
MLflow: a parent run for the sweep (params = the resolved config, metrics best.* and baseline.*,
the files above as artifacts) and a nested run per trial (its TrainConfig, lambda4 and subset params,
objective metrics at every evaluation step; early-stopped trials end KILLED, failed ones FAILED).

Ray's dashboard (ray[default], which the project installs) should run with the Ray the sweep uses:
Ray Train's controller calls its state API, among other things to release the workers and placement
group of a trial that Tune stopped early. Without it (ray.init(include_dashboard=False)) every Train
run waits on state-API timeouts and early-stopped trials keep their CPUs/GPUs until Ray shuts down.

Test-only hook: HFLD_TUNE_FAIL_SUBSET=<subset name> in the environment of the process calling
run_tune makes every trial of that subset fail on its rank 0 worker before training starts.
"""

from __future__ import annotations

import csv
import json
import math
import os
import re
import shutil
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

import yaml

from pipeline.config import ConfigError, read_yaml, require, to_dict
from pipeline.evaluate import EditMode, json_safe
from pipeline.objective import (
    SCORE_DEFINITION,
    HeldOutSet,
    ObjectiveEvaluator,
    build_held_out,
    emotion_judge,
    score,
)
from pipeline.tracking import TrackingConfig, open_tracker
from pipeline.train import (
    ScalingConfig,
    TrainConfig,
    check_output_locations,
    default_work_dir,
    is_uri,
)

REPO = Path(__file__).resolve().parents[1]
SPACES_DIR = REPO / "tune_spaces"
FAIL_SUBSET_ENV = "HFLD_TUNE_FAIL_SUBSET"
BASELINE_SUBSET = "-"          # the baseline's subset name: lambda4 = 0, no landmark groups
DEFAULT_CHOICE = "default"     # attribute set / layer mask name when the space does not search them
METRIC, MODE = "score", "min"
COMPLETED, STOPPED, ERROR = "COMPLETED", "STOPPED", "ERROR"


class TuneFailed(RuntimeError):
    """The sweep could not produce a result (a baseline failed, or no trial completed)."""


class InjectedTrialFailure(RuntimeError):
    """Raised on purpose by the test-only HFLD_TUNE_FAIL_SUBSET hook."""


# ---------------------------------------------------------------------------------------------
# Configuration
# ---------------------------------------------------------------------------------------------

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
    """The held-out objective (pipeline/objective.py).

    n_samples: faces of the held-out set (final evaluation of every trial).
    intermediate_samples: its first faces, measured every scheduler.eval_every steps (ASHA's input).
    seed: seed of the held-out faces (Stream.HELD_OUT); keep it different from the evaluate stage's.
    judge: the emotion judge: "training" (the preset's training emotion model) or a held-out judge.
    edit_mode / fixed_amount: edits to the attribute extremes, as in evaluate ("target": to 0 and 1).
    tolerance_pp: edit success may fall this many percentage points below the baseline's.
    penalty: score cost per percentage point of edit success below that floor.
    batch_size: faces per forward pass; device: where this process builds the held-out set.
    """
    n_samples: int = 64
    intermediate_samples: int = 16
    seed: int = 1
    judge: str = "training"
    edit_mode: EditMode = "target"
    fixed_amount: float = 1.0
    tolerance_pp: float = 5.0
    penalty: float = 10.0
    batch_size: int = 32
    device: str = "auto"

    def __post_init__(self):
        require(self.n_samples >= 2, "objective.n_samples", self.n_samples, "must be >= 2")
        require(1 <= self.intermediate_samples <= self.n_samples, "objective.intermediate_samples",
                self.intermediate_samples, f"must be between 1 and objective.n_samples ({self.n_samples})")
        require(self.tolerance_pp >= 0 and math.isfinite(self.tolerance_pp), "objective.tolerance_pp",
                self.tolerance_pp, "must be a finite number >= 0")
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
    space: str = "starter"
    num_samples: int = 4
    search_seed: int = 0
    max_concurrent_trials: int = 1
    scheduler: SchedulerConfig = field(default_factory=SchedulerConfig)
    trial_scaling: ScalingConfig = field(default_factory=default_trial_scaling)
    driver_memory_mb: int = 256
    objective: ObjectiveConfig = field(default_factory=ObjectiveConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    work_dir: str = field(default_factory=default_work_dir)
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


# ---------------------------------------------------------------------------------------------
# The search space file
# ---------------------------------------------------------------------------------------------

SPACE_KEYS = ("description", "presets", "lambda4", "landmark_subsets", "attribute_sets", "layer_masks")
LAMBDA4_KEYS = ("distribution", "low", "high", "values")
DISTRIBUTIONS = ("loguniform", "uniform", "choice")
CHOICE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


@dataclass(frozen=True)
class Vocabulary:
    """What a preset's networks accept: landmark group names, attribute names, latent layers.
    None = not known without building the networks (checked after the bundle is built)."""
    groups: tuple[str, ...]
    attributes: tuple[str, ...] | None = None
    n_latent: int | None = None


def preset_vocabulary(preset: str) -> Vocabulary | None:
    """Names known from module constants, without loading any weights (None for other presets)."""
    if preset == "starter":
        from models.faceapi import IBUG68_GROUPS
        from models.faceapi_age_gender import FaceApiAgeGender
        return Vocabulary(tuple(IBUG68_GROUPS), tuple(FaceApiAgeGender.names), 1)   # DCGAN: one latent layer
    if preset == "tiny":
        from models.tiny import TINY_LANDMARK_GROUPS
        from pipeline.presets import TINY_ATTRIBUTES
        return Vocabulary(tuple(TINY_LANDMARK_GROUPS), TINY_ATTRIBUTES, 8)
    if preset in ("ffhq256", "ffhq1024"):
        from models.paper_nets import (  # load_landmark106's default layout
            CELEBA_ATTRIBUTES,
            JD106_GROUPS,
        )
        return Vocabulary(tuple(JD106_GROUPS), CELEBA_ATTRIBUTES, 14 if preset == "ffhq256" else 18)
    return None


def bundle_vocabulary(bundle) -> Vocabulary:
    return Vocabulary(tuple(getattr(bundle.landmarks, "groups", {})), tuple(bundle.regressor.names),
                      int(bundle.generator.n_latent))


@dataclass(frozen=True)
class Lambda4Space:
    distribution: str
    low: float = 0.0
    high: float = 0.0
    values: tuple[float, ...] = ()

    def domain(self):
        from ray import tune
        if self.distribution == "loguniform":
            return tune.loguniform(self.low, self.high)
        if self.distribution == "uniform":
            return tune.uniform(self.low, self.high)
        return tune.choice(list(self.values))


@dataclass(frozen=True)
class TuneSpace:
    path: str
    lambda4: Lambda4Space
    landmark_subsets: dict[str, tuple[str, ...]]
    attribute_sets: dict[str, tuple[str, ...]] = field(default_factory=dict)   # {} = not searched
    layer_masks: dict[str, tuple[int, ...]] = field(default_factory=dict)      # {} = not searched
    presets: tuple[str, ...] = ()
    description: str = ""

    def as_dict(self) -> dict:
        return {"path": self.path, "description": self.description, "presets": list(self.presets),
                "lambda4": {k: v for k, v in to_dict(self.lambda4).items() if v not in ((), [])},
                "landmark_subsets": {k: list(v) for k, v in self.landmark_subsets.items()},
                "attribute_sets": {k: list(v) for k, v in self.attribute_sets.items()},
                "layer_masks": {k: list(v) for k, v in self.layer_masks.items()}}


def resolve_space_path(space: str) -> Path:
    """A path as given, or tune_spaces/<name>.yaml for a bare name."""
    p = Path(space).expanduser()
    if p.is_file():
        return p.resolve()
    if "/" not in space and p.suffix not in (".yaml", ".yml"):
        candidate = SPACES_DIR / f"{space}.yaml"
        if candidate.is_file():
            return candidate
        known = sorted(f.stem for f in SPACES_DIR.glob("*.yaml"))
        raise ConfigError(f"space: {space!r} is neither a file nor one of the spaces in {SPACES_DIR}: {known}")
    raise ConfigError(f"space: search space file {p} not found")


def _number(value: Any, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise ConfigError(f"{where}: expected a number, got {value!r}")
    try:
        x = float(value)
    except ValueError:
        raise ConfigError(f"{where}: expected a number, got {value!r}") from None
    if not math.isfinite(x):
        raise ConfigError(f"{where}: {value!r} is not a finite number")
    return x


def _parse_lambda4(node: Any, where: str) -> Lambda4Space:
    if not isinstance(node, dict):
        raise ConfigError(f"{where}: expected a mapping with distribution: loguniform|uniform|choice")
    unknown = [k for k in node if k not in LAMBDA4_KEYS]
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {unknown}; valid keys: {list(LAMBDA4_KEYS)}")
    dist = node.get("distribution")
    if dist not in DISTRIBUTIONS:
        raise ConfigError(f"{where}.distribution: {dist!r} is not one of {list(DISTRIBUTIONS)}")
    if dist == "choice":
        values = node.get("values")
        if "low" in node or "high" in node:
            raise ConfigError(f"{where}: a choice takes `values`, not low/high")
        if not isinstance(values, list) or not values:
            raise ConfigError(f"{where}.values: expected a non-empty list of numbers, got {values!r}")
        parsed = tuple(_number(v, f"{where}.values[{i}]") for i, v in enumerate(values))
        bad = [v for v in parsed if v <= 0]
        if bad:
            raise ConfigError(f"{where}.values: {bad} must be > 0 (the baseline lambda4 = 0 is always run on its own)")
        return Lambda4Space(dist, values=parsed)
    if "values" in node:
        raise ConfigError(f"{where}: a {dist} range takes low/high, not `values`")
    for key in ("low", "high"):
        if key not in node:
            raise ConfigError(f"{where}.{key}: missing (a {dist} range needs low and high)")
    low, high = _number(node["low"], f"{where}.low"), _number(node["high"], f"{where}.high")
    if dist == "loguniform" and low <= 0:
        raise ConfigError(f"{where}.low: {low:g} must be > 0 for a log-uniform range (the baseline 0 is run on its own)")
    if dist == "uniform" and low < 0:
        raise ConfigError(f"{where}.low: {low:g} must be >= 0 (lambda4 is a loss weight)")
    if low >= high:
        raise ConfigError(f"{where}.high: {high:g} must be greater than low ({low:g})")
    return Lambda4Space(dist, low, high)


def _named_lists(node: Any, where: str, item: Callable[[Any, str], Any], allow_empty: bool) -> dict:
    if not isinstance(node, dict) or not node:
        raise ConfigError(f"{where}: expected a non-empty mapping of name -> list")
    out = {}
    for name, values in node.items():
        key = f"{where}.{name}"
        if not isinstance(name, str) or not CHOICE_NAME.match(name) or name in (BASELINE_SUBSET, DEFAULT_CHOICE):
            raise ConfigError(f"{key}: names must be letters, digits, '_', '.', '-' (and not "
                              f"{DEFAULT_CHOICE!r}); got {name!r}")
        if not isinstance(values, list):
            raise ConfigError(f"{key}: expected a list, got {values!r}")
        if not values and not allow_empty:
            raise ConfigError(f"{key}: empty; name at least one entry")
        parsed = tuple(item(v, f"{key}[{i}]") for i, v in enumerate(values))
        if len(set(parsed)) != len(parsed):
            raise ConfigError(f"{key}: has duplicates: {list(parsed)}")
        out[name] = parsed
    return out


def _string(value: Any, where: str) -> str:
    if not isinstance(value, str) or not value:
        raise ConfigError(f"{where}: expected a name, got {value!r}")
    return value


def _layer(value: Any, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ConfigError(f"{where}: expected a layer index >= 0, got {value!r}")
    return value


def parse_space(data: dict, where: str) -> TuneSpace:
    """Structure, types and ranges of a space (no preset knowledge)."""
    unknown = [k for k in data if k not in SPACE_KEYS]
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {unknown}; valid keys: {list(SPACE_KEYS)}")
    for key in ("lambda4", "landmark_subsets"):
        if key not in data:
            raise ConfigError(f"{where}: {key}: missing (a space needs lambda4 and landmark_subsets)")
    presets = data.get("presets", [])
    if not isinstance(presets, list) or not all(isinstance(p, str) for p in presets):
        raise ConfigError(f"{where}: presets: expected a list of preset names, got {presets!r}")
    description = data.get("description", "")
    if not isinstance(description, str):
        raise ConfigError(f"{where}: description: expected text, got {description!r}")
    return TuneSpace(
        path=where, lambda4=_parse_lambda4(data["lambda4"], f"{where}: lambda4"),
        landmark_subsets=_named_lists(data["landmark_subsets"], f"{where}: landmark_subsets", _string, False),
        attribute_sets=(_named_lists(data["attribute_sets"], f"{where}: attribute_sets", _string, False)
                        if "attribute_sets" in data else {}),
        layer_masks=(_named_lists(data["layer_masks"], f"{where}: layer_masks", _layer, True)
                     if "layer_masks" in data else {}),
        presets=tuple(presets), description=description)


def check_space(space: TuneSpace, preset: str, vocab: Vocabulary | None) -> None:
    """Names in the space against what the preset's networks know (skipped where vocab is None)."""
    where = space.path
    from pipeline.presets import PRESETS
    unknown_presets = [p for p in space.presets if p not in PRESETS]
    if unknown_presets:
        raise ConfigError(f"{where}: presets: {unknown_presets} are not presets; known: {sorted(PRESETS)}")
    if space.presets and preset not in space.presets:
        raise ConfigError(f"{where}: presets: this space is for {list(space.presets)}, the sweep uses preset "
                          f"{preset!r}; use a space written for it (e.g. tune_spaces/<preset>.yaml)")
    if vocab is None:
        return
    for name, groups in space.landmark_subsets.items():
        bad = [g for g in groups if g not in vocab.groups]
        if bad:
            raise ConfigError(f"{where}: landmark_subsets.{name}: unknown group(s) {bad}; the {preset!r} landmark "
                              f"model's groups are {list(vocab.groups)}")
    if vocab.attributes is not None:
        for name, attrs in space.attribute_sets.items():
            bad = [a for a in attrs if a not in vocab.attributes]
            if bad:
                raise ConfigError(f"{where}: attribute_sets.{name}: unknown attribute(s) {bad}; the {preset!r} "
                                  f"regressor has {list(vocab.attributes)}")
    if vocab.n_latent is not None:
        for name, layers in space.layer_masks.items():
            bad = [i for i in layers if i >= vocab.n_latent]
            if bad:
                raise ConfigError(f"{where}: layer_masks.{name}: layer(s) {bad} outside the {preset!r} generator's "
                                  f"latent layers 0..{vocab.n_latent - 1}")


def load_space(space: str | Path, preset: str, vocab: Vocabulary | None = None) -> TuneSpace:
    """Read, parse and check a search space file; every error names the file and the key."""
    path = resolve_space_path(str(space))
    data = read_yaml(path)
    parsed = parse_space(data, str(path))
    check_space(parsed, preset, vocab if vocab is not None else preset_vocabulary(preset))
    return parsed


# ---------------------------------------------------------------------------------------------
# What runs inside a trial
# ---------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class ObjectiveProbe:
    """pipeline.ray_train's `probe`: built on a trial's rank 0 worker, it measures the objective.

    reference: the baseline's (step, edit_success_pp) curve the score compares with (None: this is a
    baseline, compared with itself). Intermediate evaluations use the first intermediate_samples
    faces, the final one (after the last step) all faces.
    """
    held_out: bytes
    judge: str
    intermediate_samples: int
    tolerance_pp: float
    penalty: float
    batch_size: int
    reference: tuple[tuple[int, float], ...] | None = None
    inject_failure: str = ""

    def reference_at(self, step: int) -> float | None:
        """The baseline's edit success at `step` (its last evaluation at or before it)."""
        if not self.reference:          # None: a baseline; (): a baseline that never evaluated
            return None
        earlier = [v for s, v in self.reference if s <= step]
        return earlier[-1] if earlier else self.reference[0][1]

    def __call__(self, cfg: TrainConfig, bundle, device) -> Callable:
        if self.inject_failure:
            raise InjectedTrialFailure(self.inject_failure)
        evaluator = ObjectiveEvaluator(bundle, HeldOutSet.from_bytes(self.held_out, "held-out set"), self.judge,
                                       self.batch_size, device)

        def measure(state, final: bool) -> dict[str, float]:
            parts = evaluator(state.directions, state.objective.attributes,
                              None if final else self.intermediate_samples)
            s = score(parts.emotion_tv_pp, parts.edit_success_pp, self.reference_at(state.step),
                      tolerance_pp=self.tolerance_pp, penalty=self.penalty)
            return {**parts.as_metrics(), **s.as_metrics(), "objective_final": float(final)}
        return measure


@dataclass(frozen=True)
class TrialSetup:
    """Everything a trial driver needs besides its sampled params (shipped with tune.with_parameters)."""
    base: TrainConfig                         # iterations, checkpoint_every, scaling, tracking, work_dir set
    space: TuneSpace
    probe: ObjectiveProbe
    run_prefix: str
    references: dict[str, tuple[tuple[int, float], ...]] = field(default_factory=dict)  # combo -> baseline curve
    fail_subset: str = ""


def combo_key(params: dict) -> str:
    return f"{params.get('attributes', DEFAULT_CHOICE)}|{params.get('layer_mask', DEFAULT_CHOICE)}"


def trial_train_config(base: TrainConfig, space: TuneSpace, params: dict, run_name: str) -> TrainConfig:
    """A trial's TrainConfig: the base with the sampled lambda4 and the named choices of `params`."""
    subset = params["subset"]
    groups = () if subset == BASELINE_SUBSET else space.landmark_subsets[subset]
    attributes = space.attribute_sets[params["attributes"]] if space.attribute_sets else base.attributes
    layer_mask = space.layer_masks[params["layer_mask"]] if space.layer_masks else base.layer_mask
    return replace(base, losses=replace(base.losses, landmark=float(params["lambda4"])),
                   landmark_groups=tuple(groups), attributes=tuple(attributes), layer_mask=tuple(layer_mask),
                   run_name=run_name)


def trial_driver(params: dict, setup: TrialSetup) -> None:
    """Ray Tune function trainable: one Ray Train run whose reports reach Tune through TuneReportCallback."""
    from ray import tune
    from ray.tune.integration.ray_train import TuneReportCallback

    from pipeline.ray_train import run_train_ray

    trial_id = tune.get_context().get_trial_id()
    cfg = trial_train_config(setup.base, setup.space, params, f"{setup.run_prefix}-{trial_id}")
    fail = (f"{FAIL_SUBSET_ENV}={setup.fail_subset}: trial {trial_id} fails on purpose"
            if setup.fail_subset and params["subset"] == setup.fail_subset else "")
    reference = None if params.get("role") == "baseline" else setup.references[combo_key(params)]
    probe = replace(setup.probe, reference=reference, inject_failure=fail)
    run_train_ray(cfg, callbacks=[TuneReportCallback()], probe=probe)


# ---------------------------------------------------------------------------------------------
# The driver
# ---------------------------------------------------------------------------------------------

@dataclass
class TuneResult:
    out_dir: Path
    best_config_path: Path
    table_path: Path
    plot_path: Path
    held_out_path: Path
    summary_path: Path
    rows: list[dict]
    best: dict
    mlflow_run_id: str | None = None


def ray_storage(cfg: TuneConfig) -> str:
    """Where Ray keeps the sweep: <storage_path>/tune/<name> (a path or a URI), else <sweep dir>/ray."""
    given = cfg.trial_scaling.storage_path
    if not given:
        return str(cfg.out_dir / "ray")
    if is_uri(given):
        return f"{given.rstrip('/')}/tune/{cfg.name}"
    return str(Path(given).expanduser().resolve() / "tune" / cfg.name)


def trial_base_config(cfg: TuneConfig, out_dir: Path, tracking: TrackingConfig) -> TrainConfig:
    scaling = replace(cfg.trial_scaling, storage_path=f"{ray_storage(cfg)}/train")
    return replace(cfg.train, iterations=cfg.scheduler.max_steps, checkpoint_every=cfg.scheduler.eval_every,
                   log_every=min(cfg.train.log_every, cfg.scheduler.eval_every), scaling=scaling,
                   device="auto", work_dir=str(out_dir / "trials"), resume="", tracking=tracking, run_name="")


def trial_tracking(cfg: TuneConfig, tracker) -> TrackingConfig:
    """Trials log into nested runs of the sweep's run (same store and experiment), registering no models."""
    if not getattr(tracker, "run_id", None):
        return replace(cfg.tracking, enabled=False)
    client = tracker.client
    experiment = client.get_experiment(client.get_run(tracker.run_id).info.experiment_id).name
    return replace(cfg.tracking, enabled=True, tracking_uri=tracker.tracking_uri, experiment=experiment,
                   register_model=False, parent_run_id=tracker.run_id)


def choice_grid(space: TuneSpace) -> dict:
    from ray import tune
    grid = {}
    grid["attributes"] = tune.grid_search(list(space.attribute_sets)) if space.attribute_sets else DEFAULT_CHOICE
    grid["layer_mask"] = tune.grid_search(list(space.layer_masks)) if space.layer_masks else DEFAULT_CHOICE
    return grid


def make_tuner(cfg: TuneConfig, setup: TrialSetup, param_space: dict, name: str, num_samples: int, scheduler,
               storage: str):
    from ray import tune
    from ray.tune.search.basic_variant import BasicVariantGenerator

    trainable = tune.with_resources(tune.with_parameters(trial_driver, setup=setup),
                                    {"CPU": 0, "memory": cfg.driver_memory_mb * 2**20})
    return tune.Tuner(
        trainable, param_space=param_space,
        # The concurrency limit goes to the generator: Tune ignores max_concurrent_trials for one.
        # reuse_actors stays off: a reused driver keeps its first trial's context (id, run name).
        tune_config=tune.TuneConfig(metric=METRIC, mode=MODE, num_samples=num_samples, scheduler=scheduler,
                                    search_alg=BasicVariantGenerator(random_state=cfg.search_seed,
                                                                     max_concurrent=cfg.max_concurrent_trials),
                                    reuse_actors=False),
        run_config=tune.RunConfig(name=name, storage_path=str(storage), verbose=cfg.verbose,
                                  failure_config=tune.FailureConfig(max_failures=0, fail_fast=False)))


def asha(cfg: TuneConfig):
    """ASHA on `score` over `step`, with every rung before the last step (None: no early stopping).

    A trial that reaches max_steps must end by itself, after its Ray Train run has copied T into the
    run directory and closed its MLflow run; a stop there would cut both short. ASHA puts rungs at
    grace_period * reduction_factor^k <= max_t and may stop at max_t (stop_last_trials), so max_t is
    max_steps - 1 and stop_last_trials is off.
    """
    sc = cfg.scheduler
    if sc.kind == "fifo" or sc.grace_period >= sc.max_steps:
        return None
    from ray.tune.schedulers import ASHAScheduler
    return ASHAScheduler(time_attr="step", max_t=sc.max_steps - 1, grace_period=sc.grace_period,
                         reduction_factor=sc.reduction_factor, stop_last_trials=False)


def _error_text(error: BaseException | None) -> str:
    if error is None:
        return ""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    # Ray wraps the trial's exception; its last lines name the real error.
    return " | ".join(lines[-2:])[:400] if lines else type(error).__name__


def result_row(result, setup: TrialSetup) -> dict:
    """One row of trials.csv from a Tune Result."""
    params, metrics = dict(result.config or {}), dict(result.metrics or {})
    status = ERROR if result.error else COMPLETED if metrics.get("objective_final") == 1 else STOPPED
    trial_id = metrics.get("trial_id") or Path(result.path).name
    space = setup.space
    subset = params.get("subset", "")
    row = {"trial_id": trial_id, "role": params.get("role", ""), "status": status,
           "lambda4": float(params.get("lambda4", math.nan)), "subset": subset,
           "landmark_groups": "+".join(space.landmark_subsets.get(subset, ())),
           "attributes": params.get("attributes", DEFAULT_CHOICE), "layer_mask": params.get("layer_mask", DEFAULT_CHOICE),
           "steps": int(metrics.get("step", 0) or 0)}
    measured = {k: v for k, v in metrics.items() if k in METRIC_COLUMNS or k.startswith("emotion_abs_pp_")}
    for key in sorted(set(METRIC_COLUMNS) | set(measured)):
        value = measured.get(key) if status != ERROR else None
        row[key] = float(value) if isinstance(value, (int, float)) else math.nan
    row["feasible"] = bool(metrics["feasible"]) if status != ERROR and "feasible" in metrics else None
    row["run_name"] = f"{setup.run_prefix}-{trial_id}"
    directions = Path(setup.base.work_dir) / row["run_name"] / "directions.safetensors"
    row["directions"] = str(directions) if status == COMPLETED and directions.is_file() else ""
    row["mlflow_run_id"] = ""
    row["checkpoint"] = metrics.get("checkpoint_path", "") or ""
    row["error"] = _error_text(result.error)
    return row


METRIC_COLUMNS = ("score", "emotion_tv_pp", "landmark_drift", "edit_success_pp", "reference_success_pp",
                  "shortfall_pp", "eval_faces")


def baseline_curve(result) -> tuple[tuple[int, float], ...]:
    """(step, edit_success_pp) of every objective evaluation a baseline reported."""
    df = result.metrics_dataframe
    if df is None or "edit_success_pp" not in df:
        return ()
    rows = df[["step", "edit_success_pp"]].dropna().sort_values("step")
    return tuple((int(s), float(v)) for s, v in rows.itertuples(index=False))


def run_phase(cfg: TuneConfig, setup: TrialSetup, param_space: dict, name: str, num_samples: int, scheduler,
              storage: str) -> list:
    grid = make_tuner(cfg, setup, param_space, name, num_samples, scheduler, storage).fit()
    return [grid[i] for i in range(len(grid))]


def pick_best(rows: list[dict]) -> dict:
    done = [r for r in rows if r["status"] == COMPLETED and math.isfinite(r["score"])]
    if not done:
        raise TuneFailed("no trial completed with a finite score; see trials.csv for their errors")
    return min(done, key=lambda r: (r["score"], r["role"] != "baseline", r["trial_id"]))


def best_train_config(cfg: TuneConfig, space: TuneSpace, best: dict) -> TrainConfig:
    """The base train config with the winning choices: ready for `hfld train --config`."""
    base = cfg.train
    params = {"lambda4": best["lambda4"], "subset": best["subset"], "attributes": best["attributes"],
              "layer_mask": best["layer_mask"]}
    chosen = trial_train_config(base, space, params, f"{cfg.name}-best")
    return replace(chosen, work_dir=str(Path(cfg.work_dir).expanduser().resolve()), resume="",
                   tracking=replace(base.tracking, parent_run_id=""))


def write_best_config(path: Path, cfg: TuneConfig, train_cfg: TrainConfig, best: dict) -> Path:
    header = (f"# Best configuration of sweep {cfg.name!r}: trial {best['trial_id']} ({best['role']}), "
              f"lambda4 = {best['lambda4']:g}, subset {best['subset']!r}, score {best['score']:.4g}.\n"
              f"# Train it with:  hfld train --config {path}\n")
    path.write_text(header + yaml.safe_dump(to_dict(train_cfg), sort_keys=False))
    return path


def table_columns(labels: list[str]) -> list[str]:
    return ["trial_id", "role", "status", "best", "lambda4", "subset", "landmark_groups", "attributes",
            "layer_mask", "steps", "score", "feasible", "emotion_tv_pp", *[f"emotion_abs_pp_{x}" for x in labels],
            "landmark_drift", "edit_success_pp", "reference_success_pp", "shortfall_pp", "eval_faces",
            "run_name", "mlflow_run_id", "directions", "checkpoint", "error"]


def _cell(value) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return "" if math.isnan(value) else f"{value:.6g}"
    return str(value)


def write_table(path: Path, rows: list[dict], labels: list[str]) -> Path:
    columns = table_columns(labels)
    with open(path, "w", newline="") as f:
        f.write(f"# {SCORE_DEFINITION}\n")
        w = csv.DictWriter(f, fieldnames=columns, extrasaction="ignore")
        w.writeheader()
        for r in rows:
            w.writerow({c: _cell(r.get(c)) for c in columns})
    return path


def read_table(path: Path) -> list[dict]:
    """trials.csv back as dicts of strings (the comment line skipped)."""
    with open(path, newline="") as f:
        lines = [line for line in f if not line.startswith("#")]
    return list(csv.DictReader(lines))


def pareto_front(points: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """Points (drift, success) no other point beats on both (lower drift, higher success), by drift."""
    front, best_success = [], -math.inf
    for drift, success in sorted(points, key=lambda p: (p[0], -p[1])):
        if success > best_success:
            front.append((drift, success))
            best_success = success
    return front


def write_pareto_plot(path: Path, rows: list[dict], best: dict, tolerance_pp: float, title: str) -> Path:
    """Edit success vs. emotion drift of every trial that reported; baseline, best and front marked."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7, 5), dpi=110)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    measured = [r for r in rows if r["status"] != ERROR and math.isfinite(r["emotion_tv_pp"])
                and math.isfinite(r["edit_success_pp"])]
    subsets = sorted({r["subset"] for r in measured if r["role"] != "baseline"})
    colours = {s: f"C{i % 10}" for i, s in enumerate(subsets)}
    for s in subsets:
        for status, filled in ((COMPLETED, True), (STOPPED, False)):
            pts = [r for r in measured if r["subset"] == s and r["status"] == status and r["role"] != "baseline"]
            if pts:
                ax.scatter([r["emotion_tv_pp"] for r in pts], [r["edit_success_pp"] for r in pts], s=36,
                           facecolors=colours[s] if filled else "none", edgecolors=colours[s],
                           label=s if filled else f"{s} (stopped early)")
    baselines = [r for r in measured if r["role"] == "baseline"]
    if baselines:
        ax.scatter([r["emotion_tv_pp"] for r in baselines], [r["edit_success_pp"] for r in baselines], marker="*",
                   s=220, c="black", label="baseline (lambda4 = 0)", zorder=3)
        floor = max(r["edit_success_pp"] for r in baselines) - tolerance_pp
        ax.axhline(floor, color="grey", linestyle="--", linewidth=1, label=f"baseline - tolerance ({tolerance_pp:g} pp)")
    front = pareto_front([(r["emotion_tv_pp"], r["edit_success_pp"]) for r in measured if r["status"] == COMPLETED])
    if len(front) > 1:
        ax.step([p[0] for p in front], [p[1] for p in front], where="post", color="grey", linewidth=1,
                alpha=0.7, label="Pareto front")
    if math.isfinite(best.get("emotion_tv_pp", math.nan)):
        ax.scatter([best["emotion_tv_pp"]], [best["edit_success_pp"]], s=260, facecolors="none", edgecolors="red",
                   linewidths=2, label=f"best: {best['subset']}, lambda4 = {best['lambda4']:.3g}", zorder=4)
    ax.set_xlabel("emotion drift: total variation (pp), lower is better")
    ax.set_ylabel("edit success (pp), higher is better")
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="best")
    fig.tight_layout()
    fig.savefig(path, format="png")
    return path


def annotate_child_runs(tracker, rows: list[dict]) -> None:
    """Per trial row: its nested MLflow run's id, params lambda4/subset, status tags; early-stopped
    trials (whose processes Tune ended) are marked KILLED instead of staying RUNNING."""
    from mlflow.entities import Param

    client = tracker.client
    run = client.get_run(tracker.run_id)
    children = client.search_runs([run.info.experiment_id],
                                  filter_string=f"tags.mlflow.parentRunId = '{tracker.run_id}'", max_results=10000)
    by_name = {c.info.run_name: c for c in children}
    for r in rows:
        child = by_name.get(r["run_name"])
        if child is None:
            continue
        r["mlflow_run_id"] = child.info.run_id
        have = set(child.data.params)
        params = [Param(k, str(v)) for k, v in (("lambda4", r["lambda4"]), ("subset", r["subset"]),
                                                 ("attribute_set", r["attributes"]), ("layer_mask_set", r["layer_mask"]),
                                                 ("tune_role", r["role"])) if k not in have]
        if params:
            client.log_batch(child.info.run_id, params=params)
        for k, v in (("tune_trial_id", r["trial_id"]), ("tune_status", r["status"]), ("tune_role", r["role"])):
            client.set_tag(child.info.run_id, k, v)
        # Tune ends an early-stopped trial's process, so its run was left RUNNING or marked FAILED.
        wanted = {STOPPED: "KILLED", ERROR: "FAILED", COMPLETED: "FINISHED"}[r["status"]]
        if child.info.status == "RUNNING" or (r["status"] == STOPPED and child.info.status != wanted):
            client.set_terminated(child.info.run_id, wanted)


def log_sweep(tracker, cfg: TuneConfig, rows: list[dict], best: dict, files: dict[str, Path]) -> None:
    baselines = [r for r in rows if r["role"] == "baseline"]
    metrics = {"n_trials": float(len(rows)), "n_completed": float(sum(r["status"] == COMPLETED for r in rows)),
               "n_stopped": float(sum(r["status"] == STOPPED for r in rows)),
               "n_errors": float(sum(r["status"] == ERROR for r in rows))}
    for prefix, r in (("best", best), *(("baseline", b) for b in baselines[:1])):
        for key in ("score", "lambda4", "emotion_tv_pp", "landmark_drift", "edit_success_pp"):
            metrics[f"{prefix}.{key}"] = r[key]
    tracker.log_metrics(metrics)
    tracker.set_tags({"best_trial": best["trial_id"], "best_subset": best["subset"],
                      "best_run_id": best.get("mlflow_run_id", ""), "out_dir": str(cfg.out_dir)})
    for p in files.values():
        tracker.log_artifact(p, "tune")


def _covered_attributes(space: TuneSpace, base_attributes: tuple[str, ...]) -> tuple[str, ...]:
    if not space.attribute_sets:
        return base_attributes
    seen: list[str] = []
    for attrs in space.attribute_sets.values():
        seen += [a for a in attrs if a not in seen]
    return tuple(seen)


def prepare(cfg: TuneConfig, print_fn=print):
    """Everything checked and built before Ray starts: space, networks, held-out set, output folder."""
    from pipeline.presets import build_bundle, resolve_device
    from pipeline.train import resolve_attributes

    check_output_locations({"work_dir": cfg.work_dir}, {"trial_scaling.storage_path": cfg.trial_scaling.storage_path})
    space = load_space(cfg.space, cfg.train.model.preset)              # cheap: fails first
    out_dir = cfg.out_dir
    if out_dir.exists() and any(out_dir.iterdir()):
        finished = (out_dir / "summary.json").is_file()
        raise ConfigError(f"run_name: {out_dir} already holds a{'' if finished else 'n unfinished'} sweep; choose "
                          "another run_name" + (", or set resume=auto to use its results" if finished
                                                else " (or delete it)"))
    device = resolve_device(cfg.objective.device)
    bundle = build_bundle(cfg.train.model, device)
    check_space(space, cfg.train.model.preset, bundle_vocabulary(bundle))
    base_attributes = resolve_attributes(cfg.train, bundle)
    for attrs in space.attribute_sets.values():                          # T needs >= 1 column, names known
        resolve_attributes(replace(cfg.train, attributes=attrs), bundle)
    _, labels = emotion_judge(bundle, cfg.objective.judge)
    o = cfg.objective
    print_fn(f"[tune] held-out set: {o.n_samples} faces (seed {o.seed}), edits to both extremes of "
             f"{list(_covered_attributes(space, base_attributes))} ({o.edit_mode})")
    held_out = build_held_out(bundle, _covered_attributes(space, base_attributes), n=o.n_samples, seed=o.seed,
                              truncation=cfg.train.truncation, noise_mode=cfg.train.noise_mode,
                              edit_mode=o.edit_mode, fixed_amount=o.fixed_amount, batch_size=o.batch_size,
                              device=device)
    return space, held_out, labels


def run_tune(cfg: TuneConfig, tracker=None, *, print_fn=print) -> TuneResult:
    """Run the sweep (baselines, then the trials) and write its results; see the module docstring.

    tracker: the sweep's MLflow run (e.g. the `run` stage's); None = open one from cfg.tracking.
    """
    t0 = time.perf_counter()
    if cfg.resume == "auto" and (cfg.out_dir / "summary.json").is_file():
        load_space(cfg.space, cfg.train.model.preset)
        result = load_sweep(cfg.out_dir)
        print_fn(f"[tune] resume=auto: {cfg.out_dir} holds a finished sweep; best: trial {result.best['trial_id']} "
                 f"(lambda4 {result.best['lambda4']:.4g}, subset {result.best['subset']!r})")
        return result
    space, held_out, labels = prepare(cfg, print_fn)
    out_dir = cfg.out_dir
    out_dir.mkdir(parents=True, exist_ok=True)
    files = {"held_out": held_out.save(out_dir / "held_out.safetensors"), "space": out_dir / "space.yaml",
             "config": out_dir / "config.yaml"}
    shutil.copyfile(resolve_space_path(cfg.space), files["space"])
    files["config"].write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False))

    opened = open_tracker(cfg.tracking, work_dir=cfg.work_dir, run_name=cfg.name, stage="tune",
                          tags={"preset": cfg.train.model.preset, "space": str(resolve_space_path(cfg.space))}) \
        if tracker is None else nullcontext(tracker)      # a caller's run is the caller's to end
    with opened as run:
        if run:
            run.log_params(to_dict(cfg))
        rows = _sweep(cfg, space, held_out, run, out_dir, print_fn)
        if run and hasattr(run, "client"):
            annotate_child_runs(run, rows)
        try:
            best = pick_best(rows)
        except TuneFailed:
            write_table(out_dir / "trials.csv", rows, labels)
            raise
        for r in rows:
            r["best"] = r is best
        best_cfg = best_train_config(cfg, space, best)
        files["best_config"] = write_best_config(out_dir / "best_train.yaml", cfg, best_cfg, best)
        files["table"] = write_table(out_dir / "trials.csv", rows, labels)
        files["plot"] = write_pareto_plot(out_dir / "pareto.png", rows, best, cfg.objective.tolerance_pp,
                                          f"{cfg.name}: {len(rows)} trials on {held_out.meta['n']} held-out faces")
        summary = {"name": cfg.name, "score_definition": SCORE_DEFINITION, "config": to_dict(cfg),
                   "space": space.as_dict(), "held_out": held_out.meta, "emotion_labels": labels,
                   "best": best, "baselines": [r for r in rows if r["role"] == "baseline"],
                   "counts": {s: sum(r["status"] == s for r in rows) for s in (COMPLETED, STOPPED, ERROR)},
                   "files": {k: p.name for k, p in files.items()}, "seconds": time.perf_counter() - t0,
                   "mlflow_run_id": getattr(run, "run_id", None), "trials": rows}
        files["summary"] = out_dir / "summary.json"
        files["summary"].write_text(json.dumps(json_safe(summary), indent=1))
        if run:
            log_sweep(run, cfg, rows, best, files)
    print_fn(f"[tune] best: trial {best['trial_id']} ({best['role']}) subset {best['subset']!r} lambda4 "
             f"{best['lambda4']:.4g}: score {best['score']:.4g}, emotion drift {best['emotion_tv_pp']:.3g} pp, "
             f"edit success {best['edit_success_pp']:.3g} pp")
    print_fn(f"[tune] train it: hfld train --config {files['best_config']}")
    return TuneResult(out_dir, files["best_config"], files["table"], files["plot"], files["held_out"],
                      files["summary"], rows, best, getattr(run, "run_id", None))


def load_sweep(out_dir: str | Path) -> TuneResult:
    """The results of a finished sweep from its folder (summary.json and the files it names)."""
    out_dir = Path(out_dir)
    summary = json.loads((out_dir / "summary.json").read_text())
    files = {k: out_dir / name for k, name in summary["files"].items()}
    return TuneResult(out_dir, files["best_config"], files["table"], files["plot"], files["held_out"],
                      out_dir / "summary.json", summary["trials"], summary["best"], summary.get("mlflow_run_id"))


def _sweep(cfg: TuneConfig, space: TuneSpace, held_out: HeldOutSet, tracker, out_dir: Path, print_fn) -> list[dict]:
    """Phase 1: the baselines (FIFO). Phase 2: the sweep (ASHA), scored against them. Returns rows."""
    from ray import tune

    from pipeline.ray_train import ray_connection

    o = cfg.objective
    probe = ObjectiveProbe(held_out.to_bytes(), o.judge, o.intermediate_samples, o.tolerance_pp, o.penalty,
                           o.batch_size)
    base = trial_base_config(cfg, out_dir, trial_tracking(cfg, tracker))
    setup = TrialSetup(base, space, probe, run_prefix=cfg.name, fail_subset=os.environ.get(FAIL_SUBSET_ENV, ""))
    storage = ray_storage(cfg)
    with ray_connection():
        baseline_space = {"role": "baseline", "lambda4": 0.0, "subset": BASELINE_SUBSET, **choice_grid(space)}
        print_fn("[tune] phase 1: baseline (lambda4 = 0) for every attribute set x layer mask")
        baselines = run_phase(cfg, setup, baseline_space, "baseline", 1, None, storage)
        rows = [result_row(r, setup) for r in baselines]
        failed = [(row, r) for row, r in zip(rows, baselines) if row["status"] != COMPLETED]
        if failed:
            row, r = failed[0]
            raise TuneFailed(f"the baseline trial (lambda4 = 0, attributes {row['attributes']!r}, layer mask "
                             f"{row['layer_mask']!r}) did not complete: {row['error'] or row['status']}; the sweep "
                             "needs it to score the other trials")
        references = {combo_key(r.config): baseline_curve(r) for r in baselines}
        setup = replace(setup, references=references)
        sweep_space = {"role": "trial", "lambda4": space.lambda4.domain(),
                       "subset": tune.grid_search(list(space.landmark_subsets)), **choice_grid(space)}
        n = cfg.num_samples * len(space.landmark_subsets) * max(1, len(space.attribute_sets)) * max(1, len(space.layer_masks))
        print_fn(f"[tune] phase 2: {n} trials ({cfg.num_samples} lambda4 draws per combination), "
                 f"{cfg.scheduler.kind} scheduler, {cfg.max_concurrent_trials} at a time")
        results = run_phase(cfg, setup, sweep_space, "sweep", cfg.num_samples, asha(cfg), storage)
        rows += [result_row(r, setup) for r in results]
    for r in rows:
        if r["status"] == ERROR:
            print_fn(f"[tune] trial {r['trial_id']} (subset {r['subset']}, lambda4 {r['lambda4']:.4g}) failed: {r['error']}")
    return rows
