"""The evaluate stage's numbers: edit strength and its gate, drift at matched edit strength, the paper's
fixed-target tables (I-V), hierarchical bootstrap summaries (seeds, then faces) and the flat metric
names logged to MLflow. No models, no I/O.

Shapes: every per-face quantity of an arm is [S, N] (S trained T's = seeds of the arm, N faces, the
same faces for every T); per-emotion ones are [S, N, 7].
"""

from __future__ import annotations

import math

import numpy as np

from pipeline.core import metrics as M
from pipeline.core import strength as ST
from pipeline.core.config import ConfigError
from pipeline.core.edits import EXTREMES
from pipeline.presets import HELD_OUT, TRAINING_JUDGE, ModelBundle
from pipeline.stages.evaluate.config import METHODS, EvaluateConfig
from pipeline.stages.evaluate.measure import Directions, Nets


class Stats:
    """Bootstrap settings and draws bound once: summarise / compare per-face values of the arms."""

    def __init__(self, cfg: EvaluateConfig, n_seeds: dict[str, int]):
        self.confidence = cfg.confidence
        self.draws = M.HierarchicalDraws(n_seeds, cfg.n_samples, cfg.bootstrap_resamples, cfg.seed)
        self.kw = {"n_resamples": cfg.bootstrap_resamples, "confidence": cfg.confidence, "seed": cfg.seed}

    def summary(self, arm: str, values: np.ndarray) -> dict:
        """values [S, N] -> mean with its hierarchical interval."""
        return M.hierarchical_summary(self.draws, arm, values, self.confidence)

    def compare(self, base: np.ndarray, hfld: np.ndarray) -> dict:
        return M.hierarchical_compare(self.draws, base, hfld, self.confidence, METHODS)

    def ratio_ci(self, low: np.ndarray, high: np.ndarray, target: int):
        """Change-ratio intervals over the rows of low/high [S * N, A] (seeds' faces pooled)."""
        return M.change_ratio_ci(low, high, target, **self.kw)


# ---------------------------------------------------------------------------------------------
# Per-face quantities
# ---------------------------------------------------------------------------------------------

class Data:
    """Access to the collected measurements by arm, stacked over the arm's seeds."""

    def __init__(self, arrays: dict, n_seeds: dict[str, int], alphas: tuple[float, ...]):
        self.arrays, self.n_seeds, self.alphas = arrays, n_seeds, alphas

    def orig(self, name: str) -> np.ndarray:
        return self.arrays[("orig", name)]

    def edited(self, arm: str, attribute: str, alpha: float, extreme: str, name: str) -> np.ndarray:
        """[S, N, ...] over the arm's seeds."""
        return np.stack([self.arrays[(arm, s, attribute, alpha, extreme, name)] for s in range(self.n_seeds[arm])])

    def has(self, arm: str, attribute: str, alpha: float, name: str) -> bool:
        return (arm, 0, attribute, alpha, EXTREMES[0], name) in self.arrays


def strength_faces(data: Data, arm: str, attribute: str, alpha: float, scorer: str, index: int) -> np.ndarray:
    """[S, N] per-face strength P_a(x' | must-exist) - P_a(x' | non-exist) by attribute model `scorer`."""
    low = data.edited(arm, attribute, alpha, "low", f"attr/{scorer}")[..., index]
    high = data.edited(arm, attribute, alpha, "high", f"attr/{scorer}")[..., index]
    return high - low


def drift_faces(data: Data, nets: Nets, arm: str, attribute: str, alpha: float) -> dict[str, np.ndarray]:
    """Per-face drifts [S, N] of one arm, attribute and scale, averaged over the two extremes:
    emotion_tv/<judge> (pp), landmarks/<model> (normalised), and where measured (alpha = 1)
    landmarks/<model>/<group>, identity, emotion_abs/<judge> [S, N, 7] (pp) and table_v/<judge>
    [S, N, 7] (pp, p(x' | must-exist) - p(x' | non-exist): the paper's Table V per face)."""
    def both(name: str) -> list[np.ndarray]:
        return [data.edited(arm, attribute, alpha, e, name) for e in EXTREMES]

    out: dict[str, np.ndarray] = {}
    for key in nets.emotion:
        orig = data.orig(f"emotion/{key}")
        low, high = both(f"emotion/{key}")
        tv = [np.stack([M.total_variation(orig, p) for p in probs]) * 100 for probs in (low, high)]
        out[f"emotion_tv/{key}"] = np.mean(tv, axis=0)
        if alpha == 1.0:
            out[f"emotion_abs/{key}"] = np.mean([np.abs(p - orig[None]) * 100 for p in (low, high)], axis=0)
            out[f"table_v/{key}"] = (high - low) * 100
    names = {k[-1] for k in data.arrays if k[0] == arm and k[2] == attribute and k[3] == alpha}
    for name in sorted(n for n in names if n.startswith("landmarks/") or n == "identity"):
        out[name] = np.mean(both(name), axis=0)
    return out


# ---------------------------------------------------------------------------------------------
# Edit strength and the gate
# ---------------------------------------------------------------------------------------------

def scorers_of(nets: Nets, attribute: str) -> dict[str, int]:
    """Attribute models that score `attribute` (key -> its column), the training R first."""
    return {k: d["names"].index(attribute) for k, d in nets.attributes.items() if attribute in d["names"]}


def match_scorer(cfg: EvaluateConfig, nets: Nets, attribute: str) -> str:
    """The attribute model whose strength is matched (cfg.match_by; "auto" = first held-out judge, else R)."""
    scorers = scorers_of(nets, attribute)
    if cfg.match_by == "auto":
        held_out = [k for k in scorers if k != TRAINING_JUDGE]
        return held_out[0] if held_out else TRAINING_JUDGE
    key = TRAINING_JUDGE if cfg.match_by == "regressor" else cfg.match_by
    if key not in scorers:
        raise ConfigError(f"match_by: {cfg.match_by!r} does not score {attribute} (attribute models that do: "
                          f"{['regressor' if k == TRAINING_JUDGE else k for k in scorers]})")
    return key


def strength_numbers(cfg: EvaluateConfig, data: Data, nets: Nets, attribute: str, stats: Stats) -> dict:
    """Strength at alpha = 1 per arm and scorer, with each arm's verdict (pipeline.core.strength), and
    each held-out judge's natural span against R's on the unedited faces."""
    scorers = scorers_of(nets, attribute)
    out: dict = {"scorers": {k: {"label": nets.attributes[k]["label"], "in_loop": nets.attributes[k]["in_loop"]}
                             for k in scorers}}
    r_orig = data.orig(f"attr/{TRAINING_JUDGE}")[:, scorers[TRAINING_JUDGE]]
    spans = {k: ST.natural_spans(r_orig, data.orig(f"attr/{k}")[:, i]) for k, i in scorers.items()
             if k != TRAINING_JUDGE}
    out["natural_span"] = {k: {"regressor": r, "judge": j} for k, (r, j) in spans.items()}
    for arm in METHODS:
        by = {k: stats.summary(arm, strength_faces(data, arm, attribute, 1.0, k, i)) for k, i in scorers.items()}
        judges = {k: by[k]["mean"] for k in by if k != TRAINING_JUDGE}
        weakest = min(judges, key=judges.get) if judges else None
        verdict = ST.strength_verdict(by[TRAINING_JUDGE]["mean"], judges[weakest] if judges else None,
                                      floor=cfg.strength_floor, judge_floor=cfg.judge_strength_floor,
                                      judge_spans=spans.get(weakest))
        out[arm] = {"by": by, "verdict": verdict, "weakest_judge": weakest}
    return out


def gate(strength: dict, labels: dict[str, str], attribute: str, cfg: EvaluateConfig) -> dict:
    """Whether drift comparisons for `attribute` may be stated: both arms must pass the strength gate."""
    failing = [arm for arm in METHODS if strength[arm]["verdict"] not in ST.PASSING]
    if not failing:
        return {"comparable": True, "why": ""}
    parts = []
    for arm in failing:
        by = strength[arm]["by"]
        by_r = by[TRAINING_JUDGE]["mean"]
        judges = {k: v["mean"] for k, v in by.items() if k != TRAINING_JUDGE}
        if strength[arm]["verdict"] == ST.NOT_EDITING:
            parts.append(f"{labels[arm]} is NOT EDITING {attribute} (strength by R {by_r:.3f} "
                         f"< floor {cfg.strength_floor:g})")
        elif strength[arm]["verdict"] == ST.UNCONFIRMED:
            k = strength[arm]["weakest_judge"]
            span = strength["natural_span"][k]
            parts.append(f"{labels[arm]}'s edit of {attribute} is UNCONFIRMED (strength by R {by_r:.3f} passes; by "
                         f"the held-out judge {k} {judges[k]:.3f} < {cfg.judge_strength_floor:g}, but on the unedited "
                         f"faces that judge separates R's top and bottom quarter by only {span['judge']:.3f} (R: "
                         f"{span['regressor']:.3f}), so it cannot reach its floor here; per unit of R the edit moves "
                         f"it {judges[k] / by_r:.2f}, natural variation {span['judge'] / span['regressor']:.2f})")
        else:
            judged = ", ".join(f"{k} {v:.3f}" for k, v in judges.items())
            parts.append(f"{labels[arm]} is FOOLING R on {attribute} (strength by R {by_r:.3f} "
                         f"passes, but by the independent judge {judged} < {cfg.judge_strength_floor:g})")
    return {"comparable": False, "why": "; ".join(parts)}


# ---------------------------------------------------------------------------------------------
# Drift at matched strength
# ---------------------------------------------------------------------------------------------

def measure_labels(nets: Nets) -> dict[str, dict]:
    """Drift measures of the curves: key -> {"label", "held_out", "unit"} (held-out ones first)."""
    out = {}
    for key, d in nets.emotion.items():
        out[f"emotion_tv/{key}"] = {"label": f"total emotion drift, {d['label']}", "held_out": d["in_loop"] == HELD_OUT,
                                    "unit": " pp"}
    for key, d in nets.landmarks.items():
        norm = "inter-ocular" if M.eye_groups(d["groups"]) else "image side"
        out[f"landmarks/{key}"] = {"label": f"landmark drift ({norm}), {d['label']}",
                                   "held_out": d["in_loop"] == HELD_OUT, "unit": ""}
    return dict(sorted(out.items(), key=lambda kv: (not kv[1]["held_out"], kv[0].split("/")[0] != "emotion_tv")))


def headline_measures(labels: dict[str, dict]) -> list[str]:
    """Measures the findings state: the held-out ones of each kind, or (a preset with no held-out
    model of that kind) the training one, whose label says it sat in the loop."""
    out = []
    for kind in ("emotion_tv", "landmarks"):
        keys = [k for k in labels if k.startswith(kind + "/")]
        held = [k for k in keys if labels[k]["held_out"]]
        out += held or keys
    return out


def positions_at_level(curves: np.ndarray, level: float) -> np.ndarray:
    """curves [R, K] (strength per grid point) -> [R] fractional positions where each first reaches level."""
    return np.array([ST.level_position(row, level) for row in curves])


def values_at_positions(curves: np.ndarray, positions: np.ndarray) -> np.ndarray:
    """curves [R, K], positions [R] -> [R] linear interpolation (nan where a position is nan)."""
    out = np.full(len(positions), np.nan)
    ok = np.isfinite(positions)
    if ok.any():
        pos = positions[ok]
        i = np.minimum(np.floor(pos).astype(int), curves.shape[1] - 1)
        j = np.minimum(i + 1, curves.shape[1] - 1)
        rows = curves[ok]
        frac = pos - i
        out[ok] = rows[np.arange(len(i)), i] + frac * (rows[np.arange(len(i)), j] - rows[np.arange(len(i)), i])
    return out


def matched_numbers(cfg: EvaluateConfig, data: Data, nets: Nets, attribute: str, stats: Stats,
                    labels: dict[str, dict]) -> dict:
    """Every T's curve of (strength, drift) over alpha = 0 and cfg.alphas, and each drift read where the
    arm's curve first reaches each strength level (linear interpolation; alpha = 0 is exactly (0, 0)),
    with hierarchical bootstrap intervals and the reduction by HFLD at equal strength."""
    scorer = match_scorer(cfg, nets, attribute)
    column = scorers_of(nets, attribute)[scorer]
    grid = (0.0,) + data.alphas
    conf = stats.confidence
    point: dict = {}
    boot: dict = {}
    curves: dict = {}
    for arm in METHODS:
        S = data.n_seeds[arm]
        zero = np.zeros((S, cfg.n_samples))
        s_faces = [zero] + [strength_faces(data, arm, attribute, a, scorer, column) for a in data.alphas]
        drifts = [drift_faces(data, nets, arm, attribute, a) for a in data.alphas]
        m_faces = {q: [zero] + [d[q] for d in drifts] for q in labels}
        point[arm] = {"strength": np.array([f.mean() for f in s_faces]),
                      **{q: np.array([f.mean() for f in v]) for q, v in m_faces.items()}}
        boot[arm] = {"strength": np.stack([stats.draws.means(arm, f) for f in s_faces], axis=1),
                     **{q: np.stack([stats.draws.means(arm, f) for f in v], axis=1) for q, v in m_faces.items()}}
        curves[arm] = {key: [{"mean": float(point[arm][key][k]),
                              **dict(zip(("ci_low", "ci_high"), M.percentile_interval(boot[arm][key][:, k], conf)))}
                             for k in range(len(grid))] for key in point[arm]}
    levels = {}
    for level in cfg.strength_levels:
        pos = {arm: ST.level_position(point[arm]["strength"], level) for arm in METHODS}
        pos_boot = {arm: positions_at_level(boot[arm]["strength"], level) for arm in METHODS}
        entry: dict = {}
        for q in labels:
            row: dict = {}
            for arm in METHODS:
                v = values_at_positions(boot[arm][q], pos_boot[arm])
                lo, hi = M.percentile_interval(v, conf)
                row[arm] = {"value": ST.value_at_position(point[arm][q], pos[arm]), "ci_low": lo, "ci_high": hi,
                            "alpha": ST.value_at_position(grid, pos[arm]),
                            "reached_fraction": float(np.isfinite(v).mean())}
            b = values_at_positions(boot["baseline"][q], pos_boot["baseline"])
            h = values_at_positions(boot["hfld"][q], pos_boot["hfld"])
            both = np.isfinite(b) & np.isfinite(h)
            red = M.reduction_pct(b[both], h[both]) if both.any() else np.array([np.nan])
            lo, hi = M.percentile_interval(red, conf)
            base_v, hfld_v = row["baseline"]["value"], row["hfld"]["value"]
            point_red = float(M.reduction_pct(base_v, hfld_v)) if math.isfinite(base_v) and math.isfinite(hfld_v) \
                else math.nan
            row["comparison"] = {"reduction_pct": point_red, "ci_low": lo, "ci_high": hi,
                                 "reached_fraction": float(both.mean()), "n": cfg.n_samples,
                                 "n_seeds": [data.n_seeds[a] for a in METHODS]}
            entry[q] = row
        levels[f"{level:g}"] = entry
    return {"by": scorer, "by_label": nets.attributes[scorer]["label"], "grid": list(grid), "levels": levels,
            "curves": curves, "measures": labels, "headline": headline_measures(labels)}


# ---------------------------------------------------------------------------------------------
# The paper's fixed-target protocol (alpha = 1): Tables I-V, drifts, identity
# ---------------------------------------------------------------------------------------------

def attribute_numbers(cfg: EvaluateConfig, data: Data, nets: Nets, attribute: str, names: list[str],
                      stats: Stats) -> tuple[dict, dict]:
    """Fixed-target numbers of one target attribute, and its per-face drifts by arm (for the overall figures)."""
    t = names.index(attribute)
    res: dict = {"edit": {}, "change_ratios": {}}
    for m in METHODS:
        low = data.edited(m, attribute, 1.0, "low", "attr/training")
        high = data.edited(m, attribute, 1.0, "high", "attr/training")
        low2, high2 = low.reshape(-1, low.shape[-1]), high.reshape(-1, high.shape[-1])   # seeds' faces pooled
        ratios, (lo, hi) = M.change_ratios(low2, high2, t), stats.ratio_ci(low2, high2, t)
        res["change_ratios"][m] = {n: {"ratio": float(ratios[i]), "ci_low": float(lo[i]), "ci_high": float(hi[i])}
                                   for i, n in enumerate(names)}
        res["edit"][m] = {"original_mean": float(data.orig("attr/training")[:, t].mean()),
                          "low_mean": float(low[..., t].mean()), "high_mean": float(high[..., t].mean())}
    by_method = {m: np.array([res["change_ratios"][m][n]["ratio"] for n in names]) for m in METHODS}
    res["top_k"] = M.top_k_ratios(by_method, names, exclude=[attribute], k=cfg.top_k)
    res["gestures"] = [g for g in cfg.gesture_features if g in names and g != attribute]

    drifts = {m: drift_faces(data, nets, m, attribute, 1.0) for m in METHODS}
    res["emotion"] = {}
    for key, j in nets.emotion.items():
        res["emotion"][key] = {
            m: {"total_drift_pp": stats.summary(m, drifts[m][f"emotion_tv/{key}"]),
                "table_v_pp": {label: stats.summary(m, drifts[m][f"table_v/{key}"][..., i])
                               for i, label in enumerate(j["labels"])},
                "per_emotion_pp": {label: stats.summary(m, drifts[m][f"emotion_abs/{key}"][..., i])
                                   for i, label in enumerate(j["labels"])}}
            for m in METHODS}
        res["emotion"][key]["comparison"] = stats.compare(drifts["baseline"][f"emotion_tv/{key}"],
                                                          drifts["hfld"][f"emotion_tv/{key}"])
    res["landmarks"] = landmark_block(nets.landmarks[TRAINING_JUDGE], TRAINING_JUDGE, drifts, stats)
    res["held_out_landmarks"] = {key: landmark_block(d, key, drifts, stats) for key, d in nets.landmarks.items()
                                 if key != TRAINING_JUDGE}
    if "identity" in drifts["baseline"]:
        res["identity"] = {m: stats.summary(m, drifts[m]["identity"]) for m in METHODS}
        # Compared as identity loss 1 - similarity, so "reduction" means better identity keeping.
        res["identity"]["comparison"] = stats.compare(1 - drifts["baseline"]["identity"], 1 - drifts["hfld"]["identity"])
    return res, drifts


def landmark_block(model: dict, key: str, drifts: dict, stats: Stats) -> dict:
    name = f"landmarks/{key}"
    out = {m: stats.summary(m, drifts[m][name]) for m in METHODS}
    out["per_group"] = {g: {m: stats.summary(m, drifts[m][f"{name}/{g}"]) for m in METHODS} for g in model["groups"]}
    out["comparison"] = stats.compare(drifts["baseline"][name], drifts["hfld"][name])
    return out


def overall_numbers(drifts: dict[str, dict[str, dict[str, np.ndarray]]], nets: Nets, stats: Stats) -> dict:
    """Per-face drifts averaged over the given target attributes (fixed-target protocol), summarised and compared."""
    def pooled(m: str, key: str) -> np.ndarray:
        return np.mean([d[m][key] for d in drifts.values()], axis=0)

    out: dict = {"attributes": list(drifts), "emotion": {}, "held_out_landmarks": {}}
    if not drifts:
        return out
    for key in nets.emotion:
        k = f"emotion_tv/{key}"
        out["emotion"][key] = {m: {"total_drift_pp": stats.summary(m, pooled(m, k))} for m in METHODS}
        out["emotion"][key]["comparison"] = stats.compare(pooled("baseline", k), pooled("hfld", k))
    for key in nets.landmarks:
        k = f"landmarks/{key}"
        block = {m: stats.summary(m, pooled(m, k)) for m in METHODS}
        block["comparison"] = stats.compare(pooled("baseline", k), pooled("hfld", k))
        if key == TRAINING_JUDGE:
            out["landmarks"] = block
        else:
            out["held_out_landmarks"][key] = block
    first = next(iter(drifts.values()))
    if "identity" in first["baseline"]:
        out["identity"] = {m: stats.summary(m, pooled(m, "identity")) for m in METHODS}
        out["identity"]["comparison"] = stats.compare(1 - pooled("baseline", "identity"), 1 - pooled("hfld", "identity"))
    return out


# ---------------------------------------------------------------------------------------------
# Descriptions
# ---------------------------------------------------------------------------------------------

def describe_directions(d: Directions) -> dict:
    meta = d.file.meta
    return {"label": d.label, "seed_index": d.seed, "source": d.source, "attributes": d.file.attributes,
            "lambdas": meta.get("lambdas", {}), "landmark_groups": meta.get("landmark_groups", []),
            "layer_mask": meta.get("layer_mask", []), "step": meta.get("step"), "preset": meta.get("preset"),
            "train_seed": (meta.get("config") or {}).get("seed"),
            "generator_id": meta.get("generator_id", ""), "sha256": meta.get("sha256", ""),
            "mlflow_run_id": meta.get("mlflow_run_id", "")}


def describe_methods(directions: list[Directions]) -> dict:
    """arm -> {"label", "seeds": [describe_directions ...]} plus the first seed's fields at the top level."""
    out: dict = {}
    for d in directions:
        entry = out.setdefault(d.key, {**describe_directions(d), "seeds": []})
        entry["seeds"].append(describe_directions(d))
    return out


def describe_networks(bundle: ModelBundle, nets: Nets) -> dict:
    def norm(groups) -> str:
        return "inter-ocular distance" if M.eye_groups(groups) else "image side"

    h = nets.landmarks[TRAINING_JUDGE]
    return {"preset": bundle.preset, "generator": type(bundle.generator).__name__,
            "generator_id": bundle.generator_id,
            "regressor": {"network": type(bundle.regressor).__name__, "attributes": list(bundle.regressor.names)},
            "landmarks": {"network": h["network"], "points": int(getattr(h["model"], "n_points", 0)),
                          "normalised_by": norm(h["groups"]), "in_loop": h["in_loop"]},
            "landmark_judges": {k: {"label": d["label"], "network": d["network"], "in_loop": d["in_loop"],
                                    "points": int(getattr(d["model"], "n_points", 0)), "normalised_by": norm(d["groups"])}
                                for k, d in nets.landmarks.items() if k != TRAINING_JUDGE},
            "attribute_judges": {k: {"label": d["label"], "network": d["network"], "in_loop": d["in_loop"],
                                     "attributes": d["names"]}
                                 for k, d in nets.attributes.items() if k != TRAINING_JUDGE},
            "judges": {k: {"label": j["label"], "role": j["role"], "network": j["network"], "labels": j["labels"],
                           "in_loop": j["in_loop"]} for k, j in nets.emotion.items()},
            "identity": (type(getattr(bundle.identity, "model", bundle.identity)).__name__
                         if bundle.identity is not None else None),
            "lineage": bundle.lineage(), "notes": list(bundle.notes)}


def lineage_notes(directions: list[Directions], bundle: ModelBundle) -> list[str]:
    """Plain-language warnings about the T's themselves (printed and put in the report)."""
    notes = []
    for d in directions:
        if d.key != "baseline":
            continue
        base = d.file.meta.get("lambdas", {}).get("landmark")
        if base not in (None, 0, 0.0):
            notes.append(f"the baseline T (seed {d.seed}) was trained with lambda4 = {base:g}, not 0: it is not the "
                         "paper's baseline")
    for d in directions:   # a T's columns mean nothing in another generator's W+: refused, not warned about
        gid = d.file.meta.get("generator_id")
        if gid and bundle.generator_id and gid != bundle.generator_id:
            raise ConfigError(f"{d.label} T (seed {d.seed}) was trained on generator {gid[:23]}..., this evaluation "
                              f"uses {bundle.generator_id[:23]}...; evaluate it with the preset it was trained with "
                              f"({d.file.meta.get('preset', 'unknown')!r})")
    hashes = {}
    for d in directions:
        h = d.file.meta.get("sha256")
        if h and h in hashes and hashes[h][0] != d.key:
            notes.append("the baseline and HFLD files hold the same T: every difference below is zero by construction")
        hashes.setdefault(h, (d.key, d.seed))
    counts = {m: sum(d.key == m for d in directions) for m in METHODS}
    if min(counts.values()) < 3:
        notes.append(f"{counts['baseline']} baseline and {counts['hfld']} HFLD T('s): with fewer than 3 training seeds "
                     "per arm the intervals cannot show how much a result depends on the training run")
    return notes


# ---------------------------------------------------------------------------------------------
# Flat metrics for MLflow
# ---------------------------------------------------------------------------------------------

def flat_metrics(numbers: dict) -> dict[str, float]:
    """MLflow metric names from the nested numbers: e.g. `Male.emotion.training.hfld.total_drift_pp.mean`,
    `overall.landmarks.comparison.reduction_pct`, `Male.change_ratios.baseline.Young.ratio`,
    `strength.Male.hfld.by.training.mean`, `matched.Male.levels.0.5.emotion_tv/training.comparison.reduction_pct`."""
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
    walk("strength", {a: {m: s[m] for m in METHODS} for a, s in numbers["strength"].items()})
    walk("matched", {a: {"levels": m["levels"]} for a, m in numbers["matched"].items()})
    return {k.replace(" ", "_"): v for k, v in out.items() if not k.endswith(".n")}
