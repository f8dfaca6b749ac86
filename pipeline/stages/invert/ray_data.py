"""Ray Data glue of the invert stage:

    range(chunks) -> read tasks (the chunk's image bytes; CPU)
      -> inverting actors (decode, detect, align, project, measure, PNG; GPU when there is one)
      -> one shard-writer actor (labels read from the input, parquet written atomically)
The driver sees one small row per written shard (progress with ETA) and, between shard lines, a
heartbeat of the rows the actors have finished (pipeline/infra/progress.py).
"""

from __future__ import annotations

import json
import time

import numpy as np
import ray
import torch
from ray.data import ActorPoolStrategy
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from pipeline.core.config import ConfigError
from pipeline.core.signals import raise_if_interrupted
from pipeline.core.durations import format_duration
from pipeline.infra.progress import Heartbeat, RowCounter, ray_counter_reader
from pipeline.infra.ray_session import quiet_ray_data
from pipeline.stages.invert.actors import InvertStage, read_chunks
from pipeline.stages.invert.config import InvertConfig
from pipeline.stages.invert.job import InvertJob
from pipeline.stages.invert.shards import InvertShardWriter


def resolve_invert_device(cfg: InvertConfig) -> str:
    """The actors' device once Ray is up (auto -> cuda when the cluster has GPUs), checked against it."""
    cluster = ray.cluster_resources() if ray.is_initialized() else {}
    gpus = cluster.get("GPU", 0) if cluster else int(torch.cuda.is_available())
    device = ("cuda" if gpus > 0 else "cpu") if cfg.device == "auto" else \
        ("cuda" if cfg.device.startswith("cuda") else "cpu")
    if device == "cuda" and gpus <= 0:
        raise ConfigError(f"device: {cfg.device!r} asked for but the Ray cluster has no GPU; use 'cpu' or 'auto'")
    if cluster:
        res = cfg.resources
        need_cpus = (res.actors + 2) * res.cpus_per_actor           # actors + a read task + the writer
        if need_cpus > cluster.get("CPU", 0) + 1e-9:
            raise ConfigError(f"resources: {res.actors} actors x cpus_per_actor {res.cpus_per_actor} (+ a read task "
                              f"and the writer) need {need_cpus:g} CPUs, the Ray cluster has {cluster.get('CPU', 0):g}")
        if device == "cuda" and res.actors * res.gpus_per_actor > gpus + 1e-9:
            raise ConfigError(f"resources: {res.actors} actors x gpus_per_actor {res.gpus_per_actor} need more GPUs "
                              f"than the Ray cluster has ({gpus:g})")
    return device


def build_dataset(job: InvertJob, todo: list[int], counter=None):
    res = job.cfg.resources
    chunks = job.plan.chunks(todo)
    actor = {"num_cpus": res.cpus_per_actor}
    n_blocks = max(1, min(len(chunks), max(len(todo), 4 * res.actors)))
    ds = ray.data.from_numpy([part for part in np.array_split(np.arange(len(chunks)), n_blocks) if len(part)])
    ds = ds.map_batches(read_chunks, batch_size=1, num_cpus=res.cpus_per_actor,
                        fn_kwargs={"source": job.source, "chunks": chunks})
    ds = ds.map_batches(InvertStage, fn_constructor_args=(job, counter), batch_size=1,
                        compute=ActorPoolStrategy(size=res.actors),
                        num_gpus=res.gpus_per_actor if job.device == "cuda" else 0, **actor)
    placement = {}
    if res.writer_on_driver_node:
        here = NodeAffinitySchedulingStrategy(ray.get_runtime_context().get_node_id(), soft=False)
        placement["ray_remote_args_fn"] = lambda: {"scheduling_strategy": here}
    return ds.map_batches(InvertShardWriter, fn_constructor_args=(job,), batch_size=None,
                          compute=ActorPoolStrategy(size=1), **actor, **placement)


def write_missing_shards(job: InvertJob, records: dict[int, dict], todo: list[int], t0: float,
                         print_fn) -> tuple[int, list[tuple[float, int]]]:
    """Run the Ray Data pipeline; one progress line per written shard, and a heartbeat line every
    `progress_every_s` seconds in between."""
    quiet_ray_data()
    rows_todo = sum(job.plan.shard_rows(i) for i in todo)
    rows_written, progress, counts = 0, [], {"ok": 0, "no_face": 0, "unreadable": 0}
    counter = RowCounter.remote() if job.cfg.progress_every_s > 0 else None
    try:
        with Heartbeat(ray_counter_reader(counter) if counter else None, "[invert] inverting", rows_todo,
                       job.cfg.progress_every_s, print_fn, t0=t0):
            for n, rec in enumerate(build_dataset(job, todo, counter).iter_rows(), start=1):
                raise_if_interrupted()          # a SIGTERM whose KeyboardInterrupt was lost in a callback
                shard = int(rec["shard"])
                records[shard] = json.loads(rec["record"])
                rows_written += int(rec["rows"])
                counts = {k: counts[k] + records[shard].get(k, 0) for k in counts}
                elapsed = time.perf_counter() - t0
                progress.append((elapsed, rows_written))
                rate = rows_written / max(elapsed, 1e-9)
                left = format_duration((rows_todo - rows_written) / max(rate, 1e-9))
                print_fn(f"[invert] shard {shard} written: {n}/{len(todo)} shards, {rows_written}/{rows_todo} rows "
                         f"(ok {counts['ok']}, no_face {counts['no_face']}, unreadable {counts['unreadable']}), "
                         f"{rate:.2f} faces/s, ETA {left}", flush=True)
    finally:
        if counter is not None:
            ray.kill(counter)
    return rows_written, progress
