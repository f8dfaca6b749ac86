"""Stage `train` on Ray Train: T optimised by DDP over any number of workers, fault-tolerant, in MLflow.

    cfg = load_config(TrainConfig, "train.yaml", ["scaling.num_workers=2"])
    result = train_with_ray(cfg)        # or pipeline.stages.train.run_train(cfg), which picks the path

The driver (this process) starts a `TorchTrainer`; every worker runs `train_worker`, which is the
in-process trainer's `train_loop` with Ray around it:

- Networks: every worker builds the preset's networks itself (from cfg.model) and freezes them;
  only T is wrapped in DistributedDataParallel (`ray.train.torch.prepare_model`: gloo on CPU, NCCL
  on GPU), so a step all-reduces T's gradient, [L, w_dim, N] floats, and nothing else.
- Samples: cfg.batch_size is the per-worker batch. Worker r at step t trains on the global sample
  ids `global_sample_ids(t, r, b, W)` and draws each sample's latent, edit amounts and noise from
  (seed, id) alone, so no two workers repeat a sample and W workers x batch b see exactly the
  samples of 1 worker x batch W*b. DDP averages the gradients of the per-worker mean losses, which
  is the gradient of the mean over the global batch.
  One exception: the StyleGAN2 discriminator's minibatch-stddev layer mixes the samples inside one
  forward batch (groups of up to 4), so the adversarial term of W x b differs from that of 1 x W*b
  unless the groups match. Equivalence holds exactly with losses.adversarial = 0 (as the test uses)
  or with a discriminator without that coupling.
- Randomness: because every random number derives from (seed, global sample id), the RNG state is
  implicit in the step count. A checkpoint holds T, Adam's moments and the step (its metadata
  spells the position out: "rng" = seed, global batch, next sample id), and nothing else is needed
  for a resumed run to draw exactly what an uninterrupted one would.
- Checkpoints: every checkpoint_every steps rank 0 writes checkpoint.safetensors (+ .json) and the
  metrics rows so far into a temporary folder and reports it with `ray.train.report`; the other
  ranks report the same metrics without a checkpoint (Ray needs every rank to report: it is a
  barrier). Ray keeps them under <storage_path>/<run name>/.
- Failures: `scaling.max_failures` restarts the worker group; restarted workers resume from
  `ray.train.get_checkpoint()`. Explicit resume: cfg.resume = a checkpoint path (its bytes are sent
  to the workers, so the file need only exist on the driver's machine) or "auto", which continues
  Ray's own run of the same name (and otherwise the run directory's checkpoint.safetensors).
- MLflow: the driver creates the run (deterministic name = cfg.name) and ends it FINISHED,
  FAILED or KILLED (interrupted); everything in it is logged by rank 0 alone: params, loss terms
  averaged over workers and samples/s per log interval, the final T as artifact and as a registered
  model version. After a restart, rank 0 continues the same run; a resumed invocation (resume=auto,
  or the run dir's own checkpoint) continues the MLflow run recorded in the checkpoint it resumes.
- Interrupted (Ctrl-C / SIGTERM): the driver stops, `ray_session` shuts Ray down (the workers stop);
  Ray's last checkpoint is what `resume=auto` continues. The run folder is locked while the driver
  runs (pipeline.core.locks). On a multi-node cluster use a tracking server URI and
  shared storage (work_dir, scaling.storage_path) that every node can reach.
- Outputs: when training ends the driver copies the final Ray checkpoint into the run directory,
  so both paths leave config.yaml, metrics.jsonl, directions.safetensors (+ .json) and
  checkpoint.safetensors (+ .json) there.

Fault injection (tests): HFLD_FAULT_AT_STEP=k in the driver's environment makes rank
HFLD_FAULT_RANK (default 1, or 0 with one worker) exit abruptly (os._exit) after step k, once: it
first creates the marker file HFLD_FAULT_MARKER (default <storage>/<name>/fault-injected), and a
restarted worker that finds the marker carries on. HFLD_FAULT_DELAY_S makes it linger first: Ray
Train registers a reported checkpoint when its controller next polls the workers (every 2 s), so
a crash within that window after a checkpoint resumes from the checkpoint before it (same final T,
a few steps redone).
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import ray
import ray.train
import torch
import yaml

from pipeline.core.config import ConfigError, from_dict, to_dict
from pipeline.core.directions import CheckpointError, load_directions, read_meta
from pipeline.core.io import atomic_write_bytes, jsonl_bytes, read_jsonl
from pipeline.core.locks import run_lock
from pipeline.core.paths import absolute_paths, is_uri
from pipeline.infra.ray_session import GPU_SAFETY_ENV, ray_session
from pipeline.infra.tracking import NullTracker, Tracker, attach_tracker, log_provenance, stage_run
from pipeline.presets import build_bundle
from pipeline.presets.provenance import provenance
from pipeline.stages.train.config import RayTrainFailed, TrainConfig, TrainResult
from pipeline.stages.train.loop import (CHECKPOINT_FILE, DIRECTIONS_FILE, METRICS_FILE, ProgressLine,
                                        check_train_locations, lineage_tags, log_final_directions, log_resume_changes,
                                        restore_state, save_checkpoint, train_loop)
from pipeline.stages.train.resume import ResumePlan, plan_resume, resolve_resume
from pipeline.stages.train.step import setup_training

FAULT_STEP_ENV, FAULT_RANK_ENV, FAULT_MARKER_ENV = "HFLD_FAULT_AT_STEP", "HFLD_FAULT_RANK", "HFLD_FAULT_MARKER"
FAULT_DELAY_ENV = "HFLD_FAULT_DELAY_S"

# ---------------------------------------------------------------------------------------------
# Fault injection
# ---------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class FaultPlan:
    """Kill worker `rank` after step `step` (having slept `delay_s`), once: the marker file records it."""
    step: int
    rank: int
    marker: str
    delay_s: float = 0.0

    def maybe_fail(self, rank: int, step: int) -> None:
        if rank != self.rank or step != self.step:
            return
        marker = Path(self.marker)
        if marker.exists():
            return
        marker.parent.mkdir(parents=True, exist_ok=True)
        marker.write_text(f"fault injected at step {step} on rank {rank}\n")
        time.sleep(self.delay_s)
        print(f"[train] fault injection: rank {rank} exits abruptly after step {step}", flush=True)
        os._exit(17)


def fault_plan_from_env(default_marker: Path, world_size: int) -> FaultPlan | None:
    """HFLD_FAULT_AT_STEP (+ HFLD_FAULT_RANK, HFLD_FAULT_MARKER, HFLD_FAULT_DELAY_S) -> a plan, or None."""
    raw = os.environ.get(FAULT_STEP_ENV, "").strip()
    if not raw:
        return None
    try:
        step = int(raw)
        rank = int(os.environ.get(FAULT_RANK_ENV, "1" if world_size > 1 else "0"))
        delay = float(os.environ.get(FAULT_DELAY_ENV, "0"))
    except ValueError:
        raise ConfigError(f"{FAULT_STEP_ENV}/{FAULT_RANK_ENV}/{FAULT_DELAY_ENV}: expected numbers") from None
    if not 0 <= rank < world_size:
        raise ConfigError(f"{FAULT_RANK_ENV}: rank {rank} does not exist with {world_size} worker(s)")
    return FaultPlan(step, rank, os.environ.get(FAULT_MARKER_ENV) or str(default_marker), delay)


# ---------------------------------------------------------------------------------------------
# Small helpers
# ---------------------------------------------------------------------------------------------

def storage_path(cfg: TrainConfig) -> Path | str:
    """Ray's storage for checkpoints: scaling.storage_path, or <work_dir>/ray. A path is made absolute;
    a URI (s3://bucket/prefix, gs://..., any pyarrow filesystem) is given to Ray as it is."""
    raw = cfg.scaling.storage_path
    if raw and is_uri(raw):
        return raw.rstrip("/")
    return Path(raw or Path(cfg.work_dir) / "ray").expanduser().resolve()


def ray_run_location(cfg: TrainConfig) -> Path | str:
    """Where Ray keeps this run's checkpoints: <storage>/<run name> (a path or a URI)."""
    storage = storage_path(cfg)
    return f"{storage}/{cfg.name}" if isinstance(storage, str) else storage / cfg.name


def location_exists(location: Path | str) -> bool:
    if isinstance(location, Path):
        return location.exists()
    import pyarrow.fs
    fs, path = pyarrow.fs.FileSystem.from_uri(location)
    return fs.get_file_info(path).type != pyarrow.fs.FileType.NotFound


def check_device(cfg: TrainConfig) -> None:
    """Workers take their device from Ray (scaling.use_gpu); cfg.device may only agree with it."""
    wants_cuda = cfg.device.startswith("cuda")
    if wants_cuda and not cfg.scaling.use_gpu:
        raise ConfigError(f"device: {cfg.device!r} but scaling.use_gpu is false; set scaling.use_gpu=true "
                          "(Ray assigns each worker its GPU) or device=auto")
    if cfg.scaling.use_gpu and cfg.device not in ("auto",) and not wants_cuda:
        raise ConfigError(f"device: {cfg.device!r} but scaling.use_gpu is true; use device=auto")


def checkpoint_payload(path: Path) -> dict:
    """A checkpoint's two files as bytes, so workers on any node can resume from it."""
    return {"safetensors": path.read_bytes(), "json": path.with_suffix(".json").read_bytes(), "source": str(path)}


def mean_over_workers(metrics: dict[str, float], device: torch.device, world_size: int) -> dict[str, float]:
    """The global-batch value of each per-worker mean (a collective: every rank must call it)."""
    if world_size == 1 or not torch.distributed.is_initialized():
        return dict(metrics)
    keys = sorted(metrics)
    values = torch.tensor([float(metrics[k]) for k in keys], dtype=torch.float64, device=device)
    torch.distributed.all_reduce(values)
    return dict(zip(keys, (values / world_size).tolist()))


def merge_metrics(existing: list[dict], new: list[dict]) -> list[dict]:
    """Rows of an earlier invocation up to where this one started, then this one's rows."""
    if not new:
        return existing
    first = min(r["step"] for r in new)
    return [r for r in existing if r["step"] < first] + new


# ---------------------------------------------------------------------------------------------
# The worker
# ---------------------------------------------------------------------------------------------

def _check_sampling_position(meta: dict, cfg: TrainConfig, world: int, say) -> None:
    saved = meta.get("rng", {}).get("global_batch")
    if saved and saved != cfg.batch_size * world:
        say(f"[train] note: the checkpoint was trained with global batch {saved}, this run uses "
            f"{cfg.batch_size * world}; from here on it draws different samples than the original run would")


def _restore(state, cfg: TrainConfig, loop_config: dict, rank: int, world: int, say) -> tuple[list[dict], dict]:
    """Resume from Ray's latest checkpoint (a restart), else from the requested checkpoint.

    Returns the metrics rows logged so far (rank 0), so metrics.jsonl stays complete across
    restarts, and where this attempt resumed ({} for a fresh start), recorded in the final meta.
    """
    ray_ckpt = ray.train.get_checkpoint()
    if ray_ckpt is not None:
        with ray_ckpt.as_directory() as d:
            ckpt = load_directions(Path(d) / CHECKPOINT_FILE)
            restore_state(state, ckpt, "Ray checkpoint")
            rows = read_jsonl(Path(d) / METRICS_FILE) if rank == 0 else []
        say(f"[train] resumed from Ray's latest checkpoint at step {state.step}")
        return [r for r in rows if r["step"] <= state.step], {"resumed_at_step": state.step,
                                                               "resumed_from": "ray-checkpoint"}
    payload = loop_config.get("resume")
    if payload:
        with tempfile.TemporaryDirectory(prefix="hfld-resume-") as d:
            path = Path(d) / CHECKPOINT_FILE
            path.with_suffix(".json").write_bytes(payload["json"])
            path.write_bytes(payload["safetensors"])
            ckpt = load_directions(path)
            restore_state(state, ckpt, payload["source"])
        say(f"[train] resumed from {payload['source']} at step {state.step}")
        _check_sampling_position(ckpt.meta, cfg, world, say)
        return [], {"resumed_at_step": state.step, "resumed_from": payload["source"]}
    return [], {}


def _report(metrics: dict, rank: int, write_files=None) -> None:
    """ray.train.report from every rank; rank 0 attaches the folder `write_files(dir)` fills."""
    metrics = {k: v for k, v in metrics.items() if isinstance(v, (int, float))}
    if rank != 0 or write_files is None:
        ray.train.report(metrics, checkpoint=None)
        return
    with tempfile.TemporaryDirectory(prefix="hfld-ckpt-") as d:
        write_files(Path(d))
        ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(d))


def worker_device(cfg: TrainConfig) -> torch.device:
    if not cfg.scaling.use_gpu:
        return torch.device("cpu")
    from ray.train.torch import get_device
    device = get_device()
    return device[0] if isinstance(device, list) else device


def train_worker(loop_config: dict) -> dict:
    """Runs on every Ray Train worker: build, (re)store, train, checkpoint, report."""
    from ray.train.torch import prepare_model

    cfg = from_dict(TrainConfig, loop_config["config"], "config")
    context = ray.train.get_context()
    rank, world = context.get_world_rank(), context.get_world_size()
    chief = rank == 0
    # Through logging, not print: Ray Train tees print() into its logger *and* stdout (twice on the console).
    log = logging.getLogger("hfld.train")
    say = (lambda msg, **_: log.info(msg)) if chief else (lambda *a, **k: None)

    device = worker_device(cfg)
    torch.set_num_threads(max(1, int(cfg.scaling.cpus_per_worker)))
    bundle = build_bundle(cfg.model, device)
    for note in bundle.notes:
        say(f"[train] note: {note}")
    state = setup_training(cfg, bundle, device, wrap=lambda m: prepare_model(m, move_to_device=device))
    history, resumed = _restore(state, cfg, loop_config, rank, world, say)

    tracker = attach_tracker(loop_config.get("tracking_uri"), loop_config.get("mlflow_run_id")) if chief \
        else NullTracker()
    prov = provenance(cfg.model, device)
    if tracker:
        tracker.continued = True   # the driver may have reopened an earlier run: its params stay as logged
        tracker.log_params(to_dict(cfg))
        tracker.set_tags(lineage_tags(cfg, bundle, world_size=world, **resumed))
        log_provenance(tracker, prov)
    lineage = ({"mlflow_run_id": loop_config["mlflow_run_id"], "mlflow_tracking_uri": loop_config.get("tracking_uri")}
               if loop_config.get("mlflow_run_id") else {})
    history_meta = {"config_history": loop_config["config_history"]} if loop_config.get("config_history") else {}
    extra = {**lineage, "provenance": prov, **history_meta}

    progress = ProgressLine(cfg.iterations, cfg.batch_size * world, state.step, say)
    last: dict = {}

    def on_log(step: int, metrics: dict) -> None:
        metrics = mean_over_workers(metrics, device, world)
        row = {"step": step, **metrics, **progress(step, metrics)}
        last.clear()
        last.update(row)
        if chief:
            history.append(row)
            tracker.log_metrics({k: v for k, v in row.items() if k != "step"}, step=step)

    def write_checkpoint(d: Path) -> None:
        save_checkpoint(d / CHECKPOINT_FILE, cfg, bundle, state, world_size=world, **extra)
        (d / METRICS_FILE).write_bytes(jsonl_bytes(history))

    probe = loop_config["probe"](cfg, bundle, device) if chief and loop_config.get("probe") else None

    def probed(metrics: dict, st, final: bool) -> dict:
        """Rank 0 adds the probe's metrics (e.g. the tune stage's held-out objective) to a report."""
        if probe is None:
            return metrics
        extra = probe(st, final)
        tracker.log_metrics(extra, step=st.step)
        return {**metrics, **extra}

    def on_checkpoint(st) -> None:
        _report(probed({**last, "step": st.step}, st, False), rank, write_checkpoint)

    fault = FaultPlan(**loop_config["fault"]) if loop_config.get("fault") else None
    on_step = (lambda st: fault.maybe_fail(rank, st.step)) if fault else None

    train_loop(cfg, bundle, state, rank=rank, world_size=world, on_log=on_log, on_checkpoint=on_checkpoint,
               on_step=on_step)
    # on_log always runs at the last step, so `last` holds the global-batch metrics of that step.
    final = {k: v for k, v in last.items() if k not in ("step", "samples_per_s")} if last.get("step") == state.step \
        else {}

    def write_final(d: Path) -> None:
        write_checkpoint(d)
        save_checkpoint(d / DIRECTIONS_FILE, cfg, bundle, state, final_metrics=final, world_size=world,
                        **resumed, **extra)
        if tracker:
            log_final_directions(tracker, cfg, d / DIRECTIONS_FILE, say)

    _report(probed({**final, "step": state.step, "final": 1}, state, True), rank, write_final)
    say(f"[train] workers done: {state.step} steps")
    return {"step": state.step}


# ---------------------------------------------------------------------------------------------
# The driver
# ---------------------------------------------------------------------------------------------

def make_trainer(cfg: TrainConfig, loop_config: dict, storage: Path, callbacks=()):
    """The TorchTrainer of one run; `callbacks`: Ray Train callbacks (the tune stage passes Ray Tune's
    TuneReportCallback so every report reaches the Tune trial)."""
    from ray.train import CheckpointConfig, FailureConfig, RunConfig
    from ray.train import ScalingConfig as RayScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    sc = cfg.scaling
    resources = {"CPU": sc.cpus_per_worker, **({"GPU": sc.gpus_per_worker} if sc.use_gpu else {})}
    env = {k: os.environ.get(k, v) for k, v in GPU_SAFETY_ENV.items()} if sc.use_gpu else None
    return TorchTrainer(
        train_worker,
        train_loop_config=loop_config,
        torch_config=TorchConfig(backend="nccl" if sc.use_gpu else "gloo"),
        scaling_config=RayScalingConfig(num_workers=sc.num_workers, use_gpu=sc.use_gpu,
                                        resources_per_worker=resources),
        run_config=RunConfig(name=cfg.name, storage_path=str(storage),
                             failure_config=FailureConfig(max_failures=sc.max_failures),
                             checkpoint_config=CheckpointConfig(num_to_keep=2),
                             worker_runtime_env={"env_vars": env} if env else None,
                             callbacks=list(callbacks) or None),
    )


def _failure_message(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    tail = [line for line in text if line.strip()][-6:]
    return "\n  ".join(tail) if tail else type(error).__name__


def _copy_outputs(checkpoint_dir: Path, run_dir: Path) -> list[dict]:
    """Final Ray checkpoint -> run directory (metadata first, as save_directions does); returns rows."""
    for name in (DIRECTIONS_FILE, CHECKPOINT_FILE):
        src = checkpoint_dir / name
        if not src.is_file():
            raise RayTrainFailed(f"the final Ray checkpoint in {checkpoint_dir} has no {name}")
        atomic_write_bytes(run_dir / Path(name).with_suffix(".json").name, src.with_suffix(".json").read_bytes())
        atomic_write_bytes(run_dir / name, src.read_bytes())
    rows = read_jsonl(checkpoint_dir / METRICS_FILE)
    merged = merge_metrics(read_jsonl(run_dir / METRICS_FILE), rows)
    atomic_write_bytes(run_dir / METRICS_FILE, jsonl_bytes(merged))
    return rows


def train_with_ray(cfg: TrainConfig, *, tracker: Tracker | None = None, print_fn=print, callbacks=(),
                   probe=None) -> TrainResult:
    """Optimise T on cfg.scaling.num_workers Ray Train workers; returns where T is (in the run dir).

    tracker: as in run_train (None = a run of its own from cfg.tracking; else a child run of it).
    Hooks for the tune stage (stages/tune): `callbacks` go to the TorchTrainer's RunConfig;
    `probe` is a picklable factory probe(cfg, bundle, device) -> fn(state, final) -> {name: float},
    built on rank 0, whose metrics join every report (each checkpoint and the final one) and the
    MLflow run.
    """
    if cfg.scaling.num_workers < 1:
        raise ConfigError("scaling.num_workers: 0 means in-process training; use pipeline.stages.train.run_train")
    check_device(cfg)
    check_train_locations(cfg, tracker)
    cfg = absolute_paths(cfg)
    with run_lock(cfg.run_dir, "run_name", print_fn) as lock:
        return _train_locked(cfg, lock, tracker, print_fn, callbacks, probe)


def ray_checkpoint_meta(ray_run: Path | str) -> dict | None:
    """The metadata of the latest checkpoint Ray keeps for a run (what `resume=auto` restores), or None."""
    from ray.train import Result
    try:
        checkpoint = Result.from_path(str(ray_run)).checkpoint
        if checkpoint is None:
            return None
        with checkpoint.as_directory() as d:
            return read_meta(Path(d) / CHECKPOINT_FILE)
    except (RuntimeError, OSError, CheckpointError, ValueError):
        return None


def resume_plan(cfg: TrainConfig, ray_run: Path | str, print_fn) -> tuple[Path | None, ResumePlan]:
    """(the checkpoint file the workers get, the plan): Ray's own latest checkpoint of this run when
    resume=auto finds one (the workers restore it), else resolve_resume's file."""
    resume_from = resolve_resume(cfg)   # a bad resume/run_name fails before anything starts
    if location_exists(ray_run):
        if cfg.resume != "auto":
            # Ray would restore its own latest checkpoint of that run, taking precedence over any path.
            raise ConfigError(f"run_name: Ray already holds a run named {cfg.name!r} in {ray_run}; choose another "
                              "run_name, or set resume=auto to continue it")
        meta = ray_checkpoint_meta(ray_run)
        if meta is not None:
            return resume_from, plan_resume(cfg, f"Ray's checkpoint in {ray_run}", meta, print_fn)
    meta = read_meta(resume_from) if resume_from else None
    return resume_from, plan_resume(cfg, resume_from, meta, print_fn)


def _train_locked(cfg: TrainConfig, lock, tracker: Tracker | None, print_fn, callbacks, probe) -> TrainResult:
    storage = storage_path(cfg)
    ray_run = ray_run_location(cfg)
    resume_from, plan = resume_plan(cfg, ray_run, print_fn)
    run_dir = cfg.run_dir
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "config.yaml").write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False))
    marker_dir = ray_run if isinstance(ray_run, Path) else run_dir   # the marker is a local file
    fault = fault_plan_from_env(marker_dir / "fault-injected", cfg.scaling.num_workers)

    tags = {"preset": cfg.model.preset, "num_workers": cfg.scaling.num_workers}
    with ray_session(), stage_run(cfg.tracking, tracker, work_dir=cfg.work_dir, run_name=cfg.name, stage="train",
                                  tags=tags, lock=lock, continue_run=plan.mlflow, print_fn=print_fn) as run:
        loop_config = {
            "config": to_dict(cfg),
            "resume": checkpoint_payload(resume_from) if resume_from else None,
            "mlflow_run_id": run.run_id,
            "tracking_uri": run.tracking_uri,
            "config_history": plan.config_history,
            "fault": asdict(fault) if fault else None,
            "probe": probe,
        }
        run.set_tags({"ray_storage": str(ray_run), "run_dir": str(run_dir)})
        log_resume_changes(run, plan)
        print_fn(f"[train] Ray Train: {cfg.scaling.num_workers} worker(s) x batch {cfg.batch_size} "
                 f"({'GPU' if cfg.scaling.use_gpu else 'CPU'}), checkpoints in {ray_run}")
        from ray.train import TrainingFailedError
        try:
            result = make_trainer(cfg, loop_config, storage, callbacks).fit()
        except TrainingFailedError as e:
            raise RayTrainFailed(f"Ray Train run {cfg.name!r} failed (max_failures={cfg.scaling.max_failures}):"
                                 f"\n  {_failure_message(e)}") from e
        except KeyboardInterrupt:
            print_fn(f"[train] interrupted: Ray keeps this run's checkpoints in {ray_run}; continue with "
                     "resume=auto", flush=True)
            raise
        if result.checkpoint is None:
            raise RayTrainFailed(f"Ray Train run {cfg.name!r} ended without a checkpoint")
        with result.checkpoint.as_directory() as d:
            rows = _copy_outputs(Path(d), run_dir)

    out = run_dir / DIRECTIONS_FILE
    meta = load_directions(out).meta
    print_fn(f"[train] done: {meta['step']} steps; T written to {out}")
    return TrainResult(run_dir, out, int(meta["step"]), meta.get("final_metrics", {}), rows)


def remove_ray_run(cfg: TrainConfig) -> None:
    """Delete Ray's stored checkpoints of this run (e.g. to start it afresh under the same name)."""
    location = ray_run_location(cfg)
    if isinstance(location, Path):
        shutil.rmtree(location, ignore_errors=True)
    elif location_exists(location):
        import pyarrow.fs
        fs, path = pyarrow.fs.FileSystem.from_uri(location)
        fs.delete_dir(path)
