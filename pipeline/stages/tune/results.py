"""The results of a sweep: rows, the best trial, best_train.yaml, trials.csv, the Pareto plot,
summary.json (no Ray: rows are plain dicts)."""

from __future__ import annotations

import csv
import json
import math
from dataclasses import dataclass, replace
from pathlib import Path

import yaml

from pipeline.core.config import to_dict
from pipeline.stages.train import TrainConfig
from pipeline.stages.tune.config import TuneConfig
from pipeline.stages.tune.objective import SCORE_DEFINITION
from pipeline.stages.tune.space import TuneSpace
from pipeline.stages.tune.trial import trial_train_config

COMPLETED, STOPPED, ERROR = "COMPLETED", "STOPPED", "ERROR"
METRIC_COLUMNS = ("score", "emotion_tv_pp", "landmark_drift", "strength", "strength_floor", "shortfall", "eval_faces")


class TuneFailed(RuntimeError):
    """The sweep could not produce a result (a baseline failed, or no trial completed)."""


@dataclass
class TuneResult:
    out_dir: Path
    best_config_path: Path
    table_path: Path
    plot_path: Path
    held_out_path: Path
    summary_path: Path
    rows: list[dict]
    best: dict
    mlflow_run_id: str | None = None


def load_sweep(out_dir: str | Path) -> TuneResult:
    """The results of a finished sweep from its folder (summary.json and the files it names)."""
    out_dir = Path(out_dir)
    summary = json.loads((out_dir / "summary.json").read_text())
    files = {k: out_dir / name for k, name in summary["files"].items()}
    return TuneResult(out_dir, files["best_config"], files["table"], files["plot"], files["held_out"],
                      out_dir / "summary.json", summary["trials"], summary["best"], summary.get("mlflow_run_id"))


def pick_best(rows: list[dict]) -> dict:
    done = [r for r in rows if r["status"] == COMPLETED and math.isfinite(r["score"])]
    if not done:
        raise TuneFailed("no trial completed with a finite score; see trials.csv for their errors")
    return min(done, key=lambda r: (r["score"], r["role"] != "baseline", r["trial_id"]))


def best_train_config(cfg: TuneConfig, space: TuneSpace, best: dict) -> TrainConfig:
    """The base train config with the winning choices: ready for `hfld train --config`."""
    base = cfg.train
    params = {"lambda4": best["lambda4"], "subset": best["subset"], "attributes": best["attributes"],
              "layer_mask": best["layer_mask"]}
    chosen = trial_train_config(base, space, params, f"{cfg.name}-best")
    return replace(chosen, work_dir=str(Path(cfg.work_dir).expanduser().resolve()), resume="",
                   tracking=replace(base.tracking, parent_run_id=""))


def write_best_config(path: Path, cfg: TuneConfig, train_cfg: TrainConfig, best: dict) -> Path:
    header = (f"# Best configuration of sweep {cfg.name!r}: trial {best['trial_id']} ({best['role']}), "
              f"lambda4 = {best['lambda4']:g}, subset {best['subset']!r}, score {best['score']:.4g}.\n"
              f"# Train it with:  hfld train --config {path}\n")
    path.write_text(header + yaml.safe_dump(to_dict(train_cfg), sort_keys=False))
    return path


def table_columns(labels: list[str], attributes: list[str] = ()) -> list[str]:
    """trials.csv's columns: emotion labels and the edited attributes (strength_<a>) vary by preset."""
    return ["trial_id", "role", "status", "best", "lambda4", "subset", "landmark_groups", "attributes",
            "layer_mask", "steps", "score", "feasible", "strength", *[f"strength_{a}" for a in attributes],
            "strength_floor", "shortfall", "emotion_tv_pp", *[f"emotion_abs_pp_{x}" for x in labels],
            "landmark_drift", "eval_faces", "run_name", "mlflow_run_id", "directions", "checkpoint", "error"]


def _cell(value) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return "" if math.isnan(value) else f"{value:.6g}"
    return str(value)


def write_table(path: Path, rows: list[dict], labels: list[str], attributes: list[str] = ()) -> Path:
    columns = table_columns(labels, attributes)
    with open(path, "w", newline="") as f:
        f.write(f"# {SCORE_DEFINITION}\n")
        w = csv.DictWriter(f, fieldnames=columns, extrasaction="ignore")
        w.writeheader()
        for r in rows:
            w.writerow({c: _cell(r.get(c)) for c in columns})
    return path


def read_table(path: Path) -> list[dict]:
    """trials.csv back as dicts of strings (the comment line skipped)."""
    with open(path, newline="") as f:
        lines = [line for line in f if not line.startswith("#")]
    return list(csv.DictReader(lines))


def pareto_front(points: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """Points (drift, strength) no other point beats on both (lower drift, higher strength), by drift."""
    front, best_strength = [], -math.inf
    for drift, strength in sorted(points, key=lambda p: (p[0], -p[1])):
        if strength > best_strength:
            front.append((drift, strength))
            best_strength = strength
    return front


def write_pareto_plot(path: Path, rows: list[dict], best: dict, strength_floor: float, title: str) -> Path:
    """Edit strength vs. emotion drift of every trial that reported: feasible trials filled, infeasible
    ones (below the absolute strength floor, drawn as a line) as crosses; baseline, best and the front of
    the feasible completed trials marked."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7, 5), dpi=110)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    measured = [r for r in rows if r["status"] != ERROR and math.isfinite(r["emotion_tv_pp"])
                and math.isfinite(r["strength"])]
    subsets = sorted({r["subset"] for r in measured if r["role"] != "baseline"})
    colours = {s: f"C{i % 10}" for i, s in enumerate(subsets)}
    for s in subsets:
        for status, filled in ((COMPLETED, True), (STOPPED, False)):
            for feasible in (True, False):
                pts = [r for r in measured if r["subset"] == s and r["status"] == status and r["role"] != "baseline"
                       and bool(r.get("feasible")) == feasible]
                if not pts:
                    continue
                label = s + ("" if filled else " (stopped early)") + ("" if feasible else ", infeasible")
                style = ({"marker": "o", "facecolors": colours[s] if filled else "none", "edgecolors": colours[s]}
                         if feasible else {"marker": "x", "c": colours[s]})
                ax.scatter([r["emotion_tv_pp"] for r in pts], [r["strength"] for r in pts], s=36, label=label, **style)
    baselines = [r for r in measured if r["role"] == "baseline"]
    if baselines:
        ax.scatter([r["emotion_tv_pp"] for r in baselines], [r["strength"] for r in baselines], marker="*",
                   s=220, c="black", label="baseline (lambda4 = 0)", zorder=3)
    ax.axhline(strength_floor, color="grey", linestyle="--", linewidth=1,
               label=f"strength floor {strength_floor:g} (below: infeasible)")
    front = pareto_front([(r["emotion_tv_pp"], r["strength"]) for r in measured
                          if r["status"] == COMPLETED and r.get("feasible")])
    if len(front) > 1:
        ax.step([p[0] for p in front], [p[1] for p in front], where="post", color="grey", linewidth=1,
                alpha=0.7, label="Pareto front (feasible)")
    if math.isfinite(best.get("emotion_tv_pp", math.nan)):
        ax.scatter([best["emotion_tv_pp"]], [best["strength"]], s=260, facecolors="none", edgecolors="red",
                   linewidths=2, label=f"best: {best['subset']}, lambda4 = {best['lambda4']:.3g}"
                   + ("" if best.get("feasible") else " (INFEASIBLE)"), zorder=4)
    ax.set_xlabel("emotion drift: total variation (pp), lower is better")
    ax.set_ylabel("edit strength (probability), higher is better")
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="best")
    fig.tight_layout()
    fig.savefig(path, format="png")
    return path
