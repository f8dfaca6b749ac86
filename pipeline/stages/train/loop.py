"""The training loop of T and the run directory around it (checkpoints, resume, metrics).

`train_loop` runs the steps of one worker (in this process, or on every Ray Train worker through
ray_train.py); `train_in_process` is the whole single-process stage body. Run directory:
<work_dir>/<run_name>/ with config.yaml, metrics.jsonl, checkpoint.safetensors(+.json) (latest
trainer state, for resuming) and directions.safetensors(+.json) (the final T). Every checkpoint's
metadata names the run directory and the MLflow run that wrote it (a resumed run continues that MLflow
run) and the provenance of the run (package versions, device, weight licences).

Interrupted in process (Ctrl-C, or SIGTERM through the CLI's handler): the step in flight completes,
a checkpoint of the step reached is written, then the KeyboardInterrupt goes on (the MLflow run ends
KILLED); `resume=auto` continues from there.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Callable

import torch
import yaml

from models.losses import TERMS
from pipeline.core.config import ConfigError, to_dict
from pipeline.core.directions import DIRECTIONS_ARTIFACT, DirectionsFile, load_directions, save_directions
from pipeline.core.io import atomic_write_bytes, jsonl_bytes, read_jsonl
from pipeline.core.paths import check_output_locations
from pipeline.core.sampling import resolve_device
from pipeline.core.seeding import Stream, global_sample_ids
from pipeline.core.signals import raise_if_interrupted, signals_deferred
from pipeline.infra.tracking import NullTracker, Tracker, log_provenance, tracking_locations
from pipeline.presets import ModelBundle, build_bundle
from pipeline.presets.provenance import provenance
from pipeline.stages.train.config import TrainConfig, TrainResult
from pipeline.stages.train.resume import (CHECKPOINT_FILE, DIRECTIONS_FILE, ResumePlan, describe_changes,
                                          plan_from_file, resolve_resume)
from pipeline.stages.train.step import (Batch, TrainState, make_step, resolve_attributes, sample_batch, setup_training,
                                        step_and_prepare)

__all__ = ["CHECKPOINT_FILE", "DIRECTIONS_FILE", "METRICS_FILE", "check_train_locations", "resolve_resume",
           "train_in_process", "train_loop"]

METRICS_FILE = "metrics.jsonl"


def check_train_locations(cfg: TrainConfig, tracker: Tracker | None) -> None:
    """Every place training writes, checked before any work (one ConfigError naming the field); the
    MLflow store too when the stage opens its own run (an unwritable SQLite folder made MLflow retry
    for minutes)."""
    own_store = tracking_locations(cfg.tracking, cfg.work_dir) if tracker is None else {}
    check_output_locations({"work_dir": cfg.work_dir, "run_name": cfg.run_dir, **own_store},
                           {"scaling.storage_path": cfg.scaling.storage_path})


# ---------------------------------------------------------------------------------------------
# Checkpoint <-> state
# ---------------------------------------------------------------------------------------------

def sampling_position(cfg: TrainConfig, step: int, world_size: int = 1) -> dict:
    """The training RNG "state": every sample derives from (seed, global sample id), so the next id is
    all a resumed run needs (a different global batch would make it draw other samples)."""
    return {"seed": cfg.seed, "stream": Stream.TRAIN.name, "global_batch": cfg.batch_size * world_size,
            "next_sample_id": step * cfg.batch_size * world_size}


def directions_meta(cfg: TrainConfig, bundle: ModelBundle, state: TrainState, **extra) -> dict:
    return {"rng": sampling_position(cfg, state.step, extra.get("world_size", 1)),
            "attributes": list(state.objective.attributes), "layer_mask": list(cfg.layer_mask),
            "landmark_groups": list(cfg.landmark_groups), "preset": cfg.model.preset,
            "generator_id": bundle.generator_id, "lambdas": to_dict(state.objective.weights), "step": state.step,
            "regressor_names": list(bundle.regressor.names), "config": to_dict(cfg), "run_dir": str(cfg.run_dir),
            **extra}


def run_lineage(tracker: Tracker) -> dict:
    """The MLflow run a checkpoint belongs to (continued when the run is resumed)."""
    return {"mlflow_run_id": tracker.run_id, "mlflow_tracking_uri": tracker.tracking_uri} if tracker.run_id else {}


def consistent_state(state: TrainState) -> bool:
    """Whether T and Adam's moments belong to the same completed step (an interrupt can land inside an
    optimiser step when the CLI's deferring handlers are not installed)."""
    opt = state.optimizer.state.get(state.directions.T)
    return not opt or int(torch.as_tensor(opt["step"]).item()) == state.step


def optimizer_tensors(optimizer: torch.optim.Optimizer) -> dict[str, torch.Tensor]:
    st = optimizer.state_dict()["state"].get(0)
    if not st:
        return {}
    return {"exp_avg": st["exp_avg"], "exp_avg_sq": st["exp_avg_sq"], "step": torch.as_tensor(st["step"]).float()}


def save_checkpoint(path: Path, cfg: TrainConfig, bundle: ModelBundle, state: TrainState, **extra) -> Path:
    return save_directions(path, state.directions.T, directions_meta(cfg, bundle, state, **extra),
                           optimizer_tensors(state.optimizer))


def restore_state(state: TrainState, ckpt: DirectionsFile, source: Path | str) -> None:
    """Load T, Adam moments and step count from a checkpoint that fits this run."""
    if ckpt.attributes != list(state.objective.attributes):
        raise ConfigError(f"resume: {source} edits {ckpt.attributes}, this run edits {list(state.objective.attributes)}")
    if tuple(ckpt.T.shape) != tuple(state.directions.T.shape):
        raise ConfigError(f"resume: {source} has T of shape {list(ckpt.T.shape)}, this run needs "
                          f"{list(state.directions.T.shape)} (different generator?)")
    with torch.no_grad():
        state.directions.T.copy_(ckpt.T.to(state.device))
    if ckpt.optimizer:
        osd = state.optimizer.state_dict()
        osd["state"] = {0: {"step": ckpt.optimizer["step"].reshape(()).cpu(),
                            "exp_avg": ckpt.optimizer["exp_avg"].to(state.device),
                            "exp_avg_sq": ckpt.optimizer["exp_avg_sq"].to(state.device)}}
        state.optimizer.load_state_dict(osd)
    state.step = int(ckpt.meta.get("step", 0))


# ---------------------------------------------------------------------------------------------
# The loop
# ---------------------------------------------------------------------------------------------

class ProgressLine:
    """Human-readable progress: step, losses, samples/s since start (or resume) and ETA."""

    def __init__(self, total: int, batch: int, start_step: int, print_fn=print):
        self.total, self.batch, self.start_step, self.print = total, batch, start_step, print_fn
        self.t0 = time.perf_counter()

    def __call__(self, step: int, metrics: dict) -> dict:
        elapsed = max(time.perf_counter() - self.t0, 1e-9)
        rate = (step - self.start_step) * self.batch / elapsed
        eta = (self.total - step) * self.batch / max(rate, 1e-9)
        terms = " ".join(f"{k}={metrics[k]:.4g}" for k in ("total",) + TERMS if k in metrics)
        self.print(f"[train] step {step}/{self.total} {terms} | {rate:.1f} samples/s | eta {eta:.0f}s", flush=True)
        return {"samples_per_s": rate}


def train_loop(cfg: TrainConfig, bundle: ModelBundle, state: TrainState, *, rank: int = 0, world_size: int = 1,
               on_log: Callable[[int, dict], None] | None = None,
               on_checkpoint: Callable[[TrainState], None] | None = None,
               on_step: Callable[[TrainState], None] | None = None) -> dict:
    """Run steps state.step .. cfg.iterations; every worker calls this with its own rank.

    cfg.batch_size is the per-worker batch; sample ids are global so workers never repeat a sample.
    on_log(step, metrics) every log_every steps and at the end; on_checkpoint(state) every
    checkpoint_every steps (not after the last step: the caller saves the final state);
    on_step(state) after every step (fault injection in tests). Every rank reaches on_log and
    on_checkpoint at the same steps, so they may hold collectives. Returns the last step's metrics.
    """
    n_attr = state.directions.n_attributes
    metrics: dict = {}
    step = make_step(state, cfg)

    def batch_of(k: int) -> Batch | None:
        """The batch of step k + 1 (steps count from 1), None past the last."""
        if k >= cfg.iterations:
            return None
        return sample_batch(cfg, bundle.generator, n_attr, global_sample_ids(k, rank, cfg.batch_size, world_size),
                            state.device)

    batch = batch_of(state.step)
    while state.step < cfg.iterations:
        # A signal (Ctrl-C, SIGTERM) is raised between iterations, never inside a step or a checkpoint.
        raise_if_interrupted()
        with signals_deferred():
            following = state.step + 1
            metrics, batch = step_and_prepare(step, batch, lambda: batch_of(following))
            if on_log and (state.step % cfg.log_every == 0 or state.step == cfg.iterations):
                on_log(state.step, metrics)
            if on_checkpoint and state.step % cfg.checkpoint_every == 0 and state.step < cfg.iterations:
                on_checkpoint(state)
        if on_step:
            on_step(state)
    return metrics


def train_in_process(cfg: TrainConfig, *, bundle: ModelBundle | None = None, tracker: Tracker = NullTracker(),
                     print_fn=print, resume: ResumePlan | None = None) -> TrainResult:
    """Single-process training of T, logging into `tracker` (an open run); writes the run directory
    and returns where T is. `resume`: the plan run_train made (None: made here)."""
    resume = resume if resume is not None else plan_from_file(cfg, print_fn)  # before any work: fails fast
    device = resolve_device(cfg.device)
    bundle = bundle or build_bundle(cfg.model, device)
    for note in bundle.notes:
        print_fn(f"[train] note: {note}")
    state = setup_training(cfg, bundle, device)
    if resume.source:
        restore_state(state, load_directions(resume.source), resume.source)
        print_fn(f"[train] resumed from {resume.source} at step {state.step}")
    run_dir = cfg.run_dir
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "config.yaml").write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False))
    prov = provenance(cfg.model, device)
    if tracker:
        tracker.log_params(to_dict(cfg))
        tracker.set_tags(lineage_tags(cfg, bundle, resumed_from=resume.source, run_dir=str(run_dir)))
        log_provenance(tracker, prov)
        log_resume_changes(tracker, resume)
    extra = {**run_lineage(tracker), "provenance": prov, **resume.meta()}
    history: list[dict] = []
    keep_metrics_up_to(run_dir / METRICS_FILE, state.step)
    progress = ProgressLine(cfg.iterations, cfg.batch_size, state.step, print_fn)

    def on_log(step, metrics):
        row = {"step": step, **metrics, **progress(step, metrics)}
        history.append(row)
        with open(run_dir / METRICS_FILE, "a") as f:
            f.write(json.dumps(row) + "\n")
        if tracker:
            tracker.log_metrics({k: v for k, v in row.items() if k != "step"}, step=step)

    def on_checkpoint(st):
        save_checkpoint(run_dir / CHECKPOINT_FILE, cfg, bundle, st, **extra)

    try:
        final = train_loop(cfg, bundle, state, on_log=on_log, on_checkpoint=on_checkpoint)
    except KeyboardInterrupt:
        checkpoint_on_interrupt(run_dir / CHECKPOINT_FILE, cfg, bundle, state, extra, print_fn)
        raise
    out = save_checkpoint(run_dir / DIRECTIONS_FILE, cfg, bundle, state, final_metrics=final, **extra)
    save_checkpoint(run_dir / CHECKPOINT_FILE, cfg, bundle, state, **extra)
    if tracker:
        log_final_directions(tracker, cfg, out, print_fn)
    print_fn(f"[train] done: {state.step} steps; T written to {out}")
    return TrainResult(run_dir, out, state.step, final, history)


def checkpoint_on_interrupt(path: Path, cfg: TrainConfig, bundle: ModelBundle, state: TrainState, extra: dict,
                            print_fn=print) -> None:
    """Save the step reached, so `resume=auto` loses nothing (skipped, with a note, if the interrupt
    landed inside an optimiser step: the last periodic checkpoint then stands)."""
    if not consistent_state(state):
        print_fn(f"[train] interrupted inside step {state.step + 1}: no checkpoint written; the last one "
                 f"({path}) stands", flush=True)
        return
    save_checkpoint(path, cfg, bundle, state, **extra)
    print_fn(f"[train] interrupted at step {state.step}: checkpoint written to {path}; continue with "
             "resume=auto", flush=True)


def keep_metrics_up_to(path: Path, step: int) -> None:
    """Drop the rows a killed earlier attempt logged after its last checkpoint (they are redone)."""
    rows = read_jsonl(path)
    kept = [r for r in rows if r.get("step", 0) <= step]
    if len(kept) != len(rows):
        atomic_write_bytes(path, jsonl_bytes(kept))


# ---------------------------------------------------------------------------------------------
# Tracking (shared by the in-process and the Ray path)
# ---------------------------------------------------------------------------------------------

def lineage_tags(cfg: TrainConfig, bundle: ModelBundle, **extra) -> dict:
    return {"preset": cfg.model.preset, "generator_id": bundle.generator_id,
            "attributes": ",".join(resolve_attributes(cfg, bundle)), **{k: v for k, v in extra.items() if v}}


def log_resume_changes(tracker, resume: ResumePlan) -> None:
    """A forced resume (resume_force) in the MLflow run: tags naming the step and the changes, and the
    whole config history as config_history.json."""
    if tracker and resume.changes:
        tracker.set_tags({"resume_forced_at_step": resume.step, "resume_changes": describe_changes(resume.changes, 50)})
        tracker.log_dict({"config_history": resume.config_history}, "config_history.json")


def log_final_directions(tracker, cfg: TrainConfig, directions_path: Path, print_fn=print) -> None:
    """T (safetensors + json) as the run's `directions` artifact, and as a registered model version."""
    directions_path = Path(directions_path)
    files = (directions_path, directions_path.with_suffix(".json"))
    for f in files:
        tracker.log_artifact(f, DIRECTIONS_ARTIFACT)
    if cfg.tracking.register_model:
        version = tracker.register_model(DIRECTIONS_ARTIFACT, cfg.tracking.model_name,
                                         tags={"run_name": cfg.name, "preset": cfg.model.preset})
        if version:
            print_fn(f"[train] registered T as model {cfg.tracking.model_name!r} version {version}")
