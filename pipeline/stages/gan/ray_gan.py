"""Stage `gan` on Ray Train: data parallel over G and D on any number of workers, fault-tolerant, in MLflow.

    cfg = load_config(GanConfig, "gan.yaml", ["scaling.num_workers=4", "scaling.use_gpu=true"])
    result = train_with_ray(cfg)        # or pipeline.stages.gan.run_gan(cfg), which picks the path

The driver starts a `TorchTrainer` (gloo on CPU, NCCL on GPU); every worker runs `gan_worker`,
which is loop.run_training with Ray around it:

- Networks: every worker builds G, D and G_ema from (seed, INIT) -- identical everywhere -- and rank 0's
  parameters are broadcast once more to be sure. After every backward, `GradientAverager` averages the
  gradients over workers with one all_reduce (a flat buffer per network), so all workers keep identical
  weights: DistributedDataParallel's arithmetic without its per-forward hooks, which do not fit the
  phases of a StyleGAN2 step (see step.py). G_ema follows from identical G on every worker.
- Data: worker r draws its own batch_size real and fake images from (seed, step, r): global batch =
  workers x batch_size; kimg counts global images.
- Checkpoints: at snapshot_kimg boundaries rank 0 writes the trainer state into <run_dir>/checkpoints
  (split safetensors + manifest, checkpoint.py) and reports that folder to Ray (ray.train.report), which
  copies it to <storage_path>/<run name>; the other ranks report the same metrics without a checkpoint.
  On a multi-node cluster work_dir and scaling.storage_path must be storage every node can reach.
- Failures: scaling.max_failures restarts the worker group; restarted workers resume from Ray's latest
  checkpoint. Explicit resume: cfg.resume = a checkpoint folder (its files are read by the driver and
  sent to the workers) or "auto" (Ray's own checkpoints of a run of the same name in storage_path,
  which Ray restores first, else the run dir's). Without resume, a run name Ray already holds is
  refused (Ray would silently continue it).
- Logging, quality, export: rank 0 only (losses averaged over workers), into the MLflow run the
  driver created; the time limit is decided collectively at log steps so every rank stops together.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from pathlib import Path

import ray
import ray.train
import torch
from torch import nn

from pipeline.core.config import ConfigError, from_dict, to_dict
from pipeline.core.io import read_jsonl
from pipeline.core.paths import is_uri
from pipeline.infra.ray_session import GPU_SAFETY_ENV, ray_session
from pipeline.infra.tracking import NullTracker, Tracker, attach_tracker, stage_run
from pipeline.stages.gan.checkpoint import MANIFEST, Checkpoint, read_checkpoint
from pipeline.stages.gan.config import GanConfig, GanResult
from pipeline.stages.gan.loop import WorkerContext, resolve_resume, run_training
from pipeline.stages.train import RayTrainFailed


class GradientAverager:
    """Average every parameter's gradient over the workers: one all_reduce of a flat buffer per call."""

    def __init__(self, world_size: int):
        self.world_size = world_size

    def __call__(self, module: nn.Module) -> None:
        params = [p for p in module.parameters() if p.requires_grad]
        if not params:
            return
        grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
        flat = torch.cat([g.reshape(-1) for g in grads])
        torch.distributed.all_reduce(flat)
        flat /= self.world_size
        offset = 0
        for p in params:
            n = p.numel()
            p.grad = flat[offset:offset + n].view_as(p).clone()
            offset += n


def broadcast_from_chief(*modules: nn.Module) -> None:
    with torch.no_grad():
        for m in modules:
            for t in list(m.parameters()) + list(m.buffers()):
                torch.distributed.broadcast(t.data, src=0)


def mean_over_workers(metrics: dict, device: torch.device, world: int) -> dict:
    if world == 1 or not metrics:
        return dict(metrics)
    keys = sorted(metrics)
    values = torch.tensor([float(metrics[k]) for k in keys], dtype=torch.float64, device=device)
    torch.distributed.all_reduce(values)
    return dict(zip(keys, (values / world).tolist()))


def any_worker(flag: bool, device: torch.device, world: int) -> bool:
    if world == 1:
        return flag
    t = torch.tensor([1.0 if flag else 0.0], device=device)
    torch.distributed.all_reduce(t, op=torch.distributed.ReduceOp.MAX)
    return bool(t.item() > 0)


def report(metrics: dict, folder: Path | None) -> None:
    """ray.train.report from every rank (a barrier); rank 0 attaches a copy of the checkpoint folder."""
    metrics = {k: v for k, v in metrics.items() if isinstance(v, (int, float))}
    if folder is None:
        ray.train.report(metrics, checkpoint=None)
        return
    with tempfile.TemporaryDirectory(prefix="hfld-gan-ckpt-") as d:
        shutil.copytree(folder, Path(d) / folder.name)
        ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(d))


def worker_device(cfg: GanConfig) -> torch.device:
    if not cfg.scaling.use_gpu:
        return torch.device("cpu")
    from ray.train.torch import get_device
    device = get_device()
    return device[0] if isinstance(device, list) else device


def _resume_checkpoint(loop_config: dict, tmp: Path) -> Checkpoint | None:
    """Ray's latest checkpoint (a restart), else the checkpoint the driver sent, else None."""
    ray_ckpt = ray.train.get_checkpoint()
    if ray_ckpt is not None:
        with ray_ckpt.as_directory() as d:
            folders = [p.parent for p in Path(d).glob(f"*/{MANIFEST}")]
            if folders:
                return read_checkpoint(folders[0])
    payload = loop_config.get("resume")
    if payload:
        folder = tmp / payload["name"]
        folder.mkdir(parents=True)
        for name, data in payload["files"].items():
            (folder / name).write_bytes(data)
        return read_checkpoint(folder)
    return None


def gan_worker(loop_config: dict) -> None:
    """Runs on every Ray Train worker."""
    cfg = from_dict(GanConfig, loop_config["config"], "config")
    context = ray.train.get_context()
    rank, world = context.get_world_rank(), context.get_world_size()
    log = logging.getLogger("hfld.gan")
    say = (lambda msg, **_: log.info(msg)) if rank == 0 else (lambda *a, **k: None)
    device = worker_device(cfg)
    torch.set_num_threads(max(1, int(cfg.scaling.cpus_per_worker)))
    ctx = WorkerContext(device, rank, world, GradientAverager(world) if world > 1 else None,
                        mean=lambda d: mean_over_workers(d, device, world),
                        any_true=lambda flag: any_worker(flag, device, world), report=report)
    tracker = attach_tracker(loop_config.get("tracking_uri"), loop_config.get("mlflow_run_id")) if rank == 0 \
        else NullTracker()
    with tempfile.TemporaryDirectory(prefix="hfld-gan-resume-") as tmp:
        resume = _resume_checkpoint(loop_config, Path(tmp))
        run_training(cfg, ctx, resume=resume, tracker=tracker, print_fn=say,
                     on_start=(lambda st: broadcast_from_chief(st.G, st.D, st.G_ema)) if world > 1 else None)


def storage_path(cfg: GanConfig) -> Path | str:
    raw = cfg.scaling.storage_path
    if raw and is_uri(raw):
        return raw.rstrip("/")
    return Path(raw or Path(cfg.work_dir) / "ray").expanduser().resolve()


def make_trainer(cfg: GanConfig, loop_config: dict, storage):
    from ray.train import CheckpointConfig, FailureConfig, RunConfig
    from ray.train import ScalingConfig as RayScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    sc = cfg.scaling
    resources = {"CPU": sc.cpus_per_worker, **({"GPU": sc.gpus_per_worker} if sc.use_gpu else {})}
    env = {k: os.environ.get(k, v) for k, v in GPU_SAFETY_ENV.items()} if sc.use_gpu else None
    return TorchTrainer(
        gan_worker, train_loop_config=loop_config,
        torch_config=TorchConfig(backend="nccl" if sc.use_gpu else "gloo"),
        scaling_config=RayScalingConfig(num_workers=sc.num_workers, use_gpu=sc.use_gpu,
                                        resources_per_worker=resources),
        run_config=RunConfig(name=cfg.name, storage_path=str(storage),
                             failure_config=FailureConfig(max_failures=sc.max_failures),
                             checkpoint_config=CheckpointConfig(num_to_keep=1),
                             worker_runtime_env={"env_vars": env} if env else None))


def _exists(location) -> bool:
    if isinstance(location, Path):
        return location.exists()
    import pyarrow.fs
    fs, path = pyarrow.fs.FileSystem.from_uri(location)
    return fs.get_file_info(path).type != pyarrow.fs.FileType.NotFound


def checkpoint_payload(folder: Path) -> dict:
    return {"name": folder.name, "files": {p.name: p.read_bytes() for p in folder.iterdir() if p.is_file()}}


def train_with_ray(cfg: GanConfig, *, tracker: Tracker | None = None, print_fn=print) -> GanResult:
    """Train on cfg.scaling.num_workers Ray Train workers; rank 0 writes the run directory."""
    if cfg.scaling.num_workers < 1:
        raise ConfigError("scaling.num_workers: 0 means in-process training; use pipeline.stages.gan.run_gan")
    if cfg.device.startswith("cuda") and not cfg.scaling.use_gpu:
        raise ConfigError(f"device: {cfg.device!r} but scaling.use_gpu is false; set scaling.use_gpu=true or "
                          "device=auto")
    resume_from = resolve_resume(cfg)
    storage = storage_path(cfg)
    ray_run = f"{storage}/{cfg.name}" if isinstance(storage, str) else storage / cfg.name
    if cfg.resume != "auto" and _exists(ray_run):
        raise ConfigError(f"run_name: Ray already holds a run named {cfg.name!r} in {ray_run}; choose another "
                          "run_name, or set resume=auto to continue it")
    tags = {"data": cfg.data.source, "num_workers": cfg.scaling.num_workers}
    with ray_session(), stage_run(cfg.tracking, tracker, work_dir=cfg.work_dir, run_name=cfg.name, stage="gan",
                                  tags=tags) as run:
        loop_config = {"config": to_dict(cfg), "mlflow_run_id": run.run_id, "tracking_uri": run.tracking_uri,
                       "resume": checkpoint_payload(resume_from) if resume_from else None}
        print_fn(f"[gan] Ray Train: {cfg.scaling.num_workers} worker(s) x batch {cfg.batch_size} "
                 f"({'GPU' if cfg.scaling.use_gpu else 'CPU'}); run dir {cfg.run_dir}")
        from ray.train import TrainingFailedError
        try:
            make_trainer(cfg, loop_config, storage).fit()
        except TrainingFailedError as e:
            lines = [ln for ln in str(e).strip().splitlines() if ln.strip()][-6:]
            raise RayTrainFailed(f"Ray Train run {cfg.name!r} failed (max_failures={cfg.scaling.max_failures}):\n  "
                                 + "\n  ".join(lines)) from e
    return result_from_run_dir(cfg)


def result_from_run_dir(cfg: GanConfig) -> GanResult:
    run_dir = cfg.run_dir
    weights = run_dir / "export" / f"{cfg.export.name}.safetensors"
    card_path = weights.with_suffix(".json")
    if not card_path.is_file():
        raise RayTrainFailed(f"Ray Train run {cfg.name!r} ended without an export in {weights.parent}")
    card = json.loads(card_path.read_text())
    training = card.get("training", {})
    return GanResult(run_dir, weights, card_path, float(training.get("kimg", 0)), int(training.get("steps", 0)),
                     card.get("quality") or {}, read_jsonl(run_dir / "metrics.jsonl"))
