"""Stage `evaluate`: the paper's tables and figures for a pair of trained T (baseline vs. HFLD).

    result = run_evaluate(cfg)                                   # T's from cfg.baseline / cfg.hfld
    result = run_evaluate(cfg, tracker, baseline=train_a, hfld=train_b)   # the `run` stage's hook

Both T's edit the same fixed, seeded set of faces: face i is z_i ~ N(0, I) drawn from
rng_for(seed, Stream.HELD_OUT, i) (then generator noise, if noise_mode is "random"), so every
evaluation of every T with the same seed sees the same faces, whatever the batch size.

Edits to the two extremes. For target attribute a (column j of T, all other columns 0):
- edit_mode "target" (default, the "Enjoy Your Editing" reference code's semantics: an edit amount
  is the desired change of the attribute's probability): s_j = t - R(x)_a with t = 0 for the
  "non-exist" set and t = 1 for the "must-exist" set. The trajectory figure uses t = 0 .. 1.
- edit_mode "fixed": s_j = -fixed_amount / +fixed_amount for every face (the paper's s in [-1, 1]).
  The trajectory figure uses s = -fixed_amount .. +fixed_amount.

Measured on x = G(w) and each x' = G(w + T s): regressor attributes (change ratios, Tables I-IV),
every emotion judge (the bundle's training judge and each held-out judge: Table V and total
emotion drift), landmarks (drift normalised by inter-ocular distance where possible) and face
descriptors (identity cosine similarity) when the preset has an identity net. Per-face drifts are
averaged over the two extremes, so bootstrap intervals resample faces and stay paired across T's.
See pipeline/metrics.py for the definitions.

Output directory (default <work_dir>/evaluate/<name>): report.md, report.html (self-contained),
metrics.json (every number of the report, plus the resolved config), trajectory_<attribute>.png,
config.yaml. With a tracker the same numbers are MLflow metrics and the files artifacts.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import yaml
from torch import nn

from models.editing import DirectionMatrix
from pipeline import metrics as M
from pipeline.checkpoints import DirectionsFile, atomic_write_bytes
from pipeline.config import ConfigError, require, to_dict
from pipeline.presets import (
    PRESETS,
    ModelBundle,
    ModelConfig,
    build_bundle,
    resolve_device,
)
from pipeline.seeding import Stream, rng_for
from pipeline.tracking import TrackingConfig, resolve_tracking_uri
from pipeline.train import NoiseMode, check_output_locations, default_work_dir, latents_from_z, sample_noise

EditMode = Literal["target", "fixed"]
METHODS = ("baseline", "hfld")
EXTREMES = ("low", "high")          # the paper's "non-exist" (0) and "must-exist" (1) sets
GESTURE_FEATURES = ("Smiling", "Mouth_Slightly_Open", "Narrow_Eyes")
TRAINING_JUDGE = "training"         # key of bundle.emotion among the judges


@dataclass(frozen=True)
class EvaluateConfig:
    """Evaluation of a baseline T (lambda4 = 0) against an HFLD T on one fixed set of faces.

    baseline, hfld: T's as directions files (.safetensors with the .json beside it) or MLflow URIs
      (runs:/<run_id>/directions, models:/<name>/<version>, read from the tracking store of
      `tracking`); may be left empty when the caller passes T's to run_evaluate (the `run` stage does).
    attributes: target attributes to edit; empty = the preset's default targets.
    gesture_features: attributes shown in the gesture table (Table IV) where the regressor has them.
    n_samples: faces in the fixed held-out set; seed: its seed (Stream.HELD_OUT) and the bootstrap's.
    edit_mode: "target" (s = t - R(x), t = 0 / 1) or "fixed" (s = -fixed_amount / +fixed_amount).
    top_k: rows of the change-ratio tables (the attributes that move most under either T).
    trajectory_faces / trajectory_steps: faces and edit steps of the trajectory figure.
    bootstrap_resamples / confidence: percentile bootstrap of every drift figure.
    output_dir: "" = <work_dir>/evaluate/<name>.
    """
    model: ModelConfig = field(default_factory=ModelConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    baseline: str = ""
    hfld: str = ""
    baseline_label: str = "baseline (lambda4 = 0)"
    hfld_label: str = "HFLD"
    attributes: tuple[str, ...] = ()
    gesture_features: tuple[str, ...] = GESTURE_FEATURES
    n_samples: int = 1000
    batch_size: int = 32
    seed: int = 0
    truncation: float = 1.0
    noise_mode: NoiseMode = "const"
    edit_mode: EditMode = "target"
    fixed_amount: float = 1.0
    top_k: int = 10
    trajectory_faces: int = 4
    trajectory_steps: int = 7
    bootstrap_resamples: int = 1000
    confidence: float = 0.95
    device: str = "auto"
    work_dir: str = field(default_factory=default_work_dir)
    run_name: str = ""
    output_dir: str = ""

    def __post_init__(self):
        require(self.n_samples >= 2, "n_samples", self.n_samples, "must be >= 2 (a bootstrap needs faces)")
        require(self.batch_size >= 1, "batch_size", self.batch_size, "must be >= 1")
        require(0 < self.truncation <= 1, "truncation", self.truncation, "must be in (0, 1]")
        require(self.fixed_amount > 0 and math.isfinite(self.fixed_amount), "fixed_amount", self.fixed_amount,
                "must be a finite number > 0")
        require(self.top_k >= 1, "top_k", self.top_k, "must be >= 1")
        require(0 <= self.trajectory_faces <= self.n_samples, "trajectory_faces", self.trajectory_faces,
                f"must be between 0 and n_samples ({self.n_samples})")
        require(self.trajectory_steps >= 2, "trajectory_steps", self.trajectory_steps, "must be >= 2")
        require(self.bootstrap_resamples >= 100, "bootstrap_resamples", self.bootstrap_resamples, "must be >= 100")
        require(0 < self.confidence < 1, "confidence", self.confidence, "must be in (0, 1)")
        require(len(set(self.attributes)) == len(self.attributes), "attributes", self.attributes, "has duplicates")
        require(self.baseline_label.strip() != "" and self.hfld_label.strip() != ""
                and self.baseline_label != self.hfld_label, "hfld_label", self.hfld_label,
                "and baseline_label must be two different, non-empty names")

    @property
    def name(self) -> str:
        return self.run_name or f"evaluate-{self.model.preset}-n{self.n_samples}-seed{self.seed}"

    @property
    def out_dir(self) -> Path:
        if self.output_dir:
            return Path(self.output_dir).expanduser()
        return Path(self.work_dir).expanduser() / "evaluate" / self.name


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


@dataclass
class EvaluateResult:
    output_dir: Path
    report_md: Path
    report_html: Path
    metrics_json: Path
    figures: dict[str, Path]            # attribute -> trajectory PNG
    metrics: dict                       # every number (the content of metrics.json)
    flat_metrics: dict[str, float]      # what was logged to MLflow
    statements: list[str]


# ---------------------------------------------------------------------------------------------
# Inputs: T's, attributes, judges
# ---------------------------------------------------------------------------------------------

DirectionsSource = Any  # str | Path | DirectionsFile | an object with .directions_path (TrainResult)


def load_source(source: DirectionsSource, field_name: str, tracking_uri: str | None = None) -> tuple[DirectionsFile, str]:
    """A T given as a file path, an MLflow URI (runs:/<run_id>/<path>, models:/<name>/<version>: see
    pipeline.directions_source), a loaded DirectionsFile, or a training result (its .directions_path).
    Returns the file and a description of where it came from."""
    from pipeline.directions_source import resolve_directions

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


def judges_of(bundle: ModelBundle) -> dict[str, dict]:
    """key -> {"model", "label", "role", "network", "labels"}: the training judge first, then held-out ones."""
    out = {TRAINING_JUDGE: {"model": bundle.emotion, "role": "training judge",
                            "network": type(bundle.emotion).__name__}}
    for name, model in bundle.judges.items():
        out[name] = {"model": model, "role": "held-out judge", "network": type(model).__name__}
    for key, j in out.items():
        j["labels"] = list(getattr(j["model"], "labels", [f"class{i}" for i in range(7)]))
        j["label"] = f"{key if key != TRAINING_JUDGE else j['network']} ({j['role']})"
    return out


# ---------------------------------------------------------------------------------------------
# Edits
# ---------------------------------------------------------------------------------------------

def extreme_amount(cfg: EvaluateConfig, extreme: str, current: torch.Tensor) -> torch.Tensor:
    """Edit amount [B] of the target column for one extreme; current = R(x)_a [B]."""
    if cfg.edit_mode == "target":
        return (0.0 if extreme == "low" else 1.0) - current
    return torch.full_like(current, -cfg.fixed_amount if extreme == "low" else cfg.fixed_amount)


def trajectory_amounts(cfg: EvaluateConfig, current: torch.Tensor) -> torch.Tensor:
    """Edit amounts [steps, B] of the trajectory figure, from the low extreme to the high one."""
    if cfg.edit_mode == "target":
        targets = torch.linspace(0, 1, cfg.trajectory_steps, device=current.device)
        return targets[:, None] - current[None, :]
    s = torch.linspace(-cfg.fixed_amount, cfg.fixed_amount, cfg.trajectory_steps, device=current.device)
    return s[:, None].expand(-1, current.shape[0])


def edit_vector(d: Directions, attribute: str, amount: torch.Tensor) -> torch.Tensor:
    """s [B, N]: `amount` [B] in the attribute's column of T, zeros elsewhere."""
    s = amount.new_zeros(amount.shape[0], d.module.n_attributes)
    s[:, d.column(attribute)] = amount
    return s


# ---------------------------------------------------------------------------------------------
# Measuring
# ---------------------------------------------------------------------------------------------

@dataclass
class Faces:
    """The fixed latent set of one batch."""
    index: list[int]
    wplus: torch.Tensor      # [B, L, w_dim]
    noise: list | str


def face_batch(cfg: EvaluateConfig, generator: nn.Module, index: list[int], device: torch.device) -> Faces:
    rngs = [rng_for(cfg.seed, Stream.HELD_OUT, i) for i in index]
    z = torch.stack([torch.randn(generator.z_dim, generator=r) for r in rngs]).to(device)
    noise = sample_noise(generator, cfg.noise_mode, rngs, device)
    return Faces(index, latents_from_z(generator, z, cfg.truncation), noise)


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
        faces = face_batch(cfg, G, list(range(start, min(start + cfg.batch_size, cfg.n_samples))), device)
        orig = measure(bundle, judges, G.synthesis(faces.wplus, faces.noise))
        store.add(("orig",), orig)
        current = torch.as_tensor(orig["attributes"], device=device)
        for d in directions:
            for a in targets:
                for extreme in EXTREMES:
                    s = edit_vector(d, a, extreme_amount(cfg, extreme, current[:, names.index(a)]))
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
    faces = face_batch(cfg, G, list(range(cfg.trajectory_faces)), device)
    x = G.synthesis(faces.wplus, faces.noise)
    current = bundle.regressor(x)
    out: dict[str, dict[str, np.ndarray]] = {}
    for a in targets:
        out[a] = {}
        amounts = trajectory_amounts(cfg, current[:, names.index(a)])
        for d in directions:
            row = [x] + [G.synthesis(d.module(faces.wplus, edit_vector(d, a, amt)), faces.noise) for amt in amounts]
            out[a][d.key] = to_uint8(torch.stack(row, dim=1))
    return out


def to_uint8(images: torch.Tensor) -> np.ndarray:
    """[..., 3, H, W] in [-1, 1] -> uint8 [..., H, W, 3]."""
    x = ((images.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return x.movedim(-3, -1).cpu().numpy()


# ---------------------------------------------------------------------------------------------
# Numbers
# ---------------------------------------------------------------------------------------------

class Stats:
    """Bootstrap settings bound once: summarise / compare per-face values."""

    def __init__(self, cfg: EvaluateConfig):
        self.kw = {"n_resamples": cfg.bootstrap_resamples, "confidence": cfg.confidence, "seed": cfg.seed}

    def summary(self, values: np.ndarray) -> dict:
        return M.summarise(values, **self.kw)

    def compare(self, base: np.ndarray, hfld: np.ndarray) -> dict:
        return M.compare(base, hfld, **self.kw)

    def ratio_ci(self, low: np.ndarray, high: np.ndarray, target: int):
        return M.change_ratio_ci(low, high, target, **self.kw)


def per_face_drifts(data: dict, method: str, attribute: str, judges: dict, scale: np.ndarray,
                    groups: dict) -> dict[str, np.ndarray]:
    """Per-face drifts [N] (and per-emotion |delta| [N, 7]) of one T and attribute, averaged over the
    two extremes: emotion TV (x 100, percentage points), landmarks (normalised), identity similarity."""
    def edited(name: str) -> list[np.ndarray]:
        return [data[(method, attribute, e, name)] for e in EXTREMES]

    def mean_over_extremes(values: list[np.ndarray]) -> np.ndarray:
        return np.mean(values, axis=0)

    out: dict[str, np.ndarray] = {}
    for key in judges:
        orig = data[("orig", f"emotion/{key}")]
        probs = edited(f"emotion/{key}")
        out[f"emotion_tv/{key}"] = mean_over_extremes([M.total_variation(orig, p) for p in probs]) * 100
        out[f"emotion_abs/{key}"] = mean_over_extremes([M.emotion_abs_deltas(orig, p) for p in probs])
    pts, moved = data[("orig", "landmarks")], edited("landmarks")
    out["landmarks"] = mean_over_extremes([M.landmark_drift(pts, p, scale) for p in moved])
    for g, idx in groups.items():
        out[f"landmarks/{g}"] = mean_over_extremes([M.landmark_drift(pts, p, scale, idx) for p in moved])
    if ("orig", "identity") in data:
        ident = data[("orig", "identity")]
        out["identity"] = mean_over_extremes([M.cosine_similarity(ident, d) for d in edited("identity")])
    return out


def attribute_numbers(cfg: EvaluateConfig, data: dict, attribute: str, names: list[str], judges: dict,
                      scale: np.ndarray, groups: dict, stats: Stats) -> tuple[dict, dict]:
    """Numbers of one target attribute, and its per-face drifts by method (for the overall figures)."""
    t = names.index(attribute)
    res: dict = {"edit": {}, "change_ratios": {}}
    for m in METHODS:
        low, high = data[(m, attribute, "low", "attributes")], data[(m, attribute, "high", "attributes")]
        ratios, (lo, hi) = M.change_ratios(low, high, t), stats.ratio_ci(low, high, t)
        res["change_ratios"][m] = {n: {"ratio": float(ratios[i]), "ci_low": float(lo[i]), "ci_high": float(hi[i])}
                                   for i, n in enumerate(names)}
        res["edit"][m] = {"original_mean": float(data[("orig", "attributes")][:, t].mean()),
                          "low_mean": float(low[:, t].mean()), "high_mean": float(high[:, t].mean())}
    by_method = {m: np.array([res["change_ratios"][m][n]["ratio"] for n in names]) for m in METHODS}
    res["top_k"] = M.top_k_ratios(by_method, names, exclude=[attribute], k=cfg.top_k)
    res["gestures"] = [g for g in cfg.gesture_features if g in names and g != attribute]

    drifts = {m: per_face_drifts(data, m, attribute, judges, scale, groups) for m in METHODS}
    res["emotion"] = {}
    for key, j in judges.items():
        res["emotion"][key] = {
            m: {"total_drift_pp": stats.summary(drifts[m][f"emotion_tv/{key}"]),
                "per_emotion_pp": {label: stats.summary(drifts[m][f"emotion_abs/{key}"][:, i])
                                   for i, label in enumerate(j["labels"])}}
            for m in METHODS}
        res["emotion"][key]["comparison"] = stats.compare(drifts["baseline"][f"emotion_tv/{key}"],
                                                          drifts["hfld"][f"emotion_tv/{key}"])
    res["landmarks"] = {m: stats.summary(drifts[m]["landmarks"]) for m in METHODS}
    res["landmarks"]["per_group"] = {g: {m: stats.summary(drifts[m][f"landmarks/{g}"]) for m in METHODS}
                                     for g in groups}
    res["landmarks"]["comparison"] = stats.compare(drifts["baseline"]["landmarks"], drifts["hfld"]["landmarks"])
    if "identity" in drifts["baseline"]:
        res["identity"] = {m: stats.summary(drifts[m]["identity"]) for m in METHODS}
        # Compared as identity loss 1 - similarity, so "reduction" means better identity keeping.
        res["identity"]["comparison"] = stats.compare(1 - drifts["baseline"]["identity"], 1 - drifts["hfld"]["identity"])
    return res, drifts


def overall_numbers(drifts: dict[str, dict[str, dict[str, np.ndarray]]], judges: dict, stats: Stats) -> dict:
    """Per-face drifts averaged over all target attributes, summarised and compared."""
    def pooled(m: str, key: str) -> np.ndarray:
        return np.mean([d[m][key] for d in drifts.values()], axis=0)

    out: dict = {"emotion": {}}
    for key in judges:
        k = f"emotion_tv/{key}"
        out["emotion"][key] = {m: {"total_drift_pp": stats.summary(pooled(m, k))} for m in METHODS}
        out["emotion"][key]["comparison"] = stats.compare(pooled("baseline", k), pooled("hfld", k))
    out["landmarks"] = {m: stats.summary(pooled(m, "landmarks")) for m in METHODS}
    out["landmarks"]["comparison"] = stats.compare(pooled("baseline", "landmarks"), pooled("hfld", "landmarks"))
    first = next(iter(drifts.values()))
    if "identity" in first["baseline"]:
        out["identity"] = {m: stats.summary(pooled(m, "identity")) for m in METHODS}
        out["identity"]["comparison"] = stats.compare(1 - pooled("baseline", "identity"), 1 - pooled("hfld", "identity"))
    return out


def describe_directions(d: Directions) -> dict:
    meta = d.file.meta
    return {"label": d.label, "source": d.source, "attributes": d.file.attributes,
            "lambdas": meta.get("lambdas", {}), "landmark_groups": meta.get("landmark_groups", []),
            "layer_mask": meta.get("layer_mask", []), "step": meta.get("step"), "preset": meta.get("preset"),
            "generator_id": meta.get("generator_id", ""), "sha256": meta.get("sha256", ""),
            "mlflow_run_id": meta.get("mlflow_run_id", "")}


def describe_networks(bundle: ModelBundle, judges: dict, scale_name: str) -> dict:
    return {"preset": bundle.preset, "generator": type(bundle.generator).__name__,
            "generator_id": bundle.generator_id,
            "regressor": {"network": type(bundle.regressor).__name__, "attributes": list(bundle.regressor.names)},
            "landmarks": {"network": type(bundle.landmarks).__name__, "points": int(bundle.landmarks.n_points),
                          "normalised_by": scale_name},
            "judges": {k: {"label": j["label"], "role": j["role"], "network": j["network"], "labels": j["labels"]}
                       for k, j in judges.items()},
            "identity": (type(getattr(bundle.identity, "model", bundle.identity)).__name__
                         if bundle.identity is not None else None),
            "notes": list(bundle.notes)}


def lineage_notes(directions: list[Directions], bundle: ModelBundle) -> list[str]:
    """Plain-language warnings about the pair itself (printed and put in the report)."""
    notes = []
    base = directions[0].file.meta.get("lambdas", {}).get("landmark")
    if base not in (None, 0, 0.0):
        notes.append(f"the baseline T was trained with lambda4 = {base:g}, not 0: it is not the paper's baseline")
    for d in directions:
        gid = d.file.meta.get("generator_id")
        if gid and bundle.generator_id and gid != bundle.generator_id:
            notes.append(f"{d.label} was trained with generator {gid[:23]}, this evaluation uses "
                         f"{bundle.generator_id[:23]}: its edits may not mean what they meant in training")
    if directions[0].file.meta.get("sha256") and directions[0].file.meta.get("sha256") == directions[1].file.meta.get("sha256"):
        notes.append("the baseline and HFLD files hold the same T: every difference below is zero by construction")
    return notes


# ---------------------------------------------------------------------------------------------
# Flat metrics for MLflow
# ---------------------------------------------------------------------------------------------

def flat_metrics(numbers: dict) -> dict[str, float]:
    """MLflow metric names from the nested numbers: e.g. `Male.emotion.training.hfld.total_drift_pp.mean`,
    `overall.landmarks.comparison.reduction_pct`, `Male.change_ratios.baseline.Young.ratio`."""
    out: dict[str, float] = {"n_samples": float(numbers["n_samples"])}

    def walk(prefix: str, node):
        if isinstance(node, dict):
            for k, v in node.items():
                walk(f"{prefix}.{k}" if prefix else str(k), v)
        elif isinstance(node, (int, float)) and not isinstance(node, bool):
            out[prefix] = float(node)

    for attribute, res in numbers["attributes"].items():
        walk(attribute, {k: v for k, v in res.items() if k not in ("top_k", "gestures")})
    walk("overall", numbers["overall"])
    return {k.replace(" ", "_"): v for k, v in out.items() if not k.endswith(".n")}


def json_safe(node):
    """NaN/inf -> None (strict JSON); tuples -> lists."""
    if isinstance(node, dict):
        return {k: json_safe(v) for k, v in node.items()}
    if isinstance(node, (list, tuple)):
        return [json_safe(v) for v in node]
    if isinstance(node, float) and not math.isfinite(node):
        return None
    return node


# ---------------------------------------------------------------------------------------------
# The stage
# ---------------------------------------------------------------------------------------------

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


def run_evaluate(cfg: EvaluateConfig, tracker=None, *, bundle: ModelBundle | None = None,
                 baseline: DirectionsSource = None, hfld: DirectionsSource = None,
                 print_fn: Callable = print) -> EvaluateResult:
    """Evaluate the baseline T against the HFLD T; write the report; return every number and path.

    baseline / hfld: override cfg.baseline / cfg.hfld with a path or MLflow URI, a loaded
    DirectionsFile or a training result (anything with .directions_path) - the hook for the `run`
    stage. bundle: networks already built (their device wins over cfg.device).
    tracker: a pipeline.tracking tracker (or None): params = resolved config, metrics = every number,
    artifacts = report files, figures and metrics.json.
    """
    from pipeline import report as R

    check_output_locations({"work_dir": cfg.work_dir, "output_dir": cfg.output_dir})
    pair = load_pair(cfg, baseline, hfld)          # before any heavy work: a bad path fails fast
    if bundle is None:
        device = resolve_device(cfg.device)
        bundle = build_bundle(cfg.model, device)
    else:
        device = next(bundle.generator.parameters()).device
    for note in bundle.notes:
        print_fn(f"[evaluate] note: {note}")
    targets = resolve_targets(cfg, bundle)
    directions = prepare_directions(pair, bundle, targets, device)
    judges = judges_of(bundle)
    names = list(bundle.regressor.names)
    groups = dict(getattr(bundle.landmarks, "groups", {}))
    warnings = lineage_notes(directions, bundle)
    for w in warnings:
        print_fn(f"[evaluate] warning: {w}")
    if tracker:
        tracker.log_params(to_dict(cfg))
        tracker.set_tags({f"{d.key}_directions": d.source for d in directions}
                         | {f"{d.key}_sha256": d.file.meta.get("sha256", "") for d in directions}
                         | {f"{d.key}_run_id": d.file.meta.get("mlflow_run_id", "") for d in directions})

    print_fn(f"[evaluate] {cfg.n_samples} faces, targets {list(targets)}, judges {list(judges)}, "
             f"edit_mode {cfg.edit_mode}, on {device}")
    data = collect(cfg, bundle, judges, directions, targets, device, print_fn)
    scale, scale_name = M.landmark_scale(data[("orig", "landmarks")], groups)
    stats = Stats(cfg)
    numbers: dict = {"n_samples": cfg.n_samples, "seed": cfg.seed, "edit_mode": cfg.edit_mode,
                     "fixed_amount": cfg.fixed_amount, "confidence": cfg.confidence,
                     "bootstrap_resamples": cfg.bootstrap_resamples, "targets": list(targets),
                     "methods": {d.key: describe_directions(d) for d in directions},
                     "networks": describe_networks(bundle, judges, scale_name),
                     "warnings": warnings, "attributes": {}}
    drifts = {}
    for a in targets:
        numbers["attributes"][a], drifts[a] = attribute_numbers(cfg, data, a, names, judges, scale, groups, stats)
    numbers["overall"] = overall_numbers(drifts, judges, stats)
    for w in R.edit_warnings(numbers):
        print_fn(f"[evaluate] warning: {w}")
        numbers["warnings"].append(w)
    numbers["statements"] = R.statements(numbers)

    out_dir = cfg.out_dir
    out_dir.mkdir(parents=True, exist_ok=True)
    figures = {a: R.write_trajectory_figure(out_dir / f"trajectory_{safe_name(a)}.png", a, imgs,
                                            {d.key: d.label for d in directions}, cfg)
               for a, imgs in trajectory_images(cfg, bundle, directions, targets, device).items()}
    numbers["files"] = {"figures": {a: p.name for a, p in figures.items()}}
    atomic_write_bytes(out_dir / "config.yaml", yaml.safe_dump(to_dict(cfg), sort_keys=False).encode())
    md, html = R.render(numbers, figures)
    paths = {"report.md": out_dir / "report.md", "report.html": out_dir / "report.html",
             "metrics.json": out_dir / "metrics.json"}
    atomic_write_bytes(paths["report.md"], md.encode())
    atomic_write_bytes(paths["report.html"], html.encode())
    document = json_safe({"config": to_dict(cfg), **numbers})
    atomic_write_bytes(paths["metrics.json"], json.dumps(document, indent=1).encode())
    flat = flat_metrics(numbers)
    if tracker:
        tracker.log_metrics(flat)
        for p in [*paths.values(), out_dir / "config.yaml", *figures.values()]:
            tracker.log_artifact(p, "evaluate")
    for s in numbers["statements"]:
        print_fn(f"[evaluate] {s}")
    print_fn(f"[evaluate] report: {paths['report.html']}")
    return EvaluateResult(out_dir, paths["report.md"], paths["report.html"], paths["metrics.json"], figures,
                          numbers, flat, list(numbers["statements"]))


def safe_name(text: str) -> str:
    """A file-name-safe version of an attribute name (keeps letters, digits, - and _)."""
    cleaned = "".join(c if c.isalnum() or c in "-_" else "_" for c in text)
    return cleaned or hashlib.sha1(text.encode()).hexdigest()[:8]
