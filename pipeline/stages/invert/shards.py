"""Parquet shards of the invert stage: schema, the writer actor (rows arrive in any order; a shard is
written when all its rows are in), the manifest. Files are written with generate's shard machinery
(temp file -> sha256 -> record in _meta/ -> rename), so a partial file never has a final name and a
rerun writes only the shards without a matching record.

Columns (one row per input row, in input order):
    source_index, source_id, source_path      where the row came from
    <label columns>                           copied from the input: same names, types and values
    status                                    ok | no_face | unreadable
    face_score, face_box                      BlazeFace's best candidate (also for no_face rows; null when
                                              unreadable or alignment "none": no detection ran)
    align_matrix                              the warp of the crop (null unless ok)
    aligned_image, reconstruction_image       {bytes, path} PNG (only with store_images)
    wplus (and noise)                         the latent, float16/float32 list (null unless ok)
    psnr, identity_cosine, landmark_error,
    source_emotion(_label), reconstruction_emotion(_label), emotion_agreement, emotion_tv   quality
    loss_start, loss_end                      the inversion loss at the mean latent and at the end
    generator_id                              the generator the latent belongs to
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from pipeline.core.io import atomic_write_bytes
from pipeline.stages.generate import ShardCollector, read_finished_record, shard_provenance, write_table_atomically
from pipeline.stages.invert.config import job_config
from pipeline.stages.invert.job import FORMAT, FORMAT_VERSION, STATUSES, InvertJob

IMAGE_COLUMNS = ("aligned_image", "reconstruction_image")
QUALITY_FLOATS = ("psnr", "identity_cosine", "landmark_error", "emotion_tv", "loss_start", "loss_end")
IDENTITY_TARGET = 0.9          # the target: identity cosine >= 0.9 (counted per shard)


def output_schema(job: InvertJob, shard: int):
    import pyarrow as pa
    f32, floats = pa.float32(), pa.list_(pa.float32())
    latent = pa.list_(pa.float16() if job.cfg.latent_dtype == "float16" else pa.float32())
    image = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
    fields = [("source_index", pa.int64()), ("source_id", pa.string()), ("source_path", pa.string()),
              *job.source.label_schema, ("status", pa.string()), ("face_score", f32), ("face_box", floats),
              ("align_matrix", floats)]
    if job.cfg.store_images:
        fields += [(name, image) for name in IMAGE_COLUMNS]
    fields.append(("wplus", latent))
    if job.facts.noise_shapes:
        fields.append(("noise", latent))
    fields += [("psnr", f32), ("identity_cosine", f32), ("landmark_error", f32), ("source_emotion", floats),
               ("source_emotion_label", pa.string()), ("reconstruction_emotion", floats),
               ("reconstruction_emotion_label", pa.string()), ("emotion_agreement", pa.bool_()),
               ("emotion_tv", f32), ("loss_start", f32), ("loss_end", f32), ("generator_id", pa.string())]
    features = {name: {"_type": "Image"} for name in IMAGE_COLUMNS if job.cfg.store_images}
    features.update(job.source.hf_features)
    meta = {**job.file_metadata(), "shard": shard, "n_shards": job.plan.n_shards}
    return pa.schema(fields, metadata={"hfld": json.dumps(meta, sort_keys=True),
                                       "huggingface": json.dumps({"info": {"features": features}}, sort_keys=True)})


def list_array(values: np.ndarray, valid: np.ndarray, value_type):
    """[n, k] values -> list<value_type> array, null where not `valid` (empty list slots)."""
    import pyarrow as pa
    n, k = values.shape
    lengths = np.where(valid, k, 0)
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int32)
    flat = values[valid].reshape(-1)
    if pa.types.is_float16(value_type):
        flat = flat.astype(np.float16)
    return pa.ListArray.from_arrays(pa.array(offsets), pa.array(flat, type=value_type), mask=pa.array(~valid))


def build_table(job: InvertJob, shard: int, rows: dict):
    """Rows of one shard (numpy columns, any order) -> arrow table in input order."""
    import pyarrow as pa
    schema = output_schema(job, shard)
    order = np.argsort(np.asarray(rows["row"]), kind="stable")
    r = {k: np.asarray(v)[order] for k, v in rows.items()}
    index = r["row"]
    ok = r["status"].astype(str) == "ok"
    found = ~np.isnan(r["face_box"][:, 0])          # a face candidate (ok, or no_face below min_score)
    labels = job.source.read_labels(index)
    columns = []
    for f in schema:
        name = f.name
        if name == "source_index":
            columns.append(pa.array(index, pa.int64()))
        elif name == "source_id":
            columns.append(pa.array(job.source.ids(index), pa.string()))
        elif name == "source_path":
            columns.append(pa.array(job.source.paths(index), pa.string()))
        elif name in job.source.label_names:
            columns.append(labels.column(name).combine_chunks().cast(f.type))
        elif name == "status":
            columns.append(pa.array(r["status"].astype(str).tolist(), pa.string()))
        elif name in IMAGE_COLUMNS:
            data = r["aligned_png" if name == "aligned_image" else "reconstruction_png"]
            blobs = pa.array([bytes(b) if k else None for b, k in zip(data, ok)], pa.binary())
            columns.append(pa.StructArray.from_arrays([blobs, pa.nulls(len(index), pa.string())], fields=list(f.type),
                                                      mask=pa.array(~ok)))
        elif name in ("face_box", "align_matrix"):
            columns.append(list_array(r[name].astype(np.float32), found if name == "face_box" else ok, f.type.value_type))
        elif pa.types.is_list(f.type):
            columns.append(list_array(r[name].astype(np.float32), ok, f.type.value_type))
        elif name == "face_score":
            columns.append(pa.array(r[name], pa.float32(), mask=np.isnan(r[name])))
        elif name in QUALITY_FLOATS:
            columns.append(pa.array(r[name], pa.float32(), mask=~ok))
        elif name in ("source_emotion_label", "reconstruction_emotion_label"):
            columns.append(pa.array([str(v) if k else None for v, k in zip(r[name], ok)], pa.string()))
        elif name == "emotion_agreement":
            columns.append(pa.array(r[name].astype(bool), pa.bool_(), mask=~ok))
        elif name == "generator_id":
            columns.append(pa.array([job.facts.generator_id] * len(index), pa.string()))
        else:
            raise AssertionError(f"invert: no values for column {name}")
    return pa.Table.from_arrays(columns, schema=schema)


def shard_counts(rows: dict) -> dict:
    """Per-shard counts and sums, for progress lines and the manifest."""
    status = np.asarray(rows["status"]).astype(str)
    ok = status == "ok"
    ident = np.asarray(rows["identity_cosine"], np.float64)[ok]
    return {**{s: int((status == s).sum()) for s in STATUSES},
            "sum_psnr": float(np.asarray(rows["psnr"], np.float64)[ok].sum()),
            "sum_identity_cosine": float(ident.sum()), "identity_ge_target": int((ident >= IDENTITY_TARGET).sum()),
            "sum_landmark_error": float(np.asarray(rows["landmark_error"], np.float64)[ok].sum()),
            "emotion_agreement": int(np.asarray(rows["emotion_agreement"])[ok].sum())}


def shard_paths(job: InvertJob, shard: int) -> tuple[Path, Path]:
    name = job.plan.shard_name(shard)
    return job.out_dir / f"{name}.parquet", job.out_dir / "_meta" / f"{name}.json"


def write_shard(job: InvertJob, shard: int, rows: dict) -> dict:
    table = build_table(job, shard, rows)
    final, record = shard_paths(job, shard)
    extra = {**shard_counts(rows), "provenance": job.provenance}
    return write_table_atomically(table, final, record, shard, extra, raw_columns=IMAGE_COLUMNS,
                                  dictionary_columns=["status", "source_emotion_label", "reconstruction_emotion_label",
                                                      "generator_id"])


def finished_record(job: InvertJob, shard: int, verify: bool) -> dict | None:
    final, record = shard_paths(job, shard)
    return read_finished_record(final, record, job.plan.shard_rows(shard), verify)


class InvertShardWriter(ShardCollector):
    """invert's writer actor (see generate's ShardCollector): a shard is written once all its rows are in."""

    def write(self, shard: int, rows: dict) -> dict:
        return write_shard(self.job, shard, rows)


def summary(records: list[dict]) -> dict:
    """Counts and quality over all shards (means over the rows with status ok)."""
    total = {s: sum(r.get(s, 0) for r in records) for s in STATUSES}
    n_ok = max(total["ok"], 1)
    return {"rows": sum(r["rows"] for r in records), **total,
            "mean_psnr": sum(r.get("sum_psnr", 0.0) for r in records) / n_ok,
            "mean_identity_cosine": sum(r.get("sum_identity_cosine", 0.0) for r in records) / n_ok,
            f"identity_cosine_ge_{IDENTITY_TARGET}": sum(r.get("identity_ge_target", 0) for r in records) / n_ok,
            "mean_landmark_error": sum(r.get("sum_landmark_error", 0.0) for r in records) / n_ok,
            "emotion_agreement": sum(r.get("emotion_agreement", 0) for r in records) / n_ok}


def write_manifest(job: InvertJob, records: list[dict]) -> tuple[Path, dict]:
    schema = output_schema(job, 0)
    manifest = {
        "format": FORMAT, "format_version": FORMAT_VERSION, "config": job_config(job.cfg),
        "identifiers": {"generator_id": job.facts.generator_id, "preset": job.cfg.model.preset},
        "counts": {**summary(records), "shards": len(records)},
        "schema": {"fields": [{"name": f.name, "type": str(f.type)} for f in schema],
                   "metadata": json.loads(schema.metadata[b"hfld"]) | {"shard": None}},
        "shards": [{k: r[k] for k in ("file", "rows", "bytes", "sha256", *STATUSES)} for r in records],
        "provenance": shard_provenance(records),    # who wrote the shards: packages, device, weight licences
    }
    path = job.out_dir / "manifest.json"
    atomic_write_bytes(path, json.dumps(manifest, indent=1, sort_keys=True).encode())
    return path, manifest
