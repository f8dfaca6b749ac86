"""The tune stage's objective: how far an edit moves a face's emotion, on one fixed held-out set.

    held_out = build_held_out(bundle, ("Male", "Young"), n=64, seed=1)      # once per sweep
    held_out.save(out_dir / "held_out.safetensors")
    evaluator = ObjectiveEvaluator(bundle, held_out, judge="training")     # once per trial / worker
    parts = evaluator(directions, attributes=("Male", "Young"))           # any number of times
    parts.as_metrics()   # {"emotion_tv_pp": ..., "emotion_abs_pp_happy": ..., "landmark_drift": ..., ...}

Held-out set (stored with the sweep, so every trial is measured on exactly the same inputs):
- Faces: face i is z_i ~ N(0, I) from rng_for(seed, Stream.HELD_OUT, i), mapped, truncated and given
  noise by pipeline.core.sampling.held_out_faces, as the evaluate stage draws its faces, so faces 0..n-1 of a sweep
  with seed s are the first n faces of an evaluation with seed s. Use different seeds for tuning and
  for the final evaluation, or the report is measured on the faces the sweep selected on.
- Edits: every face is edited once per covered attribute a and extreme (the paper's "non-exist" /
  "must-exist" sets, pipeline.core.edits, as in evaluate): edit_mode "target" uses s = t - R(x)_a with t = 0 / 1,
  "fixed" uses s = -/+ fixed_amount. Each edit's target is t = clamp(R(x)_a + s, 0, 1) (the
  regressor loss's target). Amounts and targets are computed once, when the set is made, and stored:
  a trial never re-derives them, so they are identical for every trial whatever its device.
- File: held_out.safetensors with tensors wplus [N, L, w_dim], amounts [N, A, 2], targets [N, A, 2],
  original_attributes [N, A] (R(x) of the covered attributes when the set was made), noise.<k>
  [N, 1, r, r] when noise_mode is "random"; the JSON metadata (key "hfld") holds the seed, stream,
  face indices, attribute names, edit mode, generator id and format version.

Components of one T (an edit of face i = one (attribute, extreme) pair of the trial's attributes; each
face's value is the mean over its edits, the reported value the mean over faces):
- emotion_tv_pp: total-variation distance 0.5 * sum_k |p_k(x') - p_k(x)| between the emotion judge's
  7 probabilities of x and x', in percentage points (pipeline.core.metrics.total_variation x 100);
- emotion_abs_pp_<label>: |p_k(x') - p_k(x)| per emotion in percentage points
  (pipeline.core.metrics.emotion_abs_deltas);
- landmark_drift: mean point distance between x and x' over all points, divided by the face's
  inter-ocular distance where the landmark model has eye groups (pipeline.core.metrics.landmark_drift);
- strength_<a>: edit strength of attribute a, mean P_a(x' | must-exist) - mean P_a(x' | non-exist)
  (pipeline.core.strength), scored by the training regressor R (strength_by "regressor") or by a
  held-out attribute judge of the preset (strength_by = its name);
- strength: the smallest strength_<a> over the trial's attributes (every edited attribute must edit).
x is measured on the evaluating device (orig and edit on the same device, so T = 0 gives 0 drift).

Score (minimised), `score(...)`: a trial is feasible when its strength reaches an ABSOLUTE floor
(objective.strength_floor, default 0.5 of probability: below it a T is not editing, and a T that does
not edit cannot change an emotion, so its low drift means nothing). The baseline's strength is
reported, never used as the bar (a baseline that does not edit would otherwise make not editing
feasible). Feasible trials score their emotion drift; infeasible ones (the baseline included) score
INFEASIBLE_OFFSET (100, the largest possible drift in pp) + drift + penalty * shortfall, shortfall =
floor - strength, so every feasible trial ranks before every infeasible one and, among the
infeasible, stronger edits rank first. A non-finite component (a diverged T) scores +inf.
"""

from __future__ import annotations

import json
import math
import struct
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load as load_tensors
from safetensors.torch import save as save_tensors
from torch import nn

from models.editing import DirectionMatrix
from pipeline.core import metrics as M
from pipeline.core.config import ConfigError
from pipeline.core.edits import EXTREMES, extreme_amount, one_column_edit
from pipeline.core.io import atomic_write_bytes
from pipeline.core.sampling import NoiseMode, held_out_faces
from pipeline.core.seeding import Stream
from pipeline.core.strength import STRENGTH_FLOOR, per_face_strength
from pipeline.presets import TRAINING_JUDGE, ModelBundle

HELD_OUT_FORMAT = "hfld-held-out"
HELD_OUT_VERSION = 1
METADATA_KEY = "hfld"
INFEASIBLE_OFFSET = 100.0   # > any emotion drift in pp: infeasible trials rank after feasible ones
STRENGTH_BY_REGRESSOR = "regressor"


# ---------------------------------------------------------------------------------------------
# The held-out set
# ---------------------------------------------------------------------------------------------

@dataclass
class HeldOutSet:
    """Fixed faces and edits of a sweep (see the module docstring). N faces, A covered attributes."""
    wplus: torch.Tensor                  # [N, L, w_dim]
    noise: list[torch.Tensor] | str      # per-layer [N, 1, r, r], or a noise mode name
    attributes: tuple[str, ...]          # the A covered attributes (columns of amounts/targets)
    amounts: torch.Tensor                # [N, A, 2] edit amount s per attribute and extreme (low, high)
    targets: torch.Tensor                # [N, A, 2] clamp(R(x)_a + s, 0, 1)
    original_attributes: torch.Tensor    # [N, A] R(x)_a when the set was made
    meta: dict = field(default_factory=dict)

    def __post_init__(self):
        n, a = self.wplus.shape[0], len(self.attributes)
        assert self.wplus.ndim == 3, f"wplus must be [N, L, w_dim], got {list(self.wplus.shape)}"
        for name in ("amounts", "targets"):
            t = getattr(self, name)
            assert tuple(t.shape) == (n, a, len(EXTREMES)), f"{name} must be [{n}, {a}, 2], got {list(t.shape)}"
        assert tuple(self.original_attributes.shape) == (n, a), list(self.original_attributes.shape)

    def __len__(self) -> int:
        return self.wplus.shape[0]

    def attribute_index(self, attribute: str) -> int:
        if attribute not in self.attributes:
            raise ConfigError(f"attributes: {attribute!r} is not covered by the held-out set "
                              f"(it covers {list(self.attributes)})")
        return self.attributes.index(attribute)

    def noise_rows(self, index: slice) -> list[torch.Tensor] | str:
        return self.noise if isinstance(self.noise, str) else [n[index] for n in self.noise]

    def head(self, n: int) -> HeldOutSet:
        """The first n faces (the intermediate evaluations' subset)."""
        n = min(n, len(self))
        rows = slice(0, n)
        return HeldOutSet(self.wplus[rows], self.noise_rows(rows), self.attributes, self.amounts[rows],
                          self.targets[rows], self.original_attributes[rows],
                          {**self.meta, "n": n, "indices": list(range(n))})

    # -- file ------------------------------------------------------------------------------------
    def to_bytes(self) -> bytes:
        tensors = {"wplus": self.wplus, "amounts": self.amounts, "targets": self.targets,
                   "original_attributes": self.original_attributes}
        if not isinstance(self.noise, str):
            tensors.update({f"noise.{k}": t for k, t in enumerate(self.noise)})
        meta = {**self.meta, "format": HELD_OUT_FORMAT, "version": HELD_OUT_VERSION,
                "attributes": list(self.attributes), "noise": self.noise if isinstance(self.noise, str) else "tensors"}
        tensors = {k: v.detach().float().cpu().contiguous() for k, v in tensors.items()}
        return save_tensors(tensors, metadata={METADATA_KEY: json.dumps(meta)})

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        atomic_write_bytes(path, self.to_bytes())
        return path

    @classmethod
    def from_bytes(cls, data: bytes, source: str = "<bytes>") -> HeldOutSet:
        meta = _safetensors_metadata(data, source)
        if meta.get("format") != HELD_OUT_FORMAT or meta.get("version") != HELD_OUT_VERSION:
            raise ConfigError(f"{source}: not a held-out set of this version (format {meta.get('format')!r}, "
                              f"version {meta.get('version')!r}; expected {HELD_OUT_FORMAT!r} v{HELD_OUT_VERSION})")
        t = load_tensors(data)
        noise: list[torch.Tensor] | str = meta["noise"]
        if noise == "tensors":
            noise = [t[f"noise.{k}"] for k in range(sum(1 for name in t if name.startswith("noise.")))]
        return cls(t["wplus"], noise, tuple(meta["attributes"]), t["amounts"], t["targets"],
                   t["original_attributes"], meta)

    @classmethod
    def load(cls, path: str | Path) -> HeldOutSet:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"held-out set {path} not found")
        return cls.from_bytes(path.read_bytes(), str(path))

    def to(self, device: torch.device) -> HeldOutSet:
        noise = self.noise if isinstance(self.noise, str) else [n.to(device) for n in self.noise]
        return HeldOutSet(self.wplus.to(device), noise, self.attributes, self.amounts.to(device),
                          self.targets.to(device), self.original_attributes.to(device), self.meta)


def _safetensors_metadata(data: bytes, source: str) -> dict:
    """The JSON under our key in a safetensors buffer's header (8-byte little-endian length + JSON)."""
    try:
        (size,) = struct.unpack("<Q", data[:8])
        header = json.loads(data[8:8 + size])
        return json.loads(header["__metadata__"][METADATA_KEY])
    except (struct.error, ValueError, KeyError, TypeError) as e:
        raise ConfigError(f"{source}: not a held-out safetensors file ({type(e).__name__}: {e})") from None


@torch.no_grad()
def build_held_out(bundle: ModelBundle, attributes: Sequence[str], *, n: int, seed: int, truncation: float = 1.0,
                   noise_mode: NoiseMode = "const", edit_mode: str = "target", fixed_amount: float = 1.0,
                   batch_size: int = 32, device: torch.device | str | None = None) -> HeldOutSet:
    """N faces from (seed, Stream.HELD_OUT, i) and their edits to both extremes of every attribute."""
    names = list(bundle.regressor.names)
    unknown = [a for a in attributes if a not in names]
    if unknown:
        raise ConfigError(f"attributes: {unknown} not known to the {bundle.preset!r} regressor; it has {names}")
    if n < 1:
        raise ConfigError(f"objective.n_samples: {n} must be >= 1")
    device = torch.device(device) if device is not None else next(bundle.generator.parameters()).device
    columns = [names.index(a) for a in attributes]
    G = bundle.generator
    wplus, noise, amounts, originals = [], [], [], []
    for start in range(0, n, batch_size):
        faces = held_out_faces(G, list(range(start, min(start + batch_size, n))), seed=seed,
                               truncation=truncation, noise_mode=noise_mode, device=device)
        current = bundle.regressor(G.synthesis(faces.wplus, faces.noise))[:, columns].float()     # [B, A]
        amounts.append(torch.stack([torch.stack([extreme_amount(edit_mode, fixed_amount, e, current[:, j]) for e in EXTREMES], dim=1)
                                    for j in range(len(columns))], dim=1))                        # [B, A, 2]
        originals.append(current)
        wplus.append(faces.wplus)
        noise.append(faces.noise)
    amounts_t, original_t = torch.cat(amounts), torch.cat(originals)
    targets = (original_t[:, :, None] + amounts_t).clamp(0, 1)
    noise_all = noise[0] if isinstance(noise[0], str) else [torch.cat(layer) for layer in zip(*noise)]
    meta = {"seed": seed, "stream": Stream.HELD_OUT.name, "n": n, "indices": list(range(n)),
            "preset": bundle.preset, "generator_id": bundle.generator_id, "truncation": truncation,
            "noise_mode": noise_mode, "edit_mode": edit_mode, "fixed_amount": fixed_amount,
            "extremes": list(EXTREMES)}
    return HeldOutSet(torch.cat(wplus), noise_all, tuple(attributes), amounts_t, targets, original_t, meta)


# ---------------------------------------------------------------------------------------------
# Measuring a T
# ---------------------------------------------------------------------------------------------

def emotion_judge(bundle: ModelBundle, key: str = TRAINING_JUDGE) -> tuple[nn.Module, list[str]]:
    """The emotion model named `key` ("training" = bundle.emotion, or a held-out judge) and its labels."""
    judges = bundle.emotion_judges()
    if key not in judges:
        raise ConfigError(f"objective.judge: {key!r} is not an emotion judge of preset {bundle.preset!r}; "
                          f"choose one of {list(judges)}")
    return judges[key]["model"], list(judges[key]["labels"])


def strength_model(bundle: ModelBundle, key: str = STRENGTH_BY_REGRESSOR) -> tuple[nn.Module, list[str]]:
    """The attribute model that scores edit strength ("regressor" = R, or a held-out attribute judge) and its names."""
    if key == STRENGTH_BY_REGRESSOR:
        return bundle.regressor, list(bundle.regressor.names)
    if key not in bundle.attribute_judges:
        raise ConfigError(f"objective.strength_by: {key!r} is neither 'regressor' nor an attribute judge of preset "
                          f"{bundle.preset!r} (it has {sorted(bundle.attribute_judges) or 'none'})")
    judge = bundle.attribute_judges[key]
    return judge, list(judge.names)


@dataclass
class Components:
    """The objective's numbers for one T (means over faces) and the per-face values behind them."""
    n_faces: int
    emotion_tv_pp: float
    emotion_abs_pp: dict[str, float]
    landmark_drift: float
    strength_by_attribute: dict[str, float]     # attribute -> edit strength (probability units)
    strength_by: str = STRENGTH_BY_REGRESSOR
    per_face: dict[str, np.ndarray] = field(default_factory=dict)   # emotion_tv_pp, landmark_drift [N]; strength_<a> [N]

    @property
    def strength(self) -> float:
        """The weakest attribute's strength (every edited attribute must edit)."""
        return min(self.strength_by_attribute.values())

    def as_metrics(self) -> dict[str, float]:
        out = {"emotion_tv_pp": self.emotion_tv_pp, "landmark_drift": self.landmark_drift,
               "strength": self.strength, "eval_faces": float(self.n_faces)}
        out.update({f"strength_{a}": v for a, v in self.strength_by_attribute.items()})
        out.update({f"emotion_abs_pp_{label}": v for label, v in self.emotion_abs_pp.items()})
        return out


class ObjectiveEvaluator:
    """Measures T's on one held-out set with one bundle: orig faces measured once, edits per call.

    strength_by: "regressor" (R, cheap, in the training loop) or a held-out attribute judge's name.
    """

    def __init__(self, bundle: ModelBundle, held_out: HeldOutSet, judge: str = TRAINING_JUDGE,
                 batch_size: int = 32, device: torch.device | None = None,
                 strength_by: str = STRENGTH_BY_REGRESSOR):
        self.bundle, self.batch_size = bundle, batch_size
        self.device = device or next(bundle.generator.parameters()).device
        self.held_out = held_out.to(self.device)
        self.judge, self.labels = emotion_judge(bundle, judge)
        self.strength_by = strength_by
        self.scorer, self.scorer_names = strength_model(bundle, strength_by)
        self.groups = dict(getattr(bundle.landmarks, "groups", {}))
        orig = self._measure_all(lambda wplus, s_rows: wplus, n=len(held_out))
        self.orig_emotion, self.orig_points = orig["emotion"], orig["landmarks"]
        self.scale, self.scale_name = M.landmark_scale(self.orig_points, self.groups)

    @torch.no_grad()
    def _measure(self, images: torch.Tensor) -> dict[str, np.ndarray]:
        """images [B, 3, H, W] -> emotion [B, 7], landmarks [B, P, 2], attributes [B, A_scorer]."""
        out = {"emotion": self.judge(images), "landmarks": self.bundle.landmarks(images),
               "attributes": self.scorer(images)}
        return {k: v.detach().float().cpu().numpy() for k, v in out.items()}

    @torch.no_grad()
    def _measure_all(self, latents, n: int) -> dict[str, np.ndarray]:
        """Measure G(latents(wplus_rows, rows)) batch by batch over the first n faces."""
        parts: dict[str, list[np.ndarray]] = {}
        G, h = self.bundle.generator, self.held_out
        for start in range(0, n, self.batch_size):
            rows = slice(start, min(start + self.batch_size, n))
            image = G.synthesis(latents(h.wplus[rows], rows), h.noise_rows(rows))
            for k, v in self._measure(image).items():
                parts.setdefault(k, []).append(v)
        return {k: np.concatenate(v) for k, v in parts.items()}

    @torch.no_grad()
    def __call__(self, directions: DirectionMatrix, attributes: Sequence[str], n_faces: int | None = None) -> Components:
        """Components of T (`directions`, whose columns edit `attributes` in order) on the first n_faces."""
        n = len(self.held_out) if n_faces is None else min(n_faces, len(self.held_out))
        if len(attributes) != directions.n_attributes:
            raise ValueError(f"T has {directions.n_attributes} columns but {len(attributes)} attributes were named")
        missing = [a for a in attributes if a not in self.scorer_names]
        if missing:
            raise ConfigError(f"objective.strength_by: {self.strength_by!r} does not score {missing} "
                              f"(it scores {self.scorer_names}); use strength_by=regressor")
        tv, absd, lm, strength = [], [], [], {}
        for column, attribute in enumerate(attributes):
            a = self.held_out.attribute_index(attribute)
            k = self.scorer_names.index(attribute)
            probs = []
            for e in range(len(EXTREMES)):
                def edited(wplus, rows, column=column, a=a, e=e):
                    s = one_column_edit(self.held_out.amounts[rows, a, e], column, directions.n_attributes)
                    return directions(wplus, s)
                m = self._measure_all(edited, n)
                tv.append(M.total_variation(self.orig_emotion[:n], m["emotion"]) * 100.0)
                absd.append(M.emotion_abs_deltas(self.orig_emotion[:n], m["emotion"]))
                lm.append(M.landmark_drift(self.orig_points[:n], m["landmarks"], self.scale[:n]))
                probs.append(m["attributes"][:, k])
            strength[attribute] = per_face_strength(*probs)          # EXTREMES = (low, high)
        per_face = {"emotion_tv_pp": np.mean(tv, axis=0), "landmark_drift": np.mean(lm, axis=0),
                    **{f"strength_{a}": v for a, v in strength.items()}}
        abs_mean = np.mean(absd, axis=0).mean(axis=0)          # [7]
        return Components(n, float(per_face["emotion_tv_pp"].mean()),
                          {label: float(abs_mean[k]) for k, label in enumerate(self.labels)},
                          float(per_face["landmark_drift"].mean()),
                          {a: float(v.mean()) for a, v in strength.items()}, self.strength_by, per_face)


# ---------------------------------------------------------------------------------------------
# The score
# ---------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Score:
    score: float
    feasible: bool
    shortfall: float               # strength_floor - strength when below the floor; 0 if feasible
    strength_floor: float          # the absolute floor it was held to

    def as_metrics(self) -> dict[str, float]:
        return {"score": self.score, "feasible": float(self.feasible), "shortfall": self.shortfall,
                "strength_floor": self.strength_floor}


def score(emotion_tv_pp: float, strength: float, *, strength_floor: float = STRENGTH_FLOOR,
          penalty: float = 1000.0) -> Score:
    """Minimise emotion drift subject to strength >= strength_floor (absolute; see the module docstring)."""
    if not all(math.isfinite(v) for v in (emotion_tv_pp, strength)):
        return Score(math.inf, False, math.nan if not math.isfinite(strength) else 0.0, strength_floor)
    shortfall = max(0.0, strength_floor - strength)
    if shortfall == 0:
        return Score(emotion_tv_pp, True, 0.0, strength_floor)
    return Score(INFEASIBLE_OFFSET + emotion_tv_pp + penalty * shortfall, False, shortfall, strength_floor)


SCORE_DEFINITION = (
    "score = emotion_tv_pp if feasible, else 100 + emotion_tv_pp + penalty * shortfall; "
    "feasible = strength >= strength_floor (absolute, the same for every trial and the baseline), "
    "strength = min over the trial's attributes of mean P_a(x' | must-exist) - mean P_a(x' | non-exist), "
    "shortfall = strength_floor - strength; a non-finite component scores inf")
