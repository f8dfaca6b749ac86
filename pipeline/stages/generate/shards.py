"""Parquet shards of the generate stage: schema, atomic writes with per-shard records, the writer
actor that assembles shards from rows arriving in any order, and the manifest.

Each shard is written to a hidden temp file, hashed, recorded in _meta/, then renamed: a partial file
never has a final name. A rerun skips shards whose file matches its record and writes only the others.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from pipeline.core.io import atomic_output, atomic_write_bytes, file_sha256
from pipeline.stages.generate.config import job_config
from pipeline.stages.generate.job import FORMAT, FORMAT_VERSION, GenerateJob
from pipeline.stages.generate.plan import concat_rows
from pipeline.stages.generate.sources import ID_COLUMN

ROW_GROUP_ROWS = 128            # parquet row group: small enough for streaming readers of large images


def output_schema(job: GenerateJob, shard: int):
    """The arrow schema of every shard (identical across shards but for the shard index in metadata)."""
    import pyarrow as pa
    floats, image = pa.list_(pa.float32()), pa.struct([("bytes", pa.binary()), ("path", pa.string())])
    fields = [("image", image)]
    if job.cfg.image.store_source:
        fields.append(("source_image", image))
    fields += [("row_index", pa.int64()), ("source_index", pa.int64()), ("variant", pa.int32()),
               ("latent_seed", pa.int64()), ("edit_seed", pa.int64()), ("generator_id", pa.string()),
               ("directions_sha256", pa.string()), ("directions_run_id", pa.string()), ("s", floats),
               ("source_emotion", floats), ("source_emotion_label", pa.string()), ("source_landmarks", floats),
               ("source_attributes", floats), ("variant_emotion", floats), ("variant_emotion_label", pa.string()),
               ("variant_landmarks", floats), ("variant_attributes", floats), ("emotion_drift", pa.float32()),
               ("landmark_drift", pa.float32()), ("emotion_label_kept", pa.bool_()), ("qc_pass", pa.bool_())]
    for name in job.cfg.judges:
        fields += [(f"judge_{name}_source_emotion", floats), (f"judge_{name}_variant_emotion", floats),
                   (f"judge_{name}_emotion_drift", pa.float32())]
    hf_features = {"image": {"_type": "Image"}}
    if job.cfg.image.store_source:
        hf_features["source_image"] = {"_type": "Image"}
    if job.sources is not None:   # the source's id, its labels verbatim, the inversion quality, the split
        fields += [("source_id", pa.string()), *job.sources.label_schema,
                   ("inversion_identity_cosine", pa.float32()), ("inversion_psnr", pa.float32()), ("split", pa.string())]
        hf_features.update(job.sources.hf_features)
    meta = {**job.file_metadata(), "shard": shard, "n_shards": job.plan.n_shards}
    return pa.schema(fields, metadata={
        "hfld": json.dumps(meta, sort_keys=True),
        # datasets.load_dataset("parquet") reads this and decodes the image structs as PIL images.
        "huggingface": json.dumps({"info": {"features": hf_features}}, sort_keys=True)})


def source_columns(job: GenerateJob, source_index: np.ndarray) -> dict:
    """--sources: per-row arrow arrays of the source's id, labels (verbatim), inversion quality and split."""
    import pyarrow as pa
    from pipeline.stages.generate.sources import split_of
    unique, inverse = np.unique(source_index, return_inverse=True)
    table = job.sources.columns(unique)
    split_cfg = job.cfg.split
    keys = table.column(split_cfg.column).to_pylist()
    splits = pa.array([split_of(str(k), split_cfg.fractions, split_cfg.seed) for k in keys], pa.string())
    take = pa.array(inverse.astype(np.int64))
    out = {name: table.column(name).combine_chunks().take(take) for name in [ID_COLUMN, *job.sources.label_names]}
    out["inversion_identity_cosine"] = table.column("identity_cosine").combine_chunks().take(take)
    out["inversion_psnr"] = table.column("psnr").combine_chunks().take(take)
    out["split"] = splits.take(take)
    return out


def build_table(job: GenerateJob, shard: int, rows: dict):
    """Rows of one shard (numpy columns, any order) -> arrow table in row_index order."""
    import pyarrow as pa
    schema = output_schema(job, shard)
    order = np.argsort(np.asarray(rows["row_index"]), kind="stable")
    n = len(order)
    consts = {"generator_id": job.facts.generator_id, "directions_sha256": job.directions.sha256,
              "directions_run_id": job.directions.run_id}
    from_sources = source_columns(job, np.asarray(rows["source_index"])[order]) if job.sources is not None else {}
    columns = []
    for f in schema:
        if f.name in from_sources:
            columns.append(from_sources[f.name].cast(f.type))
        elif f.name in consts:
            columns.append(pa.array([consts[f.name]] * n, f.type))
        elif f.name in ("image", "source_image"):
            data = pa.array(list(rows[f.name][order]), pa.binary())
            columns.append(pa.StructArray.from_arrays([data, pa.nulls(n, pa.string())], fields=list(f.type)))
        elif pa.types.is_list(f.type):
            values = np.stack(list(rows[f.name]))[order].astype(np.float32) if rows[f.name].dtype == object \
                else np.asarray(rows[f.name], np.float32)[order]
            k = values.shape[1]
            offsets = pa.array(np.arange(0, (n + 1) * k, k, dtype=np.int32))
            columns.append(pa.ListArray.from_arrays(offsets, pa.array(values.reshape(-1))))
        elif pa.types.is_string(f.type):
            columns.append(pa.array(np.asarray(rows[f.name])[order].astype(str).tolist(), f.type))
        else:
            columns.append(pa.array(np.asarray(rows[f.name])[order], f.type))
    return pa.Table.from_arrays(columns, schema=schema)


def column_compression(schema, raw: tuple[str, ...] = ("image", "source_image")) -> dict[str, str]:
    """zstd for every parquet leaf column except the `raw` ones (image bytes: already compressed, zstd
    would waste CPU)."""
    import pyarrow as pa

    def leaves(name: str, tp) -> list[str]:
        if pa.types.is_struct(tp):
            return [p for i in range(tp.num_fields) for p in leaves(f"{name}.{tp.field(i).name}", tp.field(i).type)]
        if pa.types.is_list(tp):
            return leaves(f"{name}.list.element", tp.value_type)
        return [name]
    return {leaf: "none" if f.name in raw else "zstd" for f in schema for leaf in leaves(f.name, f.type)}


def write_table_atomically(table, final: Path, record_file: Path, shard: int, extra: dict, *,
                           dictionary_columns: list[str], raw_columns: tuple[str, ...] = ("image", "source_image")
                           ) -> dict:
    """Write one parquet shard atomically: temp file -> sha256 -> record (record_file) -> rename.

    Returns the record {file, shard, rows, bytes, sha256, **extra}. Shared by the stages that write
    resumable shards (generate, invert).
    """
    import pyarrow.parquet as pq
    with atomic_output(final) as tmp:
        pq.write_table(table, tmp, row_group_size=ROW_GROUP_ROWS,
                       compression=column_compression(table.schema, raw_columns),
                       use_dictionary=dictionary_columns, write_statistics=False)
        record = {"file": final.name, "shard": shard, "rows": table.num_rows, "bytes": tmp.stat().st_size,
                  "sha256": file_sha256(tmp), **extra}
        # The record lands before the shard's rename: a final name always has its record.
        atomic_write_bytes(record_file, json.dumps(record, sort_keys=True, indent=1).encode())
    return record


def read_finished_record(final: Path, record_file: Path, rows: int, verify: bool) -> dict | None:
    """A shard's record when its file is complete (`rows` rows, the recorded size) and, if `verify`,
    matches the recorded sha256; None when it must be written (again)."""
    if not (final.is_file() and record_file.is_file()):
        return None
    try:
        record = json.loads(record_file.read_text())
    except json.JSONDecodeError:
        return None
    if record.get("rows") != rows or record.get("bytes") != final.stat().st_size:
        return None
    if verify and file_sha256(final) != record.get("sha256"):
        return None
    return record


def write_shard(job: GenerateJob, shard: int, rows: dict) -> dict:
    """Write one shard atomically: temp file -> sha256 -> record (_meta) -> rename. Returns the record."""
    table = build_table(job, shard, rows)
    final = job.out_dir / f"{job.plan.shard_name(shard)}.parquet"
    extra = {"qc_pass": int(np.asarray(rows["qc_pass"]).sum()), "provenance": job.provenance}
    if job.sources is not None:     # rows per split, for the manifest
        splits = table.column("split").to_pylist()
        extra["splits"] = {name: splits.count(name) for name in job.cfg.split.fractions}
    return write_table_atomically(table, final, record_path(job, shard), shard, extra,
                                  dictionary_columns=["generator_id", "directions_sha256", "directions_run_id",
                                                      "source_emotion_label", "variant_emotion_label"])


def record_path(job: GenerateJob, shard: int) -> Path:
    return job.out_dir / "_meta" / f"{job.plan.shard_name(shard)}.json"


def finished_record(job: GenerateJob, shard: int, verify: bool) -> dict | None:
    """The shard's record when its file is complete and (if `verify`) matches the recorded hash."""
    return read_finished_record(job.out_dir / f"{job.plan.shard_name(shard)}.parquet", record_path(job, shard),
                                job.plan.shard_rows(shard), verify)


class ShardCollector:
    """A writer actor: collects the rows of each shard (they arrive in any order, in batches of any
    size) and writes a shard as soon as all its rows are in; emits one small row per written shard
    (shard, rows, the JSON record). Subclasses say how a shard is written (`write`); the job's plan
    says how many rows each shard has. Used by generate and invert."""

    def __init__(self, job):
        self.job = job
        self.pending: dict[int, list[dict]] = {}
        self.counts: dict[int, int] = {}

    def write(self, shard: int, rows: dict) -> dict:
        raise NotImplementedError

    def __call__(self, batch: dict) -> dict:
        done = []
        shards = np.asarray(batch["shard"])
        for shard in np.unique(shards):
            s, sel = int(shard), shards == shard
            self.pending.setdefault(s, []).append({k: np.asarray(v)[sel] for k, v in batch.items()})
            self.counts[s] = self.counts.get(s, 0) + int(sel.sum())
            if self.counts[s] == self.job.plan.shard_rows(s):
                done.append(self.write(s, concat_rows(self.pending.pop(s))))
        return {"shard": np.array([d["shard"] for d in done], np.int64),
                "rows": np.array([d["rows"] for d in done], np.int64),
                "record": np.array([json.dumps(d, sort_keys=True) for d in done], dtype=np.str_)}


class ShardWriter(ShardCollector):
    """generate's writer actor (see ShardCollector)."""

    def write(self, shard: int, rows: dict) -> dict:
        return write_shard(self.job, shard, rows)


def schema_summary(job: GenerateJob) -> dict:
    schema = output_schema(job, 0)
    return {"fields": [{"name": f.name, "type": str(f.type)} for f in schema],
            "metadata": json.loads(schema.metadata[b"hfld"]) | {"shard": None}}


def shard_provenance(records: list[dict]) -> list[dict]:
    """The distinct provenances (packages, device, weight licences) of the invocations that wrote the
    shards, each with the shards it wrote: one entry unless a resumed run wrote some of them elsewhere."""
    groups: list[dict] = []
    for r in records:
        prov = r.get("provenance") or {"unknown": "shard written before hfld recorded provenance"}
        match = next((g for g in groups if g["provenance"] == prov), None)
        if match is None:
            match = {"provenance": prov, "shards": []}
            groups.append(match)
        match["shards"].append(r["shard"])
    return [{**g["provenance"], "shards": g["shards"]} for g in groups]


def write_manifest(job: GenerateJob, records: list[dict]) -> tuple[Path, dict]:
    total_rows = sum(r["rows"] for r in records)
    qc = sum(r["qc_pass"] for r in records)
    manifest = {
        "format": FORMAT, "format_version": FORMAT_VERSION,
        "config": job_config(job.cfg),
        "identifiers": {"generator_id": job.facts.generator_id, "directions_source": job.directions.source,
                        "directions_sha256": job.directions.sha256, "directions_run_id": job.directions.run_id},
        "counts": {"sources": job.n_sources, "variants": job.cfg.variants, "rows": total_rows,
                   "shards": len(records), "qc_pass": qc, "qc_pass_rate": qc / max(total_rows, 1)},
        "schema": schema_summary(job),
        "shards": [{k: r[k] for k in ("file", "rows", "bytes", "sha256", "qc_pass")} for r in records],
        "provenance": shard_provenance(records),
    }
    if job.sources is not None:
        manifest["counts"]["splits"] = {name: sum(r.get("splits", {}).get(name, 0) for r in records)
                                        for name in job.cfg.split.fractions}
        manifest["identifiers"]["sources"] = job.sources.path
    path = job.out_dir / "manifest.json"
    atomic_write_bytes(path, json.dumps(manifest, indent=1, sort_keys=True).encode())
    return path, manifest
