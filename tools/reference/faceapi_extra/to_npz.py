"""Convert the JSON written by tools/reference/faceapi_extra_reference.mjs into the parity fixture.

Usage (from the repository root, after running the Node script as its header says):
    .venv/bin/python tools/reference/faceapi_extra/to_npz.py /tmp/faceapi_extra_ref/out.json \
        tests/fixtures/faceapi/age_gender_recognition_reference.npz

Arrays written (inputs are integer pixel values, so uint8 stores them exactly and keeps the file small):
    age_gender_inputs   uint8   [3, 112, 112, 3]  HWC RGB, 0..255, fed to AgeGenderNet as-is
    age                 float32 [3]               years (face-api's regression output)
    gender_logits       float32 [3, 2]            before softmax; index 0 = male, 1 = female
    gender_probs        float32 [3, 2]            softmax of gender_logits, as face-api returns it
    recognition_inputs  uint8   [3, 150, 150, 3]  HWC RGB, 0..255, fed to FaceRecognitionNet as-is
    descriptors         float32 [3, 128]          face-api's face descriptor
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np


def as_uint8_images(images: list[list[float]], size: int) -> np.ndarray:
    array = np.asarray(images, dtype=np.float64).reshape(len(images), size, size, 3)
    if not np.array_equal(array, np.round(array)) or array.min() < 0 or array.max() > 255:
        raise ValueError("reference inputs must be integers in 0..255 to be stored as uint8")
    return array.astype(np.uint8)


def main(json_path: Path, npz_path: Path) -> None:
    data = json.loads(json_path.read_text())
    n = len(data["age"])
    arrays = {
        "age_gender_inputs": as_uint8_images(data["age_gender_inputs"], 112),
        "age": np.asarray(data["age"], dtype=np.float32),
        "gender_logits": np.asarray(data["gender_logits"], dtype=np.float32).reshape(n, 2),
        "gender_probs": np.asarray(data["gender_probs"], dtype=np.float32).reshape(n, 2),
        "recognition_inputs": as_uint8_images(data["recognition_inputs"], 150),
        "descriptors": np.asarray(data["descriptors"], dtype=np.float32).reshape(-1, 128),
    }
    npz_path.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(npz_path, **arrays)
    print(f"wrote {npz_path} ({npz_path.stat().st_size} bytes); versions: {data['versions']}")


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit("usage: to_npz.py OUT_JSON FIXTURE_NPZ")
    main(Path(sys.argv[1]), Path(sys.argv[2]))
