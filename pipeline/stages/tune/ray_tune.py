"""Ray Tune glue of the tune stage: the trials as function trainables that each run one Ray Train fit,
the two phases (baselines, then the ASHA sweep), and the trials' nested MLflow runs.

Each trial is a Ray Train run (the Tune + Train pattern of Ray 2.60): a function trainable
(`trial_driver`, holding no CPU: {"CPU": 0, "memory": driver_memory_mb}) builds the trial's
TrainConfig and calls pipeline.stages.train.run_train with `callbacks=[TuneReportCallback()]` and
an `ObjectiveProbe` (trial.py), whose metrics reach Tune, where ASHA (time attribute "step") stops
the trials that fall behind.
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import replace
from pathlib import Path

from mlflow.entities import Param
from ray import tune
from ray.tune.integration.ray_train import TuneReportCallback
from ray.tune.schedulers import ASHAScheduler
from ray.tune.search.basic_variant import BasicVariantGenerator

from pipeline.infra.ray_session import ray_session
from pipeline.stages.train import run_train
from pipeline.stages.tune.config import TuneConfig
from pipeline.stages.tune.objective import HeldOutSet
from pipeline.stages.tune.results import COMPLETED, ERROR, METRIC_COLUMNS, STOPPED, TuneFailed
from pipeline.stages.tune.space import BASELINE_SUBSET, DEFAULT_CHOICE, TuneSpace
from pipeline.stages.tune.trial import (FAIL_SUBSET_ENV, ObjectiveProbe, TrialSetup, trial_base_config,
                                        trial_train_config, trial_tracking, ray_storage)

METRIC, MODE = "score", "min"


def trial_driver(params: dict, setup: TrialSetup) -> None:
    """Ray Tune function trainable: one Ray Train run whose reports reach Tune through TuneReportCallback."""
    trial_id = tune.get_context().get_trial_id()
    cfg = trial_train_config(setup.base, setup.space, params, f"{setup.run_prefix}-{trial_id}")
    fail = (f"{FAIL_SUBSET_ENV}={setup.fail_subset}: trial {trial_id} fails on purpose"
            if setup.fail_subset and params["subset"] == setup.fail_subset else "")
    probe = replace(setup.probe, inject_failure=fail)
    run_train(cfg, callbacks=[TuneReportCallback()], probe=probe)


def choice_grid(space: TuneSpace) -> dict:
    grid = {}
    grid["attributes"] = tune.grid_search(list(space.attribute_sets)) if space.attribute_sets else DEFAULT_CHOICE
    grid["layer_mask"] = tune.grid_search(list(space.layer_masks)) if space.layer_masks else DEFAULT_CHOICE
    return grid


class TrialProgress(tune.Callback):
    """One line per finished trial (completed, stopped early or failed) with the phase's elapsed time and
    an ETA from the mean time per finished trial and the number running at once."""

    def __init__(self, phase: str, total: int, concurrent: int, print_fn):
        self.phase, self.total, self.concurrent, self.print = phase, total, max(1, concurrent), print_fn
        self.done, self.t0 = 0, time.perf_counter()

    def _finished(self, trial) -> None:
        self.done += 1
        elapsed = time.perf_counter() - self.t0
        left = max(self.total - self.done, 0)
        eta = elapsed / self.done * left / min(self.concurrent, max(left, 1)) if left else 0.0
        self.print(f"[tune] {self.phase}: {self.done}/{self.total} trials finished (last: {trial.trial_id}) | "
                   f"elapsed {elapsed / 60:.1f} min | eta {eta / 60:.1f} min", flush=True)

    def __getstate__(self):
        # Tune pickles its run config (callbacks included) into the experiment state; the printing
        # function (Ray may have wrapped the builtin print) stays with the live object.
        return {k: v for k, v in self.__dict__.items() if k != "print"}

    def __setstate__(self, state):
        self.__dict__.update(state, print=print)

    def on_trial_complete(self, iteration, trials, trial, **info):
        self._finished(trial)

    def on_trial_error(self, iteration, trials, trial, **info):
        self._finished(trial)


def make_tuner(cfg: TuneConfig, setup: TrialSetup, param_space: dict, name: str, num_samples: int, scheduler,
               storage: str, progress: TrialProgress | None = None):
    trainable = tune.with_resources(tune.with_parameters(trial_driver, setup=setup),
                                    {"CPU": 0, "memory": cfg.driver_memory_mb * 2**20})
    return tune.Tuner(
        trainable, param_space=param_space,
        # The concurrency limit goes to the generator: Tune ignores max_concurrent_trials for one.
        # reuse_actors stays off: a reused driver keeps its first trial's context (id, run name).
        tune_config=tune.TuneConfig(metric=METRIC, mode=MODE, num_samples=num_samples, scheduler=scheduler,
                                    search_alg=BasicVariantGenerator(random_state=cfg.search_seed,
                                                                     max_concurrent=cfg.max_concurrent_trials),
                                    reuse_actors=False),
        run_config=tune.RunConfig(name=name, storage_path=str(storage), verbose=cfg.verbose,
                                  failure_config=tune.FailureConfig(max_failures=0, fail_fast=False),
                                  callbacks=[progress] if progress else None))


def asha(cfg: TuneConfig):
    """ASHA on `score` over `step`, with every rung before the last step (None: no early stopping).

    A trial that reaches max_steps must end by itself, after its Ray Train run has copied T into the
    run directory and closed its MLflow run; a stop there would cut both short. ASHA puts rungs at
    grace_period * reduction_factor^k <= max_t and may stop at max_t (stop_last_trials), so max_t is
    max_steps - 1 and stop_last_trials is off.
    """
    sc = cfg.scheduler
    if sc.kind == "fifo" or sc.grace_period >= sc.max_steps:
        return None
    return ASHAScheduler(time_attr="step", max_t=sc.max_steps - 1, grace_period=sc.grace_period,
                         reduction_factor=sc.reduction_factor, stop_last_trials=False)


def _error_text(error: BaseException | None) -> str:
    if error is None:
        return ""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    # Ray wraps the trial's exception; its last lines name the real error.
    return " | ".join(lines[-2:])[:400] if lines else type(error).__name__


def result_row(result, setup: TrialSetup) -> dict:
    """One row of trials.csv from a Tune Result."""
    params, metrics = dict(result.config or {}), dict(result.metrics or {})
    status = ERROR if result.error else COMPLETED if metrics.get("objective_final") == 1 else STOPPED
    trial_id = metrics.get("trial_id") or Path(result.path).name
    space = setup.space
    subset = params.get("subset", "")
    row = {"trial_id": trial_id, "role": params.get("role", ""), "status": status,
           "lambda4": float(params.get("lambda4", math.nan)), "subset": subset,
           "landmark_groups": "+".join(space.landmark_subsets.get(subset, ())),
           "attributes": params.get("attributes", DEFAULT_CHOICE), "layer_mask": params.get("layer_mask", DEFAULT_CHOICE),
           "steps": int(metrics.get("step", 0) or 0)}
    measured = {k: v for k, v in metrics.items()
                if k in METRIC_COLUMNS or k.startswith(("emotion_abs_pp_", "strength_"))}
    for key in sorted(set(METRIC_COLUMNS) | set(measured)):
        value = measured.get(key) if status != ERROR else None
        row[key] = float(value) if isinstance(value, (int, float)) else math.nan
    row["feasible"] = bool(metrics["feasible"]) if status != ERROR and "feasible" in metrics else None
    row["run_name"] = f"{setup.run_prefix}-{trial_id}"
    directions = Path(setup.base.work_dir) / row["run_name"] / "directions.safetensors"
    row["directions"] = str(directions) if status == COMPLETED and directions.is_file() else ""
    row["mlflow_run_id"] = ""
    row["checkpoint"] = metrics.get("checkpoint_path", "") or ""
    row["error"] = _error_text(result.error)
    return row


def run_phase(cfg: TuneConfig, setup: TrialSetup, param_space: dict, name: str, num_samples: int, scheduler,
              storage: str, total: int = 0, print_fn=print) -> list:
    progress = TrialProgress(name, total, cfg.max_concurrent_trials, print_fn) if total else None
    grid = make_tuner(cfg, setup, param_space, name, num_samples, scheduler, storage, progress).fit()
    return [grid[i] for i in range(len(grid))]


def annotate_child_runs(tracker, rows: list[dict]) -> None:
    """Per trial row: its nested MLflow run's id, params lambda4/subset, status tags; early-stopped
    trials (whose processes Tune ended) are marked KILLED instead of staying RUNNING."""
    client = tracker.client
    run = client.get_run(tracker.run_id)
    children = client.search_runs([run.info.experiment_id],
                                  filter_string=f"tags.mlflow.parentRunId = '{tracker.run_id}'", max_results=10000)
    by_name = {c.info.run_name: c for c in children}
    for r in rows:
        child = by_name.get(r["run_name"])
        if child is None:
            continue
        r["mlflow_run_id"] = child.info.run_id
        have = set(child.data.params)
        params = [Param(k, str(v)) for k, v in (("lambda4", r["lambda4"]), ("subset", r["subset"]),
                                                 ("attribute_set", r["attributes"]), ("layer_mask_set", r["layer_mask"]),
                                                 ("tune_role", r["role"])) if k not in have]
        if params:
            client.log_batch(child.info.run_id, params=params)
        for k, v in (("tune_trial_id", r["trial_id"]), ("tune_status", r["status"]), ("tune_role", r["role"])):
            client.set_tag(child.info.run_id, k, v)
        # Tune ends an early-stopped trial's process, so its run was left RUNNING or marked FAILED.
        wanted = {STOPPED: "KILLED", ERROR: "FAILED", COMPLETED: "FINISHED"}[r["status"]]
        if child.info.status == "RUNNING" or (r["status"] == STOPPED and child.info.status != wanted):
            client.set_terminated(child.info.run_id, wanted)


def sweep(cfg: TuneConfig, space: TuneSpace, held_out: HeldOutSet, tracker, out_dir: Path, print_fn) -> list[dict]:
    """Phase 1: the baselines (FIFO, never stopped early). Phase 2: the sweep (ASHA). Returns rows."""
    o = cfg.objective
    probe = ObjectiveProbe(held_out.to_bytes(), o.judge, o.intermediate_samples, o.strength_floor, o.strength_by,
                           o.penalty, o.batch_size)
    base = trial_base_config(cfg, out_dir, trial_tracking(cfg, tracker))
    setup = TrialSetup(base, space, probe, run_prefix=cfg.name, fail_subset=os.environ.get(FAIL_SUBSET_ENV, ""))
    storage = ray_storage(cfg)
    with ray_session():
        baseline_space = {"role": "baseline", "lambda4": 0.0, "subset": BASELINE_SUBSET, **choice_grid(space)}
        print_fn("[tune] phase 1: baseline (lambda4 = 0) for every attribute set x layer mask")
        n_base = max(1, len(space.attribute_sets)) * max(1, len(space.layer_masks))
        baselines = run_phase(cfg, setup, baseline_space, "baseline", 1, None, storage, n_base, print_fn)
        rows = [result_row(r, setup) for r in baselines]
        failed = [(row, r) for row, r in zip(rows, baselines) if row["status"] != COMPLETED]
        if failed:
            row, r = failed[0]
            raise TuneFailed(f"the baseline trial (lambda4 = 0, attributes {row['attributes']!r}, layer mask "
                             f"{row['layer_mask']!r}) did not complete: {row['error'] or row['status']}; the sweep "
                             "compares every lambda4 > 0 with it")
        sweep_space = {"role": "trial", "lambda4": space.lambda4.domain(),
                       "subset": tune.grid_search(list(space.landmark_subsets)), **choice_grid(space)}
        n = cfg.num_samples * len(space.landmark_subsets) * max(1, len(space.attribute_sets)) * max(1, len(space.layer_masks))
        print_fn(f"[tune] phase 2: {n} trials ({cfg.num_samples} lambda4 draws per combination), "
                 f"{cfg.scheduler.kind} scheduler, {cfg.max_concurrent_trials} at a time")
        results = run_phase(cfg, setup, sweep_space, "sweep", cfg.num_samples, asha(cfg), storage, n, print_fn)
        rows += [result_row(r, setup) for r in results]
    for r in rows:
        if r["status"] == ERROR:
            print_fn(f"[tune] trial {r['trial_id']} (subset {r['subset']}, lambda4 {r['lambda4']:.4g}) failed: {r['error']}")
    return rows
