"""pipeline/tracking.py: MLflow runs on a local SQLite backend, the null tracker, and the train stage's
in-process path recording itself (params, metrics, artifact, registered model version)."""

from __future__ import annotations

import math
import os
import signal
from pathlib import Path

import pytest
import yaml

from pipeline.core.config import ConfigError, from_dict
from pipeline.infra.tracking import (MLflowTracker, NullTracker, TrackingConfig, attach_tracker, open_tracker, param_value,
                                     seed_sqlite_store,
                               resolve_tracking_uri)

pytestmark = pytest.mark.timeout(120)


def client_for(uri: str):
    from mlflow import MlflowClient
    return MlflowClient(tracking_uri=uri, registry_uri=uri)


def run_by_name(uri: str, experiment: str, name: str):
    c = client_for(uri)
    exp = c.get_experiment_by_name(experiment)
    assert exp is not None, f"experiment {experiment!r} not in {uri}"
    runs = c.search_runs([exp.experiment_id], filter_string=f"attributes.run_name = '{name}'")
    assert len(runs) == 1, f"expected one run named {name!r}, found {len(runs)}"
    return runs[0]


def artifact_paths(uri: str, run_id: str, path: str | None = None) -> set[str]:
    return {a.path for a in client_for(uri).list_artifacts(run_id, path)}


# ---------------------------------------------------------------------------------------------
# Configuration (no MLflow)
# ---------------------------------------------------------------------------------------------

def test_tracking_uri_comes_from_config_then_env_then_work_dir(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.chdir(tmp_path)
    default = resolve_tracking_uri(TrackingConfig(), "rel/work")
    assert default == f"sqlite:///{(tmp_path / 'rel/work/mlflow.db').as_posix()}"
    assert default.startswith("sqlite:////"), "the database path must be absolute (four slashes)"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "sqlite:////elsewhere/env.db")
    assert resolve_tracking_uri(TrackingConfig(), "rel/work") == "sqlite:////elsewhere/env.db"
    assert resolve_tracking_uri(TrackingConfig(tracking_uri="http://127.0.0.1:5000"), "w") == "http://127.0.0.1:5000"


@pytest.mark.parametrize("data, field", [
    ({"tracking_uri": "file:///tmp/mlruns"}, "tracking.tracking_uri"),
    ({"experiment": "  "}, "tracking.experiment"),
    ({"model_name": ""}, "tracking.model_name"),
    ({"enabled": "yes"}, "tracking.enabled"),
    ({"registr_model": True}, "register_model"),
])
def test_bad_tracking_config_names_the_field(data, field):
    with pytest.raises(ConfigError, match=field.replace(".", r"\.")):
        from_dict(TrackingConfig, data, "tracking")


def test_model_name_may_be_empty_when_nothing_is_registered():
    assert TrackingConfig(register_model=False, model_name="").model_name == ""


def test_long_param_values_are_cut_to_the_limit_with_a_marker():
    assert param_value(["Male", "Young"], 100) == '["Male", "Young"]'
    assert param_value(None, 100) == ""
    cut = param_value("x" * 500, 100)
    assert len(cut) == 100 and cut.endswith("see params.yaml]")


def test_disabled_tracking_is_a_falsy_null_tracker_that_writes_nothing(tmp_path):
    tracker = open_tracker(TrackingConfig(enabled=False), work_dir=tmp_path, run_name="r", stage="train")
    assert isinstance(tracker, NullTracker) and not tracker and tracker.run_id is None
    with tracker as t:
        t.log_params({"a": 1})
        t.log_metrics({"loss": 1.0}, step=1)
        t.log_artifact(tmp_path / "nothing")
        assert t.register_model("directions", "m") is None
    assert list(tmp_path.iterdir()) == []
    assert not attach_tracker(None, None) and not attach_tracker("sqlite:////x.db", "")


def test_telemetry_is_off_before_mlflow_is_used():
    assert os.environ.get("MLFLOW_DISABLE_TELEMETRY") == "true"


# ---------------------------------------------------------------------------------------------
# MLflow on SQLite
# ---------------------------------------------------------------------------------------------

def schema(db: Path) -> tuple[list, str]:
    """Tables and indexes with their definitions, and the alembic version. A definition is compared as
    the set of its lines: MLflow's migrations emit a table's CHECK constraints in an order that varies
    from one run to the next (two stores MLflow built itself differed so)."""
    import sqlite3
    with sqlite3.connect(db) as conn:
        rows = conn.execute("SELECT name, sql FROM sqlite_master WHERE type IN ('table', 'index') "
                            "ORDER BY name").fetchall()
        version = conn.execute("SELECT version_num FROM alembic_version").fetchone()[0]
    conn.close()
    return [(name, sorted(line.strip().rstrip(",") for line in (sql or "").splitlines())) for name, sql in rows], \
        version


def test_a_new_sqlite_store_is_a_copy_of_mlflows_own_empty_store(tmp_path, monkeypatch):
    """The seeded store has exactly the schema MLflow builds itself; an existing store is never replaced."""
    from mlflow import MlflowClient
    monkeypatch.setenv("HFLD_CACHE", str(tmp_path / "cache"))
    made_by_mlflow = tmp_path / "mlflow-made" / "mlflow.db"
    made_by_mlflow.parent.mkdir()
    MlflowClient(tracking_uri=f"sqlite:///{made_by_mlflow}").search_experiments()
    seeded = tmp_path / "work" / "mlflow.db"
    assert seed_sqlite_store(seeded)
    assert schema(seeded) == schema(made_by_mlflow)
    assert list((tmp_path / "cache" / "mlflow").glob("empty-mlflow-*.db"))         # made once, then reused
    client = MlflowClient(tracking_uri=f"sqlite:///{seeded}")
    (default,) = client.search_experiments()
    assert default.artifact_location == (seeded.parent / "mlartifacts" / "0").as_uri()
    run = client.create_run(client.create_experiment("e"))
    client.log_metric(run.info.run_id, "m", 1.5)
    assert client.get_run(run.info.run_id).data.metrics == {"m": 1.5}
    before = seeded.read_bytes()
    assert not seed_sqlite_store(seeded) and seeded.read_bytes() == before     # never touches a store


def test_run_records_params_metrics_artifacts_tags_and_model_versions(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.chdir(tmp_path)  # nothing may land in the CWD
    work = tmp_path / "work"
    cfg = TrackingConfig(experiment="exp-a", parent_run_id="parent123")
    long_value = "v" * 7000
    artifact = tmp_path / "T.bin"
    artifact.write_bytes(b"\x00\x01")

    with open_tracker(cfg, work_dir=work, run_name="train-x", stage="train", tags={"preset": "tiny", "empty": ""}) as t:
        assert isinstance(t, MLflowTracker) and t
        t.log_params({"losses": {"landmark": 5e5}, "attributes": ["Male", "Young"], "note": long_value})
        t.log_metrics({"total": 1.5, "regressor": 0.5, "bad": math.nan, "flag": True}, step=1)
        t.log_metrics({"total": 1.0, "regressor": 0.25}, step=2)
        t.log_artifact(artifact, "directions")
        first = t.register_model("directions", "hfld-test")
        second = t.register_model("directions", "hfld-test")
        run_id = t.run_id

    uri = resolve_tracking_uri(cfg, work)
    assert (work / "mlflow.db").is_file() and (work / "mlartifacts").is_dir()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["T.bin", "work"]
    run = run_by_name(uri, "exp-a", "train-x")
    assert run.info.run_id == run_id and run.info.status == "FINISHED"
    assert run.data.tags["stage"] == "train" and run.data.tags["preset"] == "tiny"
    assert run.data.tags["mlflow.parentRunId"] == "parent123" and "empty" not in run.data.tags
    assert run.data.params["losses.landmark"] == "500000.0"
    assert run.data.params["attributes"] == '["Male", "Young"]'
    assert len(run.data.params["note"]) == 6000 and run.data.params["note"].endswith("see params.yaml]")
    c = client_for(uri)
    assert [(m.step, m.value) for m in c.get_metric_history(run_id, "total")] == [(1, 1.5), (2, 1.0)]
    assert "bad" not in run.data.metrics and "flag" not in run.data.metrics
    assert artifact_paths(uri, run_id) == {"directions", "params.yaml"}
    assert artifact_paths(uri, run_id, "directions") == {"directions/T.bin"}
    full = yaml.safe_load(Path(c.download_artifacts(run_id, "params.yaml", str(tmp_path / "dl"))).read_text())
    assert full["note"] == long_value, "params.yaml must keep the untruncated config"
    assert (first, second) == ("1", "2")
    versions = c.search_model_versions("name = 'hfld-test'")
    assert {v.run_id for v in versions} == {run_id}
    assert all(v.source.endswith(f"{run_id}/artifacts/directions") for v in versions)
    assert run.data.tags["registered_model"] == "hfld-test/2"


def test_run_ends_failed_when_the_stage_raises_and_attached_trackers_leave_it_open(tmp_path):
    cfg = TrackingConfig(tracking_uri=f"sqlite:///{tmp_path}/m.db", experiment="exp-b")
    with pytest.raises(RuntimeError, match="boom"):
        with open_tracker(cfg, work_dir=tmp_path, run_name="fails", stage="train") as t:
            with attach_tracker(t.tracking_uri, t.run_id) as worker_side:
                worker_side.log_metrics({"total": 2.0}, step=3)
            assert client_for(t.tracking_uri).get_run(t.run_id).info.status == "RUNNING"
            raise RuntimeError("boom")
    run = run_by_name(cfg.tracking_uri, "exp-b", "fails")
    assert run.info.status == "FAILED" and run.data.metrics["total"] == 2.0


def test_a_sigterm_during_a_store_write_is_raised_once_the_write_is_done(tmp_path, monkeypatch):
    """Raised inside SQLAlchemy's session, the interrupt can leave a SQLite write transaction open and the
    run's end (KILLED) then fails with "database is locked" (CI: generate exited 1 instead of 143)."""
    from pipeline.core.signals import interrupt_handlers
    cfg = TrackingConfig(tracking_uri=f"sqlite:///{tmp_path}/m.db", experiment="exp-sig")
    with interrupt_handlers(), pytest.raises(KeyboardInterrupt):
        with open_tracker(cfg, work_dir=tmp_path, run_name="stopped", stage="generate") as t:
            write = t.client.log_batch

            def log_batch_as_a_sigterm_arrives(*args, **kwargs):
                os.kill(os.getpid(), signal.SIGTERM)     # the handler runs here, inside the write
                return write(*args, **kwargs)

            monkeypatch.setattr(t.client, "log_batch", log_batch_as_a_sigterm_arrives)
            t.log_params({"n_sources": 40, "variants": 2})
            pytest.fail("the SIGTERM must be raised as log_params returns")
    run = run_by_name(cfg.tracking_uri, "exp-sig", "stopped")
    assert run.data.params == {"n_sources": "40", "variants": "2"} and run.info.status == "KILLED"


def test_a_run_that_cannot_be_ended_does_not_replace_the_error_that_ends_it(tmp_path, monkeypatch, capsys):
    """The block's exception decides the exit status (143 for SIGTERM); the failed end is a warning."""
    from mlflow.exceptions import MlflowException
    cfg = TrackingConfig(tracking_uri=f"sqlite:///{tmp_path}/m.db", experiment="exp-locked")

    def locked(*args, **kwargs):
        raise MlflowException("(sqlite3.OperationalError) database is locked\n(Background on this error ...)")

    with pytest.raises(KeyboardInterrupt, match="SIGTERM"):
        with open_tracker(cfg, work_dir=tmp_path, run_name="locked", stage="generate") as t:
            monkeypatch.setattr(t.client, "set_terminated", locked)
            raise KeyboardInterrupt("SIGTERM")
    err = capsys.readouterr().err
    assert f"could not record MLflow run {t.run_id} as KILLED" in err and "database is locked" in err
    assert "Background" not in err, "one line of the store's error is enough"
    assert run_by_name(cfg.tracking_uri, "exp-locked", "locked").info.status == "RUNNING"
    with pytest.raises(MlflowException, match="locked"):     # a run that succeeded must not look finished
        with open_tracker(cfg, work_dir=tmp_path, run_name="ok", stage="generate") as t:
            monkeypatch.setattr(t.client, "set_terminated", locked)


# ---------------------------------------------------------------------------------------------
# The train stage's in-process path, through the CLI
# ---------------------------------------------------------------------------------------------

def test_hfld_train_in_process_records_one_mlflow_run(tmp_path, monkeypatch, capsys):
    from pipeline.core.directions import load_directions
    from pipeline.cli import main

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    work = tmp_path / "work"
    rc = main(["train", "--preset", "tiny", "--set", f"work_dir={work}", "--set", "run_name=cli-inproc",
               "--set", "iterations=4", "--set", "batch_size=2", "--set", "log_every=2", "--set", "device=cpu",
               "--set", "scaling.num_workers=0", "--set", "tracking.experiment=exp-train"])
    assert rc == 0, capsys.readouterr().err
    run_dir = work / "cli-inproc"
    assert sorted(p.name for p in run_dir.iterdir()) == [
        "checkpoint.json", "checkpoint.safetensors", "config.yaml", "directions.json", "directions.safetensors",
        "metrics.jsonl"]
    uri = f"sqlite:///{work.resolve()}/mlflow.db"
    run = run_by_name(uri, "exp-train", "cli-inproc")
    assert run.info.status == "FINISHED"
    assert run.data.params["scaling.num_workers"] == "0" and run.data.params["model.preset"] == "tiny"
    assert run.data.tags["generator_id"].startswith("random:") and run.data.tags["preset"] == "tiny"
    history = client_for(uri).get_metric_history(run.info.run_id, "landmark")
    assert [m.step for m in history] == [2, 4]
    assert {"regressor", "perceptual", "adversarial", "landmark", "total", "samples_per_s"} <= set(run.data.metrics)
    assert artifact_paths(uri, run.info.run_id, "directions") == {"directions/directions.safetensors",
                                                                  "directions/directions.json"}
    versions = client_for(uri).search_model_versions("name = 'hfld-directions'")
    assert [v.run_id for v in versions] == [run.info.run_id]
    assert load_directions(run_dir / "directions.safetensors").meta["mlflow_run_id"] == run.info.run_id


def test_a_run_left_running_by_a_dead_process_is_marked_killed_with_its_children(tmp_path):
    """What the next invocation does when it takes over a dead process's lock (pipeline.core.locks)."""
    from pipeline.core.locks import run_lock
    from pipeline.infra.tracking import stage_run
    cfg = TrackingConfig(tracking_uri=f"sqlite:///{tmp_path}/m.db", experiment="exp-dead")
    dead = open_tracker(cfg, work_dir=tmp_path, run_name="dead", stage="run")       # never ended: RUNNING
    child = dead.child(run_name="dead-child", stage="train")
    finished = dead.child(run_name="done-child", stage="evaluate")
    finished.end("FINISHED")
    with run_lock(tmp_path / "folder", "name") as lock:
        lock.previous = {"pid": 1, "mlflow": {"run_id": dead.run_id, "tracking_uri": dead.tracking_uri}}
        notes = []
        with stage_run(cfg, None, work_dir=tmp_path, run_name="next", stage="run", lock=lock,
                       print_fn=notes.append) as run:
            assert lock.record["mlflow"]["run_id"] == run.run_id     # recorded for the next successor
    c = client_for(cfg.tracking_uri)
    assert c.get_run(dead.run_id).info.status == "KILLED" and c.get_run(child.run_id).info.status == "KILLED"
    assert c.get_run(finished.run_id).info.status == "FINISHED" and c.get_run(run.run_id).info.status == "FINISHED"
    assert any("marked MLflow run(s)" in n and dead.run_id in n for n in notes)
