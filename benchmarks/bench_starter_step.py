#!/usr/bin/env python3
"""CPU cost of one T-training step on the starter preset: today's DCGAN vs candidate StyleGAN2 generators.

    python benchmarks/bench_starter_step.py                       # DCGAN vs the default GAN architecture
    python benchmarks/bench_starter_step.py --threads 2 --rounds 5
    python benchmarks/bench_starter_step.py --candidate small:128,128,128,64,32:4

What is timed is one iteration of pipeline/stages/train's loop at batch 4 (sample_batch + train_step)
with the starter preset's real judges (face-api age/gender regressor, face-api 68 landmarks, face-api
descriptor as perceptual model, fer emotion): x = G(w), x' = G(w + T s), the four losses, backward
to T, Adam. The DCGAN row is the starter preset exactly as shipped (L = 1, no discriminator, so
lambda3 = 0). Each candidate row swaps in a randomly initialised 64 px StyleGAN2 G (L = n_latent
W+ layers) and its discriminator, with lambda3 = 0.05 ON, which is what the future starter preset
will compute (random weights cost what trained ones do).

The machine is shared, so the configurations are timed interleaved (round 1: all of them, round 2:
all of them, ...) and two figures are reported per configuration: wall seconds/step (median, min
over rounds) and CPU seconds/step (process CPU time: with one torch thread, the work the step
needs, which other people's load inflates far less than wall time). The comparison uses the
median CPU time.
Needs the starter weights (`hfld zoo fetch starter`).
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # run as a plain script from a checkout, installed or not
    sys.path.insert(0, str(REPO))

import torch  # noqa: E402

DEFAULT_CANDIDATES = ("gan-default:default",)


def parse_candidate(text: str) -> tuple[str, dict[int, int] | None, int | None]:
    """name:c4,c8,...,cR[:n_mlp] or name:default (the gan stage's default architecture)."""
    parts = text.split(":")
    if len(parts) < 2:
        raise SystemExit(f"--candidate {text!r}: expected name:c4,c8,...[:n_mlp] or name:default")
    if parts[1] == "default":
        return parts[0], None, None
    widths = [int(c) for c in parts[1].split(",")]
    channels = {4 * 2 ** i: c for i, c in enumerate(widths)}
    return parts[0], channels, int(parts[2]) if len(parts) > 2 else None


def stylegan_bundle(starter, channels, n_mlp, w_dim: int):
    """The starter bundle with a random 64 px StyleGAN2 G + D in place of the DCGAN (lambda3 then ON)."""
    from dataclasses import replace

    from pipeline.stages.gan import ArchitectureConfig
    from pipeline.stages.gan import build_networks

    arch = ArchitectureConfig()
    arch = replace(arch, **{k: v for k, v in {"channels": channels, "n_mlp": n_mlp, "w_dim": w_dim}.items()
                            if v is not None})
    torch.manual_seed(0)
    g, d = build_networks(arch)
    g.estimate_mean_latent(n=512)
    bundle = replace(starter, generator=g.eval(), discriminator=d.eval(), generator_id="random-stylegan2")
    n_params = sum(p.numel() for p in g.parameters()) + sum(p.numel() for p in d.parameters())
    return bundle, arch, n_params


def time_steps(cfg, bundle, steps: int, warmup: int) -> tuple[float, float]:
    """(wall s/step, process CPU s/step) over `steps` steps after `warmup` untimed ones."""
    from pipeline.core.seeding import global_sample_ids
    from pipeline.stages.train.step import make_step, sample_batch, setup_training

    state = setup_training(cfg, bundle, torch.device("cpu"))
    step = make_step(state, cfg)
    n_attr = state.directions.n_attributes

    def iteration():
        ids = global_sample_ids(state.step, 0, cfg.batch_size, 1)
        step(sample_batch(cfg, bundle.generator, n_attr, ids, state.device))

    for _ in range(warmup):
        iteration()
    t0, c0 = time.perf_counter(), time.process_time()
    for _ in range(steps):
        iteration()
    return (time.perf_counter() - t0) / steps, (time.process_time() - c0) / steps


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--steps", type=int, default=5, help="timed steps per configuration and round")
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--threads", type=int, default=1, help="torch intra-op threads (the machine has 2 cores)")
    p.add_argument("--w-dim", type=int, default=None, help="override w_dim of every candidate")
    p.add_argument("--candidate", action="append", default=None,
                   help="name:c4,c8,c16,c32,c64[:n_mlp] or name:default (repeatable)")
    p.add_argument("--without-d", action="store_true",
                   help="also time each candidate without its discriminator (lambda3 = 0), to see what the D costs")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)

    from pipeline.core.config import from_dict
    from pipeline.presets import ModelConfig, build_bundle
    from pipeline.stages.train import TrainConfig

    cfg = from_dict(TrainConfig, {"model": {"preset": "starter"}, "batch_size": args.batch, "device": "cpu",
                                  "iterations": 10**9, "work_dir": "/nonexistent", "tracking": {"enabled": False}},
                    "bench")
    starter = build_bundle(ModelConfig(preset="starter"), "cpu")
    configs = [("dcgan-starter", starter, "DCGAN 64 px, L = 1, no D (lambda3 = 0)")]
    for text in args.candidate or DEFAULT_CANDIDATES:
        name, channels, n_mlp = parse_candidate(text)
        bundle, arch, n_params = stylegan_bundle(starter, channels, n_mlp, args.w_dim or arch_default_w_dim())
        what = (f"StyleGAN2 64 px, channels {arch.channel_table()}, w_dim {arch.w_dim}, n_mlp {arch.n_mlp}, "
                f"L = {bundle.generator.n_latent}, G+D {n_params / 1e6:.2f}M params")
        configs.append((name, bundle, what + ", D on (lambda3 = 0.05)"))
        if args.without_d:
            from dataclasses import replace
            configs.append((name + "-noD", replace(bundle, discriminator=None), what + ", no D (lambda3 = 0)"))

    print("bench_starter_step: one T-training step (sample_batch + train_step), starter judges, CPU")
    print(f"torch {torch.__version__}, {torch.get_num_threads()} thread(s), {platform.processor() or platform.machine()}, "
          f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f} at start, batch {args.batch}, fp32")
    wall: dict[str, list[float]] = {name: [] for name, _, _ in configs}
    cpu: dict[str, list[float]] = {name: [] for name, _, _ in configs}
    for r in range(args.rounds):
        for name, bundle, _ in configs:
            w, c = time_steps(cfg, bundle, args.steps, args.warmup)
            wall[name].append(w)
            cpu[name].append(c)
            print(f"  round {r + 1}: {name:>16} wall {w:.3f} s/step, cpu {c:.3f} s/step", flush=True)
    print(f"load average {os.getloadavg()[0]:.1f} at end")
    base = statistics.median(cpu["dcgan-starter"])
    print(f"{'config':>16} {'cpu s/step':>10} {'(min)':>7} {'wall s/step':>11} {'(min)':>7} {'cpu vs DCGAN':>12}  what")
    for name, _, what in configs:
        c, w = cpu[name], wall[name]
        print(f"{name:>16} {statistics.median(c):10.3f} {min(c):7.3f} {statistics.median(w):11.3f} {min(w):7.3f} "
              f"{statistics.median(c) / base:11.2f}x  {what}")
    return 0


def arch_default_w_dim() -> int:
    from pipeline.stages.gan import ArchitectureConfig
    return ArchitectureConfig().w_dim


if __name__ == "__main__":
    sys.exit(main())
