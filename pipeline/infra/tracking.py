"""MLflow tracking shared by every stage.

    with open_tracker(cfg.tracking, work_dir=cfg.work_dir, run_name=cfg.name, stage="train",
                      tags={"preset": "tiny"}) as tracker:
        tracker.log_params(to_dict(cfg))           # flattened params + the full config as params.yaml
        tracker.log_metrics({"total": 1.5}, step=10)
        tracker.log_artifact(path, "directions")
        tracker.register_model("directions", "hfld-directions")
    # the run ends FINISHED, or FAILED (KILLED on Ctrl-C) when the block raised

A stage called with no tracker opens its own run (`stage_run(cfg.tracking, None, ...)`), nested under
`tracking.parent_run_id` when that is set; called with a tracker (the `run` pipeline's parent run),
it opens a child run under that tracker. Only rank 0 of a distributed job logs. A run created by one process (the Ray driver) can be
continued by another (the rank 0 worker) with `MLflowTracker.attach`; only the creator ends it.

Across invocations: a resumed training continues the MLflow run that trained its checkpoint
(`stage_run(..., continue_run=...)`, `MLflowTracker.reopen`: the run goes back to RUNNING and this
process ends it); params that changed since (e.g. `iterations`) keep their first value, as MLflow
requires, and the new value is a `param_changed.<key>` tag. A stage holding its folder's lock records
its run there (pipeline.core.locks); a run that a killed process left RUNNING is marked KILLED (with its
RUNNING child runs) by the next invocation that takes the lock over (`close_abandoned_runs`).

Offline by construction: the default backend is a SQLite file under the work dir
(`sqlite:////abs/work_dir/mlflow.db`, artifacts beside it in `mlartifacts/`), MLflow's telemetry is
switched off before mlflow is imported, and nothing here talks to a server unless the user points
`tracking.tracking_uri` (or $MLFLOW_TRACKING_URI) at one. The file store (`file:` URIs) is not used:
MLflow 3 keeps it in maintenance mode.
"""

from __future__ import annotations

import functools
import json
import math
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import yaml

from pipeline.core.config import ConfigError, flatten, require
from pipeline.core.io import atomic_write_bytes
from pipeline.core.signals import signals_deferred

# MLflow 3 sends usage telemetry unless told not to; this project never talks to the network.
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("DO_NOT_TRACK", "true")

DEFAULT_EXPERIMENT = "hfld"
DEFAULT_MODEL_NAME = "hfld-directions"
PARENT_RUN_TAG = "mlflow.parentRunId"   # MLflow's own tag for nesting runs in its UI


@dataclass(frozen=True)
class TrackingConfig:
    """Where and how a stage records itself in MLflow.

    enabled: false = no MLflow at all (a null tracker).
    tracking_uri: "" = $MLFLOW_TRACKING_URI, else sqlite:///<work_dir>/mlflow.db (absolute path).
    experiment: MLflow experiment name.
    register_model: register the final artifact (T) as a new version of `model_name`.
    model_name: registered model name.
    parent_run_id: nest this stage's run under that run (the pipeline's parent run); "" = top level.
    """
    enabled: bool = True
    tracking_uri: str = ""
    experiment: str = DEFAULT_EXPERIMENT
    register_model: bool = True
    model_name: str = DEFAULT_MODEL_NAME
    parent_run_id: str = ""

    def __post_init__(self):
        require(bool(self.experiment.strip()), "tracking.experiment", self.experiment, "must not be empty")
        require(bool(self.model_name.strip()) or not self.register_model, "tracking.model_name", self.model_name,
                "must not be empty when tracking.register_model is true")
        require(not self.tracking_uri.startswith("file:"), "tracking.tracking_uri", self.tracking_uri,
                "is a file store, which MLflow 3 keeps in maintenance mode; use sqlite:////abs/path/mlflow.db")


def resolve_tracking_uri(cfg: TrackingConfig, work_dir: str | Path) -> str:
    """cfg.tracking_uri, else $MLFLOW_TRACKING_URI, else a SQLite file under the work dir (absolute)."""
    uri = cfg.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI", "")
    if uri:
        return uri
    db = Path(work_dir).expanduser().resolve() / "mlflow.db"
    return f"sqlite:///{db.as_posix()}"


def sqlite_path(uri: str) -> Path | None:
    """The database file of a sqlite:/// URI, or None for other backends."""
    prefix = "sqlite:///"
    return Path(uri[len(prefix):]) if uri.startswith(prefix) else None


def seed_sqlite_store(db: Path) -> bool:
    """Start a NEW SQLite store as a copy of an empty, fully migrated one; True when it did.

    MLflow creates a new database by building its ~40 tables and replaying every schema migration:
    2-2.5 s on a 2-core machine, for each new work dir (the test suite makes dozens). The empty store
    is made once per machine and MLflow version, in the zoo cache ($HFLD_CACHE/mlflow/), by MLflow
    itself, so the copy is exactly what MLflow would have built; its "Default" experiment (never used
    here: every stage names its own) gets the artifact folder beside the copy instead of the folder the
    template was made in. An existing database is never touched: the copy is linked into place, which
    fails if another process created the file first. Any failure leaves the creation to MLflow.
    """
    import sqlite3
    import tempfile

    import mlflow

    from pipeline.presets.zoo import cache_dir
    if db.exists():
        return False
    try:
        template = cache_dir() / "mlflow" / f"empty-mlflow-{mlflow.__version__}.db"
        if not template.is_file():
            template.parent.mkdir(parents=True, exist_ok=True)
            with tempfile.TemporaryDirectory(dir=template.parent) as tmp:
                fresh = Path(tmp) / "empty.db"
                from mlflow import MlflowClient
                MlflowClient(tracking_uri=f"sqlite:///{fresh.as_posix()}").search_experiments()
                atomic_write_bytes(template, fresh.read_bytes())     # readers never see half a template
        db.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=db.parent) as tmp:
            copy = Path(tmp) / db.name
            shutil.copyfile(template, copy)
            with sqlite3.connect(copy) as conn:
                conn.execute("UPDATE experiments SET artifact_location = ? WHERE experiment_id = 0",
                             ((db.parent / "mlartifacts" / "0").resolve().as_uri(),))
            conn.close()
            os.link(copy, db)                        # no-clobber: FileExistsError if db appeared meanwhile
        return True
    except (OSError, sqlite3.Error):
        return False


def artifact_location_for(uri: str) -> str | None:
    """Artifacts of a SQLite-backed experiment live beside the database (never in the CWD)."""
    db = sqlite_path(uri)
    return (db.parent / "mlartifacts").resolve().as_uri() if db else None


def git_commit(repo_dir: Path | None = None) -> str:
    """The checked-out commit of the code (for lineage), or "" outside git / before the first commit."""
    repo_dir = repo_dir or Path(__file__).resolve().parents[2]
    try:
        out = subprocess.run(["git", "-C", str(repo_dir), "rev-parse", "HEAD"], capture_output=True,
                             text=True, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return ""
    return out.stdout.strip() if out.returncode == 0 else ""


def param_value(value: Any, limit: int) -> str:
    """MLflow stores params as strings of bounded length: lists/dicts as JSON, long values cut."""
    text = "" if value is None else json.dumps(value) if isinstance(value, (list, tuple, dict)) else str(value)
    if len(text) > limit:
        marker = "...[truncated; see params.yaml]"
        text = text[: limit - len(marker)] + marker
    return text


def _chunks(items: list, size: int):
    for i in range(0, len(items), size):
        yield items[i:i + size]


class NullTracker:
    """Tracking switched off: every call does nothing. Falsy, so `if tracker:` skips work too."""

    run_id: str | None = None
    tracking_uri: str | None = None

    def __bool__(self) -> bool:
        return False

    def log_params(self, params: Mapping[str, Any]) -> None:
        pass

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        pass

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        pass

    def log_dict(self, data: Mapping[str, Any], artifact_file: str) -> None:
        pass

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        pass

    def register_model(self, artifact_path: str, name: str, tags: Mapping[str, Any] | None = None) -> str | None:
        return None

    def end(self, status: str = "FINISHED") -> None:
        pass

    def child(self, *, run_name: str, stage: str, tags: Mapping[str, Any] | None = None) -> "NullTracker":
        return NullTracker()

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        return False


def _not_interrupted(method):
    """A SIGTERM/Ctrl-C arriving during this store write is raised when the write is done, not inside it:
    a KeyboardInterrupt raised inside SQLAlchemy's session can leave a SQLite write transaction open, and
    then every later write of the process (ending the run KILLED) fails with "database is locked" (seen on
    CI: generate stopped during `log_params` exited 1, not 143). A second SIGTERM still exits at once."""
    @functools.wraps(method)
    def guarded(*args, **kwargs):
        with signals_deferred():
            return method(*args, **kwargs)
    return guarded


class MLflowTracker:
    """One MLflow run, written through an explicit MlflowClient (no global active-run state).

    `owns_run`: this object created the run and ends it; an attached tracker (a Ray worker
    continuing the driver's run) logs but leaves ending to the creator. Every write is one uninterrupted
    unit (`_not_interrupted`).
    """

    def __init__(self, client, run_id: str, tracking_uri: str, owns_run: bool, continued: bool = False):
        self.client, self.run_id, self.tracking_uri, self.owns_run = client, run_id, tracking_uri, owns_run
        self.continued = continued     # an earlier invocation's run, reopened (its params already logged)
        self._ended = False

    def __bool__(self) -> bool:
        return True

    # -- creation -------------------------------------------------------------------------------
    @staticmethod
    def _client(uri: str):
        from mlflow import MlflowClient
        db = sqlite_path(uri)
        if db:
            db.parent.mkdir(parents=True, exist_ok=True)
            seed_sqlite_store(db)
        return MlflowClient(tracking_uri=uri, registry_uri=uri)

    @staticmethod
    def _experiment_id(client, name: str, uri: str) -> str:
        from mlflow.exceptions import MlflowException
        exp = client.get_experiment_by_name(name)
        if exp is not None:
            if exp.lifecycle_stage == "deleted":
                raise ConfigError(f"tracking.experiment: {name!r} is deleted in {uri}; restore it or choose "
                                 "another name")
            return exp.experiment_id
        try:
            return client.create_experiment(name, artifact_location=artifact_location_for(uri))
        except MlflowException:  # created meanwhile by another process
            exp = client.get_experiment_by_name(name)
            if exp is None:
                raise
            return exp.experiment_id

    @classmethod
    @_not_interrupted
    def start(cls, cfg: TrackingConfig, *, work_dir: str | Path, run_name: str, stage: str,
              tags: Mapping[str, Any] | None = None) -> "MLflowTracker":
        """Create a run named `run_name` (deterministic: the stage config's name) in cfg.experiment."""
        uri = resolve_tracking_uri(cfg, work_dir)
        client = cls._client(uri)
        experiment_id = cls._experiment_id(client, cfg.experiment, uri)
        all_tags = {"stage": stage, **{k: v for k, v in (tags or {}).items() if v not in (None, "")}}
        commit = git_commit()
        if commit:
            all_tags.update({"git_commit": commit, "mlflow.source.git.commit": commit})
        if cfg.parent_run_id:
            all_tags[PARENT_RUN_TAG] = cfg.parent_run_id
        run = client.create_run(experiment_id, run_name=run_name,
                                tags={k: str(v) for k, v in all_tags.items()})
        return cls(client, run.info.run_id, uri, owns_run=True)

    @classmethod
    def attach(cls, tracking_uri: str, run_id: str) -> "MLflowTracker":
        """Continue logging into an existing run (e.g. from the Ray rank 0 worker)."""
        return cls(cls._client(tracking_uri), run_id, tracking_uri, owns_run=False)

    @classmethod
    @_not_interrupted
    def reopen(cls, tracking_uri: str, run_id: str) -> "MLflowTracker | None":
        """An earlier invocation's run, set RUNNING again and owned (ended) by this process; None when the
        store has no such run (deleted, or another store)."""
        from mlflow.exceptions import MlflowException
        client = cls._client(tracking_uri)
        try:
            run = client.get_run(run_id)
        except MlflowException:
            return None
        if run.info.lifecycle_stage == "deleted":
            return None
        client.update_run(run_id, status="RUNNING")
        return cls(client, run_id, tracking_uri, owns_run=True, continued=True)

    # -- logging --------------------------------------------------------------------------------
    @_not_interrupted
    def log_params(self, params: Mapping[str, Any]) -> None:
        """Flattened params (`losses.landmark`), values cut to MLflow's limit; the full nested mapping
        is also stored as the artifact params.yaml, so nothing is lost to truncation."""
        from mlflow.entities import Param
        from mlflow.utils.validation import MAX_PARAM_VAL_LENGTH, MAX_PARAMS_TAGS_PER_BATCH
        flat = {k: param_value(v, MAX_PARAM_VAL_LENGTH) for k, v in flatten(params).items()}
        if self.continued:  # MLflow params are write-once: keep the first value, tag the new one
            logged = self.client.get_run(self.run_id).data.params
            self.set_tags({f"param_changed.{k}": v for k, v in flat.items() if k in logged and logged[k] != v})
            flat = {k: v for k, v in flat.items() if k not in logged}
        entries = [Param(k, v) for k, v in flat.items()]
        for chunk in _chunks(entries, MAX_PARAMS_TAGS_PER_BATCH):
            self.client.log_batch(self.run_id, params=chunk)
        self.client.log_text(self.run_id, yaml.safe_dump(dict(params), sort_keys=False), "params.yaml")

    @_not_interrupted
    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        """Numeric, finite values only (MLflow cannot plot inf/NaN), one batch call."""
        from mlflow.entities import Metric
        from mlflow.utils.validation import MAX_METRICS_PER_BATCH
        now = int(time.time() * 1000)
        entries = [Metric(k, float(v), now, int(step or 0)) for k, v in metrics.items()
                   if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)]
        for chunk in _chunks(entries, MAX_METRICS_PER_BATCH):
            self.client.log_batch(self.run_id, metrics=chunk)

    @_not_interrupted
    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        self.client.log_artifact(self.run_id, str(path), artifact_path)

    @_not_interrupted
    def log_dict(self, data: Mapping[str, Any], artifact_file: str) -> None:
        """`data` as a JSON artifact (e.g. "config_history.json")."""
        self.client.log_text(self.run_id, json.dumps(data, indent=1, sort_keys=True, default=str), artifact_file)

    @_not_interrupted
    def set_tags(self, tags: Mapping[str, Any]) -> None:
        for k, v in tags.items():
            if v not in (None, ""):
                self.client.set_tag(self.run_id, k, str(v))

    @_not_interrupted
    def register_model(self, artifact_path: str, name: str, tags: Mapping[str, Any] | None = None) -> str:
        """A new version of registered model `name` whose source is this run's `artifact_path` folder."""
        from mlflow.exceptions import MlflowException
        try:
            self.client.get_registered_model(name)
        except MlflowException:
            try:
                self.client.create_registered_model(name)
            except MlflowException:  # registered meanwhile by another process
                pass
        source = f"{self.client.get_run(self.run_id).info.artifact_uri.rstrip('/')}/{artifact_path}"
        version = self.client.create_model_version(name, source=source, run_id=self.run_id,
                                                   tags={k: str(v) for k, v in (tags or {}).items()})
        self.set_tags({"registered_model": f"{name}/{version.version}"})
        return str(version.version)

    def child(self, *, run_name: str, stage: str, tags: Mapping[str, Any] | None = None) -> "MLflowTracker":
        """A new run nested under this one, in the same store and experiment (a stage of a pipeline)."""
        experiment = self.client.get_experiment(self.client.get_run(self.run_id).info.experiment_id).name
        cfg = TrackingConfig(tracking_uri=self.tracking_uri, experiment=experiment, parent_run_id=self.run_id)
        return MLflowTracker.start(cfg, work_dir=".", run_name=run_name, stage=stage, tags=tags)

    # -- ending ---------------------------------------------------------------------------------
    @_not_interrupted
    def end(self, status: str = "FINISHED") -> None:
        """FINISHED, FAILED or KILLED; only the creator of the run ends it, once."""
        if self.owns_run and not self._ended:
            self.client.set_terminated(self.run_id, status)
            self._ended = True

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        if exc_type is None:
            self.end("FINISHED")
            return False
        status = "KILLED" if issubclass(exc_type, KeyboardInterrupt) else "FAILED"
        try:
            self.end(status)
        except Exception as e:  # the block's own exception (and the exit status it sets) must win
            first_line = (str(e).splitlines() or [""])[0]
            print(f"[tracking] warning: could not record MLflow run {self.run_id} as {status} "
                  f"({type(e).__name__}: {first_line}); it stays RUNNING in {self.tracking_uri}",
                  file=sys.stderr, flush=True)
        return False


Tracker = MLflowTracker | NullTracker


def open_tracker(cfg: TrackingConfig, *, work_dir: str | Path, run_name: str, stage: str,
                 tags: Mapping[str, Any] | None = None) -> Tracker:
    """An MLflow run for one stage invocation, or a NullTracker when tracking is disabled.

    Call it on rank 0 / the driver only. Use as a context manager so the run always ends.
    """
    if not cfg.enabled:
        return NullTracker()
    return MLflowTracker.start(cfg, work_dir=work_dir, run_name=run_name, stage=stage, tags=tags)


def stage_run(cfg: TrackingConfig, tracker: Tracker | None, *, work_dir: str | Path, run_name: str, stage: str,
              tags: Mapping[str, Any] | None = None, lock=None, continue_run: Mapping[str, str] | None = None,
              print_fn=print) -> Tracker:
    """The run a stage logs into: with no `tracker`, its own run from `cfg` (a NullTracker when
    tracking is disabled); with one, a child run of that tracker. Use as a context manager.

    lock: the stage's folder lock (pipeline.core.locks.RunLock): the run is recorded in it, and a run
      that a dead predecessor recorded there and left RUNNING is marked KILLED (unless continued).
    continue_run: {"run_id", "tracking_uri"} of the run to continue (a resumed training that owns its
      run); continued when it exists in the store this stage logs to, else a new run is made.
    """
    previous = ((lock.previous or {}).get("mlflow") if lock is not None else None) or None
    run = None
    if tracker is None and cfg.enabled and continue_run and continue_run.get("run_id"):
        uri = resolve_tracking_uri(cfg, work_dir)
        if continue_run.get("tracking_uri") in (None, "", uri):
            run = MLflowTracker.reopen(uri, continue_run["run_id"])
        if run is not None:
            print_fn(f"[{stage}] continuing MLflow run {run.run_id} (the run that trained the checkpoint)")
        else:
            print_fn(f"[{stage}] note: MLflow run {continue_run['run_id']} of the checkpoint is not in {uri}; "
                     "recording into a new run")
    if previous and previous.get("run_id") and (run is None or previous["run_id"] != run.run_id):
        close_abandoned_runs(previous, print_fn)
    if run is None:
        run = (open_tracker(cfg, work_dir=work_dir, run_name=run_name, stage=stage, tags=tags) if tracker is None
               else tracker.child(run_name=run_name, stage=stage, tags=tags))
    if lock is not None and run.run_id:
        lock.update(mlflow={"run_id": run.run_id, "tracking_uri": run.tracking_uri})
    return run


@_not_interrupted
def close_abandoned_runs(record: Mapping[str, str], print_fn=print) -> list[str]:
    """Mark KILLED the run in `record` ({"run_id", "tracking_uri"}) and its child runs, where they are
    still RUNNING: their process is gone (its lock was taken over). Returns the ids marked."""
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException
    try:
        client = MlflowClient(tracking_uri=record["tracking_uri"], registry_uri=record["tracking_uri"])
        run = client.get_run(record["run_id"])
        children = client.search_runs([run.info.experiment_id],
                                      filter_string=f"tags.`{PARENT_RUN_TAG}` = '{record['run_id']}'")
    except (MlflowException, KeyError, OSError) as e:
        print_fn(f"[tracking] note: could not check MLflow run {record.get('run_id')} of the dead process ({e})")
        return []
    marked = []
    for r in (run, *children):
        if r.info.status == "RUNNING":
            client.set_terminated(r.info.run_id, "KILLED")
            marked.append(r.info.run_id)
    if marked:
        print_fn(f"[tracking] note: marked MLflow run(s) {', '.join(marked)} KILLED: the process that ran them "
                 "is gone")
    return marked


def tracking_locations(cfg: TrackingConfig, work_dir: str | Path) -> dict[str, Path]:
    """The folder a stage's own MLflow store writes to, for pipeline.core.paths.check_output_locations:
    {"tracking.tracking_uri": <folder of the SQLite file>} (empty for a server, or tracking disabled)."""
    if not cfg.enabled:
        return {}
    db = sqlite_path(resolve_tracking_uri(cfg, work_dir))
    return {"tracking.tracking_uri": db.parent} if db else {}


def log_provenance(tracker: Tracker, provenance: Mapping[str, Any]) -> None:
    """Provenance (pipeline.presets.provenance) as `provenance.*` tags of the run (e.g.
    provenance.packages.torch, provenance.device, provenance.weights.fer.licence)."""
    if tracker:
        tracker.set_tags({f"provenance.{k}": v for k, v in flatten(dict(provenance)).items()})


def attach_tracker(tracking_uri: str | None, run_id: str | None) -> Tracker:
    """The run another process created (None/"" -> NullTracker)."""
    if not run_id or not tracking_uri:
        return NullTracker()
    return MLflowTracker.attach(tracking_uri, run_id)
