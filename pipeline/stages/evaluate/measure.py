"""What the evaluate stage measures: both T's applied to one fixed, seeded set of faces.

Both T's edit the same faces: face i is z_i ~ N(0, I) drawn from rng_for(seed, Stream.HELD_OUT, i)
(pipeline.core.sampling.held_out_faces), so every evaluation with the same seed sees the same faces,
whatever the batch size. Edits go to the two extremes of each target attribute (pipeline.core.edits).
Measured on x = G(w) and each x' = G(w + T s): regressor attributes, every emotion judge, landmarks
and face descriptors (identity) when the preset has an identity net.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from models.editing import DirectionMatrix
from pipeline.core.config import ConfigError
from pipeline.core.directions import DirectionsFile
from pipeline.core.edits import EXTREMES, extreme_amount, one_column_edit, trajectory_amounts
from pipeline.core.sampling import held_out_faces
from pipeline.infra.directions_source import resolve_directions
from pipeline.infra.tracking import resolve_tracking_uri
from pipeline.presets import PRESETS, ModelBundle
from pipeline.stages.evaluate.config import EvaluateConfig


@dataclass
class Directions:
    """One T under evaluation, ready to apply."""
    key: str                 # "baseline" or "hfld"
    label: str
    source: str              # file path (or "<in memory>")
    file: DirectionsFile
    module: DirectionMatrix

    def column(self, attribute: str) -> int:
        return self.file.attributes.index(attribute)


def edit_vector(d: Directions, attribute: str, amount: torch.Tensor) -> torch.Tensor:
    """s [B, N]: `amount` [B] in the attribute's column of T, zeros elsewhere."""
    return one_column_edit(amount, d.column(attribute), d.module.n_attributes)


# ---------------------------------------------------------------------------------------------
# Inputs: T's, attributes
# ---------------------------------------------------------------------------------------------

DirectionsSource = Any  # str | Path | DirectionsFile | an object with .directions_path (TrainResult)


def load_source(source: DirectionsSource, field_name: str, tracking_uri: str | None = None) -> tuple[DirectionsFile, str]:
    """A T given as a file path, an MLflow URI (runs:/<run_id>/<path>, models:/<name>/<version>: see
    pipeline.infra.directions_source), a loaded DirectionsFile, or a training result (its .directions_path).
    Returns the file and a description of where it came from."""
    if isinstance(source, DirectionsFile):
        return source, "<in memory>"
    if hasattr(source, "directions_path"):
        source = source.directions_path
    if source is None or str(source) == "":
        raise ConfigError(f"{field_name}: no directions file given; set {field_name}=path/to/directions.safetensors "
                          f"(CLI: --{field_name} PATH)")
    text = str(source)
    resolved = resolve_directions(text if text.startswith(("runs:", "models:")) else str(Path(text).expanduser()),
                                  tracking_uri, field_name)
    meta = dict(resolved.meta)
    if resolved.run_id:
        meta.setdefault("mlflow_run_id", resolved.run_id)
    return DirectionsFile(resolved.T, meta), resolved.source


def check_fits(f: DirectionsFile, field_name: str, source: str, generator: nn.Module,
               attributes: tuple[str, ...]) -> None:
    L, D = generator.n_latent, generator.w_dim
    if tuple(f.T.shape[:2]) != (L, D):
        raise ConfigError(f"{field_name}: {source} has T of shape {list(f.T.shape)}, but this generator needs "
                          f"[{L}, {D}, N] (trained for another generator or preset?)")
    missing = [a for a in attributes if a not in f.attributes]
    if missing:
        raise ConfigError(f"{field_name}: {source} does not edit {missing} (it edits {f.attributes}); evaluate "
                          "other attributes (attributes=[...]) or pass a T trained for them")


def to_module(f: DirectionsFile, device: torch.device) -> DirectionMatrix:
    L, D, N = f.T.shape
    module = DirectionMatrix(L, D, N, layer_mask=f.meta.get("layer_mask") or None)
    with torch.no_grad():
        module.T.copy_(f.T)
    return module.to(device).eval().requires_grad_(False)


def resolve_targets(cfg: EvaluateConfig, bundle: ModelBundle) -> tuple[str, ...]:
    preset = PRESETS[cfg.model.preset]
    targets = cfg.attributes or preset.default_attribute_targets or bundle.default_attributes
    if not targets:
        raise ConfigError("attributes: empty and the preset names no default targets; name the attributes to edit")
    names = list(bundle.regressor.names)
    unknown = [a for a in targets if a not in names]
    if unknown:
        raise ConfigError(f"attributes: {unknown} not known to the {bundle.preset!r} regressor; it has {names}")
    return tuple(targets)


def load_pair(cfg: EvaluateConfig, baseline: DirectionsSource = None,
              hfld: DirectionsSource = None) -> list[tuple[str, str, DirectionsFile, str]]:
    """(key, label, file, source) of both T's: the arguments when given, else the config's paths."""
    tracking_uri = resolve_tracking_uri(cfg.tracking, cfg.work_dir)
    out = []
    for key, label, given, configured in (("baseline", cfg.baseline_label, baseline, cfg.baseline),
                                          ("hfld", cfg.hfld_label, hfld, cfg.hfld)):
        f, source = load_source(given if given is not None else configured, key, tracking_uri)
        out.append((key, label, f, source))
    return out


def prepare_directions(pair: list[tuple[str, str, DirectionsFile, str]], bundle: ModelBundle,
                       targets: tuple[str, ...], device: torch.device) -> list[Directions]:
    """Check both T's fit the generator and edit every target; make them ready to apply."""
    out = []
    for key, label, f, source in pair:
        check_fits(f, key, source, bundle.generator, targets)
        out.append(Directions(key, label, source, f, to_module(f, device)))
    return out


# ---------------------------------------------------------------------------------------------
# Measuring
# ---------------------------------------------------------------------------------------------

def measure(bundle: ModelBundle, judges: dict[str, dict], image: torch.Tensor) -> dict[str, np.ndarray]:
    """Every measurement of images [B, 3, H, W]: attributes [B, A], landmarks [B, P, 2],
    emotion/<judge> [B, 7], identity [B, D] (when the preset has an identity net)."""
    out = {"attributes": bundle.regressor(image), "landmarks": bundle.landmarks(image)}
    for key, j in judges.items():
        out[f"emotion/{key}"] = j["model"](image)
    if bundle.identity is not None:
        out["identity"] = bundle.identity(image)
    return {k: v.detach().float().cpu().numpy() for k, v in out.items()}


class Store:
    """Per-face measurements, appended batch by batch and concatenated at the end."""

    def __init__(self):
        self.parts: dict[tuple, list[np.ndarray]] = {}

    def add(self, key: tuple, values: dict[str, np.ndarray]) -> None:
        for name, v in values.items():
            self.parts.setdefault(key + (name,), []).append(v)

    def arrays(self) -> dict[tuple, np.ndarray]:
        return {k: np.concatenate(v) for k, v in self.parts.items()}


@torch.no_grad()
def collect(cfg: EvaluateConfig, bundle: ModelBundle, judges: dict[str, dict], directions: list[Directions],
            targets: tuple[str, ...], device: torch.device, print_fn: Callable = print) -> dict[tuple, np.ndarray]:
    """Measurements keyed ("orig", name) and (method, attribute, extreme, name), each [N, ...]."""
    G, names = bundle.generator, list(bundle.regressor.names)
    store, t0 = Store(), time.perf_counter()
    for start in range(0, cfg.n_samples, cfg.batch_size):
        faces = held_out_faces(G, list(range(start, min(start + cfg.batch_size, cfg.n_samples))), seed=cfg.seed,
                               truncation=cfg.truncation, noise_mode=cfg.noise_mode, device=device)
        orig = measure(bundle, judges, G.synthesis(faces.wplus, faces.noise))
        store.add(("orig",), orig)
        current = torch.as_tensor(orig["attributes"], device=device)
        for d in directions:
            for a in targets:
                for extreme in EXTREMES:
                    s = edit_vector(d, a, extreme_amount(cfg.edit_mode, cfg.fixed_amount, extreme, current[:, names.index(a)]))
                    image = G.synthesis(d.module(faces.wplus, s), faces.noise)
                    store.add((d.key, a, extreme), measure(bundle, judges, image))
        done = start + len(faces.index)
        rate = done / max(time.perf_counter() - t0, 1e-9)
        print_fn(f"[evaluate] {done}/{cfg.n_samples} faces | {rate:.1f} faces/s | "
                 f"eta {(cfg.n_samples - done) / rate:.0f}s", flush=True)
    return store.arrays()


@torch.no_grad()
def trajectory_images(cfg: EvaluateConfig, bundle: ModelBundle, directions: list[Directions],
                      targets: tuple[str, ...], device: torch.device) -> dict[str, dict[str, np.ndarray]]:
    """attribute -> method -> uint8 images [faces, steps + 1, H, W, 3] (column 0: the original face)."""
    if cfg.trajectory_faces == 0:
        return {}
    G, names = bundle.generator, list(bundle.regressor.names)
    faces = held_out_faces(G, list(range(cfg.trajectory_faces)), seed=cfg.seed, truncation=cfg.truncation,
                           noise_mode=cfg.noise_mode, device=device)
    x = G.synthesis(faces.wplus, faces.noise)
    current = bundle.regressor(x)
    out: dict[str, dict[str, np.ndarray]] = {}
    for a in targets:
        out[a] = {}
        amounts = trajectory_amounts(cfg.edit_mode, cfg.fixed_amount, cfg.trajectory_steps, current[:, names.index(a)])
        for d in directions:
            row = [x] + [G.synthesis(d.module(faces.wplus, edit_vector(d, a, amt)), faces.noise) for amt in amounts]
            out[a][d.key] = to_uint8(torch.stack(row, dim=1))
    return out


def to_uint8(images: torch.Tensor) -> np.ndarray:
    """[..., 3, H, W] in [-1, 1] -> uint8 [..., H, W, 3]."""
    x = ((images.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return x.movedim(-3, -1).cpu().numpy()
