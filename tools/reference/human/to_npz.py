"""Step 3 of the human parity fixture: pack make_inputs.py's sources and human_reference.mjs's outputs.

Usage (from the repository root, after the steps in human_reference.mjs's header):
    .venv/bin/python tools/reference/human/to_npz.py /tmp/human_ref/inputs.json /tmp/human_ref/out.json \
        tests/fixtures/human/human_reference.npz

Arrays written (N = 5 images: noise, pattern, three starter DCGAN faces; float32 unless noted):
    src64                uint8 [N, 64, 64, 3]  facemesh input = x3 nearest / 255; blazeface = x4 / 127.5 - 1
    src56                uint8 [N, 56, 56, 3]  faceres input = x4 nearest, 0..255
    facemesh_mesh        [N, 1404]   output_mesh: 468 x (x, y, z), pixels of the 192 input
    facemesh_faceflag    [N]         output_faceflag (sigmoid)
    facemesh_contours    [N, 266]    output_contours
    faceres_gender       [N]         gender_pred/Sigmoid
    faceres_age          [N, 100]    age_pred/Softmax
    faceres_descriptor   [N, 1024]   global_pooling/Mean
    blazeface_scores16   [N, 512]    Identity   (16x16 grid score logits)
    blazeface_boxes16    [N, 512, 16] Identity_2
    blazeface_scores8    [N, 384]    Identity_1 (8x8 grid)
    blazeface_boxes8     [N, 384, 16] Identity_3
    blazeface_nms_default int32 [N, 10]  tf.image.nonMaxSuppression(max 1, IoU 0.1, score 0.2) kept indices, -1 padded
    blazeface_nms_loose   int32 [N, 10]  same with (max 10, IoU 0.3, score 0.01)
    image_names, versions, model_files, model_sha256   (unicode string arrays)
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np


def stack(data: dict) -> np.ndarray:
    return np.asarray(data["data"], dtype=np.uint8).reshape(data["shape"])


def floats(rows: list, shape: tuple[int, ...]) -> np.ndarray:
    return np.asarray(rows, dtype=np.float32).reshape((len(rows),) + shape)


def main(inputs_path: Path, out_path: Path, npz_path: Path) -> None:
    inputs, out = json.loads(inputs_path.read_text()), json.loads(out_path.read_text())
    arrays = {
        "src64": stack(inputs["src64"]), "src56": stack(inputs["src56"]),
        "facemesh_mesh": floats(out["facemesh_mesh"], (1404,)),
        "facemesh_faceflag": floats(out["facemesh_faceflag"], ()),
        "facemesh_contours": floats(out["facemesh_contours"], (266,)),
        "faceres_gender": floats(out["faceres_gender"], ()),
        "faceres_age": floats(out["faceres_age"], (100,)),
        "faceres_descriptor": floats(out["faceres_descriptor"], (1024,)),
        "blazeface_scores16": floats(out["blazeface_scores16"], (512,)),
        "blazeface_boxes16": floats(out["blazeface_boxes16"], (512, 16)),
        "blazeface_scores8": floats(out["blazeface_scores8"], (384,)),
        "blazeface_boxes8": floats(out["blazeface_boxes8"], (384, 16)),
        "blazeface_nms_default": np.asarray(out["blazeface_nms_default"], dtype=np.int32),
        "blazeface_nms_loose": np.asarray(out["blazeface_nms_loose"], dtype=np.int32),
        "image_names": np.asarray(inputs["image_names"]),
        "versions": np.asarray([f"{k}={v}" for k, v in out["versions"].items()] + ["@vladmandic/human=3.3.6"]),
        "model_files": np.asarray(list(out["model_sha256"])),
        "model_sha256": np.asarray(list(out["model_sha256"].values())),
    }
    npz_path.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(npz_path, **arrays)
    print(f"wrote {npz_path} ({npz_path.stat().st_size} bytes); versions: {out['versions']}")


if __name__ == "__main__":
    if len(sys.argv) != 4:
        sys.exit("usage: to_npz.py INPUTS_JSON OUT_JSON FIXTURE_NPZ")
    main(Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3]))
