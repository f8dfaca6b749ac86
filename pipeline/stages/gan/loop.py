"""The training loop of the gan stage and the run directory around it.

`gan_loop` runs the steps of one worker (in this process, or on every Ray Train worker through
ray_gan.py) and calls hooks at kimg boundaries; `train_in_process` is the whole single-process
stage body. Run directory <work_dir>/<run_name>/:

    config.yaml, metrics.jsonl           the config; one row per log interval (losses, kimg/s, FD_face)
    checkpoints/                         the latest trainer state (checkpoint.py: <= 16 MB files + manifest)
    samples/kimg-XXXXXX.XXX.png           8x8 grids of G_ema (fixed latents) every grid_kimg
    quality/                             reference.safetensors + scale.json (computed once per run),
                                         fd_curve.png, contact_sheet.png, quality.json
    export/<name>.safetensors + .json    G_ema + D + w_avg and the card (export.py), at the end of
                                         every invocation, so a time-limited run always ships something

Resume (cfg.resume = "auto" or a folder) restores networks, optimisers, counters, RNG states and
the histories; every random number of a step derives from (seed, step, rank), so the resumed run
produces the same weights as an uninterrupted one.
"""

from __future__ import annotations

import json
import math
import shlex
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch
from torch import nn
import yaml

from pipeline.core.config import ConfigError, to_dict
from pipeline.core.durations import format_duration
from pipeline.core.io import atomic_output, atomic_write_bytes, json_safe
from pipeline.core.sampling import resolve_device
from pipeline.core.seeding import Stream
from pipeline.infra.tracking import NullTracker, Tracker, git_commit
from pipeline.presets import ModelConfig, build_bundle
from pipeline.stages.gan import quality as Q
from pipeline.stages.gan.checkpoint import (Checkpoint, find_checkpoint, read_checkpoint, restore_state,
                                            save_checkpoint)
from pipeline.stages.gan.config import GanConfig, GanResult
from pipeline.stages.gan.data import DataSource, open_source
from pipeline.stages.gan.export import export_weights, init_from_export
from pipeline.stages.gan.step import GanState, parameter_count, setup_gan, train_step
from pipeline.stages.train import NonFiniteLoss

METRICS_FILE = "metrics.jsonl"
CHECKPOINTS = "checkpoints"
GRID_SEED_INDEX = 4000
WEIGHTS_ARTIFACT = "gan_weights"


# ---------------------------------------------------------------------------------------------
# Run bookkeeping
# ---------------------------------------------------------------------------------------------

@dataclass
class RunRecord:
    """What survives resumes (stored in each checkpoint's manifest): timing, FD history, invocations, and
    the export the run started from (init_weights; None: random init)."""
    train_seconds: float = 0.0              # wall time spent in training steps, all invocations
    fd_history: list[dict] = field(default_factory=list)
    invocations: list[dict] = field(default_factory=list)
    init_from: dict | None = None

    def to_dict(self) -> dict:
        return {"train_seconds": self.train_seconds, "fd_history": self.fd_history, "invocations": self.invocations,
                "init_from": self.init_from}

    @classmethod
    def from_dict(cls, d: dict) -> "RunRecord":
        return cls(float(d.get("train_seconds", 0.0)), list(d.get("fd_history", [])), list(d.get("invocations", [])),
                   d.get("init_from"))


def resolve_resume(cfg: GanConfig) -> Path | None:
    """The checkpoint folder to resume from, or None; refuses to start over a run silently."""
    if cfg.resume == "auto":
        return find_checkpoint(cfg.run_dir)
    if cfg.resume:
        found = find_checkpoint(cfg.resume)
        if found is None:
            raise ConfigError(f"resume: no gan checkpoint at {cfg.resume} (a run dir, its checkpoints/ folder or a "
                              "step-... folder)")
        return found
    if find_checkpoint(cfg.run_dir) is not None:
        raise ConfigError(f"run_name: {cfg.run_dir} already holds a run; choose another run_name, or set resume=auto "
                          "to continue it")
    return None


def check_compatible(cfg: GanConfig, manifest: dict, source: str, say=print) -> None:
    saved = manifest.get("extra", {}).get("architecture")
    if saved and cfg.arch.differences(saved):
        raise ConfigError(f"resume: {source} was trained with arch {saved}, this run has {cfg.arch.as_card()}")
    saved_batch = manifest.get("extra", {}).get("global_batch")
    if saved_batch and saved_batch != cfg.batch_size * manifest.get("world_size", 1):
        say(f"[gan] note: the checkpoint used global batch {saved_batch}; from here on the run draws other "
            "samples than an uninterrupted one would")


def gpu_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return "cpu"


def command_line(cfg: GanConfig) -> str:
    return cfg.export.command or " ".join(shlex.quote(a) for a in sys.argv)


class Progress:
    """kimg/s over training time (hooks excluded), ETA to total_kimg, and one readable line."""

    def __init__(self, cfg: GanConfig, start_nimg: int, print_fn=print):
        self.cfg, self.start_nimg, self.print = cfg, start_nimg, print_fn
        self.train_seconds = 0.0

    def rate(self, cur_nimg: int) -> float:
        return (cur_nimg - self.start_nimg) / 1000 / max(self.train_seconds, 1e-9)

    def line(self, state: GanState, metrics: dict) -> dict:
        rate = self.rate(state.cur_nimg)
        eta = (self.cfg.total_kimg - state.kimg) / max(rate, 1e-9)
        terms = " ".join(f"{k} {metrics[k]:.4g}" for k in ("loss_d", "loss_g", "r1", "pl", "real_score", "fake_score",
                                                      "teacher_kept")
                         if k in metrics)
        self.print(f"[gan] kimg {state.kimg:.1f}/{self.cfg.total_kimg:g} step {state.step} | {terms} | "
                   f"{rate:.2f} kimg/s | eta {format_duration(eta)}", flush=True)
        return {"kimg_per_s": rate, "eta_s": eta}


# ---------------------------------------------------------------------------------------------
# The loop
# ---------------------------------------------------------------------------------------------

@dataclass
class Hooks:
    """Called by gan_loop; every rank calls them at the same steps (they may hold collectives).

    log(state, means): every log_every steps and at the end, means = losses averaged since the last log.
    snapshot / grid / quality(state): when kimg crosses a multiple of snapshot_kimg / grid_kimg /
    quality.every_kimg. stop(state) -> True ends the loop early (time limit).
    """
    log: Callable[[GanState, dict], None] | None = None
    snapshot: Callable[[GanState], None] | None = None
    grid: Callable[[GanState], None] | None = None
    quality: Callable[[GanState], None] | None = None
    stop: Callable[[GanState], bool] | None = None
    on_step: Callable[[GanState], None] | None = None


def crossed(before: int, after: int, every_kimg: float) -> bool:
    if every_kimg <= 0:
        return False
    every = every_kimg * 1000
    return math.floor(before / every) != math.floor(after / every)


def gan_loop(cfg: GanConfig, state: GanState, source: DataSource, hooks: Hooks, progress: Progress) -> dict:
    """Steps until total_kimg (or hooks.stop); losses stay on the device between log steps."""
    total_nimg = int(round(cfg.total_kimg * 1000))
    sums: dict[str, torch.Tensor] = {}
    counts: dict[str, int] = {}
    last: dict = {}

    def flush() -> dict:
        if not sums:
            return {}
        keys = sorted(sums)
        values = torch.stack([sums[k].float() for k in keys]).tolist()     # the one host sync per log
        means = {k: v / counts[k] for k, v in zip(keys, values)}
        sums.clear()
        counts.clear()
        if not all(math.isfinite(v) for v in means.values()):
            text = ", ".join(f"{k}={v:.4g}" for k, v in means.items())
            raise NonFiniteLoss(f"non-finite GAN loss by step {state.step} ({text}); lower lr or raise r1_gamma")
        return means

    while state.cur_nimg < total_nimg:
        t0 = time.perf_counter()
        before = state.cur_nimg
        out = train_step(state, cfg, source)
        for k, v in out.items():
            sums[k] = sums[k] + v if k in sums else v.clone()
            counts[k] = counts.get(k, 0) + 1
        if state.device.type == "cuda" and state.step % cfg.log_every == 0:
            torch.cuda.synchronize(state.device)   # so the interval's time is the GPU's, not the queue's
        progress.train_seconds += time.perf_counter() - t0
        done = state.cur_nimg >= total_nimg
        stop = bool(hooks.stop and hooks.stop(state))
        if state.step % cfg.log_every == 0 or done or stop:
            last = flush()
            if hooks.log and last:
                hooks.log(state, last)
        if hooks.snapshot and crossed(before, state.cur_nimg, cfg.snapshot_kimg) and not done:
            hooks.snapshot(state)
        if hooks.grid and crossed(before, state.cur_nimg, cfg.grid_kimg) and not done:
            hooks.grid(state)
        if hooks.quality and crossed(before, state.cur_nimg, cfg.quality.every_kimg) and not done:
            hooks.quality(state)
        if hooks.on_step:
            hooks.on_step(state)
        if stop:
            break
    return last


# ---------------------------------------------------------------------------------------------
# Quality around the loop (rank 0)
# ---------------------------------------------------------------------------------------------

class QualityRunner:
    """Reference statistics and the scale (computed once per run dir, reused on resume), FD_face of G_ema."""

    def __init__(self, cfg: GanConfig, judges: Q.QualityJudges, source: DataSource, device: torch.device,
                 folder: Path, print_fn=print):
        self.cfg, self.judges, self.source, self.device = cfg, judges, source, device
        self.folder, self.print = folder, print_fn
        self.reference: Q.SetStats | None = None
        self.scale: dict | None = None

    def batches(self, set_index: int):
        q = self.cfg.quality
        return self.source.reference(q.n_images, set_index, q.batch_size)

    def key(self) -> dict:
        """What the reference statistics depend on: reused only when all of it matches."""
        return {"n_images": self.cfg.quality.n_images, "source": self.source.description, "judges": self.judges.name,
                "seed": self.cfg.seed, "resolution": self.cfg.arch.resolution}

    def prepare(self, saved: dict | None = None, saved_tensors: dict | None = None) -> dict:
        """The reference statistics and the scale: from a checkpoint (`saved`: its "quality" extra, and its
        extra tensors) or the run dir when they fit this run, else measured now and written to the run dir."""
        from safetensors.torch import load_file, save_file

        ref_file, scale_file = self.folder / "reference.safetensors", self.folder / "scale.json"
        if not (saved and saved_tensors) and ref_file.is_file() and scale_file.is_file():
            saved, saved_tensors = json.loads(scale_file.read_text()), load_file(str(ref_file))
        if saved and saved_tensors and saved.get("key") == self.key():
            self.scale = saved["scale"]
            self.reference = Q.stats_from_tensors(saved_tensors, saved["reference_n"],
                                                  self.scale.get("data_landmark_order_share"))
            self.print("[gan] quality: reference statistics and scale reused (measured earlier in this run)",
                       flush=True)
            self._write(save_file, ref_file, scale_file)
            return self.scale
        t0 = time.perf_counter()
        self.print(f"[gan] quality: measuring the scale on {self.cfg.quality.n_images} data images per set "
                   "(noise floor, JPEG-30, blur sigma 1)...", flush=True)
        self.reference, self.scale = Q.compute_scale(self.judges, self.batches)
        self.scale["seconds"] = time.perf_counter() - t0
        self._write(save_file, ref_file, scale_file)
        self.print(f"[gan] quality: scale (N = {self.scale['n']}): noise floor {self.scale['noise_floor']:.4g}, "
                   f"JPEG-30 {self.scale['jpeg30']:.4g}, blur 1 px {self.scale['blur1']:.4g} "
                   f"({self.scale['seconds']:.0f} s)", flush=True)
        return self.scale

    def record(self) -> dict:
        """The checkpoint's "quality" extra (with `tensors()`): enough to skip measuring the scale on resume."""
        return {"key": self.key(), "reference_n": self.reference.n, "scale": self.scale}

    def tensors(self) -> dict:
        return Q.stats_tensors(self.reference)

    def _write(self, save_file, ref_file: Path, scale_file: Path) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        with atomic_output(ref_file) as tmp:
            save_file(Q.stats_tensors(self.reference), str(tmp))
        atomic_write_bytes(scale_file, json.dumps(json_safe(self.record()), indent=1).encode())

    def evaluate(self, G_ema, kimg: float) -> dict:
        t0 = time.perf_counter()
        q = self.cfg.quality
        result = Q.evaluate_generator(self.judges, G_ema, self.reference, n=q.n_images, batch_size=q.batch_size,
                                      seed=self.cfg.seed, device=self.device)
        result.update(kimg=kimg, seconds=time.perf_counter() - t0)
        self.print(f"[gan] quality at kimg {kimg:.1f}: {Q.where_on_scale(result['fd_face'], self.scale)}; landmark "
                   f"order {_pct(result['landmark_order_share'])}, emotion TV {_num(result['emotion_tv'])} "
                   f"({result['seconds']:.0f} s)", flush=True)
        return result

    def pictures(self, G_ema, history: list[dict]) -> dict[str, Path]:
        student = torch.cat(list(Q.generated_batches(G_ema, 64, 64, self.cfg.seed, self.device)))
        data = torch.cat(list(self.source.reference(64, 0, 64)))
        return {"contact_sheet": Q.contact_sheet(student, data, self.folder / "contact_sheet.png"),
                "fd_curve": Q.fd_curve(history, self.scale, self.folder / "fd_curve.png")}


def _pct(v) -> str:
    return "n/a" if v is None else f"{100 * v:.1f}%"


def _num(v) -> str:
    return "n/a" if v is None else f"{v:.3f}"


def sample_grid(G_ema, cfg: GanConfig, device: torch.device, path: Path) -> Path:
    """8x8 samples of G_ema from fixed latents (the same 64 faces at every kimg)."""
    with torch.no_grad():
        images = next(Q.generated_batches(G_ema, 64, 64, cfg.seed, device, stream_index=GRID_SEED_INDEX))
    path.parent.mkdir(parents=True, exist_ok=True)
    Q.image_grid(images, 8, tile=max(64, cfg.arch.resolution)).save(path)
    return path


# ---------------------------------------------------------------------------------------------
# Building what the run needs
# ---------------------------------------------------------------------------------------------

def landmark_order_filter(landmarks: nn.Module | None, device: torch.device):
    """keep(images [B, 3, R, R]) -> bool [B]: the 68 landmarks lie inside the image in anatomical order
    (quality.landmarks_in_order, the check behind the quality report's landmark share)."""
    if landmarks is None:
        raise ConfigError("data.teacher_filter: landmarks_in_order needs a landmark network; the teacher "
                          "preset has none (use data.teacher_filter=none)")
    landmarks = landmarks.to(device).eval().requires_grad_(False)

    @torch.no_grad()
    def keep(images: torch.Tensor) -> torch.Tensor:
        points = landmarks(images)
        if points.ndim != 3 or points.shape[1:] != (68, 2):
            raise ConfigError(f"data.teacher_filter: landmarks_in_order needs 68 points [B, 68, 2]; the teacher "
                              f"preset's landmark net gives {list(points.shape)}")
        return Q.landmarks_in_order(points.float())

    keep(torch.zeros(1, 3, 64, 64, device=device))     # a net of another point count fails here, before training
    return keep


def build_sources(cfg: GanConfig, device: torch.device, *, teacher=None, judges=None, with_judges: bool = True,
                  print_fn=print):
    """(data source, quality judges or None): the teacher preset is built once and serves both when the
    judges are the same preset. `teacher` (a generator) / `judges` override the presets (tests)."""
    bundles: dict[str, object] = {}

    def bundle(preset: str, model_cfg: ModelConfig | None = None):
        if preset not in bundles:
            print_fn(f"[gan] building preset {preset!r} on {device}", flush=True)
            bundles[preset] = build_bundle(model_cfg or ModelConfig(preset=preset), device)
        return bundles[preset]

    if cfg.data.source == "teacher" and teacher is None:
        teacher = bundle(cfg.data.teacher.preset, cfg.data.teacher).generator
    keep = None
    if cfg.data.teacher_filter == "landmarks_in_order":
        keep = landmark_order_filter(bundle(cfg.data.teacher.preset, cfg.data.teacher).landmarks, device)
    source = open_source(cfg.data, cfg.arch.resolution, device, seed=cfg.seed, work_dir=cfg.work_dir,
                         teacher=teacher, keep=keep, print_fn=print_fn)
    if judges is None and cfg.quality.judges and with_judges:
        try:
            judges = Q.QualityJudges.from_bundle(bundle(cfg.quality.judges))
        except ValueError as e:
            raise ConfigError(str(e)) from None
    if judges is not None:
        for m in (judges.identity, judges.landmarks, judges.emotion):
            if m is not None:
                m.to(device).eval().requires_grad_(False)
    return source, judges


# ---------------------------------------------------------------------------------------------
# Final products (rank 0, also used by the Ray path)
# ---------------------------------------------------------------------------------------------

def final_products(cfg: GanConfig, state: GanState, source: DataSource, quality: QualityRunner | None,
                   record: RunRecord, run_dir: Path, tracker: Tracker, print_fn=print) -> tuple[Path, Path, dict]:
    """Final quality (FD_face, landmarks, emotion, pictures), export + card, MLflow artifacts and model."""
    summary: dict = {}
    if quality is not None and cfg.quality.final:
        if not record.fd_history or abs(record.fd_history[-1]["kimg"] - state.kimg) > 1e-9:
            record.fd_history.append(quality.evaluate(state.G_ema, state.kimg))
        last = record.fd_history[-1]
        pictures = quality.pictures(state.G_ema, record.fd_history)
        summary = {**{k: v for k, v in last.items() if k != "seconds"}, "scale": quality.scale,
                   "where": Q.where_on_scale(last["fd_face"], quality.scale),
                   "below_blur1": last["fd_face"] < quality.scale["blur1"],
                   "fd_history": [{"kimg": h["kimg"], "fd_face": h["fd_face"]} for h in record.fd_history]}
        atomic_write_bytes(quality.folder / "quality.json", json.dumps(json_safe(summary), indent=1).encode())
        if tracker:
            for p in pictures.values():
                tracker.log_artifact(p, "quality")
            tracker.log_artifact(quality.folder / "quality.json", "quality")
    data_report, kept = dict(source.report), source.kept_share()
    if kept is not None:
        data_report["kept_share_last_invocation"] = kept
    card = {"architecture": cfg.arch.as_card(),
            "data_source": {"config": to_dict(cfg.data), "description": source.description, "report": data_report},
            "training": {"kimg": state.kimg, "steps": state.step, "global_batch": cfg.batch_size * state.world_size,
                         "workers": state.world_size, "train_seconds": record.train_seconds,
                         "train_time": format_duration(record.train_seconds), "gpu": gpu_name(state.device),
                         "precision": cfg.precision, "invocations": record.invocations,
                         "init_from": record.init_from,     # kimg above counts from these weights
                         "hyperparameters": {k: getattr(cfg, k) for k in (
                             "batch_size", "lr", "betas", "r1_gamma", "r1_every", "pl_weight", "pl_every",
                             "style_mixing", "ema_kimg", "ema_rampup", "w_avg_beta", "seed")},
                         "w_avg": f"tracked during training (decay {cfg.w_avg_beta} per step), G_ema's copy"},
            "quality": summary or None, "fd_face": summary.get("fd_face"),
            "command": command_line(cfg), "git_commit": git_commit(), "run_name": cfg.name}
    out_dir = run_dir / "export"
    weights, card_path, full = export_weights(state.G_ema, state.D, out_dir / f"{cfg.export.name}.safetensors",
                                              dtype=cfg.export.dtype, card=card, max_mb=cfg.export.max_mb)
    print_fn(f"[gan] exported G_ema + D ({cfg.export.dtype}, {full['weights_bytes'] / 1e6:.2f} MB, sha256 "
             f"{full['weights_sha256'][:12]}...) to {weights} with its card {card_path.name}", flush=True)
    if tracker:
        tracker.log_artifact(weights, WEIGHTS_ARTIFACT)
        tracker.log_artifact(card_path, WEIGHTS_ARTIFACT)
        if summary:
            tracker.log_metrics({k: v for k, v in summary.items() if isinstance(v, (int, float))
                                 and not isinstance(v, bool)}, step=state.step)
        if cfg.tracking.register_model:
            version = tracker.register_model(WEIGHTS_ARTIFACT, cfg.tracking.model_name,
                                             tags={"run_name": cfg.name, "kimg": f"{state.kimg:.3f}",
                                                   "sha256": full["weights_sha256"]})
            if version:
                print_fn(f"[gan] registered the weights as model {cfg.tracking.model_name!r} version {version}")
    return weights, card_path, summary


# ---------------------------------------------------------------------------------------------
# One worker's run (in-process: the only worker; Ray: every worker, rank 0 the chief)
# ---------------------------------------------------------------------------------------------

def checkpoint_extra(cfg: GanConfig, state: GanState, record: RunRecord, quality=None) -> dict:
    return {"config": to_dict(cfg), "quality": quality.record() if quality is not None else None, "architecture": cfg.arch.as_card(), "global_batch": cfg.batch_size * state.world_size,
            "record": record.to_dict(),
            "rng": {"seed": cfg.seed, "stream": Stream.TRAIN.name, "next_step": state.step,
                    "derivation": "derive_seed(derive_seed(seed, TRAIN, step), TRAIN, rank * 16 + purpose)"}}


@dataclass
class WorkerContext:
    """Where one worker stands among the others, and the collectives its hooks need.

    mean: average a dict of floats over workers; any_true: True on every rank when any rank says so;
    report(metrics, folder or None): hand a checkpoint folder (rank 0) / the metrics to the scheduler (Ray).
    """
    device: torch.device
    rank: int = 0
    world_size: int = 1
    reduce: Callable | None = None
    mean: Callable[[dict], dict] = lambda d: dict(d)
    any_true: Callable[[bool], bool] = lambda flag: flag
    report: Callable[[dict, Path | None], None] = lambda metrics, folder: None

    @property
    def chief(self) -> bool:
        return self.rank == 0


def run_training(cfg: GanConfig, ctx: WorkerContext, *, resume: Checkpoint | None = None,
                 tracker: Tracker = NullTracker(), print_fn=print, teacher=None, judges=None,
                 on_step=None, on_start=None) -> GanResult | None:
    """The stage body on one worker: build, restore, loop with hooks, and (chief) the final products.

    Non-chief workers train and join the collectives only; they return None. on_start(state) runs
    once the state is built and restored (Ray: broadcast rank 0's weights).
    """
    started = time.perf_counter()
    device = ctx.device
    say = print_fn if ctx.chief else (lambda *a, **k: None)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    source, judges = build_sources(cfg, device, teacher=teacher, judges=judges if ctx.chief else None,
                                   with_judges=ctx.chief, print_fn=say)
    state = setup_gan(cfg, device, rank=ctx.rank, world_size=ctx.world_size, reduce=ctx.reduce)
    record = RunRecord()
    if resume is not None:
        check_compatible(cfg, resume.manifest, str(resume.folder), say)
        restore_state(state, resume)
        record = RunRecord.from_dict(resume.extra.get("record", {}))
        say(f"[gan] resumed from {resume.folder} at kimg {state.kimg:.1f} (step {state.step})"
            + (" (init_weights is not used: the checkpoint has the weights)" if cfg.init_weights else ""), flush=True)
    elif cfg.init_weights:
        record.init_from = init_from_export(state.G, state.G_ema, state.D, cfg.init_weights, cfg.arch)
        say(f"[gan] weights from {cfg.init_weights} (trained {record.init_from['kimg']} kimg, FD_face "
            f"{record.init_from['fd_face']}); optimisers and counters start fresh", flush=True)
    if on_start is not None:
        on_start(state)
    run_dir = cfg.run_dir
    if ctx.chief:
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "config.yaml").write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False))
    n_g, n_d = parameter_count(state.G), parameter_count(state.D)
    say(f"[gan] {cfg.arch.resolution} px StyleGAN2: G {n_g / 1e6:.2f}M + D {n_d / 1e6:.2f}M parameters, "
        f"channels {cfg.arch.channel_table()}, w_dim {cfg.arch.w_dim}, n_mlp {cfg.arch.n_mlp}, "
        f"L = {state.G.n_latent}; data: {source.description}; {ctx.world_size} x {gpu_name(device)}, "
        f"{cfg.precision}, batch {cfg.batch_size} per worker", flush=True)
    if tracker:
        tracker.log_params(to_dict(cfg))
        tracker.set_tags({"data_source": source.description, "gpu": gpu_name(device), "workers": ctx.world_size,
                          "resumed_from": str(resume.folder) if resume is not None else ""})
    invocation = {"from_kimg": state.kimg, "device": gpu_name(device), "workers": ctx.world_size,
                  "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    record.invocations.append(invocation)

    quality = None
    if judges is not None:
        quality = QualityRunner(cfg, judges, source, device, run_dir / "quality", say)
        quality.prepare(resume.extra.get("quality") if resume is not None else None,
                        resume.extra_tensors() if resume is not None else None)
        if tracker:
            tracker.log_metrics({f"scale_{k}": v for k, v in quality.scale.items()
                                 if isinstance(v, (int, float)) and not isinstance(v, bool)}, step=state.step)

    progress = Progress(cfg, state.cur_nimg, say)
    base_seconds = record.train_seconds
    history: list[dict] = []
    deadline = started + (cfg.time_limit_min - cfg.time_reserve_min) * 60 if cfg.time_limit_min else None
    last_row: dict = {}

    def sync_record():
        record.train_seconds = base_seconds + progress.train_seconds
        invocation.update(to_kimg=state.kimg, train_seconds=progress.train_seconds)

    def on_log(st: GanState, means: dict) -> None:
        means = ctx.mean(means)
        kept = source.kept_share()
        if kept is not None:                           # this worker's share (every worker draws alike)
            means["teacher_kept"] = kept
        row = {"step": st.step, "kimg": st.kimg, **means}
        if ctx.chief:
            row.update(progress.line(st, means))
            history.append(row)
            with open(run_dir / METRICS_FILE, "a") as f:
                f.write(json.dumps(json_safe(row)) + "\n")
            if tracker:
                tracker.log_metrics({k: v for k, v in row.items() if k != "step"}, step=st.step)
        last_row.clear()
        last_row.update(row)

    def write_checkpoint(st: GanState) -> Path | None:
        sync_record()
        folder = None
        if ctx.chief:
            folder = save_checkpoint(run_dir / CHECKPOINTS, st, checkpoint_extra(cfg, st, record, quality),
                                     extra_tensors=quality.tensors() if quality is not None else None)
            say(f"[gan] checkpoint at kimg {st.kimg:.1f}: {folder}", flush=True)
        ctx.report({**{k: v for k, v in last_row.items() if isinstance(v, (int, float))}, "step": st.step,
                    "kimg": st.kimg}, folder)
        return folder

    def on_grid(st: GanState) -> None:
        path = sample_grid(st.G_ema, cfg, device, run_dir / "samples" / f"kimg-{st.kimg:010.3f}.png")
        if tracker:
            tracker.log_artifact(path, "samples")

    def on_quality(st: GanState) -> None:
        result = quality.evaluate(st.G_ema, st.kimg)
        record.fd_history.append(result)
        if tracker:
            tracker.log_metrics({"fd_face": result["fd_face"], **{k: result[k] for k in ("landmark_order_share",
                                 "emotion_tv") if result.get(k) is not None}}, step=st.step)

    def should_stop(st: GanState) -> bool:
        # Decided at log steps only, and collectively: every rank must leave the loop at the same step.
        if deadline is None or st.step % cfg.log_every:
            return False
        return ctx.any_true(time.perf_counter() >= deadline)

    hooks = Hooks(log=on_log, snapshot=write_checkpoint,
                  grid=on_grid if ctx.chief and cfg.grid_kimg > 0 else None,
                  quality=on_quality if quality is not None and cfg.quality.every_kimg > 0 else None,
                  stop=should_stop, on_step=on_step)
    gan_loop(cfg, state, source, hooks, progress)
    sync_record()
    if deadline is not None and state.kimg < cfg.total_kimg:
        say(f"[gan] time limit: stopping at kimg {state.kimg:.1f} of {cfg.total_kimg:g} (resume=auto continues)",
            flush=True)
    if not ctx.chief:
        write_checkpoint(state)              # a report from every rank (Ray needs them all)
        return None
    save_checkpoint(run_dir / CHECKPOINTS, state, checkpoint_extra(cfg, state, record, quality),
                    extra_tensors=quality.tensors() if quality is not None else None)
    sample_grid(state.G_ema, cfg, device, run_dir / "samples" / f"kimg-{state.kimg:010.3f}.png")
    weights, card_path, summary = final_products(cfg, state, source, quality, record, run_dir, tracker, say)
    write_checkpoint(state)                  # with the final FD entry, reported to Ray as the last checkpoint
    say(f"[gan] done: kimg {state.kimg:.1f}, {state.step} steps, {format_duration(record.train_seconds)} of "
        f"training in all; outputs in {run_dir}", flush=True)
    return GanResult(run_dir, weights, card_path, state.kimg, state.step, summary, history)


def train_in_process(cfg: GanConfig, *, tracker: Tracker = NullTracker(), print_fn=print, teacher=None,
                     judges=None, on_step=None) -> GanResult:
    """Single-process GAN training, logging into `tracker` (an open run); writes the run directory."""
    resume_from = resolve_resume(cfg)
    ctx = WorkerContext(resolve_device(cfg.device))
    resume = read_checkpoint(resume_from) if resume_from else None
    return run_training(cfg, ctx, resume=resume, tracker=tracker, print_fn=print_fn, teacher=teacher,
                        judges=judges, on_step=on_step)
