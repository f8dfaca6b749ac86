"""What the evaluate stage measures: every T (each arm's seeds) applied to one fixed, seeded set of faces.

Every T edits the same faces: face i is z_i ~ N(0, I) drawn from rng_for(seed, Stream.HELD_OUT, i)
(pipeline.core.sampling.held_out_faces), so every evaluation with the same seed sees the same faces,
whatever the batch size. Edits go to the two extremes of each target attribute (pipeline.core.edits),
at every edit scale alpha of cfg.alphas (the edit amount s multiplied by alpha; alpha = 1 is the
paper's protocol). Measured on x = G(w) and each x' = G(w + alpha T s), per face:
- attr/<key> [N, A_key]: every attribute model (key "training" = the regressor R, in the training
  loop; other keys = held-out attribute judges), for edit strength and change ratios;
- emotion/<key> [N, 7]: every emotion judge (the training judge and the held-out ones);
- landmarks/<key> [N]: drift of every landmark model (key "training" = H, in the HFLD loss; other
  keys = held-out landmark judges), each normalised by its own inter-ocular distance of x where it
  has eye groups; at alpha = 1 also landmarks/<key>/<group>;
- identity [N] (alpha = 1, when the preset has an identity net): cosine similarity of descriptors.
Landmarks and descriptors are reduced to per-face drifts batch by batch (not stored whole).
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
from pipeline.core import metrics as M
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
    """One T under evaluation, ready to apply: seed `seed` of arm `key`."""
    key: str                 # the arm: "baseline" or "hfld"
    label: str               # the arm's label
    source: str              # file path (or "<in memory>")
    file: DirectionsFile
    module: DirectionMatrix
    seed: int = 0            # index of this T among its arm's T's (training seeds)

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


def as_list(given) -> list:
    """One source or a list/tuple of sources -> a list (a DirectionsFile or a training result is one)."""
    if isinstance(given, (list, tuple)):
        return list(given)
    return [given]


def load_pair(cfg: EvaluateConfig, baseline: DirectionsSource = None,
              hfld: DirectionsSource = None) -> list[tuple[str, str, list[tuple[DirectionsFile, str]]]]:
    """(arm, label, [(file, source) per seed]) of both arms: the arguments when given (one source or a
    list), else the config's."""
    tracking_uri = resolve_tracking_uri(cfg.tracking, cfg.work_dir)
    out = []
    for key, label, given in (("baseline", cfg.baseline_label, baseline), ("hfld", cfg.hfld_label, hfld)):
        sources = as_list(given) if given is not None else list(cfg.sources(key)) or [None]
        out.append((key, label, [load_source(src, key, tracking_uri) for src in sources]))
    return out


def prepare_directions(pair, bundle: ModelBundle, targets: tuple[str, ...], device: torch.device) -> list[Directions]:
    """Check every T fits the generator and edits every target; make them ready to apply (arm by arm, seed order)."""
    out = []
    for key, label, seeds in pair:
        for i, (f, source) in enumerate(seeds):
            check_fits(f, key, source, bundle.generator, targets)
            out.append(Directions(key, label, source, f, to_module(f, device), seed=i))
    return out


def seeds_per_arm(directions: list[Directions]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for d in directions:
        counts[d.key] = counts.get(d.key, 0) + 1
    return counts


# ---------------------------------------------------------------------------------------------
# Measuring
# ---------------------------------------------------------------------------------------------

@dataclass
class Nets:
    """The measuring networks of one evaluation (each a dict key -> description, see ModelBundle)."""
    attributes: dict[str, dict]     # "training" = R, then held-out attribute judges
    emotion: dict[str, dict]        # "training" judge, then held-out emotion judges
    landmarks: dict[str, dict]      # "training" = H, then held-out landmark judges
    identity: nn.Module | None

    @classmethod
    def of(cls, bundle: ModelBundle) -> "Nets":
        return cls(bundle.attribute_models(), bundle.emotion_judges(), bundle.landmark_models(), bundle.identity)


def _np(t: torch.Tensor) -> np.ndarray:
    return t.detach().float().cpu().numpy()


def measure_original(nets: Nets, image: torch.Tensor) -> tuple[dict[str, np.ndarray], dict]:
    """Stored measurements of x (attr/<k>, emotion/<k>) and what edits are compared with (points,
    per-face landmark scales, descriptors), kept for the batch only."""
    stored = {f"attr/{k}": _np(d["model"](image)) for k, d in nets.attributes.items()}
    stored.update({f"emotion/{k}": _np(d["model"](image)) for k, d in nets.emotion.items()})
    reference: dict = {"points": {}, "scale": {}}
    for k, d in nets.landmarks.items():
        points = _np(d["model"](image))
        reference["points"][k] = points
        reference["scale"][k] = M.landmark_scale(points, d["groups"])[0]
    if nets.identity is not None:
        reference["identity"] = _np(nets.identity(image))
    return stored, reference


def measure_edit(nets: Nets, image: torch.Tensor, reference: dict, full: bool) -> dict[str, np.ndarray]:
    """Per-face measurements of an edited batch x' against its originals (see the module docstring);
    full (alpha = 1): landmark groups and identity too."""
    out = {f"attr/{k}": _np(d["model"](image)) for k, d in nets.attributes.items()}
    out.update({f"emotion/{k}": _np(d["model"](image)) for k, d in nets.emotion.items()})
    for k, d in nets.landmarks.items():
        points, orig, scale = _np(d["model"](image)), reference["points"][k], reference["scale"][k]
        out[f"landmarks/{k}"] = M.landmark_drift(orig, points, scale)
        if full:
            for g, idx in d["groups"].items():
                out[f"landmarks/{k}/{g}"] = M.landmark_drift(orig, points, scale, idx)
    if full and "identity" in reference:
        out["identity"] = M.cosine_similarity(reference["identity"], _np(nets.identity(image)))
    return out


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
def collect(cfg: EvaluateConfig, bundle: ModelBundle, nets: Nets, directions: list[Directions],
            targets: tuple[str, ...], device: torch.device, print_fn: Callable = print) -> dict[tuple, np.ndarray]:
    """Measurements keyed ("orig", name) and (arm, seed, attribute, alpha, extreme, name), each [N, ...]."""
    G, names = bundle.generator, list(bundle.regressor.names)
    store, t0 = Store(), time.perf_counter()
    alphas = cfg.sorted_alphas
    edits_per_face = len(directions) * len(targets) * len(alphas) * len(EXTREMES)
    for start in range(0, cfg.n_samples, cfg.batch_size):
        faces = held_out_faces(G, list(range(start, min(start + cfg.batch_size, cfg.n_samples))), seed=cfg.seed,
                               truncation=cfg.truncation, noise_mode=cfg.noise_mode, device=device)
        orig, reference = measure_original(nets, G.synthesis(faces.wplus, faces.noise))
        store.add(("orig",), orig)
        current = torch.as_tensor(orig["attr/training"], device=device)
        for d in directions:
            for a in targets:
                for alpha in alphas:
                    for extreme in EXTREMES:
                        amount = alpha * extreme_amount(cfg.edit_mode, cfg.fixed_amount, extreme,
                                                        current[:, names.index(a)])
                        image = G.synthesis(d.module(faces.wplus, edit_vector(d, a, amount)), faces.noise)
                        store.add((d.key, d.seed, a, alpha, extreme),
                                  measure_edit(nets, image, reference, full=alpha == 1.0))
        done = start + len(faces.index)
        rate = done / max(time.perf_counter() - t0, 1e-9)
        print_fn(f"[evaluate] {done}/{cfg.n_samples} faces ({edits_per_face} edits each) | {rate:.2f} faces/s | "
                 f"eta {(cfg.n_samples - done) / rate:.0f}s", flush=True)
    return store.arrays()


@torch.no_grad()
def trajectory_images(cfg: EvaluateConfig, bundle: ModelBundle, directions: list[Directions],
                      targets: tuple[str, ...], device: torch.device) -> dict[str, dict[str, np.ndarray]]:
    """attribute -> arm -> uint8 images [faces, steps + 1, H, W, 3] (column 0: the original face), drawn
    with each arm's first T (seed 0)."""
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
            if d.seed != 0:
                continue
            row = [x] + [G.synthesis(d.module(faces.wplus, edit_vector(d, a, amt)), faces.noise) for amt in amounts]
            out[a][d.key] = to_uint8(torch.stack(row, dim=1))
    return out


def to_uint8(images: torch.Tensor) -> np.ndarray:
    """[..., 3, H, W] in [-1, 1] -> uint8 [..., H, W, 3]."""
    x = ((images.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return x.movedim(-3, -1).cpu().numpy()
