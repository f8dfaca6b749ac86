"""Where the StyleGAN2 fast path's backward copies memory: G's synthesis and D, forward + backward, with
the fast path compiled, profiled by the chain of ops that called each `aten::copy_`.

    python benchmarks/profile_block_copies.py --resolution 1024 --batch 4              # on a GPU
    python benchmarks/profile_block_copies.py --resolution 128 --batch 2 --device cpu  # Inductor on the CPU
    python benchmarks/profile_block_copies.py --block-gradients layout as-is           # with / without the fix
    python benchmarks/profile_block_copies.py --whole-step --resolution 32 --batch 2 --device cpu  # the T step

What to look for: `aten::clone < aten::contiguous < CompiledFunctionBackward`. That is AOTAutograd making
a gradient that reaches a compiled region match the layout of the output it belongs to. Until
2026-12-05 it copied, per backward: the zeros it made for the last synthesis block's unused features,
each discriminator block's input gradient (Inductor wrote it NCHW, the previous block's output is
NHWC) and the RGB skip between synthesis blocks (models/stylegan2_fast.py: gradient_in_layout_of).
`--block-gradients as-is` puts the layout part back (not the last block's unused output).

`--whole-step` profiles the T step instead (all four losses: G, D and the judges, those compiled as
the shipped step compiles them; random paper networks at --resolution, eager steps): it shows whether
copies are left outside G and D (at the G -> judges hand-off, in the losses, in the judges).

On the CPU the fast path is forced onto it (FastPath(devices=("cpu",))); Inductor then generates C++
(the first step compiles for minutes). --backend aot_eager traces without code generation (quick; the
layouts are then eager PyTorch's, so only part of the copies shows). Random weights; nothing is timed
but the profile's own CPU/CUDA time per step.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # run as a plain script from a checkout, installed or not
    sys.path.insert(0, str(REPO))

import torch  # noqa: E402

from benchmarks.bench_train import block_gradient_layout, copies_by_caller  # noqa: E402
from benchmarks.timing import sync  # noqa: E402


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--resolution", type=int, default=1024)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--device", default="cuda", help="cuda (default) or cpu (the fast path forced onto it)")
    p.add_argument("--backend", default="inductor", help="torch.compile backend: inductor or aot_eager")
    p.add_argument("--channels", type=int, nargs="*", default=None,
                   help="channels per resolution, smallest first (default: config-f); a smoke test passes few")
    p.add_argument("--block-gradients", nargs="+", choices=["layout", "as-is"], default=["layout"])
    p.add_argument("--whole-step", action="store_true",
                   help="profile the T step (all four losses, judges compiled) instead of G + D alone; "
                        "config-f networks at --resolution, or --tiny")
    p.add_argument("--precision", choices=["bf16", "fp32"], default="bf16", help="the T step's (--whole-step)")
    p.add_argument("--tiny", action="store_true",
                   help="--whole-step with the tiny preset's networks (32 px; the CPU smoke test)")
    p.add_argument("--top", type=int, default=12)
    return p.parse_args(argv)


def forced_fast_path(args, device: torch.device):
    """The compiled fast path with --backend, on `device`'s type (the CPU included)."""
    from models.stylegan2_fast import FastPath
    return FastPath(compile=True, backend=args.backend, devices=(device.type,))


def networks(args, device: torch.device):
    from models.stylegan2 import Discriminator, Generator
    kw = {}
    if args.channels:
        sizes = [4 * 2 ** i for i in range(len(args.channels))]
        kw = {"channels": dict(zip(sizes, args.channels))}
    torch.manual_seed(0)
    G = Generator(args.resolution, **({"w_dim": 64, "n_mlp": 1} if kw else {}), **kw)
    D = Discriminator(args.resolution, **kw)
    fast = forced_fast_path(args, device)
    G.set_fast_path(fast).requires_grad_(False).to(device)
    D.set_fast_path(fast).requires_grad_(False).to(device)
    return G, D


def g_and_d_step(args, device: torch.device):
    """(step, resolution): one forward + backward of G's synthesis and D (a gradient for w+, as T's would get)."""
    G, D = networks(args, device)

    def step():
        wplus = torch.randn(args.batch, G.n_latent, G.w_dim, device=device, requires_grad=True)
        D(G.synthesis(wplus, "const")).float().sum().backward()
    return step, G.resolution


def whole_t_step(args, device: torch.device):
    """(step, resolution): one eager T step (pipeline.stages.train.step.train_step: all four losses and
    Adam) of random paper networks (or --tiny's), G and D on the compiled fast path and the judges
    compiled, on `device`."""
    from benchmarks.bench_train import (PAPER_ATTRIBUTES, eager_step_on_next_batch, make_config,
                                        random_paper_bundle, tiny_bundle)
    from pipeline.core.compiled import compile_networks
    from pipeline.stages.train.step import setup_training

    bundle = tiny_bundle(device) if args.tiny else random_paper_bundle(args.resolution, device)
    attributes = bundle.default_attributes if args.tiny else PAPER_ATTRIBUTES
    cfg = make_config(args.precision, args.batch, device, attributes, "compiled")
    state = setup_training(cfg, bundle, device)       # on CUDA this already sets and compiles all of it
    fast = forced_fast_path(args, device)
    bundle.generator.set_fast_path(fast)
    bundle.discriminator.set_fast_path(fast)
    compile_networks(True, bundle.regressor, bundle.landmarks, bundle.perceptual, backend=args.backend,
                     devices=(device.type,))           # a no-op for networks compiled already
    return eager_step_on_next_batch(cfg, bundle, state, device), bundle.generator.resolution


def profile_one(args, step, device: torch.device, kind: str) -> list[str]:
    from torch.profiler import ProfilerActivity, profile

    with block_gradient_layout(kind):
        t0 = time.perf_counter()
        for _ in range(2):       # compiles, then a warm step
            step()
        sync(device)
        warm = time.perf_counter() - t0
        acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
        with profile(activities=acts, record_shapes=True) as prof:
            for _ in range(3):
                step()
            sync(device)
    boundary = [e for e in prof.events() if e.name == "aten::contiguous" and e.cpu_parent is not None
                and e.cpu_parent.name == "CompiledFunctionBackward" and e.cpu_children]
    return [f"", f"--block-gradients {kind}: compile + warm-up {warm:.1f} s; layout copies at region "
                 f"boundaries (aten::contiguous under CompiledFunctionBackward): {len(boundary) / 3:.0f} per step",
            *copies_by_caller(prof, device, top=args.top)]


def main(argv=None) -> int:
    args = parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("no CUDA GPU visible: run on a GPU machine, or pass --device cpu", file=sys.stderr)
        return 2
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    if args.tiny and not args.whole_step:
        print("--tiny goes with --whole-step (G + D alone: pass --channels for small networks)", file=sys.stderr)
        return 2
    if args.whole_step and args.channels:
        print("--channels goes with G + D alone (--whole-step: --tiny for small networks)", file=sys.stderr)
        return 2
    what = (f"the T step ({args.precision}, all four losses, judges compiled)" if args.whole_step
            else "G synthesis + D, forward + backward")
    step, resolution = whole_t_step(args, device) if args.whole_step else g_and_d_step(args, device)
    tiny = " (tiny preset)" if args.tiny else ""
    print(f"profile_block_copies: torch {torch.__version__}, device {where}; {what}, {resolution} px{tiny}, "
          f"batch {args.batch}, fast path compiled ({args.backend}), random weights")
    for kind in args.block_gradients:
        for line in profile_one(args, step, device, kind):
            print(line, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
