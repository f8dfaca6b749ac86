#!/usr/bin/env python3
"""StyleGAN2 generator throughput, ours vs rosinality's fused-CUDA model, in one process on one GPU.

    python benchmarks/bench_synthesis.py --anchor .device/anchors/rosinality-stylegan2 --resolutions 256
    python benchmarks/bench_synthesis.py --anchor .device/anchors/rosinality-stylegan2 --resolutions 1024
    python benchmarks/bench_synthesis.py --resolutions 256 --profile        # + top kernels, before/after
    python benchmarks/bench_synthesis.py --tiny                             # CPU smoke test (numbers mean nothing)

What is timed: z [B, 512] -> image [B, 3, R, R] (mapping + synthesis, const noise, no grad), random
weights (seeded), config-f channels; the rosinality generator gets OUR weights (its state dict has the
same keys), so the parity rows compare the two implementations on the same network. Every row is
timed with CUDA events (median of --repeats runs of --iters calls each, after warm-up) at each batch
of --batches; the summary takes each row's best batch and prints its ratio to rosinality's best.

Rows (--rows picks; `all` by default):
  rosinality    rosinality/stylegan2-pytorch @ bef283a, fused CUDA ops (built with ninja here; the
                build time is printed), fp32 with PyTorch's default TF32 convolutions.
  ref-fp32      our reference modules (models/stylegan2.py, fast path off), same precision setting.
  ref-bf16      our reference modules under bf16 autocast: what the issue's baseline measured.
  fast-fp32     our fast path in float32 (TF32 convolutions, as rosinality): the equal-precision row.
  fast-eager    our fast path, bfloat16, no torch.compile.
  fast          our fast path, bfloat16, each block torch.compile'd (the GPU default).
  fast-graph    the same replayed as one CUDA graph per batch (what the generate stage does).
  fast-fp16     (not run unless named) the fast path with float16 instead of bfloat16, compiled.
  rosinality-strict, ref-strict   (not run unless named) strict fp32: TF32 off for convolutions too.

Parity (same weights, same z, 64 images at 256 px / 16 at 1024 px, strict fp32 = TF32 off):
PSNR (peak-to-peak 2, images clamped to [-1, 1] as stored, and raw), relative L2 and max |error| of
each row against our strict-fp32 reference. The documented tolerance of the bf16 fast path is
PSNR >= 40 dB (docs/performance.md).

--profile: torch.profiler of ref-bf16 (before), fast (after; fast-eager when fast is not run) and
rosinality at one batch: top kernels by CUDA time.
Anchor: the folder holding rosinality's model.py and op/ (the lead copies /work/shared/anchors/
rosinality-stylegan2 into a git-ignored .device/anchors/ and carries it). It is loaded from that path
only, in this benchmark only: nothing in models/ or pipeline/ imports it.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import torch  # noqa: E402

from benchmarks.timing import sync  # noqa: E402

ROWS = ("rosinality", "ref-fp32", "ref-bf16", "fast-fp32", "fast-eager", "fast", "fast-graph", "fast-fp16",
        "rosinality-strict", "ref-strict")
DEFAULT_ROWS = ROWS[:7]
DEFAULT_BATCHES = {256: [64, 128], 1024: [16, 32], 32: [2, 4]}   # the baseline's best: 64-128 / 16
PARITY_IMAGES = {256: 64, 1024: 16, 32: 4}
PSNR_TOLERANCE_DB = 40.0


@dataclass
class Result:
    row: str
    resolution: int
    batch: int
    precision: str
    img_per_s: float | None = None
    ms_per_batch: float | None = None
    peak_gib: float | None = None
    first_call_s: float | None = None       # the first call of the row (compiles, autotunes)
    status: str = "ok"


@dataclass
class Parity:
    row: str
    resolution: int
    images: int
    psnr_db: float
    psnr_raw_db: float
    rel_l2: float
    max_abs: float


@dataclass
class Report:
    environment: dict = field(default_factory=dict)
    results: list = field(default_factory=list)
    parity: list = field(default_factory=list)
    notes: list = field(default_factory=list)


# ---------------------------------------------------------------------------------------------
# Environment and the anchor
# ---------------------------------------------------------------------------------------------

def environment(device: torch.device) -> dict:
    env = {"torch": torch.__version__, "cuda": torch.version.cuda, "cudnn": torch.backends.cudnn.version(),
           "device": str(device), "cpus": os.cpu_count()}
    try:
        import triton
        env["triton"] = triton.__version__
    except ImportError:
        env["triton"] = None
    if device.type == "cuda":
        p = torch.cuda.get_device_properties(device)
        env.update(gpu=p.name, gpu_memory_gib=round(p.total_memory / 2**30), sm=f"{p.major}.{p.minor}",
                   multiprocessors=p.multi_processor_count)
    return env


def start_anchor_build(anchor: Path, ext_dir: Path) -> subprocess.Popen:
    """Build rosinality's CUDA ops (ninja) in a child process while this one prepares our models."""
    code = f"import sys; sys.path.insert(0, {str(anchor)!r}); import op"
    return subprocess.Popen([sys.executable, "-c", code], env=anchor_env(ext_dir), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)


def anchor_env(ext_dir: Path) -> dict:
    env = dict(os.environ, TORCH_EXTENSIONS_DIR=str(ext_dir))
    if torch.cuda.is_available() and "TORCH_CUDA_ARCH_LIST" not in env:
        major, minor = torch.cuda.get_device_capability()
        env["TORCH_CUDA_ARCH_LIST"] = f"{major}.{minor}"   # build for this GPU only: a faster build
    return env


def finish_anchor_build(proc: subprocess.Popen, t0: float, anchor: Path, ext_dir: Path, report: Report):
    """Wait for the build, then import rosinality's Generator in this process (the built ops load)."""
    out, _ = proc.communicate()
    seconds = time.perf_counter() - t0
    if proc.returncode != 0:
        report.notes.append(f"rosinality anchor: build FAILED after {seconds:.0f} s:\n{out[-3000:]}")
        print(report.notes[-1], flush=True)
        return None
    os.environ.update({k: v for k, v in anchor_env(ext_dir).items() if k.startswith("TORCH_")})
    sys.path.insert(0, str(anchor))
    import model as rosinality_model  # noqa: PLC0415 (the anchor, loaded from its path, here only)
    report.environment["anchor_build_s"] = round(seconds, 1)
    print(f"rosinality anchor: CUDA ops built with ninja in {seconds:.0f} s ({anchor})", flush=True)
    return rosinality_model.Generator


# ---------------------------------------------------------------------------------------------
# The generators under test
# ---------------------------------------------------------------------------------------------

def our_generator(resolution: int, device: torch.device, tiny: bool):
    from models.stylegan2 import Generator
    torch.manual_seed(0)
    if tiny:
        g = Generator(32, w_dim=32, n_mlp=2, channels={4: 16, 8: 16, 16: 8, 32: 8})
    else:
        g = Generator(resolution)
    with torch.no_grad():  # rosinality inits noise strengths to 0: make noise and biases matter
        for m in g.modules():
            if type(m).__name__ == "NoiseInjection":
                m.weight.fill_(0.1)
    return g.to(device).eval()


def rosinality_from(RGen, ours, device: torch.device):
    r = RGen(ours.resolution, ours.w_dim, len(ours.style) - 1, channel_multiplier=2)
    missing = r.load_state_dict(ours.state_dict(), strict=True)
    assert not missing.missing_keys and not missing.unexpected_keys
    return r.to(device).eval()


def fast_path(row: str, tiny: bool):
    from models.stylegan2_fast import FastPath
    devices = ("cpu", "cuda") if tiny else ("cuda",)
    backend = "aot_eager" if tiny else "inductor"
    if row == "fast-fp32":
        return FastPath(dtype=torch.float32, compile=False, devices=devices)
    if row == "fast-eager":
        return FastPath(compile=False, devices=devices)
    if row in ("fast", "fast-graph"):
        return FastPath(compile=True, backend=backend, devices=devices)
    if row == "fast-fp16":
        return FastPath(dtype=torch.float16, compile=not tiny, backend=backend, devices=devices)
    return None


def make_call(row: str, ours, ros, z_dim: int):
    """row -> (precision label, fn(z) -> image)."""
    from pipeline.core.cuda_graphs import GraphedCall
    if row == "rosinality":
        return "fp32 (TF32 convs)", lambda z: ros([z], randomize_noise=False)[0]
    if row in ("rosinality-strict", "ref-strict"):
        inner = (lambda z: ros([z], randomize_noise=False)[0]) if row == "rosinality-strict" else \
            (lambda z: ours(z, noise="const"))

        def strict(z):
            flag = torch.backends.cudnn.allow_tf32
            torch.backends.cudnn.allow_tf32 = False
            try:
                return inner(z)
            finally:
                torch.backends.cudnn.allow_tf32 = flag
        return "fp32 strict (no TF32)", strict
    if row == "ref-bf16":
        def ref_bf16(z):
            with torch.autocast(device_type=z.device.type, dtype=torch.bfloat16):
                return ours(z, noise="const")
        return "bf16 autocast", ref_bf16
    if row == "fast-graph":
        graphed = GraphedCall(lambda z: (ours(z, noise="const"),), max_graphs=8)
        return "bf16 fast + CUDA graph", lambda z: graphed(z)[0]
    labels = {"ref-fp32": "fp32 (TF32 convs)", "fast-fp32": "fp32 (TF32 convs) fast", "fast-eager": "bf16 fast eager",
              "fast": "bf16 fast compiled", "fast-fp16": "fp16 fast compiled"}
    return labels[row], lambda z: ours(z, noise="const")


# ---------------------------------------------------------------------------------------------
# Timing, parity, profile
# ---------------------------------------------------------------------------------------------

@torch.no_grad()
def time_call(fn, z_all: torch.Tensor, batch: int, iters: int, repeats: int, warmup: int):
    """(seconds per call (median of repeats), seconds of the first call). z rotates through z_all."""
    device = z_all.device
    zs = [z_all[i * batch: (i + 1) * batch] for i in range(max(1, len(z_all) // batch))]
    t0 = time.perf_counter()
    fn(zs[0])
    sync(device)
    first = time.perf_counter() - t0
    for i in range(warmup):
        fn(zs[i % len(zs)])
    sync(device)
    runs = []
    for _ in range(repeats):
        if device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            for i in range(iters):
                fn(zs[i % len(zs)])
            end.record()
            end.synchronize()
            runs.append(start.elapsed_time(end) / 1000 / iters)
        else:
            t = time.perf_counter()
            for i in range(iters):
                fn(zs[i % len(zs)])
            runs.append((time.perf_counter() - t) / iters)
    runs.sort()
    return runs[len(runs) // 2], first


def is_oom(e: BaseException) -> bool:
    return isinstance(e, torch.cuda.OutOfMemoryError) or "out of memory" in str(e).lower()


def free(device):
    import gc
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    mse = (a.double() - b.double()).pow(2).mean().item()
    return float("inf") if mse == 0 else 10 * math.log10(4.0 / mse)   # peak-to-peak 2: images in [-1, 1]


STRICT_ROWS = ("rosinality", "ref-fp32", "fast-fp32", "rosinality-strict", "ref-strict")   # compared in strict fp32 (TF32 off)


@torch.no_grad()
def parity(rows, ours, ros, z: torch.Tensor, tiny: bool, resolution: int) -> list[Parity]:
    """Each row's images vs our reference in strict fp32 (TF32 off), on the same z. The fp32 rows run
    in strict fp32 too (implementation parity); the bf16 rows as timed (their tolerance)."""
    flags = (torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32)
    chunk = 16

    def images(fn):
        return torch.cat([fn(z[i:i + chunk]).float() for i in range(0, len(z), chunk)])

    try:
        torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
        ours.set_fast_path(None)
        ref = images(lambda zz: ours(zz, noise="const"))
        out = []
        for row in rows:
            if row == "fast-graph" or (row.startswith("rosinality") and ros is None):
                continue                              # fast-graph: the same kernels as fast
            torch.backends.cudnn.allow_tf32 = row not in STRICT_ROWS and flags[0]
            ours.set_fast_path(fast_path(row, tiny))
            img = images(make_call(row, ours, ros, z.shape[1])[1])
            err = img - ref
            out.append(Parity(row, resolution, len(z), psnr(img.clamp(-1, 1), ref.clamp(-1, 1)), psnr(img, ref),
                              (err.norm() / ref.norm()).item(), err.abs().max().item()))
        return out
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = flags
        ours.set_fast_path(None)


def profile_rows(rows: list[str], ours, ros, z: torch.Tensor, tiny: bool, top: int = 15) -> list[str]:
    """torch.profiler of each row (3 calls after warm-up): top kernels by self CUDA time."""
    from torch.profiler import ProfilerActivity, profile
    lines = []
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if z.is_cuda else [])
    for row in rows:
        ours.set_fast_path(fast_path(row, tiny))
        _, fn = make_call(row, ours, ros, z.shape[1])
        with torch.no_grad():
            for _ in range(2):
                fn(z)
            sync(z.device)
            with profile(activities=activities) as prof:
                for _ in range(3):
                    fn(z)
                sync(z.device)
        events = prof.key_averages()

        def dev_time(e):
            for name in ("self_device_time_total", "self_cuda_time_total"):
                v = getattr(e, name, None)
                if v:
                    return v
            return 0.0 if z.is_cuda else e.self_cpu_time_total

        kernels = sorted((e for e in events if dev_time(e) > 0 and (not z.is_cuda or e.device_type.name == "CUDA")),
                         key=dev_time, reverse=True)
        total = sum(dev_time(e) for e in kernels) or 1.0
        lines.append(f"\n--profile: {row}, batch {len(z)}, 3 calls: {total / 3 / 1000:.2f} ms of "
                     f"{'CUDA' if z.is_cuda else 'CPU'} time per call; top {top} kernels")
        lines.append(f"  {'%':>5} {'ms/call':>8} {'calls':>6}  kernel")
        for e in kernels[:top]:
            name = e.key if len(e.key) <= 100 else e.key[:97] + "..."
            lines.append(f"  {100 * dev_time(e) / total:5.1f} {dev_time(e) / 3 / 1000:8.3f} {e.count // 3:>6}  {name}")
    ours.set_fast_path(None)
    return lines


# ---------------------------------------------------------------------------------------------
# Main
# ---------------------------------------------------------------------------------------------

def precompile(resolution: int, args, device) -> None:
    """Compile the fast path's regions for this resolution (one call; every batch size shares the
    graphs) while the anchor's CUDA ops build in the other process."""
    from models.stylegan2_fast import compile_stats
    if not {"fast", "fast-graph"} & set(args.rows):
        return
    ours = our_generator(resolution, device, args.tiny)
    ours.set_fast_path(fast_path("fast", args.tiny))
    batch = (args.batches or DEFAULT_BATCHES[ours.resolution])[0]   # a realistic size for Inductor's hints
    before, t0 = compile_stats(), time.perf_counter()
    with torch.no_grad():
        ours(torch.randn(batch, ours.w_dim, device=device), noise="const")
    sync(device)
    stats = compile_stats()
    print(f"torch.compile at {ours.resolution} px: {stats['graphs'] - before['graphs']} graphs, "
          f"{time.perf_counter() - t0:.1f} s"
          + (f"; FAILED for {stats['failed']} (the fast rows run eagerly)" if stats["failed"] else ""), flush=True)
    del ours
    free(device)


def bench_resolution(resolution: int, args, RGen, device, report: Report) -> None:
    from models.stylegan2_fast import compile_stats
    ours = our_generator(resolution, device, args.tiny)
    res = ours.resolution
    ros = rosinality_from(RGen, ours, device) if RGen is not None else None
    rows = [r for r in args.rows if not r.startswith("rosinality") or ros is not None]
    batches = args.batches or DEFAULT_BATCHES[res]
    zgen = torch.Generator(device="cpu").manual_seed(1)
    z_all = torch.randn(max(batches) * 2, ours.w_dim, generator=zgen).to(device)
    print(f"\n== {res} px: rows {', '.join(rows)}; batches {batches}", flush=True)
    print(HEADER, flush=True)
    for row in rows:
        ours.set_fast_path(fast_path(row, args.tiny))
        precision, fn = make_call(row, ours, ros, ours.w_dim)
        before = compile_stats()
        for batch in batches:
            r = Result(row, res, batch, precision)
            try:
                if device.type == "cuda":
                    torch.cuda.reset_peak_memory_stats(device)
                per_call, first = time_call(fn, z_all, batch, args.iters, args.repeats, args.warmup)
                r.img_per_s, r.ms_per_batch, r.first_call_s = batch / per_call, 1000 * per_call, first
                if device.type == "cuda":
                    r.peak_gib = torch.cuda.max_memory_allocated(device) / 2**30
            except RuntimeError as e:
                if not is_oom(e):
                    raise
                r.status = "OOM"
            free(device)
            report.results.append(r)
            print(format_result(r), flush=True)
            if r.status == "OOM":
                break
        stats = compile_stats()
        if stats["graphs"] > before["graphs"]:
            print(f"   ({row}: torch.compile built {stats['graphs'] - before['graphs']} graphs in "
                  f"{stats['seconds'] - before['seconds']:.1f} s, included in 'first call')", flush=True)
        if stats["failed"]:
            print(f"   (torch.compile FAILED for backend {stats['failed']}: rows after this ran eagerly)", flush=True)
    ours.set_fast_path(None)
    n = PARITY_IMAGES[res] if not args.tiny else 4
    z = torch.randn(n, ours.w_dim, generator=torch.Generator().manual_seed(2)).to(device)
    report.parity += parity(rows, ours, ros, z, args.tiny, res)
    if args.profile:
        best = {r.row: r for r in report.results if r.resolution == res and r.status == "ok"}
        batch = args.profile_batch or (best["fast"].batch if "fast" in best else batches[0])
        zp = z_all[:batch]
        after = "fast" if "fast" in rows else "fast-eager"
        lines = profile_rows([r for r in ("ref-bf16", after, "rosinality") if r in rows], ours, ros, zp, args.tiny)
        report.notes += lines
        print("\n".join(lines), flush=True)
    del ours, ros
    free(device)


HEADER = (f"{'row':>11} {'px':>5} {'batch':>5} {'img/s':>9} {'ms/batch':>9} {'peak GiB':>8} {'1st call s':>10}  "
          f"precision / status")


def fmt(v, spec):
    return "-" if v is None else format(v, spec)


def format_result(r: Result) -> str:
    return (f"{r.row:>11} {r.resolution:>5} {r.batch:>5} {fmt(r.img_per_s, '9.1f')} {fmt(r.ms_per_batch, '9.2f')} "
            f"{fmt(r.peak_gib, '8.2f')} {fmt(r.first_call_s, '10.1f')}  {r.precision}"
            + ("" if r.status == "ok" else f"  {r.status}"))


def summary(report: Report) -> list[str]:
    lines = ["", "Best batch per row, ratio to rosinality's best at the same resolution (strict rows: to "
                 "rosinality-strict; targets: >= 3.0x at 256 px, >= 2.0x at 1024 px; equal precision: "
                 "fast-fp32 and ref-fp32 vs rosinality, all fp32 with TF32 convolutions):"]
    for res in sorted({r.resolution for r in report.results}):
        best: dict[str, Result] = {}
        for r in report.results:
            if r.resolution == res and r.status == "ok" and (r.row not in best or r.img_per_s > best[r.row].img_per_s):
                best[r.row] = r
        for row in ROWS:
            if row in best:
                b = best[row]
                anchor = best.get("rosinality-strict" if row.endswith("-strict") else "rosinality")
                ratio = f"{b.img_per_s / anchor.img_per_s:5.2f}x" if anchor else "    -"
                lines.append(f"  {res:>5} px {row:>11}: {b.img_per_s:9.1f} img/s at batch {b.batch:<4} {ratio}  "
                             f"({b.precision})")
    lines += ["", f"Parity vs our strict-fp32 reference (same weights and z; tolerance of the bf16 fast path: "
                  f"PSNR >= {PSNR_TOLERANCE_DB:.0f} dB):"]
    for p in report.parity:
        verdict = ""
        if p.row in ("fast", "fast-eager", "fast-fp16"):
            verdict = "  PASS" if p.psnr_db >= PSNR_TOLERANCE_DB else "  FAIL"
        lines.append(f"  {p.resolution:>5} px {p.row:>11}: PSNR {p.psnr_db:6.1f} dB (raw {p.psnr_raw_db:6.1f}), "
                     f"rel L2 {p.rel_l2:.2e}, max |err| {p.max_abs:.2e} over {p.images} images{verdict}")
    return lines


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--anchor", type=Path, help="folder with rosinality's model.py and op/ (rows 'rosinality')")
    p.add_argument("--ext-dir", type=Path, default=Path("/tmp/hfld-bench-torch-extensions"),
                   help="TORCH_EXTENSIONS_DIR for the anchor's build")
    p.add_argument("--resolutions", type=int, nargs="+", default=[256, 1024], choices=[256, 1024])
    p.add_argument("--rows", nargs="+", default=list(DEFAULT_ROWS), choices=ROWS)
    p.add_argument("--batches", type=int, nargs="+", help="batches (default: 64 128 at 256 px, 16 32 at 1024)")
    p.add_argument("--iters", type=int, default=6, help="calls per timed run")
    p.add_argument("--repeats", type=int, default=3, help="timed runs per row and batch (median)")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--profile", action="store_true", help="torch.profiler top kernels: ref-bf16, fast, rosinality")
    p.add_argument("--profile-batch", type=int, default=0, help="batch of the profile (default: fast's best)")
    p.add_argument("--tiny", action="store_true", help="CPU smoke test with a tiny 32 px generator")
    p.add_argument("--json", type=Path, help="also write everything as JSON here")
    args = p.parse_args(argv)
    if args.tiny:
        args.resolutions, args.iters, args.repeats, args.warmup = [32], 1, 1, 0
        args.rows = [r for r in args.rows if not r.startswith("rosinality") and r not in ("fast", "fast-graph")]
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    use_cuda = torch.cuda.is_available() and not args.tiny
    if not use_cuda and not args.tiny:
        print("no CUDA GPU visible: run on a GPU machine, or pass --tiny for the CPU smoke test", file=sys.stderr)
        return 2
    device = torch.device("cuda:0" if use_cuda else "cpu")
    if not use_cuda:
        torch.set_num_threads(1)
    torch.backends.cudnn.benchmark = True
    report = Report(environment=environment(device))
    proc = None
    t_build = time.perf_counter()
    wants_anchor = any(r.startswith("rosinality") for r in args.rows)
    if args.anchor and wants_anchor and use_cuda:
        proc = start_anchor_build(args.anchor.resolve(), args.ext_dir)
    print("bench_synthesis: StyleGAN2 G (mapping + synthesis, const noise, no grad), random weights (seeded)")
    print("environment: " + ", ".join(f"{k}={v}" for k, v in report.environment.items()), flush=True)
    print(f"cudnn.benchmark=True; TF32: cudnn {torch.backends.cudnn.allow_tf32} (PyTorch default), "
          f"matmul {torch.backends.cuda.matmul.allow_tf32}", flush=True)
    for res in args.resolutions:
        precompile(res, args, device)
    RGen = None
    if proc is not None:
        RGen = finish_anchor_build(proc, t_build, args.anchor.resolve(), args.ext_dir, report)
    elif wants_anchor and not args.tiny:
        report.notes.append("no --anchor given: rosinality rows skipped")
        print(report.notes[-1])
    for res in args.resolutions:
        bench_resolution(res, args, RGen, device, report)
    for line in summary(report):
        print(line)
    if args.json:
        args.json.write_text(json.dumps({"environment": report.environment,
                                         "results": [asdict(r) for r in report.results],
                                         "parity": [asdict(p) for p in report.parity], "notes": report.notes},
                                        indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
