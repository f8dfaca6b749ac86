"""The entry point of the invert stage (run_invert); see the package docstring."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from pipeline.core.config import to_dict
from pipeline.core.io import atomic_write_bytes, remove_stale_temps
from pipeline.core.locks import run_lock
from pipeline.core.paths import check_output_locations
from pipeline.infra.tracking import Tracker, log_provenance, stage_run
from pipeline.stages.generate import run_shard_job
from pipeline.stages.invert.config import InvertConfig
from pipeline.stages.invert.job import InvertJob, prepare
from pipeline.stages.invert.shards import finished_record, write_manifest


@dataclass
class InvertResult:
    out_dir: Path
    manifest_path: Path
    n_rows: int
    n_shards: int
    shards_written: int
    rows_written: int
    counts: dict
    seconds: float
    faces_per_s: float
    manifest: dict = field(default_factory=dict)
    progress: list[tuple[float, int]] = field(default_factory=list)
    mlflow_run_id: str | None = None


def run_invert(cfg: InvertConfig, *, tracker: Tracker | None = None, bundle_factory=None, job: InvertJob | None = None,
               print_fn=print) -> InvertResult:
    """Invert (or finish inverting) the input of `cfg`: every check first (job.prepare; no MLflow run for
    a bad config), then, holding the output folder's lock (a second process gets a ConfigError naming
    the holder), the Ray Data pipeline inside the stage's MLflow run.

    tracker: None = an MLflow run of its own (cfg.tracking); a tracker = a child run of it.
    """
    check_output_locations({"work_dir": cfg.work_dir, "output_dir": cfg.output_dir})
    job = job or prepare(cfg, bundle_factory)
    with run_lock(job.out_dir, "output_dir", print_fn) as lock, \
            stage_run(cfg.tracking, tracker, work_dir=cfg.work_dir, run_name=cfg.name, stage="invert",
                      tags={"preset": cfg.model.preset}, lock=lock, print_fn=print_fn) as run:
        return _invert(job, run, print_fn)


def _invert_ray_side():
    from pipeline.stages.invert.ray_data import resolve_invert_device, write_missing_shards
    return resolve_invert_device, write_missing_shards


def _invert(job: InvertJob, run: Tracker, print_fn) -> InvertResult:
    plan = job.plan
    done = run_shard_job(job, run, print_fn, stage="invert", finished_record=finished_record, start=start,
                         write_manifest=write_manifest, ray_side=_invert_ray_side)
    todo, rows_written, progress, seconds = done.todo, done.rows_written, done.progress, done.seconds
    manifest_path, manifest = done.manifest_path, done.manifest
    counts = manifest["counts"]
    result = InvertResult(job.out_dir, manifest_path, counts["rows"], plan.n_shards, len(todo), rows_written, counts,
                          seconds, rows_written / max(seconds, 1e-9), manifest, progress, run.run_id)
    print_fn(f"[invert] done: {counts['rows']} rows (ok {counts['ok']}, no_face {counts['no_face']}, unreadable "
             f"{counts['unreadable']}; {rows_written} written now in {seconds:.1f}s, {result.faces_per_s:.2f} faces/s); "
             f"mean identity cosine {counts['mean_identity_cosine']:.3f}, emotion agreement "
             f"{counts['emotion_agreement']:.3f}, PSNR {counts['mean_psnr']:.1f} dB; manifest {manifest_path}")
    if run:
        run.log_metrics({k: float(v) for k, v in counts.items()} | {"shards_written": len(todo),
                                                                    "faces_per_s": result.faces_per_s,
                                                                    "seconds": seconds})
        run.log_artifact(manifest_path)
    return result


def start(job: InvertJob, records: dict[int, dict], todo: list[int], run: Tracker, print_fn) -> None:
    """Record the job, clean up after an interrupted run, say what will be written."""
    cfg, out, plan, f = job.cfg, job.out_dir, job.plan, job.facts
    atomic_write_bytes(out / "_meta" / "job.json", json.dumps(job.job_record(), indent=1, sort_keys=True).encode())
    stale = remove_stale_temps(out, out / "_meta")
    print_fn(f"[invert] {job.source.describe()} -> {plan.n_shards} shards in {out}")
    print_fn(f"[invert] preset {cfg.model.preset}: {f.latent_space} latents [{f.n_latent}, {f.w_dim}] at {f.resolution} "
             f"px; alignment {job.alignment.method}; {cfg.projection.steps} steps, {plan.batch_sources} faces per batch; "
             f"quality by {f.heldout_identity} (identity), {f.emotion_judge} (emotion); device {job.device}"
             + ("" if f.identity_term else "; no identity term (the preset has no identity model)")
             + (f"; expression term: {f.expression_term} (in the loss)" if f.expression_term else
                "; no expression term (the preset has no expression net)" if cfg.projection.losses.expression > 0
                else ""))
    if records or stale:
        print_fn(f"[invert] resuming: {len(records)} shards already complete, {len(todo)} to write"
                 + (f" ({stale} stale temp files removed)" if stale else ""))
    if run:
        run.log_params(to_dict(cfg))
        run.set_tags({"generator_id": f.generator_id, "output_dir": str(out), "preset": cfg.model.preset,
                      "input": str(job.source.root)})
        log_provenance(run, job.provenance)
