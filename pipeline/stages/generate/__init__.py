"""Stage `generate`: many labelled appearances of each face, scored and written to parquet with Ray Data.

    cfg = load_config(GenerateConfig, "generate.yaml")
    result = run_generate(cfg)            # validation, then Ray Data inside an MLflow run

Modules: config.py (GenerateConfig), plan.py (shards, chunks, seeds), job.py (validation before any
work), actors.py (generator / scorer / encoder computations), shards.py (parquet, records,
manifest), ray_data.py (the Ray Data pipeline).

N source faces x K variants. Source face i has the latent z_i (from its own seed); variant v of it
is G(w_i + T s_iv) with s_iv from the edit policy (pipeline/core/policies.py). Every row is one variant
(variants 0..K-1 are all edits; the recipe "none" gives an unedited copy when wanted); the labels
measured on the unedited source face are stored on each of its rows.

Row identifiers and seeds (every row can be regenerated from what it stores):
    row_index   = source_index * K + variant      (global, the sort order of the files)
    latent_seed = derive_seed(seed, Stream.GENERATE, source_index)
                  z = randn(z_dim) from torch.Generator seeded with it (then the noise maps, when
                  noise_mode is "random"); w = mapping(z), truncated with `truncation`.
    edit_seed   = derive_seed(latent_seed, Stream.GENERATE, variant)
                  s = policy.edit(edit_seed, variant); a child of the source's seed, so the edit draws
                  never share a seed with a latent draw.

The Ray Data pipeline (no loop over rows on the driver):
    range(chunks) -> latents (z, s, seeds per chunk; fused into the generator actors by Ray)
      -> generator actors (x = G(w), x' = G(w + T s), quantised to uint8; GPU when there is one)
      -> scorer actors (emotion, landmarks, attributes, judges on the uint8 images; drift and QC;
         one output row per face; JPEG on the GPU when image.encoder = "gpu")
      -> encoder actors (PNG / JPEG / WebP with PIL) -> one shard-writer actor.
A chunk (the unit of GPU batching) is `batch_sources` sources with all their variants, laid out
inside shards, so every face is computed in the same batch composition in every run: outputs do
not depend on how Ray groups work, and a resumed run writes the same bytes as an uninterrupted one
(same hardware, software and resources.torch_threads).

Output directory:
    part-00000-of-00042.parquet ...   shard i = sources [i*shard_sources, (i+1)*shard_sources), row order
    _meta/job.json                    the job's output-affecting config + identifiers (written first)
    _meta/part-00000-of-00042.json    per-shard record: rows, sha256, bytes, QC count (before the rename)
    manifest.json                     counts, schema, config, every shard's hash (written last)
Each shard is written to a hidden temp file, hashed, recorded, then renamed: a partial file never
has a final name. A rerun skips shards whose file matches its record and writes only the others.

Measurements (columns of every row):
    emotion_drift  = total variation 0.5 * sum_k |p_k(x') - p_k(x)| of the 7 emotion probabilities, in [0, 1].
    landmark_drift = mean over points of ||p'(x') - p(x)|| divided by the source face's inter-ocular
                     distance (pipeline.core.metrics.landmark_drift), or by the image side without eye groups.
    qc_pass        = emotion_drift <= qc.max_emotion_drift and landmark_drift <= qc.max_landmark_drift
                     and (when qc.keep_emotion_label) the variant's emotion label equals the source's.
All measurements are taken on the uint8 images (what the files hold before encoding).
"""


from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path

from pipeline.core.config import to_dict
from pipeline.core.io import atomic_write_bytes, remove_stale_temps
from pipeline.core.locks import run_lock
from pipeline.core.paths import absolute_paths, check_output_locations
from pipeline.infra.ray_session import ray_session
from pipeline.infra.tracking import Tracker, log_provenance, stage_run, tracking_locations
from pipeline.presets.provenance import provenance
from pipeline.stages.generate.actors import autocast, encode_image, setup_torch, to_uint8_hwc
from pipeline.stages.generate.config import (GenerateConfig, GenerateResources, ImageConfig, QCConfig, SplitConfig,
                                             job_config)
from pipeline.stages.generate.job import BundleFactory, GenerateJob, prepare
from pipeline.stages.generate.plan import Plan, concat_rows, object_array, pack_chunks, split_chunks
from pipeline.stages.generate.shards import (ShardCollector, finished_record, read_finished_record, shard_provenance,
                                             write_manifest, write_table_atomically)
from pipeline.stages.generate.sources import (ID_COLUMN, INVERTED_FORMAT, LATENT_COLUMN, NOISE_COLUMN, OK_STATUS,
                                              QUALITY_COLUMNS, STATUS_COLUMN, LatentSources, ParquetRows,
                                              open_latent_sources, split_of)

__all__ = ["GenerateConfig", "GenerateJob", "GenerateResources", "GenerateResult", "ImageConfig", "QCConfig",
           "SplitConfig", "job_config", "prepare", "run_generate",
           # latent sources (`--sources`), the format `hfld invert` writes
           "ID_COLUMN", "INVERTED_FORMAT", "LATENT_COLUMN", "NOISE_COLUMN", "OK_STATUS", "QUALITY_COLUMNS",
           "STATUS_COLUMN", "LatentSources", "ParquetRows", "open_latent_sources", "split_of",
           # the shard machinery other stages reuse
           "Plan", "ShardCollector", "autocast", "concat_rows", "encode_image", "object_array", "pack_chunks",
           "read_finished_record", "run_shard_job", "setup_torch", "ShardRun", "shard_provenance", "split_chunks",
           "to_uint8_hwc", "write_table_atomically"]


@dataclass
class GenerateResult:
    out_dir: Path
    manifest_path: Path
    n_rows: int
    n_shards: int
    shards_written: int
    rows_written: int
    qc_pass_rate: float
    seconds: float
    faces_per_s: float
    manifest: dict = field(default_factory=dict)
    progress: list[tuple[float, int]] = field(default_factory=list)   # (seconds since start, rows written)
    mlflow_run_id: str | None = None

    def steady_faces_per_s(self, skip: float = 0.5) -> float:
        """Rows/s from the first shard written after `skip` of this run's rows to the last one: actor
        start-up and the burst of work queued meanwhile are left out (needs a run of many shards)."""
        if len(self.progress) < 3:
            return self.faces_per_s
        start = next(i for i, (_, rows) in enumerate(self.progress) if rows >= skip * self.rows_written)
        start = min(start, len(self.progress) - 2)
        (t0, r0), (t1, r1) = self.progress[start], self.progress[-1]
        return (r1 - r0) / max(t1 - t0, 1e-9)


def run_generate(cfg: GenerateConfig, *, tracker: Tracker | None = None, bundle_factory: BundleFactory | None = None,
                 job: GenerateJob | None = None, print_fn=print) -> GenerateResult:
    """Generate (or finish) the dataset of `cfg`: every check first (output locations, then job.prepare;
    no MLflow run for a bad config), then, holding the output folder's lock (a second process gets a
    ConfigError naming the holder), the Ray Data pipeline inside the stage's MLflow run.

    tracker: None = an MLflow run of its own (cfg.tracking); a tracker = a child run of it.
    Interrupted (Ctrl-C, SIGTERM through the CLI): finished shards stay; the same command resumes.
    """
    own_store = tracking_locations(cfg.tracking, cfg.work_dir) if tracker is None else {}
    check_output_locations({"work_dir": cfg.work_dir, "output_dir": cfg.output_dir or cfg.out_dir, **own_store})
    cfg = absolute_paths(cfg)
    job = job or prepare(cfg, bundle_factory)
    with run_lock(job.out_dir, "output_dir", print_fn) as lock, \
            stage_run(cfg.tracking, tracker, work_dir=cfg.work_dir, run_name=cfg.name, stage="generate",
                      tags={"preset": cfg.model.preset}, lock=lock, print_fn=print_fn) as run:
        return _generate(job, run, print_fn)


@dataclass
class ShardRun:
    """What one run of a sharded job (generate, invert) did: the shards it wrote now (`todo`), their
    rows, the progress samples, its wall seconds and the manifest it wrote over all shards."""
    todo: list[int]
    rows_written: int
    progress: list[tuple[float, int]]
    seconds: float
    manifest_path: Path
    manifest: dict


def run_shard_job(job, run: Tracker, print_fn, *, stage: str, finished_record, start, write_manifest,
                  ray_side) -> ShardRun:
    """The resumable shard loop shared by generate and invert: keep the finished shards (verified),
    write the missing ones through Ray Data, then the manifest over all of them.

    finished_record(job, shard, verify) -> record | None; start(job, records, todo, run, print_fn) records
    the job and says what will be written; write_manifest(job, records) -> (path, manifest);
    ray_side() -> (resolve_device(cfg), write_missing_shards(job, records, todo, t0, print_fn)): imported
    only when there is work left, so a finished job needs no Ray.
    """
    cfg, plan = job.cfg, job.plan
    records = {i: r for i in range(plan.n_shards) if (r := finished_record(job, i, cfg.verify_existing))}
    todo = [i for i in range(plan.n_shards) if i not in records]
    t0 = time.perf_counter()
    rows_written, progress = 0, []
    if not todo:
        job.provenance = provenance(cfg.model, "none: every shard was already written")
        start(job, records, todo, run, print_fn)
    else:
        resolve_device, write_missing_shards = ray_side()
        with ray_session(cfg.resources.address, dashboard=False, worker_logs=False):
            job.device = resolve_device(cfg)       # the last check (it needs the cluster's resources)
            job.provenance = provenance(cfg.model, job.device)   # recorded in every shard record this run writes
            start(job, records, todo, run, print_fn)
            rows_written, progress = write_missing_shards(job, records, todo, t0, print_fn)
    seconds = time.perf_counter() - t0
    missing = [i for i in range(plan.n_shards) if i not in records]
    if missing:
        raise RuntimeError(f"{stage}: shards {missing[:5]} were not written; rerun to finish them")
    manifest_path, manifest = write_manifest(job, [records[i] for i in range(plan.n_shards)])
    return ShardRun(todo, rows_written, progress, seconds, manifest_path, manifest)


def _generate_ray_side():
    from pipeline.stages.generate.ray_data import resolve_generate_device, write_missing_shards
    return resolve_generate_device, write_missing_shards


def _generate(job: GenerateJob, run: Tracker, print_fn) -> GenerateResult:
    out, plan = job.out_dir, job.plan
    done = run_shard_job(job, run, print_fn, stage="generate", finished_record=finished_record, start=start,
                         write_manifest=write_manifest, ray_side=_generate_ray_side)
    todo, rows_written, progress, seconds = done.todo, done.rows_written, done.progress, done.seconds
    manifest_path, manifest = done.manifest_path, done.manifest
    counts = manifest["counts"]
    result = GenerateResult(out, manifest_path, counts["rows"], plan.n_shards, len(todo), rows_written,
                            counts["qc_pass_rate"], seconds, rows_written / max(seconds, 1e-9), manifest, progress,
                            run.run_id)
    print_fn(f"[generate] done: {counts['rows']} rows ({rows_written} written now in {seconds:.1f}s, "
             f"{result.faces_per_s:.1f} faces/s); QC pass rate {counts['qc_pass_rate']:.3f}; manifest {manifest_path}")
    if run:
        run.log_metrics({"rows": counts["rows"], "rows_written": rows_written, "shards": plan.n_shards,
                         "shards_written": len(todo), "qc_pass_rate": counts["qc_pass_rate"],
                         "faces_per_s": result.faces_per_s, "seconds": seconds})
        run.log_artifact(manifest_path)
    return result


def start(job: GenerateJob, records: dict[int, dict], todo: list[int], run: Tracker, print_fn) -> None:
    """Record the job, clean up after an interrupted run, say what will be written."""
    cfg, out, plan = job.cfg, job.out_dir, job.plan
    atomic_write_bytes(out / "_meta" / "job.json", json.dumps(job.job_record(), indent=1, sort_keys=True).encode())
    stale = remove_stale_temps(out, out / "_meta")
    print_fn(f"[generate] {job.n_sources} sources x {cfg.variants} variants = {job.n_sources * cfg.variants} rows "
             f"in {plan.n_shards} shards -> {out}")
    if job.sources is not None:
        src = job.sources
        print_fn(f"[generate] sources: {src.path}: {src.n_sources} of {src.n_rows} rows inverted (status ok), "
                 f"{job.n_sources} used (n_sources does not apply); labels {src.label_names}; split "
                 f"{dict(cfg.split.fractions)} by {cfg.split.column}")
    print_fn(f"[generate] T: {job.directions.source} (sha256 {job.directions.sha256[:12]}, attributes "
             f"{job.directions.attributes}, run {job.directions.run_id}); policy {cfg.policy.kind}; "
             f"device {job.device}")
    if records or stale:
        print_fn(f"[generate] resuming: {len(records)} shards already complete, {len(todo)} to write"
                 + (f" ({stale} stale temp files removed)" if stale else ""))
    if run:
        run.log_params(to_dict(cfg))
        log_provenance(run, job.provenance)
        run.set_tags({"directions_run_id": job.directions.run_id, "directions_source": job.directions.source,
                      "directions_sha256": job.directions.sha256, "generator_id": job.facts.generator_id,
                      "output_dir": str(out), "preset": cfg.model.preset})
