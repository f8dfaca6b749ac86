"""What runs inside a tune trial, besides Ray: the trial's TrainConfig and the probe that measures the
held-out objective on the trial's rank 0 worker (stages/train/ray_train.py calls it at every
checkpoint and after the last step)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

from pipeline.core.paths import is_uri
from pipeline.infra.tracking import TrackingConfig
from pipeline.stages.train import TrainConfig
from pipeline.stages.tune.config import TuneConfig
from pipeline.stages.tune.objective import HeldOutSet, ObjectiveEvaluator, score
from pipeline.stages.tune.space import BASELINE_SUBSET, TuneSpace

FAIL_SUBSET_ENV = "HFLD_TUNE_FAIL_SUBSET"


class InjectedTrialFailure(RuntimeError):
    """Raised on purpose by the test-only HFLD_TUNE_FAIL_SUBSET hook."""


@dataclass(frozen=True)
class ObjectiveProbe:
    """The Ray Train `probe` of a trial (see stages/train/ray_train.py): built on a trial's rank 0 worker, it measures the objective.

    Intermediate evaluations use the first intermediate_samples faces, the final one (after the last
    step) all faces. Every trial, the baseline included, is held to the same absolute strength floor.
    """
    held_out: bytes
    judge: str
    intermediate_samples: int
    strength_floor: float
    strength_by: str
    penalty: float
    batch_size: int
    inject_failure: str = ""

    def __call__(self, cfg: TrainConfig, bundle, device) -> Callable:
        if self.inject_failure:
            raise InjectedTrialFailure(self.inject_failure)
        evaluator = ObjectiveEvaluator(bundle, HeldOutSet.from_bytes(self.held_out, "held-out set"), self.judge,
                                       self.batch_size, device, strength_by=self.strength_by)

        def measure(state, final: bool) -> dict[str, float]:
            parts = evaluator(state.directions, state.objective.attributes,
                              None if final else self.intermediate_samples)
            s = score(parts.emotion_tv_pp, parts.strength, strength_floor=self.strength_floor, penalty=self.penalty)
            return {**parts.as_metrics(), **s.as_metrics(), "objective_final": float(final)}
        return measure


@dataclass(frozen=True)
class TrialSetup:
    """Everything a trial driver needs besides its sampled params (shipped with tune.with_parameters)."""
    base: TrainConfig                         # iterations, checkpoint_every, scaling, tracking, work_dir set
    space: TuneSpace
    probe: ObjectiveProbe
    run_prefix: str
    fail_subset: str = ""


def trial_train_config(base: TrainConfig, space: TuneSpace, params: dict, run_name: str) -> TrainConfig:
    """A trial's TrainConfig: the base with the sampled lambda4 and the named choices of `params`."""
    subset = params["subset"]
    groups = () if subset == BASELINE_SUBSET else space.landmark_subsets[subset]
    attributes = space.attribute_sets[params["attributes"]] if space.attribute_sets else base.attributes
    layer_mask = space.layer_masks[params["layer_mask"]] if space.layer_masks else base.layer_mask
    return replace(base, losses=replace(base.losses, landmark=float(params["lambda4"])),
                   landmark_groups=tuple(groups), attributes=tuple(attributes), layer_mask=tuple(layer_mask),
                   run_name=run_name)


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
