"""Where the StyleGAN2 fast path's backward copies memory: G's synthesis and D, forward + backward, with
the fast path compiled, profiled by the chain of ops that called each `aten::copy_`.

    python benchmarks/profile_block_copies.py --resolution 1024 --batch 4              # on a GPU
    python benchmarks/profile_block_copies.py --resolution 128 --batch 2 --device cpu  # Inductor on the CPU
    python benchmarks/profile_block_copies.py --block-gradients layout as-is           # with / without the fix

What to look for: `aten::clone < aten::contiguous < CompiledFunctionBackward`. That is AOTAutograd making
a gradient that reaches a compiled region match the layout of the output it belongs to. Until
2026-12-05 it copied, per backward: the zeros it made for the last synthesis block's unused features,
each discriminator block's input gradient (Inductor wrote it NCHW, the previous block's output is
NHWC) and the RGB skip between synthesis blocks (models/stylegan2_fast.py: gradient_in_layout_of).
`--block-gradients as-is` puts the layout part back (not the last block's unused output).

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
    p.add_argument("--top", type=int, default=12)
    return p.parse_args(argv)


def networks(args, device: torch.device):
    from models.stylegan2 import Discriminator, Generator
    from models.stylegan2_fast import FastPath
    kw = {}
    if args.channels:
        sizes = [4 * 2 ** i for i in range(len(args.channels))]
        kw = {"channels": dict(zip(sizes, args.channels))}
    torch.manual_seed(0)
    G = Generator(args.resolution, **({"w_dim": 64, "n_mlp": 1} if kw else {}), **kw)
    D = Discriminator(args.resolution, **kw)
    fast = FastPath(compile=True, backend=args.backend, devices=(device.type,))
    G.set_fast_path(fast).requires_grad_(False).to(device)
    D.set_fast_path(fast).requires_grad_(False).to(device)
    return G, D


def profile_one(args, G, D, device: torch.device, kind: str) -> list[str]:
    from torch.profiler import ProfilerActivity, profile

    def step():
        wplus = torch.randn(args.batch, G.n_latent, G.w_dim, device=device, requires_grad=True)
        D(G.synthesis(wplus, "const")).float().sum().backward()

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
    print(f"profile_block_copies: torch {torch.__version__}, device {where}; G synthesis + D, forward + "
          f"backward, {args.resolution} px, batch {args.batch}, fast path compiled ({args.backend}), random weights")
    G, D = networks(args, device)
    for kind in args.block_gradients:
        for line in profile_one(args, G, D, device, kind):
            print(line, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
