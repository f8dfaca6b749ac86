"""How much a bf16 forward of a landmark network distorts the HFLD loss and its gradient.

    python3 benchmarks/bench_landmark_precision.py                 # CPU, starter preset (about a minute)
    python3 benchmarks/bench_landmark_precision.py --device cuda   # GPU: TF32 convs allowed, as in the stages

For `--faces` starter faces x = G(w) and edits x' = G(w + eps d) (d a random W+ direction, one per face,
several sizes eps), the HFLD loss mean |H(x) - H(x')| and its gradient with respect to x' are computed
three ways:
  reference  H in float32, no autocast (TF32 off)
  bf16       H's undecorated forward under bf16 autocast (what `precision: bf16` ran until 2026-12-05)
  shipped    H as the stages call it under bf16 autocast (models.precision.float32_forward: float32 inside)
Columns: the loss's relative error against the reference; the share of coordinates whose difference
H(x') - H(x) is exactly 0 (the L1 gradient sign(0) = 0 there); the share whose difference has the
reference's sign; the cosine of dL/dx' with the reference's. The landmark networks are the starter's
HFLD net (face-api 68 points) and its drift judge (human's MediaPipe face mesh, 468 points).
"""

from __future__ import annotations

import argparse
import platform
import sys
import types
from contextlib import nullcontext
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import torch  # noqa: E402

from models.losses import landmark_loss  # noqa: E402

EPSILONS = (0.005, 0.02, 0.1, 0.5)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cpu")
    p.add_argument("--faces", type=int, default=16)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--cache-dir", default="", help="zoo cache holding starter/ (default: $HFLD_CACHE or ~/.cache/hfld)")
    return p.parse_args(argv)


def bf16_forward(net):
    """net's forward with the float32 pin taken off: the pinned method's __wrapped__, bound to net. The face
    mesh pins `_run` (forward -> points3d -> _run), so there the unpinned method shadows it on the instance
    for the call."""
    name = "_run" if hasattr(type(net), "_run") else "forward"
    pinned = getattr(type(net), name)
    if not hasattr(pinned, "__wrapped__"):
        raise SystemExit(f"{type(net).__name__}.{name} has no float32 pin to take off")
    unpinned = types.MethodType(pinned.__wrapped__, net)
    if name == "forward":
        return unpinned

    def run(image):
        net._run = unpinned
        try:
            return net(image)
        finally:
            del net._run
    return run


def loss_and_grad(forward, x, x_edit, autocast):
    x_edit = x_edit.detach().requires_grad_(True)
    with autocast:
        with torch.no_grad():
            points = forward(x)
        points_edit = forward(x_edit)
    diff = (points_edit.float() - points.float()).detach()
    loss = landmark_loss(points, points_edit)
    loss.backward()
    return loss.item(), diff, x_edit.grad.flatten(1)


def compare(name, net, G, wplus, device):
    gen = torch.Generator(device="cpu").manual_seed(1)
    bf16 = lambda: torch.autocast(device_type=device.type, dtype=torch.bfloat16)  # noqa: E731
    print(f"\n{name} ({type(net).__name__}, {net.n_points} points)")
    print(f"{'eps':>6} {'loss fp32':>10} | {'variant':>8} {'loss err':>9} {'zero diffs':>10} {'sign ok':>8} {'grad cos':>9}")
    for eps in EPSILONS:
        step = torch.randn(wplus.shape[0], 1, wplus.shape[2], generator=gen).to(device) * eps
        with torch.no_grad():
            x, x_edit = G.synthesis(wplus), G.synthesis(wplus + step)
        tf32 = torch.backends.cudnn.allow_tf32
        torch.backends.cudnn.allow_tf32 = False
        ref_loss, ref_diff, ref_grad = loss_and_grad(net, x, x_edit, nullcontext())
        torch.backends.cudnn.allow_tf32 = tf32
        for variant, forward in (("bf16", bf16_forward(net)), ("shipped", net)):
            loss, diff, grad = loss_and_grad(forward, x, x_edit, bf16())
            zero = (diff == 0).float().mean().item()
            sign = (torch.sign(diff) == torch.sign(ref_diff)).float().mean().item()
            cos = torch.nn.functional.cosine_similarity(grad, ref_grad, dim=1).mean().item()
            print(f"{eps:>6g} {ref_loss:>10.3e} | {variant:>8} {abs(loss - ref_loss) / ref_loss:>8.1%} "
                  f"{zero:>10.1%} {sign:>8.1%} {cos:>9.3f}")


def main(argv=None):
    args = parse_args(argv)
    from pipeline.presets import ModelConfig, build_bundle  # noqa: PLC0415
    device = torch.device(args.device)
    cache = args.cache_dir or None
    cfg = ModelConfig(preset="starter", **({"cache_dir": cache} if cache else {}))
    bundle = build_bundle(cfg, device)
    print(f"bench_landmark_precision: torch {torch.__version__}, python {platform.python_version()}, device "
          f"{torch.cuda.get_device_name(device) if device.type == 'cuda' else platform.processor() or 'cpu'}; "
          f"starter preset, {args.faces} faces, seed {args.seed}")
    torch.manual_seed(args.seed)
    G = bundle.generator
    with torch.no_grad():
        w = G.mapping(torch.randn(args.faces, G.z_dim).to(device))
        wplus = G.broadcast(w) if hasattr(G, "broadcast") else w[:, None].expand(-1, G.n_latent, -1)
    compare("HFLD landmarks", bundle.landmarks, G, wplus.contiguous(), device)
    for judge_name, judge in (bundle.landmark_judges or {}).items():
        compare(f"drift judge {judge_name}", judge, G, wplus.contiguous(), device)
    return 0


if __name__ == "__main__":
    sys.exit(main())
