"""Stage `train`: optimise the edit directions T with the four-term objective.

    result = run_train(cfg)                 # in this process, or on Ray Train workers
    result.directions_path                  # <work_dir>/<run_name>/directions.safetensors (+ .json)

Layers: config.py (TrainConfig), step.py (one step, no I/O), loop.py (the loop, checkpoints,
resume, the in-process stage body), ray_train.py (TorchTrainer glue: DDP over T on any number
of workers). `scaling.num_workers` picks the path: 0 = this process, >= 1 = Ray Train. Both write
the same run directory and record one MLflow run.

Before any work: the output locations are checked (work_dir, the run folder, the MLflow store,
Ray's storage), paths are made absolute, the run folder is locked (pipeline.core.locks: a second
process gets a ConfigError naming the holder) and the resume plan is made (resume.py: a changed config
is refused unless resume_force). A resumed run continues the MLflow run of its checkpoint.
"""

from __future__ import annotations

from pipeline.core.locks import run_lock
from pipeline.core.paths import absolute_paths
from pipeline.infra.tracking import Tracker, stage_run
from pipeline.presets import ModelBundle
from pipeline.stages.train.config import (NonFiniteLoss, Precision, RayTrainFailed, ScalingConfig, TrainConfig,
                                          TrainResult)
from pipeline.stages.train.loop import check_train_locations, train_in_process
from pipeline.stages.train.resume import plan_from_file, trained_exactly
from pipeline.stages.train.step import resolve_attributes

__all__ = ["NonFiniteLoss", "Precision", "RayTrainFailed", "ScalingConfig", "TrainConfig", "TrainResult",
           "resolve_attributes", "run_train", "trained_exactly"]


def run_train(cfg: TrainConfig, *, tracker: Tracker | None = None, bundle: ModelBundle | None = None,
              print_fn=print, callbacks=(), probe=None) -> TrainResult:
    """What `hfld train` runs: in this process (scaling.num_workers == 0) or on Ray Train workers.

    tracker: None = an MLflow run of its own (cfg.tracking); a tracker = a child run of it.
    bundle: prebuilt networks (in-process only: Ray workers build their own).
    callbacks / probe: Ray Train hooks of the tune stage (see ray_train.train_with_ray).
    """
    check_train_locations(cfg, tracker)
    cfg = absolute_paths(cfg)
    if cfg.scaling.num_workers == 0:
        if callbacks or probe:
            raise ValueError("run_train: callbacks/probe are Ray Train hooks; set scaling.num_workers >= 1")
        with run_lock(cfg.run_dir, "run_name", print_fn) as lock:
            resume = plan_from_file(cfg, print_fn)  # a bad or changed resume fails before an MLflow run exists
            with stage_run(cfg.tracking, tracker, work_dir=cfg.work_dir, run_name=cfg.name, stage="train",
                           tags={"preset": cfg.model.preset, "num_workers": 0}, lock=lock,
                           continue_run=resume.mlflow, print_fn=print_fn) as run:
                return train_in_process(cfg, bundle=bundle, tracker=run, print_fn=print_fn, resume=resume)
    if bundle is not None:
        raise ValueError("run_train: a prebuilt bundle cannot be sent to Ray workers; they build their own")
    # Imported here, not above: Ray (seconds to import) is only needed on this path.
    from pipeline.stages.train.ray_train import train_with_ray
    return train_with_ray(cfg, tracker=tracker, print_fn=print_fn, callbacks=callbacks, probe=probe)
