"""`hfld preview`: a contact sheet of generated faces with their landmarks and emotion labels.

A quick look at what a preset's networks see: each tile is one generated face (upscaled), its
landmarks drawn as dots coloured by group, and the emotion model's top label and probability.
"""

from __future__ import annotations

from pathlib import Path

import torch
from PIL import Image, ImageDraw

from pipeline.core.config import ConfigError
from pipeline.core.paths import absolute, check_writable_dir
from pipeline.core.sampling import held_out_faces
from pipeline.presets import ModelBundle

GROUP_COLOURS = ["#ff4040", "#ffb000", "#40c040", "#00c0ff", "#4060ff", "#c040ff", "#ff40a0", "#ffffff"]


def to_pil(image: torch.Tensor) -> Image.Image:
    """image [3, H, W] in [-1, 1] -> 8-bit RGB PIL image."""
    arr = ((image.clamp(-1, 1) + 1) * 127.5).round().byte().permute(1, 2, 0).cpu().numpy()
    return Image.fromarray(arr, "RGB")


@torch.no_grad()
def sample_faces(bundle: ModelBundle, n: int, seed: int, device="cpu") -> torch.Tensor:
    """n faces [n, 3, R, R] of the held-out set of `seed` (const noise, no truncation)."""
    faces = held_out_faces(bundle.generator, list(range(n)), seed=seed, device=device)
    return bundle.generator.synthesis(faces.wplus, faces.noise)


@torch.no_grad()
def contact_sheet(bundle: ModelBundle, n: int = 16, seed: int = 0, tile: int = 192, columns: int = 4) -> Image.Image:
    images = sample_faces(bundle, n, seed)
    points = bundle.landmarks(images).cpu()
    emotions = bundle.emotion(images).cpu()
    labels = getattr(bundle.emotion, "labels", [str(i) for i in range(emotions.shape[1])])
    colour_of = {}
    for k, (name, idx) in enumerate(bundle.landmarks.groups.items()):
        for i in idx:
            colour_of[i] = GROUP_COLOURS[k % len(GROUP_COLOURS)]
    rows = (n + columns - 1) // columns
    sheet = Image.new("RGB", (columns * tile, rows * (tile + 18)), "black")
    draw = ImageDraw.Draw(sheet)
    for i in range(n):
        x0, y0 = (i % columns) * tile, (i // columns) * (tile + 18)
        sheet.paste(to_pil(images[i]).resize((tile, tile), Image.BICUBIC), (x0, y0))
        for j, (px, py) in enumerate(points[i].tolist()):
            cx, cy = x0 + px * tile, y0 + py * tile
            draw.ellipse((cx - 1.5, cy - 1.5, cx + 1.5, cy + 1.5), fill=colour_of.get(j, "#ffffff"))
        top = int(emotions[i].argmax())
        draw.text((x0 + 4, y0 + tile + 3), f"{labels[top]} {float(emotions[i, top]):.2f}", fill="white")
    return sheet


def check_preview_request(out: str | Path, n: int) -> Path:
    """The absolute output path of a contact sheet, or a ConfigError naming the flag: n >= 1; `out` a
    file name with an image extension PIL writes, not a folder, in a folder that can be written."""
    if n < 1:
        raise ConfigError(f"--n: {n} faces; give a number >= 1")
    path = absolute(out)
    if path.is_dir():
        raise ConfigError(f"--out: {path} is a folder; give a file name, e.g. {path / 'faces.png'}")
    extensions = Image.registered_extensions()
    if path.suffix.lower() not in extensions or extensions[path.suffix.lower()] not in Image.SAVE:
        raise ConfigError(f"--out: {path.name!r} has no image extension PIL can write; end it in .png or .jpg")
    check_writable_dir("--out", path.parent)
    return path


def write_contact_sheet(bundle: ModelBundle, out: Path, n: int = 16, seed: int = 0) -> Path:
    out = check_preview_request(out, n)
    out.parent.mkdir(parents=True, exist_ok=True)
    contact_sheet(bundle, n=n, seed=seed).save(out)
    return out
