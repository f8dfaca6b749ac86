"""Stage `evaluate`: the paper's tables and figures for a pair of trained T (baseline vs. HFLD).

    result = run_evaluate(cfg)                                   # T's from cfg.baseline / cfg.hfld
    result = run_evaluate(cfg, tracker=parent, baseline=train_a, hfld=train_b)   # the `run` stage's hook

Modules: config.py (EvaluateConfig), measure.py (T's, faces, measurements), numbers.py (drifts,
bootstrap, comparisons), report.py (Markdown/HTML report and figures).

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
See pipeline/core/metrics.py for the definitions.

Output directory (default <work_dir>/evaluate/<name>): report.md, report.html (self-contained),
metrics.json (every number of the report, plus the resolved config), trajectory_<attribute>.png,
config.yaml. With a tracker the same numbers are MLflow metrics and the files artifacts.
"""


from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import yaml

from pipeline.core import metrics as M
from pipeline.core.config import to_dict
from pipeline.core.io import atomic_write_bytes, json_safe
from pipeline.core.paths import absolute_paths, check_output_locations
from pipeline.core.sampling import resolve_device
from pipeline.infra.tracking import Tracker, log_provenance, stage_run, tracking_locations
from pipeline.presets import ModelBundle, build_bundle
from pipeline.presets.provenance import provenance
from pipeline.stages.evaluate import report as R
from pipeline.stages.evaluate.config import GESTURE_FEATURES, METHODS, EvaluateConfig
from pipeline.stages.evaluate.measure import (DirectionsSource, collect, load_pair, prepare_directions, resolve_targets,
                                              trajectory_images)
from pipeline.stages.evaluate.numbers import (Stats, attribute_numbers, describe_directions, describe_networks,
                                              flat_metrics, lineage_notes, overall_numbers)

__all__ = ["GESTURE_FEATURES", "METHODS", "EvaluateConfig", "EvaluateResult", "run_evaluate"]


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
    mlflow_run_id: str | None = None


def run_evaluate(cfg: EvaluateConfig, *, tracker: Tracker | None = None, bundle: ModelBundle | None = None,
                 baseline: DirectionsSource = None, hfld: DirectionsSource = None,
                 print_fn: Callable = print) -> EvaluateResult:
    """Evaluate the baseline T against the HFLD T; write the report; return every number and path.

    baseline / hfld: override cfg.baseline / cfg.hfld with a path or MLflow URI, a loaded
    DirectionsFile or a training result (anything with .directions_path) - the hook for the `run`
    stage. bundle: networks already built (their device wins over cfg.device).
    tracker: None = an MLflow run of its own (cfg.tracking); a tracker = a child run of it. The run
    gets params = resolved config, metrics = every number, artifacts = report files, figures and
    metrics.json.
    """
    own_store = tracking_locations(cfg.tracking, cfg.work_dir) if tracker is None else {}
    check_output_locations({"work_dir": cfg.work_dir, "output_dir": cfg.output_dir or cfg.out_dir, **own_store})
    cfg = absolute_paths(cfg)
    pair = load_pair(cfg, baseline, hfld)          # before any heavy work: a bad path fails fast
    with stage_run(cfg.tracking, tracker, work_dir=cfg.work_dir, run_name=cfg.name, stage="evaluate",
                   tags={"preset": cfg.model.preset}) as run:
        return _evaluate(cfg, pair, run, bundle, print_fn)


def _evaluate(cfg: EvaluateConfig, pair, tracker: Tracker, bundle: ModelBundle | None, print_fn) -> EvaluateResult:
    if bundle is None:
        device = resolve_device(cfg.device)
        bundle = build_bundle(cfg.model, device)
    else:
        device = next(bundle.generator.parameters()).device
    for note in bundle.notes:
        print_fn(f"[evaluate] note: {note}")
    targets = resolve_targets(cfg, bundle)
    directions = prepare_directions(pair, bundle, targets, device)
    judges = bundle.emotion_judges()
    names = list(bundle.regressor.names)
    groups = dict(getattr(bundle.landmarks, "groups", {}))
    warnings = lineage_notes(directions, bundle)
    for w in warnings:
        print_fn(f"[evaluate] warning: {w}")
    prov = provenance(cfg.model, device)
    if tracker:
        tracker.log_params(to_dict(cfg))
        log_provenance(tracker, prov)
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
                     "warnings": warnings, "attributes": {}, "provenance": prov}
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
                          numbers, flat, list(numbers["statements"]), tracker.run_id)


def safe_name(text: str) -> str:
    """A file-name-safe version of an attribute name (keeps letters, digits, - and _)."""
    cleaned = "".join(c if c.isalnum() or c in "-_" else "_" for c in text)
    return cleaned or hashlib.sha1(text.encode()).hexdigest()[:8]
