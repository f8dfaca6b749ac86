"""The evaluate stage's numbers: per-face drifts, bootstrap summaries and paired comparisons, the
paper's change ratios, and the flat metric names logged to MLflow. No models, no I/O."""

from __future__ import annotations

import numpy as np

from pipeline.core import metrics as M
from pipeline.core.edits import EXTREMES
from pipeline.presets import ModelBundle
from pipeline.stages.evaluate.config import METHODS, EvaluateConfig
from pipeline.stages.evaluate.measure import Directions


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
