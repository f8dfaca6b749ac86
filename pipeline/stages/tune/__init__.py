"""Stage `tune`: Ray Tune sweeps lambda4 and the landmark subset against the held-out emotion-drift objective.

    cfg = load_config(TuneConfig, "tune.yaml", ["num_samples=8"])
    result = run_tune(cfg)          # result.best_config_path: a TrainConfig YAML for `hfld train --config`

Modules: config.py (TuneConfig), space.py (search spaces), objective.py (held-out set, objective,
score), trial.py (a trial's config and probe), results.py (rows, tables, plot, best config),
ray_tune.py (Ray Tune glue: trials, phases, nested MLflow runs).

Search space: a YAML file (`space`: a path, or the name of a file in tune_spaces/), validated before
anything starts (unknown keys, unknown landmark groups or attributes of the configured preset, bad
ranges and empty subsets are ConfigErrors naming the file and the key):

    presets: [starter]                  # optional: presets whose landmark model the group names fit
    lambda4: {distribution: loguniform, low: 1.0e-2, high: 1.0e+4}   # or uniform, or choice + values
    landmark_subsets:                   # name -> groups of the preset's landmark model
      mouth: [outer_mouth, inner_mouth]
    attribute_sets: {male: [Male]}      # optional: name -> edited attributes
    layer_masks: {coarse: [0, 1, 2, 3]} # optional: name -> latent layers T may edit ([] = all)

Trials: every combination of the named choices (subset x attribute set x layer mask: a grid) is tried
with `num_samples` values of lambda4 each, drawn by Tune's BasicVariantGenerator seeded with
`search_seed`. The baseline (lambda4 = 0, the exact point, no landmark loss) is trained first, once
per (attribute set, layer mask), without early stopping. Every trial, the baseline included, is
scored the same way (objective.py): score = emotion drift, subject to an ABSOLUTE edit-strength
floor (`objective.strength_floor`, default 0.5: strength = mean P_a(x' | must-exist) - mean
P_a(x' | non-exist), the weakest edited attribute's); a trial below it is infeasible and ranks after
every feasible one. The baseline's strength is reported, never used as the bar: a baseline that
does not edit must not make not editing acceptable. The baselines are rows of the results (role
"baseline") and can win: a sweep may find that no lambda4 > 0 beats lambda4 = 0.

Each trial is a Ray Train run (the Tune + Train pattern of Ray 2.60, see stages/train/ray_train.py): a
function trainable (`trial_driver`, holding no CPU: {"CPU": 0, "memory": driver_memory_mb}) builds
the trial's TrainConfig and calls `run_train` with `callbacks=[TuneReportCallback()]` and an
`ObjectiveProbe`: every `scheduler.eval_every` steps (the trial's checkpoint interval) rank 0
measures the objective on the first `objective.intermediate_samples` held-out faces and its report
carries it to Tune, where ASHA (time attribute "step") stops the trials that fall behind; after the
last step it measures the whole held-out set. `trial_scaling` sets each trial's workers (num_workers
>= 1, cpus_per_worker, use_gpu, gpus_per_worker: fractions share a GPU between trials) and
`max_concurrent_trials` how many run at once. A trial that fails (a crashed worker, a NaN loss) is an
ERROR row; the sweep goes on. A failing baseline stops the sweep (there is nothing to compare with).

Outputs, in <work_dir>/tune/<name>/: best_train.yaml (the base `train` config with the winning
lambda4, landmark groups, attributes and layer mask: `hfld train --config best_train.yaml`),
trials.csv (every trial: status COMPLETED / STOPPED (early stopping; its metrics are the last
intermediate ones) / ERROR, its choices, every objective component, score, feasibility, MLflow run
id, the trial's T; a first line starting with "#" states the score's definition, so read it with
pandas.read_csv(path, comment="#") or pipeline.stages.tune.results.read_table), pareto.png (edit strength vs.
emotion drift, the floor drawn, infeasible trials as crosses, baseline and best marked),
held_out.safetensors (the fixed faces and edits),
summary.json, space.yaml (a copy of the space) and config.yaml. The best is the argmin of `score`
over COMPLETED trials. Trial runs live in trials/, Ray's state in ray/ (see trial_scaling).
MLflow: a parent run for the sweep (params = the resolved config, metrics best.* and baseline.*,
the files above as artifacts) and a nested run per trial (its TrainConfig, lambda4 and subset params,
objective metrics at every evaluation step; early-stopped trials end KILLED, failed ones FAILED).

Ray's dashboard (ray[default], which the project installs) should run with the Ray the sweep uses:
Ray Train's controller calls its state API, among other things to release the workers and placement
group of a trial that Tune stopped early. Without it (ray.init(include_dashboard=False)) every Train
run waits on state-API timeouts and early-stopped trials keep their CPUs/GPUs until Ray shuts down.

Test-only hook: HFLD_TUNE_FAIL_SUBSET=<subset name> in the environment of the process calling
run_tune makes every trial of that subset fail on its rank 0 worker before training starts.
"""


from __future__ import annotations

import json
import shutil
import time
from dataclasses import replace
from pathlib import Path

import yaml

from pipeline.core.config import ConfigError, to_dict
from pipeline.core.io import json_safe
from pipeline.core.locks import LOCK_FILE, run_lock
from pipeline.core.paths import absolute_paths, check_output_locations
from pipeline.core.sampling import resolve_device
from pipeline.infra.tracking import Tracker, log_provenance, stage_run, tracking_locations
from pipeline.presets import build_bundle
from pipeline.presets.provenance import provenance
from pipeline.stages.train import resolve_attributes
from pipeline.stages.tune.config import ObjectiveConfig, SchedulerConfig, TuneConfig
from pipeline.stages.tune.objective import SCORE_DEFINITION, build_held_out, emotion_judge, strength_model
from pipeline.stages.tune.results import (COMPLETED, ERROR, STOPPED, TuneFailed, TuneResult, best_train_config,
                                          load_sweep, pick_best, write_best_config, write_pareto_plot, write_table)
from pipeline.stages.tune.space import TuneSpace, bundle_vocabulary, check_space, load_space, resolve_space_path

__all__ = ["ObjectiveConfig", "SchedulerConfig", "TuneConfig", "TuneFailed", "TuneResult", "load_space",
           "load_sweep", "pick_best", "run_tune"]


def log_sweep(tracker, cfg: TuneConfig, rows: list[dict], best: dict, files: dict[str, Path]) -> None:
    baselines = [r for r in rows if r["role"] == "baseline"]
    metrics = {"n_trials": float(len(rows)), "n_completed": float(sum(r["status"] == COMPLETED for r in rows)),
               "n_stopped": float(sum(r["status"] == STOPPED for r in rows)),
               "n_errors": float(sum(r["status"] == ERROR for r in rows))}
    for prefix, r in (("best", best), *(("baseline", b) for b in baselines[:1])):
        for key in ("score", "lambda4", "emotion_tv_pp", "landmark_drift", "strength"):
            metrics[f"{prefix}.{key}"] = r[key]
        metrics[f"{prefix}.feasible"] = float(bool(r.get("feasible")))
    tracker.log_metrics(metrics)
    tracker.set_tags({"best_trial": best["trial_id"], "best_subset": best["subset"],
                      "best_run_id": best.get("mlflow_run_id", ""), "out_dir": str(cfg.out_dir)})
    for p in files.values():
        tracker.log_artifact(p, "tune")


def _covered_attributes(space: TuneSpace, base_attributes: tuple[str, ...]) -> tuple[str, ...]:
    if not space.attribute_sets:
        return base_attributes
    seen: list[str] = []
    for attrs in space.attribute_sets.values():
        seen += [a for a in attrs if a not in seen]
    return tuple(seen)


def check_tune_locations(cfg: TuneConfig, tracker: Tracker | None) -> None:
    own_store = tracking_locations(cfg.tracking, cfg.work_dir) if tracker is None else {}
    check_output_locations({"work_dir": cfg.work_dir, "run_name": cfg.out_dir, **own_store},
                           {"trial_scaling.storage_path": cfg.trial_scaling.storage_path})


def prepare(cfg: TuneConfig, print_fn=print):
    """Everything checked and built before Ray starts: space, networks, held-out set, output folder."""
    check_tune_locations(cfg, None)
    space = load_space(cfg.space, cfg.train.model.preset)              # cheap: fails first
    out_dir = cfg.out_dir
    if out_dir.exists() and any(p.name != LOCK_FILE for p in out_dir.iterdir()):
        finished = (out_dir / "summary.json").is_file()
        raise ConfigError(f"run_name: {out_dir} already holds a{'' if finished else 'n unfinished'} sweep; choose "
                          "another run_name" + (", or set resume=auto to use its results" if finished
                                                else " (or delete it)"))
    device = resolve_device(cfg.objective.device)
    bundle = build_bundle(cfg.train.model, device)
    check_space(space, cfg.train.model.preset, bundle_vocabulary(bundle))
    base_attributes = resolve_attributes(cfg.train, bundle)
    for attrs in space.attribute_sets.values():                          # T needs >= 1 column, names known
        resolve_attributes(replace(cfg.train, attributes=attrs), bundle)
    _, labels = emotion_judge(bundle, cfg.objective.judge)
    o = cfg.objective
    _, scored = strength_model(bundle, o.strength_by)
    unscored = [a for a in _covered_attributes(space, base_attributes) if a not in scored]
    if unscored:
        raise ConfigError(f"objective.strength_by: {o.strength_by!r} does not score {unscored} (it scores {scored}); "
                          "use strength_by=regressor")
    print_fn(f"[tune] held-out set: {o.n_samples} faces (seed {o.seed}), edits to both extremes of "
             f"{list(_covered_attributes(space, base_attributes))} ({o.edit_mode})")
    held_out = build_held_out(bundle, _covered_attributes(space, base_attributes), n=o.n_samples, seed=o.seed,
                              truncation=cfg.train.truncation, noise_mode=cfg.train.noise_mode,
                              edit_mode=o.edit_mode, fixed_amount=o.fixed_amount, batch_size=o.batch_size,
                              device=device)
    return space, held_out, labels


def run_tune(cfg: TuneConfig, *, tracker: Tracker | None = None, print_fn=print) -> TuneResult:
    """Run the sweep (baselines, then the trials) and write its results; see the module docstring.

    tracker: None = an MLflow run of its own (cfg.tracking); a tracker = a child run of it.
    """
    t0 = time.perf_counter()
    check_tune_locations(cfg, tracker)
    cfg = absolute_paths(cfg)
    if cfg.resume == "auto" and (cfg.out_dir / "summary.json").is_file():
        load_space(cfg.space, cfg.train.model.preset)
        result = load_sweep(cfg.out_dir)
        print_fn(f"[tune] resume=auto: {cfg.out_dir} holds a finished sweep; best: trial {result.best['trial_id']} "
                 f"(lambda4 {result.best['lambda4']:.4g}, subset {result.best['subset']!r})")
        return result
    with run_lock(cfg.out_dir, "run_name", print_fn) as lock:
        return _sweep_locked(cfg, lock, tracker, print_fn, t0)


def _sweep_locked(cfg: TuneConfig, lock, tracker: Tracker | None, print_fn, t0: float) -> TuneResult:
    space, held_out, labels = prepare(cfg, print_fn)
    out_dir = cfg.out_dir
    out_dir.mkdir(parents=True, exist_ok=True)
    files = {"held_out": held_out.save(out_dir / "held_out.safetensors"), "space": out_dir / "space.yaml",
             "config": out_dir / "config.yaml"}
    shutil.copyfile(resolve_space_path(cfg.space), files["space"])
    files["config"].write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False))

    prov = provenance(cfg.train.model, resolve_device(cfg.objective.device))
    with stage_run(cfg.tracking, tracker, work_dir=cfg.work_dir, run_name=cfg.name, stage="tune",
                   tags={"preset": cfg.train.model.preset, "space": str(resolve_space_path(cfg.space))}, lock=lock,
                   print_fn=print_fn) as run:
        if run:
            run.log_params(to_dict(cfg))
            log_provenance(run, prov)
        # Imported here: Ray (seconds to import) is only needed once everything is validated.
        from pipeline.stages.tune.ray_tune import annotate_child_runs, sweep
        rows = sweep(cfg, space, held_out, run, out_dir, print_fn)
        if run:
            annotate_child_runs(run, rows)
        try:
            best = pick_best(rows)
        except TuneFailed:
            write_table(out_dir / "trials.csv", rows, labels, list(held_out.attributes))
            raise
        for r in rows:
            r["best"] = r is best
        best_cfg = best_train_config(cfg, space, best)
        files["best_config"] = write_best_config(out_dir / "best_train.yaml", cfg, best_cfg, best)
        files["table"] = write_table(out_dir / "trials.csv", rows, labels, list(held_out.attributes))
        files["plot"] = write_pareto_plot(out_dir / "pareto.png", rows, best, cfg.objective.strength_floor,
                                          f"{cfg.name}: {len(rows)} trials on {held_out.meta['n']} held-out faces")
        summary = {"name": cfg.name, "score_definition": SCORE_DEFINITION, "config": to_dict(cfg),
                   "space": space.as_dict(), "held_out": held_out.meta, "emotion_labels": labels,
                   "best": best, "baselines": [r for r in rows if r["role"] == "baseline"],
                   "counts": {s: sum(r["status"] == s for r in rows) for s in (COMPLETED, STOPPED, ERROR)},
                   "files": {k: p.name for k, p in files.items()}, "seconds": time.perf_counter() - t0,
                   "mlflow_run_id": getattr(run, "run_id", None), "provenance": prov, "trials": rows}
        files["summary"] = out_dir / "summary.json"
        files["summary"].write_text(json.dumps(json_safe(summary), indent=1))
        if run:
            log_sweep(run, cfg, rows, best, files)
    for b in (r for r in rows if r["role"] == "baseline" and r["status"] == COMPLETED):
        print_fn(f"[tune] baseline (lambda4 = 0) strength {b['strength']:.3g} by {cfg.objective.strength_by} "
                 f"({'feasible' if b.get('feasible') else 'BELOW the floor ' + format(cfg.objective.strength_floor, 'g')}), "
                 f"emotion drift {b['emotion_tv_pp']:.3g} pp")
    print_fn(f"[tune] best: trial {best['trial_id']} ({best['role']}) subset {best['subset']!r} lambda4 "
             f"{best['lambda4']:.4g}: score {best['score']:.4g}, emotion drift {best['emotion_tv_pp']:.3g} pp, "
             f"strength {best['strength']:.3g}")
    if not best.get("feasible"):
        print_fn(f"[tune] warning: NO trial reached the strength floor {cfg.objective.strength_floor:g}; the best is "
                 "the least infeasible one. Train longer or with a higher lr (benchmarks/calibrate_starter.py)")
    print_fn(f"[tune] train it: hfld train --config {files['best_config']}")
    return TuneResult(out_dir, files["best_config"], files["table"], files["plot"], files["held_out"],
                      files["summary"], rows, best, getattr(run, "run_id", None))
