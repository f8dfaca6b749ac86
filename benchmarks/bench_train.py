#!/usr/bin/env python3
"""Throughput of the full four-loss training step of T, on 1 GPU and on 2 GPUs of one host (DDP).

    python benchmarks/bench_train.py                          # 256 and 1024 px, fp32 and bf16, 1 and 2 GPUs
    python benchmarks/bench_train.py --resolutions 256 --gpus 1 --batches 1 2 4 8 16 32
    python benchmarks/bench_train.py --tiny                   # CPU smoke test with the tiny networks
    python benchmarks/bench_train.py --resolutions 256 --gpus 1 --batches 4 32 --precisions bf16 \
        --fast-paths off eager compiled --profile            # before/after the StyleGAN2 fast path
    python benchmarks/bench_train.py --resolutions 256 --gpus 1 --batches 4 --precisions bf16 \
        --fast-paths compiled --streams on off               # passes on parallel streams vs in series
    python benchmarks/bench_train.py --resolutions 256 --gpus 1 --batches 4 --precisions bf16 \
        --fast-paths compiled --overlap on off               # next batch drawn during the step vs after it
    python benchmarks/bench_train.py --resolutions 256 --gpus 1 --batches 4 --precisions bf16 \
        --fast-paths compiled --landmark-precision float32 autocast  # the landmark net's float32 pin vs none
    python benchmarks/bench_train.py --resolutions 1024 --gpus 1 --batches 4 --precisions bf16 \
        --fast-paths compiled --block-gradients layout as-is  # gradients NHWC between G/D blocks vs copied

What is timed is exactly one iteration of pipeline/stages/train's loop: draw the batch's latents and
edit amounts from their global sample ids (sample_batch), then train_step: x = G(w) and x' =
G(w + T s) through the StyleGAN2 synthesis network, the regressor (ResNet50, 40 CelebA outputs), the
landmark model (ResNet18, 106 points), VGG19 conv1_1..conv2_2 features and the StyleGAN2
discriminator on both images as the objective needs them, backward through x' to T, Adam step.
With 2 GPUs, T is wrapped in DistributedDataParallel (NCCL), each GPU draws its own per-GPU batch.

All networks are RANDOMLY INITIALISED (no weights are at hand on the benchmark machine): the
architectures and input sizes are the paper presets' (models/paper_nets.py defaults: regressor at
256 px, landmarks at 112 px, VGG19 at the generator's resolution; StyleGAN2 config-f channels), so
the cost per step is that of the real thing, but the loss values mean nothing.

--fast-paths picks how the StyleGAN2 G and D run (model.fast_path: "off" = the reference modules
under `precision`, the issue's baseline; "eager" / "compiled" = models/stylegan2_fast.py in bf16,
without / with torch.compile); the judges always follow `precision`. The warm-up column is the
wall time of the untimed first iterations (torch.compile, cuDNN autotuning, the CUDA graph capture).
--profile: torch.profiler of one eager step per fast path (top kernels by CUDA time) and, on a GPU,
the step's parts (G and each judge, with and without grad) each timed alone in a CUDA graph.

Output: one table row per (resolution, precision, fast path, GPUs, per-GPU batch) with iterations/s,
samples/s, ms/iteration and peak GPU memory; the best per-GPU batch for each resolution and
precision; the 2-GPU scaling efficiency (2-GPU samples/s / (2 x 1-GPU samples/s) at the same
per-GPU batch); the projected wall time of the paper's recipe (50,000 iterations x batch 4).
--json PATH also writes every figure as JSON.

Runs torchrun-free: the 2-GPU mode spawns its processes with torch.multiprocessing. NVLink
multicast stays off (NCCL_NVLS_ENABLE=0 and friends) on the shared GPU hosts this runs on.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import socket
import sys
import time
import types
from dataclasses import asdict, dataclass
from pathlib import Path

# Before torch initialises CUDA/NCCL, here and in every spawned process (they inherit os.environ).
for _k, _v in {"NCCL_NVLS_ENABLE": "0", "TORCH_SYMM_MEM_DISABLE_MULTICAST": "1", "NVSHMEM_DISABLE_NVLS": "1"}.items():
    os.environ.setdefault(_k, _v)

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # run as a plain script from a checkout, installed or not
    sys.path.insert(0, str(REPO))

import torch  # noqa: E402

from benchmarks.timing import sync  # noqa: E402

PAPER_ITERATIONS, PAPER_BATCH = 50_000, 4
PAPER_ATTRIBUTES = ("Male", "Bald", "Black_Hair", "Young", "Eyeglasses")


@dataclass
class Row:
    resolution: int
    precision: str
    gpus: int
    batch_per_gpu: int
    fast_path: str = "off"      # model.fast_path: off | eager | compiled
    streams: str = "on"         # concurrent_passes: on (independent passes on parallel CUDA streams) | off
    loss_nets: str = "compiled"  # model.compile_measuring (with fast path compiled): compiled | eager
    perceptual_mse: str = "layout"  # layout (shipped: 1-D views) | 4d (on the 4-D maps) | float32 (former copies)
    overlap: str = "on"         # on: the next batch is drawn while the GPU runs the step (train_loop) | off
    landmarks: str = "float32"  # float32 (shipped: models/precision.py's pin) | autocast (pin off: bf16 under bf16)
    block_gradients: str = "layout"  # layout (shipped: gradients leave G/D blocks NHWC) | as-is (before 2026-12-05)
    warmup_s: float | None = None
    iters_per_s: float | None = None
    samples_per_s: float | None = None
    ms_per_iter: float | None = None
    peak_mem_gib: float | None = None
    status: str = "ok"          # ok | OOM | error: ...

    @property
    def global_batch(self) -> int:
        return self.gpus * self.batch_per_gpu

    @property
    def setting(self) -> str:
        """precision of the judges (and of G/D with the fast path off) + the G/D fast path (+ "/serial"
        when the step's passes run one after another; + "/eager-judges" when the fast path is compiled but
        the judges' forward is not)."""
        judges = "/eager-judges" if self.fast_path == "compiled" and self.loss_nets == "eager" else ""
        mse = {"layout": "", "4d": "/4d-mse", "float32": "/f32-mse"}[self.perceptual_mse]
        overlap = "" if self.overlap == "on" else "/no-overlap"
        landmarks = "" if self.landmarks == "float32" else "/autocast-landmarks"
        block_gradients = "" if self.block_gradients == "layout" else "/as-is-block-grads"
        return (f"{self.precision}/{self.fast_path}" + judges + ("" if self.streams == "on" else "/serial") + mse
                + overlap + landmarks + block_gradients)


# ---------------------------------------------------------------------------------------------
# Networks and config
# ---------------------------------------------------------------------------------------------

def random_paper_bundle(resolution: int, device: torch.device):
    """The paper preset's architectures, randomly initialised, as a ModelBundle on `device`."""
    from torch import nn

    from models.paper_nets import CelebAAttributeRegressor, Landmark106, VGGPerceptual
    from models.stylegan2 import Discriminator, Generator
    from pipeline.presets import ModelBundle

    torch.manual_seed(0)
    bundle = ModelBundle(
        preset="tiny",  # a placeholder name: the bundle is passed in, never built from a preset
        generator=Generator(resolution), discriminator=Discriminator(resolution),
        regressor=CelebAAttributeRegressor(output="sigmoid"), landmarks=Landmark106(),
        perceptual=VGGPerceptual(), emotion=nn.Identity(),
        generator_id=f"random-stylegan2-{resolution}", default_attributes=PAPER_ATTRIBUTES)
    return bundle.to(device)


def tiny_bundle(device: torch.device):
    from pipeline.presets import ModelConfig, build_bundle
    return build_bundle(ModelConfig(preset="tiny"), device)


CUDA_GRAPH = True  # set from --no-cuda-graph


@contextlib.contextmanager
def patched(module, name: str, replacement):
    """module.<name> replaced by `replacement` while inside (None: left as shipped)."""
    shipped = getattr(module, name)
    if replacement is not None:
        setattr(module, name, replacement)
    try:
        yield
    finally:
        setattr(module, name, shipped)


def perceptual_mse(kind: str):
    """models.losses.perceptual_loss as shipped ("layout": one memory layout, 1-D views, no float32
    copies), or one of its predecessors (benchmarks/bench_perceptual_loss.py): "4d" (the same on the
    4-D maps) or "float32" (float32 copies, F.mse_loss)."""
    import models.losses as losses
    from benchmarks.bench_perceptual_loss import float32_copy_loss, four_d_loss
    return patched(losses, "perceptual_loss", {"layout": None, "4d": four_d_loss, "float32": float32_copy_loss}[kind])


@contextlib.contextmanager
def batch_overlap(kind: str):
    """Batches drawn as shipped ("on": asynchronous pinned copies, the next batch drawn during the step;
    time_iterations' loop) or as before ("off": blocking copies, each batch drawn after the previous step).
    Both users of pipeline.core.sampling.to_device are patched: sample_batch (z, edit uniforms) and
    sample_noise (random noise maps)."""
    import pipeline.core.sampling as sampling_module
    import pipeline.stages.train.step as step_module
    blocking = None if kind == "on" else (lambda t, device: t.to(device))
    with patched(step_module, "to_device", blocking), patched(sampling_module, "to_device", blocking):
        yield


@contextlib.contextmanager
def landmark_precision(net, kind: str):
    """The landmark network as shipped ("float32": its forward pinned to float32 by
    models.precision.float32_forward) or with the pin taken off for the setting ("autocast": it runs
    under the step's autocast, bf16 under precision bf16, as before 2026-12-05). The unpinned method
    shadows `forward` on the instance, so setup_training compiles (and the graph captures) that one;
    the shipped (possibly compiled) forward comes back afterwards."""
    if kind == "float32":
        yield
        return
    pinned = type(net).forward
    if not hasattr(pinned, "__wrapped__"):
        raise SystemExit(f"{type(net).__name__}.forward has no float32 pin to take off")
    shipped = net.__dict__.get("forward")
    net.forward = types.MethodType(pinned.__wrapped__, net)
    try:
        yield
    finally:
        if shipped is None:
            del net.forward
        else:
            net.forward = shipped


def block_gradient_layout(kind: str):
    """The fast path's block regions as shipped ("layout": each hands its input's gradient on in the
    input's NHWC layout, models.stylegan2_fast.gradient_in_layout_of) or as before 2026-12-05 ("as-is":
    in whatever layout Inductor writes it, which AOTAutograd then copies at the next block). Patching
    the helper makes Dynamo recompile the regions for the setting (its guards see the new function)."""
    import models.stylegan2_fast as fast
    return patched(fast, "gradient_in_layout_of", None if kind == "layout" else (lambda x: x))


def make_config(precision: str, batch: int, device: torch.device, attributes: tuple[str, ...],
                fast_path: str = "off", streams: str = "on", loss_nets: str = "compiled"):
    """The paper's training settings (all four losses, Adam 1e-4) at one per-GPU batch."""
    from pipeline.core.config import from_dict
    from pipeline.stages.train import TrainConfig
    return from_dict(TrainConfig, {
        "model": {"preset": "tiny", "fast_path": fast_path, "compile_measuring": loss_nets == "compiled"},
        "attributes": list(attributes), "batch_size": batch,
        "precision": precision, "device": str(device), "iterations": 10**9, "work_dir": "/nonexistent",
        "tracking": {"enabled": False}, "cuda_graph": CUDA_GRAPH, "concurrent_passes": streams == "on",
    }, "bench")


def eager_step_on_next_batch(cfg, bundle, state, device: torch.device):
    """A no-argument callable: one eager train_step on the batch of the state's next step (its global
    sample ids, one rank), as the profiles run it."""
    from pipeline.core.seeding import global_sample_ids
    from pipeline.stages.train.step import sample_batch, train_step
    n_attributes = state.directions.n_attributes

    def step():
        ids = global_sample_ids(state.step, 0, cfg.batch_size, 1)
        train_step(state, sample_batch(cfg, bundle.generator, n_attributes, ids, device), cfg)
    return step


def build(args, resolution: int, device: torch.device):
    return tiny_bundle(device) if args.tiny else random_paper_bundle(resolution, device)


# ---------------------------------------------------------------------------------------------
# Timing
# ---------------------------------------------------------------------------------------------

def time_iterations(cfg, bundle, state, rank: int, world: int, warmup: int, steps: int,
                    barrier=lambda: None, overlap: str = "on") -> tuple[float, float, float]:
    """(seconds per iteration, peak GiB, warm-up seconds) of sample_batch + the step, as in pipeline.stages.train.loop.train_loop.

    The step is pipeline.stages.train.step.make_step's: a replayed CUDA graph on one GPU (unless
    --no-cuda-graph), eager otherwise; warm-up covers the graph's eager steps and its capture.
    """
    from pipeline.core.seeding import global_sample_ids
    from pipeline.stages.train.step import GraphedTrainStep, make_step, sample_batch, step_and_prepare

    device = state.device
    n_attr = state.directions.n_attributes
    step = make_step(state, cfg)
    if isinstance(step, GraphedTrainStep):
        warmup = max(warmup, GraphedTrainStep.WARMUP + 2)

    def batch_of(k: int):
        return sample_batch(cfg, bundle.generator, n_attr, global_sample_ids(k, rank, cfg.batch_size, world), device)

    upcoming = [batch_of(state.step)]

    def iteration():
        if overlap == "on":        # as train_loop does it
            following = state.step + 1
            _, upcoming[0] = step_and_prepare(step, upcoming[0], lambda: batch_of(following))
        else:
            step(batch_of(state.step))

    t_warm = time.perf_counter()
    for _ in range(warmup):
        iteration()
    sync(device)
    warm_s = time.perf_counter() - t_warm
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    barrier()
    t0 = time.perf_counter()
    for _ in range(steps):
        iteration()
    sync(device)
    barrier()
    elapsed = time.perf_counter() - t0
    peak = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else float("nan")
    return elapsed / steps, peak, warm_s


def is_oom(e: BaseException) -> bool:
    return isinstance(e, torch.cuda.OutOfMemoryError) or "out of memory" in str(e).lower()


def free_memory(device: torch.device) -> None:
    import gc
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def bench_one_device(args, device: torch.device) -> list[Row]:
    from pipeline.stages.train.step import setup_training

    rows: list[Row] = []
    for resolution in args.resolutions:
        bundle = build(args, resolution, device)
        res = bundle.generator.resolution
        # eager judges first: a compiled judge's forward stays wrapped on the shared bundle
        order = sorted(args.loss_nets, key=["eager", "compiled"].index)
        settings = [(f, p, c, j) for j in order for f in args.fast_paths for p in args.precisions
                    for c in args.streams if f == "compiled" or j == order[0]]   # judges compile only there
        settings = [(*setting, mse, o, lm, bg) for setting in settings for mse in args.perceptual_mse
                    for o in args.overlap for lm in args.landmark_precision for bg in args.block_gradients]
        for fast, precision, streams, loss_nets, mse, overlap, landmarks, block_grads in settings:
            for batch in args.batches:
                row = Row(res, precision, 1, batch, fast, streams, loss_nets, mse, overlap, landmarks, block_grads)
                state = None
                try:
                    cfg = make_config(precision, batch, device, bundle.default_attributes, fast, streams, loss_nets)
                    with perceptual_mse(mse), batch_overlap(overlap), landmark_precision(bundle.landmarks, landmarks), \
                            block_gradient_layout(block_grads):
                        state = setup_training(cfg, bundle, device)
                        per_iter, peak, row.warmup_s = time_iterations(cfg, bundle, state, 0, 1, args.warmup,
                                                                       args.steps, overlap=overlap)
                    row.iters_per_s, row.samples_per_s = 1 / per_iter, batch / per_iter
                    row.ms_per_iter, row.peak_mem_gib = 1000 * per_iter, peak
                except RuntimeError as e:
                    if not is_oom(e):
                        raise
                    row.status = "OOM"
                finally:
                    del state
                    free_memory(device)
                rows.append(row)
                print(format_row(row), flush=True)
                if row.status == "OOM":
                    break  # larger batches will not fit either
        del bundle
        free_memory(device)
    return rows


def profile_steps(args, device: torch.device, top: int = 20) -> list[str]:
    """torch.profiler of 3 eager steps (after 3 warm-up steps) per fast path: top kernels by device time."""
    global CUDA_GRAPH
    from torch.profiler import ProfilerActivity, profile

    from pipeline.stages.train.step import setup_training

    graph, CUDA_GRAPH = CUDA_GRAPH, False   # eager steps: the profile names every kernel
    lines = []
    try:
        bundle = build(args, args.resolutions[0], device)
        for fast in args.fast_paths:
            cfg = make_config(args.precisions[-1], args.profile_batch, device, bundle.default_attributes, fast)
            state = setup_training(cfg, bundle, device)
            step = eager_step_on_next_batch(cfg, bundle, state, device)
            for _ in range(3):
                step()
            sync(device)
            acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
            with profile(activities=acts, record_shapes=True) as prof:
                for _ in range(3):
                    step()
                sync(device)

            def dev(e):
                v = getattr(e, "self_device_time_total", 0) or getattr(e, "self_cuda_time_total", 0)
                return v if device.type == "cuda" else e.self_cpu_time_total

            kernels = sorted((e for e in prof.key_averages() if dev(e) > 0 and
                              (device.type != "cuda" or e.device_type.name == "CUDA")), key=dev, reverse=True)
            total = sum(dev(e) for e in kernels) or 1.0
            lines += ["", f"--profile: {bundle.generator.resolution} px, batch {cfg.batch_size}, "
                          f"{cfg.precision}/{fast}, eager steps: {total / 3000:.2f} ms of device time per step; "
                          f"top {top} kernels", f"  {'%':>5} {'ms/step':>8} {'calls':>6}  kernel"]
            for e in kernels[:top]:
                name = e.key if len(e.key) <= 100 else e.key[:97] + "..."
                lines.append(f"  {100 * dev(e) / total:5.1f} {dev(e) / 3000:8.3f} {e.count // 3:>6}  {name}")
            lines += copies_by_caller(prof, device)
            del state
            free_memory(device)
    finally:
        CUDA_GRAPH = graph
    return lines


def copies_by_caller(prof, device: torch.device, top: int = 12, depth: int = 4) -> list[str]:
    """Where the step's copy kernels come from: the aten::copy_ calls of the 3 profiled steps grouped by
    input shapes and by the chain of ops that called them (innermost first), device time summed.

    Layout conversions (NCHW <-> NHWC) and dtype casts of large maps show up as `direct_copy` kernels
    whose launching op the kernel table cannot name; this table does. On a CPU: CPU time."""
    groups: dict[tuple[str, str], list[float]] = {}
    for e in prof.events():
        if e.name != "aten::copy_":
            continue
        ms = (getattr(e, "device_time_total", 0) if device.type == "cuda" else e.cpu_time_total) / 1000
        if ms <= 0:
            continue
        chain, parent = [], e.cpu_parent
        while parent is not None and len(chain) < depth:
            chain.append(parent.name)
            parent = parent.cpu_parent
        key = (" < ".join(chain) or "(top level)", str(getattr(e, "input_shapes", ""))[:90])
        groups.setdefault(key, []).append(ms)
    ranked = sorted(groups.items(), key=lambda kv: sum(kv[1]), reverse=True)
    lines = ["", f"  copies (aten::copy_) by caller, top {top}: ms/step, calls/step, input shapes, callers (innermost first)"]
    for (chain, shapes), times in ranked[:top]:
        lines.append(f"  {sum(times) / 3:8.3f} {len(times) / 3:5.1f}  {shapes}  {chain[:160]}")
    return lines


def graphed_ms(fn, device: torch.device, replays: int = 50) -> float:
    """Milliseconds per call of `fn` captured in a CUDA graph (as the training step runs), by CUDA events
    (on a CPU, the --tiny smoke test: plain calls, wall clock)."""
    if device.type != "cuda":
        fn()
        t0 = time.perf_counter()
        for _ in range(3):
            fn()
        return 1000 * (time.perf_counter() - t0) / 3
    side = torch.cuda.Stream(device=device)
    side.wait_stream(torch.cuda.current_stream(device))
    with torch.cuda.stream(side):
        for _ in range(3):
            fn()
    torch.cuda.current_stream(device).wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        fn()
    graph.replay()
    sync(device)
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(replays):
        graph.replay()
    end.record()
    sync(device)
    return start.elapsed_time(end) / replays


def component_times(args, device: torch.device) -> list[str]:
    """Where a graphed training step's time goes: each network's share, timed alone in its own CUDA graph.

    For --profile-batch B at --resolutions[0]: G without grad (x = G(w)), each judge without grad on x,
    then G and each judge forward + backward to its input (x' = G(w + T s) and the losses through it),
    under the step's precision and fast path. Their sum next to the whole step says what the step adds
    (sampling, T, Adam, the loss arithmetic)."""
    from pipeline.core.seeding import global_sample_ids
    from pipeline.stages.train.step import autocast_context, sample_batch, setup_training

    bundle = build(args, args.resolutions[0], device)
    fast = args.fast_paths[-1]
    cfg = make_config(args.precisions[-1], args.profile_batch, device, bundle.default_attributes, fast)
    state = setup_training(cfg, bundle, device)   # applies the fast path and NHWC judge weights
    batch = sample_batch(cfg, bundle.generator, state.directions.n_attributes,
                         global_sample_ids(0, 0, cfg.batch_size, 1), device)
    g = bundle.generator
    with torch.no_grad(), autocast_context(device, cfg.precision):
        image = g.synthesis(batch.wplus, batch.noise).detach()
    wplus = batch.wplus.detach().clone().requires_grad_(True)
    x = image.clone().requires_grad_(True)
    judges = {"regressor": bundle.regressor, "landmarks": bundle.landmarks, "perceptual": bundle.perceptual,
              "discriminator": bundle.discriminator}

    def total(out) -> torch.Tensor:
        outs = out if isinstance(out, (list, tuple)) else [out]
        return sum(o.float().mean() for o in outs)

    def no_grad(net, inp):
        def fn():
            with torch.no_grad(), autocast_context(device, cfg.precision):
                net(inp)
        return fn

    def with_grad(net, inp):
        def fn():
            with autocast_context(device, cfg.precision):
                loss = total(net(inp))
            torch.autograd.grad(loss, inp)
        return fn

    rows = [("G forward, no grad (x)", no_grad(lambda w: g.synthesis(w, batch.noise), batch.wplus))]
    rows += [(f"{k} forward, no grad (x)", no_grad(net, image)) for k, net in judges.items() if k != "discriminator"]
    rows += [("G forward + backward (x')", with_grad(lambda w: g.synthesis(w, batch.noise), wplus))]
    rows += [(f"{k} forward + backward (x')", with_grad(net, x)) for k, net in judges.items() if net is not None]
    lines = ["", f"--profile components: {g.resolution} px, batch {cfg.batch_size}, {cfg.precision}/{fast}, "
                 "each part alone in a CUDA graph (ms per call)"]
    parts = 0.0
    for name, fn in rows:
        ms = graphed_ms(fn, device)
        parts += ms
        lines.append(f"  {ms:8.3f}  {name}")
    lines.append(f"  {parts:8.3f}  sum of the parts")
    return lines


def ddp_worker(rank: int, world: int, args, port: int, out_path: str) -> None:
    """One process per GPU (or per CPU rank with --tiny): DDP over T, same timing as above."""
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel as DDP

    from pipeline.stages.train.step import setup_training

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    use_cuda = torch.cuda.is_available() and not args.tiny
    if use_cuda:
        torch.cuda.set_device(rank)
    device = torch.device(f"cuda:{rank}") if use_cuda else torch.device("cpu")
    dist.init_process_group("nccl" if use_cuda else "gloo", rank=rank, world_size=world,
                            **({"device_id": device} if use_cuda else {}))
    barrier = (lambda: dist.barrier(device_ids=[rank])) if use_cuda else dist.barrier
    rows: list[Row] = []
    try:
        for resolution in args.resolutions:
            bundle = build(args, resolution, device)
            res = bundle.generator.resolution
            for fast, precision in [(f, p) for f in args.fast_paths for p in args.precisions]:
                for batch in args.ddp_batches:
                    row = Row(res, precision, world, batch, fast)
                    state = None
                    try:
                        cfg = make_config(precision, batch, device, bundle.default_attributes, fast)
                        wrap = (lambda m: DDP(m, device_ids=[rank])) if use_cuda else DDP
                        state = setup_training(cfg, bundle, device, wrap=wrap)
                        per_iter, peak, row.warmup_s = time_iterations(cfg, bundle, state, rank, world, args.warmup,
                                                                       args.steps, barrier)
                        row.iters_per_s, row.samples_per_s = 1 / per_iter, world * batch / per_iter
                        row.ms_per_iter, row.peak_mem_gib = 1000 * per_iter, peak
                    except RuntimeError as e:
                        if not is_oom(e):
                            raise
                        # An OOM on one rank leaves the others waiting in a collective: stop here.
                        row.status = "OOM"
                        rows.append(row)
                        raise SystemExit(f"rank {rank}: out of memory at batch {batch}; "
                                         "rerun with smaller --ddp-batches") from e
                    finally:
                        del state
                        free_memory(device)
                    rows.append(row)
                    if rank == 0:
                        print(format_row(row), flush=True)
            del bundle
            free_memory(device)
    finally:
        if rank == 0:
            Path(out_path).write_text(json.dumps([asdict(r) for r in rows]))
        dist.destroy_process_group()


def bench_ddp(args, world: int) -> list[Row]:
    import tempfile

    import torch.multiprocessing as mp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with tempfile.TemporaryDirectory(prefix="bench-ddp-") as d:
        out = Path(d) / "rows.json"
        try:
            mp.spawn(ddp_worker, args=(world, args, port, str(out)), nprocs=world, join=True)
        finally:
            rows = [Row(**r) for r in json.loads(out.read_text())] if out.is_file() else []
    return rows


# ---------------------------------------------------------------------------------------------
# Report
# ---------------------------------------------------------------------------------------------

HEADER = (f"{'res':>5} {'prec/fast path':>20} {'gpus':>4} {'b/gpu':>5} {'global':>6} {'it/s':>8} {'samples/s':>10} "
          f"{'ms/it':>9} {'peak GiB':>8} {'warm-up s':>9}  status")


def fmt(value, spec: str) -> str:
    return "-" if value is None or value != value else format(value, spec)


def format_row(r: Row) -> str:
    return (f"{r.resolution:>5} {r.setting:>20} {r.gpus:>4} {r.batch_per_gpu:>5} {r.global_batch:>6} "
            f"{fmt(r.iters_per_s, '8.2f')} {fmt(r.samples_per_s, '10.2f')} {fmt(r.ms_per_iter, '9.1f')} "
            f"{fmt(r.peak_mem_gib, '8.2f')} {fmt(r.warmup_s, '9.1f')}  {r.status}")


def hms(seconds: float) -> str:
    h, rem = divmod(int(round(seconds)), 3600)
    return f"{h}h{rem // 60:02d}m"


def find(rows: list[Row], res: int, prec: str, gpus: int, batch: int) -> Row | None:
    for r in rows:
        if (r.resolution, r.setting, r.gpus, r.batch_per_gpu, r.status) == (res, prec, gpus, batch, "ok"):
            return r
    return None


def summary(rows: list[Row]) -> list[str]:
    lines = ["", "Best per-GPU batch (highest samples/s):"]
    keys = sorted({(r.resolution, r.setting, r.gpus) for r in rows})
    for res, prec, gpus in keys:
        ok = [r for r in rows if (r.resolution, r.setting, r.gpus) == (res, prec, gpus) and r.status == "ok"]
        if ok:
            best = max(ok, key=lambda r: r.samples_per_s)
            lines.append(f"  {res:>5} px {prec:>4} {gpus} GPU(s): batch {best.batch_per_gpu}/GPU -> "
                         f"{best.samples_per_s:.1f} samples/s, {best.iters_per_s:.2f} it/s")
    scaling = []
    for r2 in (r for r in rows if r.gpus > 1 and r.status == "ok"):
        r1 = find(rows, r2.resolution, r2.setting, 1, r2.batch_per_gpu)
        if r1:
            eff = r2.samples_per_s / (r2.gpus * r1.samples_per_s)
            scaling.append(f"  {r2.resolution:>5} px {r2.setting:>4} batch {r2.batch_per_gpu}/GPU: "
                           f"{r2.gpus} GPUs {r2.samples_per_s:.1f} vs 1 GPU {r1.samples_per_s:.1f} samples/s "
                           f"-> efficiency {100 * eff:.0f}%")
    if scaling:
        lines += ["", "Scaling efficiency (N-GPU samples/s / (N x 1-GPU samples/s), same per-GPU batch):", *scaling]
    lines += ["", f"Projected wall time of the paper's recipe ({PAPER_ITERATIONS:,} iterations x global batch "
                  f"{PAPER_BATCH} = {PAPER_ITERATIONS * PAPER_BATCH:,} samples):"]
    for res in sorted({r.resolution for r in rows}):
        for prec in sorted({r.setting for r in rows}):
            for gpus in sorted({r.gpus for r in rows}):
                if PAPER_BATCH % gpus:
                    continue
                r = find(rows, res, prec, gpus, PAPER_BATCH // gpus)
                if r:
                    lines.append(f"  {res:>5} px {prec:>4} {gpus} GPU(s) x batch {PAPER_BATCH // gpus}: "
                                 f"{hms(PAPER_ITERATIONS / r.iters_per_s)}  ({r.iters_per_s:.2f} it/s)")
                else:
                    lines.append(f"  {res:>5} px {prec:>4} {gpus} GPU(s) x batch {PAPER_BATCH // gpus}: not measured")
    lines.append("  (same number of samples at the best batch instead: "
                 + "; ".join(f"{res} px {prec} {gpus} GPU(s) {hms(PAPER_ITERATIONS * PAPER_BATCH / best)}"
                             for (res, prec, gpus), best in best_rates(rows).items()) + ")")
    return lines


def best_rates(rows: list[Row]) -> dict:
    out: dict = {}
    for r in rows:
        if r.status == "ok":
            key = (r.resolution, r.setting, r.gpus)
            out[key] = max(out.get(key, 0.0), r.samples_per_s)
    return dict(sorted(out.items()))


def environment(device: torch.device) -> list[str]:
    lines = [f"torch {torch.__version__}, device {device}"]
    if device.type == "cuda":
        p = torch.cuda.get_device_properties(device)
        lines.append(f"GPU: {p.name}, {p.total_memory / 2**30:.0f} GiB, {torch.cuda.device_count()} visible; "
                     f"cudnn.benchmark={torch.backends.cudnn.benchmark}, "
                     f"TF32 matmul={torch.backends.cuda.matmul.allow_tf32}, "
                     f"TF32 conv={torch.backends.cudnn.allow_tf32}")
    return lines


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--resolutions", type=int, nargs="+", default=[256, 1024], help="StyleGAN2 resolutions")
    p.add_argument("--precisions", nargs="+", default=["fp32", "bf16"], choices=["fp32", "bf16"])
    p.add_argument("--fast-paths", nargs="+", choices=["off", "eager", "compiled"],
                   help="model.fast_path of the StyleGAN2 G and D (off = the reference modules, the baseline); "
                        "default: off compiled (--tiny: off, as the CPU always runs the reference code)")
    p.add_argument("--profile", action="store_true",
                   help="torch.profiler of one eager step per fast path at --profile-batch: top kernels")
    p.add_argument("--profile-batch", type=int, default=4)
    p.add_argument("--profile-only", action="store_true",
                   help="--profile without the timed rows (at 1024 px their warm-up alone is ~8 min)")
    p.add_argument("--no-components", action="store_true",
                   help="with --profile: skip timing each part of the step alone (saves their CUDA-graph captures)")
    p.add_argument("--batches", type=int, nargs="+", default=[1, 2, 4, 8, 16, 32],
                   help="per-GPU batches for 1 GPU (stops at the first OOM)")
    p.add_argument("--ddp-batches", type=int, nargs="+", default=[2, 4, 8], help="per-GPU batches with 2+ GPUs")
    p.add_argument("--gpus", type=int, nargs="+", default=[1, 2], help="GPU counts to run (1 and/or 2+)")
    p.add_argument("--steps", type=int, default=10, help="timed iterations per configuration")
    p.add_argument("--warmup", type=int, default=3, help="untimed iterations first (cuDNN autotuning)")
    p.add_argument("--tf32", action="store_true", help="allow TF32 matmuls in fp32 (default: PyTorch's, off)")
    p.add_argument("--loss-nets", nargs="+", choices=["eager", "compiled"], default=["compiled"],
                   help="with --fast-paths compiled: the judges' forward torch.compile'd (model.compile_measuring, "
                        "the default) and/or eager (NHWC weights only)")
    p.add_argument("--streams", nargs="+", choices=["on", "off"], default=["on"],
                   help="concurrent_passes of the step (on: independent passes on parallel CUDA streams, the "
                        "default; off: one after another, shown as '/serial')")
    p.add_argument("--perceptual-mse", nargs="+", choices=["layout", "4d", "float32"], default=["layout"],
                   help="the perceptual loss as shipped (1-D views in one memory layout, no float32 copies) and/or "
                        "its predecessors: on the 4-D maps ('/4d-mse') or with float32 copies ('/f32-mse'), side "
                        "by side in one process")
    p.add_argument("--overlap", nargs="+", choices=["on", "off"], default=["on"],
                   help="on (as shipped): the next batch is drawn while the GPU runs the step, with asynchronous "
                        "pinned copies; off: drawn after the step with blocking copies, shown as '/no-overlap'")
    p.add_argument("--landmark-precision", nargs="+", choices=["float32", "autocast"], default=["float32"],
                   help="float32: the landmark net pinned to float32 as shipped; autocast: the pin taken off "
                        "(bf16 under --precisions bf16), to time what the pin costs")
    p.add_argument("--block-gradients", nargs="+", choices=["layout", "as-is"], default=["layout"],
                   help="layout: G/D fast-path blocks hand gradients on NHWC as shipped; as-is: as before "
                        "2026-12-05 (a layout copy at each block boundary), to time what that costs")
    p.add_argument("--no-cuda-graph", action="store_true", help="eager steps on one GPU (default: CUDA graph)")
    p.add_argument("--tiny", action="store_true", help="CPU smoke test: tiny random networks, gloo for 2 ranks")
    p.add_argument("--json", type=Path, help="also write all rows as JSON here")
    args = p.parse_args(argv)
    if args.profile_only:        # the profile alone: no GPU count to time
        args.profile, args.gpus = True, []
    if args.fast_paths is None:
        args.fast_paths = ["off"] if args.tiny else ["off", "compiled"]
    if args.tiny:
        args.resolutions = [32]
    return args


def main(argv=None) -> int:
    global CUDA_GRAPH
    args = parse_args(argv)
    CUDA_GRAPH = not args.no_cuda_graph
    torch.backends.cudnn.benchmark = True
    if args.tf32:
        torch.backends.cuda.matmul.allow_tf32 = True
    use_cuda = torch.cuda.is_available() and not args.tiny
    if not use_cuda and not args.tiny:
        print("no CUDA GPU visible: run on a GPU machine, or pass --tiny for the CPU smoke test", file=sys.stderr)
        return 2
    device = torch.device("cuda:0" if use_cuda else "cpu")
    print("bench_train: full four-loss step of T (sample_batch + train_step)")
    print("NOTE: all networks are randomly initialised (StyleGAN2 G+D config-f, ResNet50-40 regressor, "
          "ResNet18-106 landmarks, VGG19 conv1_1..conv2_2); timings are real, loss values meaningless."
          if not args.tiny else "NOTE: --tiny smoke test: tiny random networks on CPU; figures mean nothing.")
    for line in environment(device):
        print(line)
    rows: list[Row] = []
    if args.gpus:
        print(HEADER, flush=True)
    if 1 in args.gpus:
        rows += bench_one_device(args, device)
    for world in sorted(g for g in args.gpus if g > 1):
        available = torch.cuda.device_count() if use_cuda else world
        if available < world:
            print(f"skipping {world}-GPU mode: only {available} GPU(s) visible", flush=True)
            continue
        try:
            rows += bench_ddp(args, world)
        except Exception as e:  # keep the 1-GPU figures: report what failed and carry on
            print(f"{world}-GPU mode failed: {type(e).__name__}: {e}", flush=True)

    for line in summary(rows) if rows else []:
        print(line)
    if args.profile:
        for line in profile_steps(args, device):
            print(line, flush=True)
        if not args.no_components:
            for line in component_times(args, device):
                print(line, flush=True)
    if args.json:
        args.json.write_text(json.dumps([{**asdict(r), "global_batch": r.global_batch} for r in rows], indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
