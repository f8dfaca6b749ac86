#!/usr/bin/env python3
"""Calibrate the inversion of a preset: `hfld invert-check` under several projection settings, one table.

    python benchmarks/sweep_invert.py --preset starter --n-faces 64 \
        --variant "default:" \
        --variant "steps500:invert.projection.steps=500" \
        --variant "no-align:invert.align.method=none"

Each --variant is `name:override,override,...` (overrides as `hfld ... --set`, keys of InvertCheckConfig;
empty = the defaults). Every variant inverts the SAME held-out faces (same seed), in one process (one
Ray instance), and the table prints, per variant: faces found, the share of faces with held-out
identity cosine >= 0.9 (target >= 90%), mean identity cosine, emotion agreement aligned input vs
reconstruction (target >= 90%), PSNR, landmark error, latent recovery error (/ w_std; the start, the
mean latent, scores ~1) and wall seconds. The environment (torch, device) heads the output.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import torch  # noqa: E402

from pipeline.core.config import apply_overrides, from_dict  # noqa: E402
from pipeline.stages.invert import InvertCheckConfig, run_invert_check  # noqa: E402


def parse_variant(text: str) -> tuple[str, list[str]]:
    name, _, rest = text.partition(":")
    if not name:
        raise SystemExit(f"--variant {text!r}: expected name:override,override,...")
    return name, [o.strip() for o in rest.split(",") if o.strip()]


def row(name: str, m: dict, wall: float) -> str:
    def mean(key):
        return m[key].get("mean", float("nan"))
    return (f"{name:>22} {m['found']:>3}/{m['faces']:<3} {m['identity_cosine_ge_0.9']:>7.1%} {mean('identity_cosine'):>7.3f} "
            f"{m['emotion_agreement_aligned']:>7.1%} {mean('psnr'):>6.2f} {mean('landmark_error'):>7.4f} "
            f"{mean('latent_error'):>7.3f} {wall:>7.1f}")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--preset", default="starter")
    p.add_argument("--n-faces", type=int, default=64)
    p.add_argument("--variant", action="append", required=True, help="name:override,override,...")
    p.add_argument("--set", action="append", default=[], help="override applied to every variant")
    p.add_argument("--out", type=Path, help="parent of the variants' output dirs (default: /tmp/hfld-sweep-invert/"
                   "<preset>-n<N>-<hash of --set>, so that another seed or size never meets a finished job's folder)")
    p.add_argument("--json", type=Path, help="also write every variant's metrics here")
    args = p.parse_args(argv)
    if args.out is None:
        tag = hashlib.sha1("\n".join(args.set).encode()).hexdigest()[:8]
        args.out = Path("/tmp/hfld-sweep-invert") / f"{args.preset}-n{args.n_faces}-{tag}"
    configs = {}            # every variant's config checked before the first (long) run
    for text in args.variant:
        name, overrides = parse_variant(text)
        data = apply_overrides({}, [f"invert.model.preset={args.preset}", f"n_faces={args.n_faces}",
                                    f"output_dir={args.out / name}", "invert.tracking.enabled=false",
                                    *args.set, *overrides])
        configs[name] = (overrides, from_dict(InvertCheckConfig, data, f"variant {name}"))
    device = "cuda" if torch.cuda.is_available() else "cpu"
    print(f"sweep_invert: preset {args.preset}, {args.n_faces} held-out faces; torch {torch.__version__}, "
          f"cuda {torch.version.cuda}, device {torch.cuda.get_device_name(0) if device == 'cuda' else 'cpu'}")
    print(f"{'variant':>22} {'found':>7} {'id>=0.9':>7} {'id mean':>7} {'emotion':>7} {'PSNR':>6} {'lmk err':>7} "
          f"{'lat err':>7} {'wall s':>7}", flush=True)
    results = {}
    print(f"output: {args.out}/<variant>", flush=True)
    for name, (overrides, cfg) in configs.items():
        t0 = time.perf_counter()
        result = run_invert_check(cfg, print_fn=lambda *a, **k: None)
        wall = time.perf_counter() - t0
        results[name] = {"overrides": overrides, "wall_s": wall, **{k: v for k, v in result.metrics.items() if k != "config"}}
        print(row(name, result.metrics, wall), flush=True)
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
