"""Benchmark of the perceptual term of the T step: the MSE between VGG features of x and x', forward +
backward, on the features the train step makes (VGG19 conv1_1..conv2_2 of the paper preset, NHWC
weights, compiled as with model.compile_measuring, bf16 autocast).

GPU machine (about a minute):
    python3 benchmarks/bench_perceptual_loss.py --resolutions 256 1024
CPU smoke (tiny images, eager):
    python3 benchmarks/bench_perceptual_loss.py --smoke

Why: at 1024 px the T step's profile showed a quarter of the step in one non-vectorised elementwise
kernel (8 calls: the backward's multiplications of the 4 layers' differences by the loss's 0-dim
gradient) although both sides' features were already NHWC. Each row times one formulation of the
loss on the same features, alone ("loss only": F(x') detached, a leaf that requires grad; the leaf's
gradient accumulation adds a few ms at 1024 px to every row) and with F's own forward + backward
("F + loss"). Rows:
  shipped   models.losses.perceptual_loss: 1-D views of each layer in memory order
  4d        the same on the 4-D maps (what the step ran from 2026-12-02 to 2026-12-03)
  float32   the float32-copy F.mse_loss before that
  compiled  the 4d formulation under torch.compile (Inductor fuses forward and backward; not adopted:
            no faster than the 1-D views, and a compile in every process)
The features' dtypes, shapes and strides are printed first, and with --profile the top kernels of the
shipped and 4d loss-only rows.
"""

from __future__ import annotations

import argparse
import platform
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from benchmarks.timing import timed  # noqa: E402
from models.losses import memory_order, perceptual_loss  # noqa: E402


def float32_copy_loss(feats_orig, feats_edit):
    """The perceptual loss until 2026-12-02: float32 copies of every map, F.mse_loss."""
    return torch.stack([F.mse_loss(b.float(), a.float()) for a, b in zip(feats_orig, feats_edit)]).mean()


def four_d_loss(feats_orig, feats_edit):
    """The perceptual loss of 2026-12-02/03: the shipped arithmetic on the 4-D maps (F(x) first brought
    to F(x')'s layout)."""
    terms = []
    for a, b in zip(feats_orig, feats_edit):
        dtype = torch.promote_types(a.dtype, b.dtype)
        a = a.to(dtype)
        if a.stride() != b.stride():
            nhwc = memory_order(b) == (0, 2, 3, 1)
            a = a.contiguous(memory_format=torch.channels_last if nhwc else torch.contiguous_format)
        diff = b.to(dtype) - a
        terms.append((diff * diff).sum(dtype=torch.float32) / diff.numel())
    return torch.stack(terms).mean()


def layout(t: torch.Tensor) -> str:
    kind = "NCHW" if t.is_contiguous() else "NHWC" if memory_order(t) == (0, 2, 3, 1) else "other"
    return f"{str(t.dtype).replace('torch.', ''):>8} {str(list(t.shape)):>22} {kind:>5} strides {t.stride()}"


def variants(smoke: bool) -> dict:
    out = {"shipped": perceptual_loss, "4d": four_d_loss, "float32": float32_copy_loss}
    if not smoke:
        out["compiled"] = torch.compile(four_d_loss)
    return out


def bench_resolution(res: int, batch: int, device: torch.device, smoke: bool, profile: bool) -> list[str]:
    from models.paper_nets import VGGPerceptual
    from pipeline.presets import ModelConfig, fast_measuring_networks

    torch.manual_seed(0)
    vgg = VGGPerceptual().to(device).eval().requires_grad_(False)
    fast_measuring_networks(ModelConfig(preset="tiny", fast_path="off" if smoke else "compiled",
                                        compile_measuring=not smoke), vgg)
    x = torch.rand(batch, 3, res, res, device=device) * 2 - 1
    x_edit = (x + 0.05 * torch.randn_like(x)).requires_grad_(True)
    autocast = lambda: torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=not smoke)  # noqa: E731
    with torch.no_grad(), autocast():
        feats_x = vgg(x)
    with autocast():
        feats_edit = vgg(x_edit)
    lines = [f"[{res} px, batch {batch}] features of x (no grad) and of x' (with grad):"]
    for i, (a, b) in enumerate(zip(feats_x, feats_edit)):
        lines += [f"   layer {i}  x  {layout(a)}", f"            x' {layout(b)}"]
    leaves = [f.detach().clone().requires_grad_(True) for f in feats_edit]
    weight = torch.tensor(0.05, device=device)          # the loss weight: its gradient is a 0-dim tensor

    found = variants(smoke)
    for name, loss_fn in found.items():
        def loss_only(fn=loss_fn):
            (weight * fn(feats_x, leaves)).backward()

        def with_net(fn=loss_fn):
            with autocast():
                feats = vgg(x_edit)
            (weight * fn(feats_x, feats)).backward()

        warm, iters = (1, 2) if smoke else (3, 10)
        ms_loss = 1000 * timed(loss_only, device, warm, iters)
        ms_both = 1000 * timed(with_net, device, warm, iters)
        lines.append(f"   {name:>9}: loss only {ms_loss:8.2f} ms   F + loss {ms_both:8.2f} ms")
    if profile and device.type == "cuda":
        for name in ("shipped", "4d"):
            lines += [f"   {name} loss only, top kernels (ms, calls):"]
            lines += top_kernels(lambda fn=found[name]: (weight * fn(feats_x, leaves)).backward(), device)
    return lines


def top_kernels(fn, device: torch.device, top: int = 8) -> list[str]:
    from torch.profiler import ProfilerActivity, profile
    fn()
    torch.cuda.synchronize(device)
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        fn()
        torch.cuda.synchronize(device)
    events = [e for e in prof.key_averages() if e.device_time_total > 0]
    events.sort(key=lambda e: e.device_time_total, reverse=True)
    lines = []
    for e in events[:top]:
        lines.append(f"     {e.device_time_total / 1000:8.3f} {e.count:4d}  {e.key[:110]}")
    return lines


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--resolutions", type=int, nargs="+", default=[256, 1024])
    p.add_argument("--batch", type=int, default=4, help="images per batch (the paper's: 4)")
    p.add_argument("--profile", action="store_true", help="top kernels of the shipped loss")
    p.add_argument("--smoke", action="store_true", help="CPU, 32 px, eager (seconds)")
    args = p.parse_args(argv)
    device = torch.device("cuda" if torch.cuda.is_available() and not args.smoke else "cpu")
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    gpu = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    print(f"bench_perceptual_loss: torch {torch.__version__}, cuda {torch.version.cuda}, python "
          f"{platform.python_version()}, {gpu}; bf16 autocast, VGG NHWC + compiled (smoke: fp32, eager)")
    for res in ([32] if args.smoke else args.resolutions):
        for line in bench_resolution(res, args.batch, device, args.smoke, args.profile):
            print(line, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
