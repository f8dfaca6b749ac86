"""Pack the output of tools/reference/faceapi_reference.mjs into the parity fixture
tests/fixtures/faceapi/landmarks_expression_reference.npz (loadable with np.load(allow_pickle=False)).

Run (after the Node step described in faceapi_reference.mjs's header):

    .venv/bin/python tools/reference/faceapi_reference_npz.py /tmp/faceapi_ref/out \
        "$HFLD_CACHE/starter/face_api/model" tests/fixtures/faceapi/landmarks_expression_reference.npz

Arrays written (float32 unless noted; B = 4 test images):
    inputs_u8            [B, 112, 112, 3] uint8, NHWC RGB pixels fed to TF.js
    landmarks_features   [B, 256]  FaceFeatureExtractor output of FaceLandmark68Net
    landmarks_raw        [B, 136]  fc output (x0, y0, x1, y1, ...) relative to the 112x112 input
    landmarks_forward    [B, 136]  FaceLandmark68Net.forward (after face-api's postProcess)
    expression_features  [B, 256]
    expression_logits    [B, 7]    face-api order: neutral, happy, sad, angry, fearful, disgusted, surprised
    expression_probs     [B, 7]    FaceExpressionNet.forward (softmax)
    image_names, expression_labels, versions, model_files, model_sha256   (unicode string arrays)
"""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

import numpy as np

MODEL_FILES = (
    "face_landmark_68_model-weights_manifest.json",
    "face_landmark_68_model.bin",
    "face_expression_model-weights_manifest.json",
    "face_expression_model.bin",
)


def sha256_of(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def pack(node_out: Path, model_dir: Path, npz_path: Path) -> None:
    outputs = json.loads((node_out / "outputs.json").read_text())
    shape = tuple(outputs["input_shape"])
    pixels = np.frombuffer((node_out / "inputs_u8.bin").read_bytes(), dtype=np.uint8).reshape(shape)

    def f32(values) -> np.ndarray:
        return np.asarray(values, dtype=np.float32)

    arrays = {
        "inputs_u8": pixels,
        "landmarks_features": f32(outputs["landmarks"]["features"]),
        "landmarks_raw": f32(outputs["landmarks"]["raw"]),
        "landmarks_forward": f32(outputs["landmarks"]["forward"]),
        "expression_features": f32(outputs["expression"]["features"]),
        "expression_logits": f32(outputs["expression"]["raw"]),
        "expression_probs": f32(outputs["expression"]["forward"]),
        "image_names": np.array(outputs["image_names"]),
        "expression_labels": np.array(outputs["expression_labels"]),
        "versions": np.array(
            [
                f"tfjs={outputs['tfjs_version']}",
                f"face-api={outputs['faceapi_version']}",
                f"backend={outputs['backend']}",
            ]
        ),
        "model_files": np.array(MODEL_FILES),
        "model_sha256": np.array([sha256_of(model_dir / name) for name in MODEL_FILES]),
    }
    npz_path.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(npz_path, **arrays)
    print(f"wrote {npz_path} ({npz_path.stat().st_size} bytes)")


if __name__ == "__main__":
    if len(sys.argv) != 4:
        sys.exit("usage: faceapi_reference_npz.py NODE_OUT_DIR MODEL_DIR NPZ_PATH")
    pack(Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3]))
