"""Stage `evaluate`: edit strength first, then drift at matched edit strength, then the paper's tables,
for baseline T's (lambda4 = 0) against HFLD T's, one or more training seeds per arm.

    result = run_evaluate(cfg)                                   # T's from cfg.baseline / cfg.hfld
    result = run_evaluate(cfg, tracker=parent, baseline=[t0, t1, t2], hfld=[h0, h1, h2])   # the `run` stage

Modules: config.py (EvaluateConfig), measure.py (T's, faces, measurements), numbers.py (strength,
gate, matched strength, tables, hierarchical bootstrap), report.py (Markdown/HTML report, figures).

Every T edits the same fixed, seeded set of faces: face i is z_i ~ N(0, I) drawn from
rng_for(seed, Stream.HELD_OUT, i) (then generator noise, if noise_mode is "random"), so every
evaluation of every T with the same seed sees the same faces, whatever the batch size.

Edits to the two extremes. For target attribute a (column j of T, all other columns 0):
- edit_mode "target" (default, the "Enjoy Your Editing" reference code's semantics: an edit amount
  is the desired change of the attribute's probability): s_j = t - R(x)_a with t = 0 for the
  "non-exist" set and t = 1 for the "must-exist" set. The trajectory figure uses t = 0 .. 1.
- edit_mode "fixed": s_j = -fixed_amount / +fixed_amount for every face (the paper's s in [-1, 1]).
Every T is evaluated at every edit scale alpha of cfg.alphas (s multiplied by alpha; alpha = 1 is
the paper's protocol).

What the report states, in this order (numbers.py, report.py):
1. Edit strength per arm and attribute at alpha = 1, strength_a = mean P_a(x' | t = 1) - mean
   P_a(x' | t = 0), by the training regressor R and by every held-out attribute judge, with the gate
   of pipeline/core/strength.py: NOT EDITING (by R < strength_floor) or FOOLING R (by a judge <
   judge_strength_floor). No drift reduction is stated for an attribute where either arm fails it.
2. Drift at matched strength: each arm's curve (strength, drift) over alpha = 0 (exactly (0, 0)) and
   cfg.alphas, read where it first reaches each of cfg.strength_levels (strength by the held-out
   attribute judge where there is one: T is trained against R and can fool it); the headline
   measures are the held-out emotion judges and the held-out landmark judges; the training networks'
   drifts are secondary rows. Figure drift_vs_strength_<attribute>.png.
3. The paper's fixed-target protocol (t in {0, 1}, alpha = 1): Table V exactly (per emotion, mean
   over the must-exist set minus mean over the non-exist set, pp), Tables I-IV (change ratios), and
   our extras labelled as such (total-variation drift, |p(x') - p(x)| per emotion, landmark drift,
   identity similarity).
Every interval is a percentile bootstrap that resamples an arm's seeds, then faces within each seed
(pipeline.core.metrics.HierarchicalDraws); "reduced at 95%" is said only when it excludes 0.
Every measure names its network and whether it was in the training loop or held out.

Output directory (default <work_dir>/evaluate/<name>): report.md, report.html (self-contained),
metrics.json (every number of the report, plus the resolved config), drift_vs_strength_<attribute>.png,
trajectory_<attribute>.png, config.yaml. With a tracker the same numbers are MLflow metrics and the
files artifacts.
"""


from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from pipeline.core.config import to_dict
from pipeline.core.io import atomic_write_bytes, json_safe
from pipeline.core.paths import absolute_paths, check_output_locations
from pipeline.core.sampling import resolve_device
from pipeline.infra.tracking import Tracker, log_provenance, stage_run, tracking_locations
from pipeline.presets import ModelBundle, build_bundle
from pipeline.presets.provenance import provenance
from pipeline.stages.evaluate import report as R
from pipeline.stages.evaluate.config import GESTURE_FEATURES, METHODS, EvaluateConfig
from pipeline.stages.evaluate.measure import (DirectionsSource, Nets, collect, load_pair, prepare_directions,
                                              resolve_targets, seeds_per_arm, trajectory_images)
from pipeline.stages.evaluate.numbers import (Data, Stats, attribute_numbers, describe_methods, describe_networks,
                                              flat_metrics, gate, lineage_notes, match_scorer, matched_numbers,
                                              measure_labels, overall_numbers, strength_numbers)

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
    strength_figures: dict[str, Path] = field(default_factory=dict)   # attribute -> drift vs strength PNG


def run_evaluate(cfg: EvaluateConfig, *, tracker: Tracker | None = None, bundle: ModelBundle | None = None,
                 baseline: DirectionsSource = None, hfld: DirectionsSource = None,
                 print_fn: Callable = print) -> EvaluateResult:
    """Evaluate the baseline T's against the HFLD T's; write the report; return every number and path.

    baseline / hfld: override cfg.baseline / cfg.hfld with one T or a list of T's (one per training
    seed), each a path or MLflow URI, a loaded DirectionsFile or a training result (anything with
    .directions_path) - the hook for the `run` stage. bundle: networks already built (their device wins over cfg.device).
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
    nets = Nets.of(bundle)
    n_seeds = seeds_per_arm(directions)
    for a in targets:
        match_scorer(cfg, nets, a)                      # a bad match_by fails before any work
    names = list(bundle.regressor.names)
    warnings = lineage_notes(directions, bundle)
    for w in warnings:
        print_fn(f"[evaluate] warning: {w}")
    prov = provenance(cfg.model, device)
    if tracker:
        tracker.log_params(to_dict(cfg))
        log_provenance(tracker, prov)
        tracker.set_tags({f"{d.key}{d.seed}_directions": d.source for d in directions}
                         | {f"{d.key}{d.seed}_sha256": d.file.meta.get("sha256", "") for d in directions}
                         | {f"{d.key}{d.seed}_run_id": d.file.meta.get("mlflow_run_id", "") for d in directions}
                         | {f"{d.key}_directions": d.source for d in directions if d.seed == 0})

    print_fn(f"[evaluate] {cfg.n_samples} faces, targets {list(targets)}, T's per arm {n_seeds}, edit scales "
             f"{list(cfg.sorted_alphas)}, emotion judges {list(nets.emotion)}, landmark models {list(nets.landmarks)}, "
             f"attribute models {list(nets.attributes)}, edit_mode {cfg.edit_mode}, on {device}")
    data = Data(collect(cfg, bundle, nets, directions, targets, device, print_fn), n_seeds, cfg.sorted_alphas)
    stats = Stats(cfg, n_seeds)
    labels = {d.key: d.label for d in directions}
    numbers: dict = {"n_samples": cfg.n_samples, "seed": cfg.seed, "edit_mode": cfg.edit_mode,
                     "fixed_amount": cfg.fixed_amount, "confidence": cfg.confidence,
                     "bootstrap_resamples": cfg.bootstrap_resamples, "targets": list(targets),
                     "alphas": list(cfg.sorted_alphas), "strength_levels": list(cfg.strength_levels),
                     "strength_floor": cfg.strength_floor, "judge_strength_floor": cfg.judge_strength_floor,
                     "seeds_per_arm": n_seeds, "methods": describe_methods(directions),
                     "networks": describe_networks(bundle, nets), "warnings": warnings,
                     "strength": {}, "gate": {}, "matched": {}, "attributes": {}, "provenance": prov}
    measures = measure_labels(nets)
    drifts = {}
    for a in targets:
        numbers["strength"][a] = strength_numbers(cfg, data, nets, a, stats)
        numbers["gate"][a] = gate(numbers["strength"][a], labels, a, cfg)
        numbers["matched"][a] = matched_numbers(cfg, data, nets, a, stats, measures)
        numbers["attributes"][a], drifts[a] = attribute_numbers(cfg, data, nets, a, names, stats)
    comparable = {a: d for a, d in drifts.items() if numbers["gate"][a]["comparable"]}
    numbers["overall"] = overall_numbers(comparable, nets, stats)
    for w in R.edit_warnings(numbers):
        print_fn(f"[evaluate] warning: {w}")
        numbers["warnings"].append(w)
    numbers["statements"] = R.statements(numbers)

    out_dir = cfg.out_dir
    out_dir.mkdir(parents=True, exist_ok=True)
    figures = {a: R.write_trajectory_figure(out_dir / f"trajectory_{safe_name(a)}.png", a, imgs,
                                            {d.key: d.label for d in directions}, cfg)
               for a, imgs in trajectory_images(cfg, bundle, directions, targets, device).items()}
    curves = {a: R.write_strength_figure(out_dir / f"drift_vs_strength_{safe_name(a)}.png", a, numbers["matched"][a],
                                         labels, numbers)
              for a in targets}
    numbers["files"] = {"figures": {a: p.name for a, p in figures.items()},
                        "strength_figures": {a: p.name for a, p in curves.items()}}
    atomic_write_bytes(out_dir / "config.yaml", yaml.safe_dump(to_dict(cfg), sort_keys=False).encode())
    md, html = R.render(numbers, figures, curves)
    paths = {"report.md": out_dir / "report.md", "report.html": out_dir / "report.html",
             "metrics.json": out_dir / "metrics.json"}
    atomic_write_bytes(paths["report.md"], md.encode())
    atomic_write_bytes(paths["report.html"], html.encode())
    document = json_safe({"config": to_dict(cfg), **numbers})
    atomic_write_bytes(paths["metrics.json"], json.dumps(document, indent=1).encode())
    flat = flat_metrics(numbers)
    if tracker:
        tracker.log_metrics(flat)
        for p in [*paths.values(), out_dir / "config.yaml", *figures.values(), *curves.values()]:
            tracker.log_artifact(p, "evaluate")
    for s in numbers["statements"]:
        print_fn(f"[evaluate] {s}")
    print_fn(f"[evaluate] report: {paths['report.html']}")
    return EvaluateResult(out_dir, paths["report.md"], paths["report.html"], paths["metrics.json"], figures,
                          numbers, flat, list(numbers["statements"]), tracker.run_id, curves)


def safe_name(text: str) -> str:
    """A file-name-safe version of an attribute name (keeps letters, digits, - and _)."""
    cleaned = "".join(c if c.isalnum() or c in "-_" else "_" for c in text)
    return cleaned or hashlib.sha1(text.encode()).hexdigest()[:8]
