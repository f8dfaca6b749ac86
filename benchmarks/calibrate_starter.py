"""Calibrate the training recipe of a preset's baseline T (lambda4 = 0): edit strength against steps.

A T that does not edit makes every drift comparison meaningless (issue 14), so the demo's recipe
(lr, steps, batch, edit sampling) must reach strength >= 0.6 on every target attribute by the
training regressor R, and >= 0.4 by the independent attribute judge, within the demo's budget. This
script trains the baseline T at a few settings and prints, every --eval-every steps, the strength

    strength_a = mean P_a(x' | t = 1) - mean P_a(x' | t = 0)        (target edit mode, alpha = 1)

by R and by the preset's held-out attribute judge(s) on a fixed held-out set (seed --seed, faces
that training never draws), plus the training emotion judge's total-variation drift, and the time
per step. Generator-agnostic: it uses whatever the preset builds (rerun it when the default
generator changes).

    python benchmarks/calibrate_starter.py                                  # lr 1e-2 and 3e-2, batch 4
    python benchmarks/calibrate_starter.py --settings 1e-2:16 3e-2:4 --steps 1500 --eval-every 250
    python benchmarks/calibrate_starter.py --device cuda --threads 8       # on a GPU machine

Each setting is "lr:batch" (optionally ":steps", then ":lambda4" to see where the landmark loss lets T
still edit; default lambda4 0, the baseline). Results also go to --csv.
"""

from __future__ import annotations

import argparse
import csv
import platform
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from pipeline.core import metrics as M  # noqa: E402
from pipeline.core.config import apply_overrides, from_dict  # noqa: E402
from pipeline.core.edits import EXTREMES, one_column_edit  # noqa: E402
from pipeline.core.sampling import resolve_device  # noqa: E402
from pipeline.core.strength import per_face_strength  # noqa: E402
from pipeline.presets import ModelConfig, build_bundle  # noqa: E402
from pipeline.stages.train import TrainConfig, resolve_attributes  # noqa: E402
from pipeline.stages.train.loop import train_loop  # noqa: E402
from pipeline.stages.train.step import setup_training  # noqa: E402
from pipeline.stages.tune.objective import build_held_out  # noqa: E402


def parse_setting(text: str, default_steps: int) -> tuple[float, int, int, float]:
    parts = text.split(":")
    if len(parts) not in (2, 3, 4):
        raise SystemExit(f"--settings: {text!r} must be lr:batch, lr:batch:steps or lr:batch:steps:lambda4")
    steps = int(parts[2]) if len(parts) >= 3 else default_steps
    return float(parts[0]), int(parts[1]), steps, float(parts[3]) if len(parts) == 4 else 0.0


@torch.no_grad()
def measure(bundle, held_out, directions, attributes, scorers: dict, batch_size: int) -> dict[str, float]:
    """strength/<scorer>/<attribute> and emotion drift (training judge, TV in pp) of T on the held-out set."""
    G, n = bundle.generator, len(held_out)
    out: dict[str, float] = {}
    tv = []
    orig_emotion = np.concatenate([bundle.emotion(G.synthesis(held_out.wplus[i:i + batch_size],
                                                              held_out.noise_rows(slice(i, i + batch_size))))
                                   .float().cpu().numpy() for i in range(0, n, batch_size)])
    for column, attribute in enumerate(attributes):
        a = held_out.attribute_index(attribute)
        probs = {name: [] for name in scorers}
        for e in range(len(EXTREMES)):
            per = {name: [] for name in scorers}
            emotion = []
            for i in range(0, n, batch_size):
                rows = slice(i, min(i + batch_size, n))
                s = one_column_edit(held_out.amounts[rows, a, e], column, directions.n_attributes)
                image = G.synthesis(directions(held_out.wplus[rows], s), held_out.noise_rows(rows))
                for name, (model, index) in scorers.items():
                    per[name].append(model(image)[:, index[attribute]].float().cpu().numpy())
                emotion.append(bundle.emotion(image).float().cpu().numpy())
            for name in scorers:
                probs[name].append(np.concatenate(per[name]))
            tv.append(M.total_variation(orig_emotion, np.concatenate(emotion)) * 100)
        for name in scorers:
            out[f"strength/{name}/{attribute}"] = float(per_face_strength(*probs[name]).mean())
    out["emotion_tv_pp"] = float(np.mean(tv))
    return out


def run_setting(base: TrainConfig, bundle, held_out, attributes, scorers, lr: float, batch: int, steps: int,
                lambda4: float, eval_every: int, device, eval_batch: int, rows: list[dict]) -> None:
    cfg = replace(base, lr=lr, batch_size=batch, iterations=steps, losses=replace(base.losses, landmark=lambda4))
    state = setup_training(cfg, bundle, device)
    t_train, t0 = 0.0, time.perf_counter()
    header = f"--- lr {lr:g}, batch {batch}, {steps} steps, edit_sampling {cfg.edit_sampling}, lambda4 {lambda4:g} ---"
    print(header, flush=True)

    def report(st):
        nonlocal t_train, t0
        if st.step % eval_every and st.step != steps:
            return
        t_train += time.perf_counter() - t0
        values = measure(bundle, held_out, state.directions, attributes, scorers, eval_batch)
        row = {"lr": lr, "batch": batch, "lambda4": lambda4, "step": st.step, "train_s": round(t_train, 1),
               "s_per_step": round(t_train / max(st.step, 1), 4), **{k: round(v, 4) for k, v in values.items()}}
        rows.append(row)
        strengths = "  ".join(f"{k.split('/', 1)[1]}={v:.3f}" for k, v in values.items() if k.startswith("strength/"))
        print(f"step {st.step:5d}  train {t_train:7.1f}s ({row['s_per_step']:.3f} s/step)  {strengths}  "
              f"emotion TV {values['emotion_tv_pp']:.2f} pp", flush=True)
        t0 = time.perf_counter()

    report(state)  # step 0: the random init
    train_loop(cfg, bundle, state, on_step=report)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--preset", default="starter")
    p.add_argument("--settings", nargs="+", default=["1e-2:4", "3e-2:4"], help="lr:batch[:steps] per setting")
    p.add_argument("--steps", type=int, default=400, help="steps of a setting that does not name its own")
    p.add_argument("--eval-every", type=int, default=50)
    p.add_argument("--faces", type=int, default=64, help="held-out faces the strength is measured on")
    p.add_argument("--seed", type=int, default=2, help="held-out set seed (the train stream never draws these faces)")
    p.add_argument("--edit-sampling", default="uniform", choices=["uniform", "target"])
    p.add_argument("--device", default="auto")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--eval-batch", type=int, default=32)
    p.add_argument("--csv", default="", help="write every measurement here")
    p.add_argument("--cache-dir", default="")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="TrainConfig override for every setting (e.g. layer_mask=[0,1,2,3,4,5], losses.perceptual=1)")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    print(f"torch {torch.__version__}, device {device}"
          + (f" ({torch.cuda.get_device_name(device)}, CUDA {torch.version.cuda})" if device.type == "cuda" else
             f" ({platform.processor() or platform.machine()}, {torch.get_num_threads()} thread(s))")
          + ", precision fp32", flush=True)

    bundle = build_bundle(ModelConfig(preset=args.preset, cache_dir=args.cache_dir), device)
    data = apply_overrides({"model": {"preset": args.preset, "cache_dir": args.cache_dir},
                            "losses": {"landmark": 0.0}, "edit_sampling": args.edit_sampling,
                            "device": str(device), "work_dir": tempfile.mkdtemp(prefix="calibrate-"),
                            "tracking": {"enabled": False}, "seed": 0}, args.set)
    base = from_dict(TrainConfig, data)
    if args.set:
        print(f"overrides: {args.set}", flush=True)
    attributes = resolve_attributes(base, bundle)
    scorers = {"R": (bundle.regressor, {a: list(bundle.regressor.names).index(a) for a in attributes})}
    for name, judge in bundle.attribute_judges.items():
        known = {a: list(judge.names).index(a) for a in attributes if a in judge.names}
        if len(known) == len(attributes):
            scorers[name] = (judge, known)
    print(f"preset {args.preset}: attributes {list(attributes)}, strength by {list(scorers)}, "
          f"{args.faces} held-out faces (seed {args.seed}), target edits t = 0 / 1", flush=True)
    held_out = build_held_out(bundle, attributes, n=args.faces, seed=args.seed, batch_size=args.eval_batch,
                              device=device)
    rows: list[dict] = []
    for text in args.settings:
        lr, batch, steps, lambda4 = parse_setting(text, args.steps)
        run_setting(base, bundle, held_out, attributes, scorers, lr, batch, steps, lambda4, args.eval_every, device,
                    args.eval_batch, rows)
    if args.csv:
        with open(args.csv, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=list(rows[0]))
            w.writeheader()
            w.writerows(rows)
        print(f"wrote {args.csv}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
