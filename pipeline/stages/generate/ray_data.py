"""Ray Data glue of the generate stage: the pipeline that turns chunk ids into written shards.

    range(chunks) -> latents (z, s, seeds per chunk; fused into the generator actors by Ray)
      -> generator actors (x = G(w), x' = G(w + T s), quantised to uint8; GPU when there is one)
      -> scorer actors (emotion, landmarks, attributes, judges on the uint8 images; drift and QC;
         one output row per face; JPEG on the GPU when image.encoder = "gpu")
      -> encoder actors (PNG / JPEG / WebP with PIL) -> one shard-writer actor.
The driver only sees one small row per written shard (progress).
"""

from __future__ import annotations

import json
import os
import time

import numpy as np
import ray
import torch
from ray.data import ActorPoolStrategy
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from pipeline.core.config import ConfigError
from pipeline.core.signals import raise_if_interrupted
from pipeline.infra.ray_session import quiet_ray_data
from pipeline.stages.generate.actors import EncoderStage, FusedStage, GeneratorStage, ScorerStage
from pipeline.stages.generate.config import GenerateConfig
from pipeline.stages.generate.job import GenerateJob
from pipeline.stages.generate.plan import plan_latents
from pipeline.stages.generate.shards import ShardWriter

# Test hook: HFLD_FAULT_AFTER_SHARDS=k makes the driver exit (status 17) after k committed shards;
# "k:hold" makes it stop there instead (it sleeps until killed), so a test can SIGKILL it at a known point.
FAULT_ENV = "HFLD_FAULT_AFTER_SHARDS"


def resolve_generate_device(cfg: GenerateConfig) -> str:
    """The actors' device once Ray is up (auto -> cuda when the cluster has GPUs, else cpu), checked
    against what the cluster has: an actor pool that cannot be placed would wait forever."""
    cluster = ray.cluster_resources() if ray.is_initialized() else {}
    gpus = cluster.get("GPU", 0) if cluster else int(torch.cuda.is_available())
    if cfg.device == "auto":
        device = "cuda" if gpus > 0 else "cpu"
    else:
        device = "cuda" if cfg.device.startswith("cuda") else "cpu"
    if device == "cuda" and gpus <= 0:
        raise ConfigError(f"device: {cfg.device!r} asked for but the Ray cluster has no GPU; use 'cpu' or 'auto'")
    if cfg.image.encoder == "gpu" and device != "cuda":
        raise ConfigError("image.encoder: 'gpu' needs a CUDA device and the Ray cluster has none; "
                          "use image.encoder=cpu")
    if cluster:
        check_placement(cfg, device == "cuda", cluster.get("CPU", 0), gpus)
    return device


def check_placement(cfg: GenerateConfig, gpu: bool, cpus: float, gpus: float) -> None:
    """Every actor (and one latents task) must fit at once, or Ray Data waits for them forever."""
    res = cfg.resources
    gpu_actors = [(res.generators, res.gpus_per_generator)]
    if not res.fuse_scoring:
        gpu_actors.append((res.scorers, res.gpus_per_scorer))
    actors = sum(n for n, _ in gpu_actors) + (res.encoders if cfg.image.encoder == "cpu" else 0) + 1
    need_cpus = (actors + 1) * res.cpus_per_actor
    if need_cpus > cpus + 1e-9:
        raise ConfigError(f"resources: {actors} actors x cpus_per_actor {res.cpus_per_actor} (+ one latents task) "
                          f"need {need_cpus:g} CPUs, the Ray cluster has {cpus:g}; lower cpus_per_actor or the "
                          "actor counts")
    need_gpus = sum(n * share for n, share in gpu_actors)
    if gpu and need_gpus > gpus + 1e-9:
        raise ConfigError(f"resources: the GPU actors need {need_gpus:g} GPUs (generators x gpus_per_generator"
                          f"{'' if res.fuse_scoring else ' + scorers x gpus_per_scorer'}), the Ray cluster has "
                          f"{gpus:g}")


def build_dataset(job: GenerateJob, todo_shards: list[int]):
    """The Ray Data pipeline over the chunks of the shards still to write (lazy; see the module docstring)."""
    cfg, res = job.cfg, job.cfg.resources
    chunks = job.plan.chunks(todo_shards)
    gpu = job.device == "cuda"
    actor = {"num_cpus": res.cpus_per_actor}
    # Chunk ids as in-memory blocks: no read tasks (they would want a whole CPU each, which a small
    # machine with the actors placed does not have), and enough blocks to keep every actor busy.
    n_blocks = max(1, min(len(chunks), max(len(todo_shards), 4 * max(res.generators, res.scorers))))
    ds = ray.data.from_numpy([part for part in np.array_split(np.arange(len(chunks)), n_blocks) if len(part)])
    ds = ds.map_batches(plan_latents, batch_size=1, num_cpus=res.cpus_per_actor,
                        fn_kwargs={"job_seed": cfg.seed, "K": cfg.variants, "z_dim": job.facts.z_dim,
                                   "policy": job.policy, "chunks": chunks,
                                   **({"sources": job.sources} if job.sources is not None else {})})
    if res.fuse_scoring:
        ds = ds.map_batches(FusedStage, fn_constructor_args=(job,), batch_size=1,
                            compute=ActorPoolStrategy(size=res.generators),
                            num_gpus=res.gpus_per_generator if gpu else 0, **actor)
    else:
        ds = ds.map_batches(GeneratorStage, fn_constructor_args=(job,), batch_size=1,
                            compute=ActorPoolStrategy(size=res.generators),
                            num_gpus=res.gpus_per_generator if gpu else 0, **actor)
        ds = ds.map_batches(ScorerStage, fn_constructor_args=(job,), batch_size=1,
                            compute=ActorPoolStrategy(size=res.scorers),
                            num_gpus=res.gpus_per_scorer if gpu else 0, **actor)
    if cfg.image.encoder == "cpu":
        ds = ds.map_batches(EncoderStage, fn_constructor_args=(cfg.image,), batch_size=32,
                            compute=ActorPoolStrategy(size=res.encoders), **actor)
    placement = {}
    if res.writer_on_driver_node:
        here = NodeAffinitySchedulingStrategy(ray.get_runtime_context().get_node_id(), soft=False)
        placement["ray_remote_args_fn"] = lambda: {"scheduling_strategy": here}
    return ds.map_batches(ShardWriter, fn_constructor_args=(job,), batch_size=None,
                          compute=ActorPoolStrategy(size=1), **actor, **placement)


def fault_after() -> tuple[int, bool] | None:
    """(k, hold) from HFLD_FAULT_AFTER_SHARDS ("k" or "k:hold"), or None when it is not set."""
    value = os.environ.get(FAULT_ENV, "").strip()
    if not value:
        return None
    count, _, mode = value.partition(":")
    if not count.isdigit() or mode not in ("", "hold"):
        raise ValueError(f"{FAULT_ENV}={value!r}: expected a shard count, optionally followed by ':hold'")
    return int(count), mode == "hold"


def stop_for_test(after: int, hold: bool, print_fn) -> None:
    """The HFLD_FAULT_AFTER_SHARDS hook: exit abruptly, or hold here until a signal ends the process."""
    if not hold:
        print_fn(f"[generate] {FAULT_ENV}={after}: exiting abruptly (test hook)", flush=True)
        os._exit(17)
    print_fn(f"[generate] {FAULT_ENV}={after}:hold: holding until killed (test hook)", flush=True)
    while True:
        time.sleep(1.0)
        raise_if_interrupted()


def write_missing_shards(job: GenerateJob, records: dict[int, dict], todo: list[int], t0: float,
                         print_fn) -> tuple[int, list[tuple[float, int]]]:
    """Run the Ray Data pipeline; the driver only sees one small row per written shard (progress)."""
    quiet_ray_data()
    rows_todo = sum(job.plan.shard_rows(i) for i in todo)
    fault = fault_after()
    rows_written, progress = 0, []
    for n, rec in enumerate(build_dataset(job, todo).iter_rows(), start=1):
        raise_if_interrupted()          # a SIGTERM whose KeyboardInterrupt was lost in a callback
        shard = int(rec["shard"])
        records[shard] = json.loads(rec["record"])
        rows_written += int(rec["rows"])
        progress.append((time.perf_counter() - t0, rows_written))
        rate = rows_written / max(progress[-1][0], 1e-9)
        print_fn(f"[generate] shard {shard} written: {n}/{len(todo)} shards, {rows_written}/{rows_todo} rows, "
                 f"{rate:.1f} faces/s | eta {(rows_todo - rows_written) / max(rate, 1e-9):.0f}s", flush=True)
        if fault is not None and n >= fault[0]:
            stop_for_test(*fault, print_fn)
    return rows_written, progress
