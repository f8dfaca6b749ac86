"""Benchmark of `hfld invert`'s projection: faces per second per GPU at 200 optimisation steps per face.

GPU machine (one GPU, under 3 minutes; prints a table, writes JSON with --json):
    .venv/bin/python benchmarks/bench_invert.py
CPU smoke (tiny sizes, seconds):
    .venv/bin/python benchmarks/bench_invert.py --smoke

Stacks:
  64 px   the starter preset (its fetched weights): StyleGAN2 64 px with the starter's loss networks,
          face-api's face descriptor (perceptual features + identity descriptor, one forward pass for
          both) and face-api's 68-point landmarks; --random-64: a random StyleGAN2 of --channels-64
          with the same loss networks at random initialisation (what the first results file measured);
  256 px  (random initialisation: random weights cost the same as trained ones) an FFHQ-256-size StyleGAN2 (config-f channels, w_dim 512, L = 14) with the ffhq preset's
          loss networks: VGG19 conv1_1..conv2_2 (perceptual) and ResNet18-106 landmarks (no identity).
What is timed is `Projector.project` itself (pipeline/stages/invert/project.py): per step the
generator forward + backward, the loss networks forward + backward, Adam and the latent noise, for
a batch of B faces, each with its own W+ latent (const noise maps). After a warm-up, projections of
5 and 5 + `--timed-steps` steps are timed with CUDA synchronisation: their difference gives the cost
per step, the rest the fixed cost per projection (target features, start and end evaluation), and
faces/s = B / (fixed + 200 x per step). `--full` also runs one whole 200-step projection per setting
and reports its wall time.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import torch  # noqa: E402

from benchmarks.timing import sync, timed  # noqa: E402

from pipeline.presets import ModelBundle  # noqa: E402
from pipeline.stages.invert.config import ProjectionConfig  # noqa: E402
from pipeline.core.compiled import compile_seconds  # noqa: E402
from pipeline.stages.invert.project import Projector, shares_descriptor  # noqa: E402

STEPS_PER_FACE = 200
SHORT_RUN = 5
DEFAULT_BATCH = {64: 256, 256: 32}


def parse_channels(text: str) -> dict[int, int]:
    widths = [int(c) for c in text.split(",")]
    return {4 * 2 ** i: c for i, c in enumerate(widths)}


def bundle_64(channels: dict[int, int], w_dim: int) -> tuple[ModelBundle, str]:
    from models.faceapi import FaceApiLandmarks68, FaceLandmark68Net
    from models.faceapi_recognition import FaceApiDescriptor
    from models.stylegan2 import Generator
    from models.tiny import TinyEmotion, TinyRegressor
    from pipeline.presets.starter import DescriptorOnly
    g = Generator(64, w_dim=w_dim, n_mlp=8, channels=channels)
    g.estimate_mean_latent(n=2048)
    perceptual = FaceApiDescriptor()
    bundle = ModelBundle(preset="bench-64", generator=g, discriminator=None, regressor=TinyRegressor(("Male",)),
                         landmarks=FaceApiLandmarks68(FaceLandmark68Net()), perceptual=perceptual,
                         emotion=TinyEmotion(), identity=DescriptorOnly(perceptual))
    assert shares_descriptor(bundle)
    return bundle, (f"StyleGAN2 64 px, channels {channels}, w_dim {w_dim}, n_mlp 8, L = {g.n_latent}; face-api "
                    "descriptor (perceptual + identity, shared pass) + face-api 68 landmarks")


def bundle_starter() -> tuple[ModelBundle, str]:
    """The starter preset itself (its fetched weights: `hfld zoo fetch starter`, HFLD_CACHE)."""
    from pipeline.presets import ModelConfig, build_bundle
    bundle = build_bundle(ModelConfig(preset="starter"))
    g = bundle.generator
    assert shares_descriptor(bundle)
    return bundle, (f"the starter preset: StyleGAN2 64 px, channels {dict(g.channels) if hasattr(g, 'channels') else '?'}, "
                    f"w_dim {g.w_dim}, L = {g.n_latent}; face-api descriptor (perceptual + identity, shared pass) "
                    "+ face-api 68 landmarks")


def bundle_256() -> tuple[ModelBundle, str]:
    from models.paper_nets import Landmark106, VGGPerceptual
    from models.stylegan2 import Generator
    from models.tiny import TinyEmotion, TinyRegressor
    g = Generator(256)
    g.estimate_mean_latent(n=2048)
    bundle = ModelBundle(preset="bench-256", generator=g, discriminator=None, regressor=TinyRegressor(("Male",)),
                         landmarks=Landmark106(), perceptual=VGGPerceptual(), emotion=TinyEmotion(), identity=None)
    return bundle, (f"StyleGAN2 256 px config-f, w_dim 512, L = {g.n_latent}; VGG19 conv1_1..conv2_2 perceptual + "
                    "ResNet18-106 landmarks (no identity term)")


def bundle_smoke() -> tuple[ModelBundle, str]:
    from pipeline.presets import ModelConfig, build_bundle
    return build_bundle(ModelConfig(preset="tiny")), "tiny preset (32 px, random)"


def time_projection(bundle: ModelBundle, device: torch.device, batch: int, precision: str, timed_steps: int,
                    full: bool, start: str = "mean", candidates: int = 2048) -> dict:
    projector = Projector(bundle, ProjectionConfig(steps=STEPS_PER_FACE, w_std_samples=2048, start=start,
                                                   start_candidates=candidates), precision=precision)
    res = int(bundle.generator.resolution)
    gen = torch.Generator().manual_seed(0)
    target = (torch.rand(batch, 3, res, res, generator=gen) * 2 - 1).to(device)
    seeds = list(range(batch))
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    pool_s = None
    if start != "mean":         # the candidate pool: made once per projector when it fits the cache
        sync(device)
        t0 = time.perf_counter()
        for _ in projector.candidate_chunks():
            pass
        sync(device)
        pool_s = time.perf_counter() - t0
    projector.project(target, seeds, steps=3)                    # warm-up (kernels, allocator)

    def run(steps: int) -> float:
        sync(device)
        t0 = time.perf_counter()
        projector.project(target, seeds, steps=steps)
        sync(device)
        return time.perf_counter() - t0

    # two lengths: their difference is the per-step cost, the rest the fixed cost of a projection
    # (target features, the start and end evaluations)
    short, long = run(SHORT_RUN), run(SHORT_RUN + timed_steps)
    per_step = (long - short) / timed_steps
    if per_step <= 0:           # timing noise larger than the work (a busy CPU): no split into parts
        per_step, short = long / (SHORT_RUN + timed_steps), 0.0
    fixed = max(0.0, short - SHORT_RUN * per_step)
    out = {"batch": batch, "precision": precision, "seconds_per_step": per_step, "fixed_seconds": fixed,
           "faces_per_s": batch / (fixed + STEPS_PER_FACE * per_step), "start": start,
           "start_candidates": candidates if start != "mean" else None, "pool_seconds": pool_s, "pool_cached": projector.pool_kept}
    if full:
        sync(device)
        t0 = time.perf_counter()
        projector.project(target, seeds)
        sync(device)
        out["full_200_steps_s"] = time.perf_counter() - t0
        out["faces_per_s_full"] = batch / out["full_200_steps_s"]
    if device.type == "cuda":
        out["peak_memory_gib"] = torch.cuda.max_memory_allocated(device) / 2 ** 30
    return out


def set_fast_path(bundle: ModelBundle, mode: str, compile_losses: bool = True) -> None:
    """As the stage sets it up: the generator's fast path, and the loss networks' (NHWC conv weights;
    with "compiled" their forward compiled too, unless compile_losses is False)."""
    from pipeline.presets import ModelConfig, apply_fast_path, fast_measuring_networks
    apply_fast_path(mode, bundle.generator)
    fast_measuring_networks(ModelConfig(preset="tiny", fast_path=mode, compile_measuring=compile_losses),
                            bundle.perceptual, bundle.landmarks, getattr(bundle.identity, "model", bundle.identity))


def step_parts(bundle: ModelBundle, device: torch.device, batch: int, precision: str, calls: int = 10) -> list[str]:
    """Milliseconds per call of each part of a projection step, timed alone (forward + backward to the
    input, as the projection runs them): G from W+, then each loss network on an image batch."""
    g = bundle.generator
    res = int(g.resolution)
    wplus = g.mean_latent.detach().reshape(1, 1, -1).expand(batch, int(g.n_latent), -1).clone().requires_grad_(True)
    image = (torch.rand(batch, 3, res, res, device=device) * 2 - 1).requires_grad_(True)
    parts = {"G synthesis": (lambda: g.synthesis(wplus, "const"), wplus),
             "perceptual": (lambda: bundle.perceptual(image), image),
             "landmarks": (lambda: bundle.landmarks(image), image)}
    if bundle.identity is not None and not shares_descriptor(bundle):
        parts["identity"] = (lambda: bundle.identity(image), image)
    lines = []
    for name, (forward, inp) in parts.items():
        def once():
            with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=precision == "bf16"):
                out = forward()
            outs = out if isinstance(out, (list, tuple)) else [out]
            torch.autograd.grad(sum(o.float().mean() for o in outs), inp)
        lines.append(f"      {1000 * timed(once, device, 3, calls):8.1f} ms  {name} forward + backward")
    return lines


def environment(device: torch.device) -> dict:
    env = {"torch": torch.__version__, "cuda": torch.version.cuda or "none", "python": platform.python_version(),
           "device": str(device)}
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        env.update({"gpu": props.name, "gpu_memory_gib": round(props.total_memory / 2 ** 30, 1),
                    "cudnn": torch.backends.cudnn.version()})
    else:
        env.update({"cpu_threads": torch.get_num_threads()})
    return env


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--resolutions", type=int, nargs="+", default=[64, 256], choices=[64, 256])
    p.add_argument("--precisions", nargs="+", default=["bf16", "fp32"], choices=["fp32", "tf32", "bf16"])
    p.add_argument("--batch", type=int, nargs="+", default=None,
                   help=f"faces per batch (default per resolution: {DEFAULT_BATCH})")
    p.add_argument("--timed-steps", type=int, default=20)
    p.add_argument("--random-64", action="store_true",
                   help="64 px: a random StyleGAN2 of --channels-64 instead of the starter preset's networks")
    p.add_argument("--channels-64", default="256,256,256,256,128",
                   help="with --random-64: channels at 4,8,16,32,64 px of the 64 px generator")
    p.add_argument("--w-dim-64", type=int, default=256)
    p.add_argument("--full", action="store_true", help="also time one whole 200-step projection per setting")
    p.add_argument("--fast-paths", nargs="+", default=["compiled"], choices=["off", "eager", "compiled"],
                   help="model.fast_path of the generator (off = the reference modules; the stage's default: "
                        "compiled); with a fast path on, the loss networks' conv weights are NHWC as in the stage")
    p.add_argument("--loss-nets", nargs="+", default=["compiled"], choices=["eager", "compiled"],
                   help="with a fast path on: the loss networks' forward torch.compile'd (the stage's default with "
                        "model.fast_path compiled) or eager (NHWC weights only)")
    p.add_argument("--profile", action="store_true",
                   help="also time each part of a step alone (G and each loss network, forward + backward)")
    p.add_argument("--smoke", action="store_true", help="tiny preset on this machine's CPU (seconds)")
    p.add_argument("--starts", nargs="+", default=[ProjectionConfig().start], choices=["mean", "pool", "both"],
                   help="projection.start to time (default: the stage's); the pool pick is in the fixed cost, the "
                        "pool's making too when it does not fit the cache; 'both' runs twice the faces")
    p.add_argument("--start-candidates", type=int, default=ProjectionConfig().start_candidates,
                   help="projection.start_candidates: the pool's size")
    p.add_argument("--json", help="write the results to this file")
    args = p.parse_args(argv)

    device = torch.device("cuda" if torch.cuda.is_available() and not args.smoke else "cpu")
    if device.type == "cpu":
        torch.set_num_threads(max(1, min(4, torch.get_num_threads())))
    env = environment(device)
    print("bench_invert: " + ", ".join(f"{k} {v}" for k, v in env.items()))
    print(f"faces/s at {STEPS_PER_FACE} optimisation steps per face; one W+ latent per face; const noise maps")
    results = []
    make_64 = (lambda: bundle_64(parse_channels(args.channels_64), args.w_dim_64)) if args.random_64 else bundle_starter
    stacks = [("smoke", bundle_smoke)] if args.smoke else \
        [(r, make_64 if r == 64 else bundle_256) for r in args.resolutions]
    for key, make in stacks:
        print(f"\n[{key}]", end=" ")
        described = False
        batches = args.batch or ([4] if args.smoke else [DEFAULT_BATCH[key]])
        for fast in (["off"] if args.smoke else args.fast_paths):
            for loss_nets in (["eager"] if args.smoke or fast == "off" else args.loss_nets):
                torch.manual_seed(0)
                bundle, description = make()            # a fresh bundle: compiled wrappers stay on a network
                bundle = bundle.to(device)
                if not described:
                    print(description)
                    described = True
                set_fast_path(bundle, fast, compile_losses=loss_nets == "compiled")
                label = fast if fast == "off" else f"{fast}/{loss_nets}"
                for precision in (["fp32"] if args.smoke else args.precisions):
                    tf32 = precision == "tf32" and device.type == "cuda"
                    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = tf32
                    for batch, start in ((b, st) for b in batches for st in args.starts):
                        steps = min(args.timed_steps, 4) if args.smoke else args.timed_steps
                        r = time_projection(bundle, device, batch, precision, steps, args.full, start,
                                            args.start_candidates)
                        r.update({"resolution": key, "fast_path": fast, "loss_nets": loss_nets})
                        results.append(r)
                        extra = f", full 200 steps {r['full_200_steps_s']:.1f} s" if "full_200_steps_s" in r else ""
                        mem = f", peak {r['peak_memory_gib']:.1f} GiB" if "peak_memory_gib" in r else ""
                        pool = "" if start == "mean" else (f", pool {r['pool_seconds']:.2f} s "
                                                 f"({'once' if r['pool_cached'] else 'every batch: in fixed'})")
                        print(f"  {label:>17} {precision:>5} batch {batch:>4} start {start:>4}: "
                              f"{1000 * r['seconds_per_step']:8.1f} ms/step + {r['fixed_seconds']:.2f} s fixed -> "
                              f"{r['faces_per_s']:8.2f} faces/s{pool}{extra}{mem}", flush=True)
                        if args.profile:
                            for line in step_parts(bundle, device, batch, precision):
                                print(line, flush=True)
                compiled_s = compile_seconds(bundle.perceptual, bundle.landmarks, bundle.identity)
                if compiled_s:
                    print(f"  ({label}: the loss networks' first compiled calls took {compiled_s:.0f} s)", flush=True)
                del bundle
                if device.type == "cuda":
                    torch.cuda.empty_cache()
    if args.json:
        Path(args.json).write_text(json.dumps({"environment": env, "results": results}, indent=1))
        print(f"\nwrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
