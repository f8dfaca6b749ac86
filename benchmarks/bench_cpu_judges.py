#!/usr/bin/env python3
"""CPU cost of the starter's measuring networks and of a T step, in the reference layout (NCHW
conv weights, model.fast_path "off") vs NHWC conv weights (what build_bundle gives with the default
fast_path on every device since 2026-12-03).

    python benchmarks/bench_cpu_judges.py                  # batch 32 judges, batch 8 T steps, 2 threads
    python benchmarks/bench_cpu_judges.py --rounds 5 --steps 10

Rows:
- each measuring network of the starter bundle (R, the landmark nets, perceptual/identity, the
  emotion and attribute judges) on one batch of G's faces, forward only: what `hfld evaluate` and
  the tune objective run per edit (evaluate runs every one of them on 24 edits of every face);
- "all judges": their sum, i.e. the measuring cost of one evaluate edit of a batch;
- "T step": one step of the demo recipe (pipeline/stages/train: G twice, R, H, F, D forward and
  backward to T, Adam) at the demo's batch 8.
The machine is shared, so the two layouts are timed interleaved (round 1: both, round 2: both, ...)
and the median over rounds is printed, with the min beside it. Each figure is also checked: the
NHWC outputs must match the reference layout's to 1e-4 (same function, float rounding aside).
Needs the starter weights (`hfld zoo fetch starter`).
"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # run as a plain script from a checkout, installed or not
    sys.path.insert(0, str(REPO))

import torch  # noqa: E402

LAYOUTS = ("off", "compiled")   # model.fast_path: reference NCHW weights / NHWC weights
LABEL = {"off": "NCHW (fast_path off)", "compiled": "NHWC (default)"}


def judges_of(bundle) -> dict:
    """Row name -> network, every measuring network of the bundle once."""
    rows = {f"attribute {k}": d["model"] for k, d in bundle.attribute_models().items()}
    rows.update({f"emotion {k}": d["model"] for k, d in bundle.emotion_judges().items()})
    rows.update({f"landmarks {k}": d["model"] for k, d in bundle.landmark_models().items()})
    if bundle.perceptual is not bundle.identity:
        rows["perceptual F"] = bundle.perceptual
    if bundle.identity is not None:
        rows["identity"] = bundle.identity
    return rows


def first_tensor(out) -> torch.Tensor:
    return out if torch.is_tensor(out) else first_tensor(out[0])


def time_call(fn, repeats: int) -> float:
    fn()
    t0 = time.perf_counter()
    for _ in range(repeats):
        fn()
    return (time.perf_counter() - t0) / repeats


def train_config(fast_path: str, steps: int, batch: int, work_dir: str):
    from pipeline.core.config import from_dict
    from pipeline.stages.profiles import DEMO_RECIPE
    from pipeline.stages.train import TrainConfig
    recipe = {**DEMO_RECIPE, "iterations": steps, "batch_size": batch}
    return from_dict(TrainConfig, {"model": {"preset": "starter", "fast_path": fast_path}, **recipe, "device": "cpu",
                                   "work_dir": work_dir, "tracking": {"enabled": False}, "log_every": 10 ** 6,
                                   "checkpoint_every": 10 ** 6}, "bench")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batch", type=int, default=32, help="faces per judge call (evaluate's batch_size)")
    ap.add_argument("--train-batch", type=int, default=8, help="T-step batch (the demo recipe's)")
    ap.add_argument("--steps", type=int, default=6, help="timed T steps per round (0: no T-step row)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--repeats", type=int, default=2, help="timed judge calls per round")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    from pipeline.presets import ModelConfig, build_bundle
    from pipeline.stages.evaluate.measure import held_out_faces
    from pipeline.stages.train import step as train_step

    bundles = {m: build_bundle(ModelConfig(preset="starter", fast_path=m), "cpu") for m in LAYOUTS}
    G = bundles["off"].generator
    with torch.no_grad():
        faces = held_out_faces(G, list(range(args.batch)), seed=0, truncation=1.0, noise_mode="const",
                               device=torch.device("cpu"))
        image = G.synthesis(faces.wplus, faces.noise)        # [B, 3, 64, 64]
    nets = {m: judges_of(b) for m, b in bundles.items()}
    rows = list(nets["off"])
    for name in rows:                                        # same function in both layouts
        with torch.no_grad():
            ref, nhwc = first_tensor(nets["off"][name](image)), first_tensor(nets["compiled"][name](image))
        err = (ref - nhwc).abs().max().item()
        if err > 1e-4:
            raise SystemExit(f"{name}: NHWC output differs from the reference layout by {err:.2e} (> 1e-4)")

    judge_ms = {m: {r: [] for r in rows} for m in LAYOUTS}
    step_s = {m: [] for m in LAYOUTS}
    for rnd in range(args.rounds):
        for m in LAYOUTS:
            with torch.no_grad():
                for r in rows:
                    net = nets[m][r]
                    judge_ms[m][r].append(1e3 * time_call(lambda: net(image), args.repeats))
            if args.steps:
                step_s[m].append(time_t_steps(m, bundles[m], args, train_step))
        print(f"round {rnd + 1}/{args.rounds} done", flush=True)

    print(f"\nCPU ({platform.processor() or platform.machine()}), torch {torch.__version__}, "
          f"{args.threads} threads, starter preset; median of {args.rounds} interleaved rounds (min)")
    print(f"{'network':40s} {'batch':>5s} " + " ".join(f"{LABEL[m]:>24s}" for m in LAYOUTS) + "  speed-up")
    total = {m: [sum(judge_ms[m][r][i] for r in rows) for i in range(args.rounds)] for m in LAYOUTS}
    series_by_row = [*((r, {m: judge_ms[m][r] for m in LAYOUTS}) for r in rows), ("all judges (one evaluate edit)", total)]
    for r, series in series_by_row:
        med = {m: statistics.median(series[m]) for m in LAYOUTS}
        cells = " ".join(f"{med[m]:10.1f} ms ({min(series[m]):7.1f})".rjust(24) for m in LAYOUTS)
        print(f"{r:40s} {args.batch:5d} {cells}  {med['off'] / med['compiled']:5.2f}x")
    if args.steps:
        med = {m: statistics.median(step_s[m]) for m in LAYOUTS}
        cells = " ".join(f"{1e3 * med[m]:10.1f} ms ({1e3 * min(step_s[m]):7.1f})".rjust(24) for m in LAYOUTS)
        print(f"{'T step (demo recipe, all four losses)':40s} {args.train_batch:5d} {cells}  "
              f"{med['off'] / med['compiled']:5.2f}x")
    return 0


def time_t_steps(fast_path: str, bundle, args, train_step) -> float:
    """Seconds per T step (pipeline/stages/train/step.py: sample_batch + the step), after one untimed step."""
    cfg = train_config(fast_path, args.steps, args.train_batch, tempfile.gettempdir())   # nothing is written
    device = torch.device("cpu")
    state = train_step.setup_training(cfg, bundle, device)
    step = train_step.make_step(state, cfg)
    n_attributes = state.directions.n_attributes
    batches = [train_step.sample_batch(cfg, bundle.generator, n_attributes,
                                       list(range(k * cfg.batch_size, (k + 1) * cfg.batch_size)), device)
               for k in range(args.steps + 1)]
    step(batches[0])
    t0 = time.perf_counter()
    for b in batches[1:]:
        step(b)
    return (time.perf_counter() - t0) / args.steps


if __name__ == "__main__":
    sys.exit(main())
