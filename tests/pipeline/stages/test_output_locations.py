"""Every stage checks where it will write before any work: a work_dir that is a file, a folder that
cannot be written, or an MLflow SQLite store in such a folder is one ConfigError naming the field,
within seconds, before MLflow (which retried an unwritable SQLite store for ~2 minutes) or Ray is
touched and before anything is written."""

from __future__ import annotations

import time

import pytest

from pipeline.core.config import ConfigError, from_dict

UNWRITABLE = "/sys/hfld-test-unwritable"     # /sys refuses new files even to root


def stage_call(stage: str, work_dir: str, tracking: dict):
    """(function, config) of a stage with everything else valid-looking and tiny."""
    base = {"work_dir": work_dir, "tracking": tracking}
    if stage in ("train", "train-ray"):
        from pipeline.stages.train import TrainConfig, run_train
        workers = 1 if stage == "train-ray" else 0
        return run_train, from_dict(TrainConfig, {**base, "model": {"preset": "tiny"}, "device": "cpu",
                                                  "scaling": {"num_workers": workers}})
    if stage == "tune":
        from pipeline.stages.tune import TuneConfig, run_tune
        return run_tune, from_dict(TuneConfig, {**base, "train": {"model": {"preset": "tiny"}}, "space": "tiny"})
    if stage == "generate":
        from pipeline.stages.generate import GenerateConfig, run_generate
        return run_generate, from_dict(GenerateConfig, {**base, "model": {"preset": "tiny"},
                                                        "directions": "/nonexistent/T.safetensors"})
    if stage == "evaluate":
        from pipeline.stages.evaluate import EvaluateConfig, run_evaluate
        return run_evaluate, from_dict(EvaluateConfig, {**base, "model": {"preset": "tiny"}})
    from pipeline.stages.run import RunConfig, run_pipeline
    return run_pipeline, from_dict(RunConfig, {**base, "model": {"preset": "tiny"}})


STAGES = ["train", "train-ray", "tune", "generate", "evaluate", "run"]


@pytest.fixture
def no_mlflow_no_ray(monkeypatch):
    """Fail at once if a stage got as far as MLflow or Ray."""
    import pipeline.infra.tracking as tracking

    def refuse(*a, **k):
        raise AssertionError("MLflow was touched before the output locations were checked")
    monkeypatch.setattr(tracking.MLflowTracker, "start", refuse)
    monkeypatch.setattr(tracking.MLflowTracker, "reopen", refuse, raising=False)
    monkeypatch.setattr(tracking.MLflowTracker, "_client", refuse)
    import ray
    monkeypatch.setattr(ray, "init", refuse)


def refused(stage: str, work_dir: str, tracking: dict) -> str:
    fn, cfg = stage_call(stage, work_dir, tracking)
    start = time.monotonic()
    with pytest.raises(ConfigError) as e:
        fn(cfg, print_fn=lambda *a, **k: None)
    assert time.monotonic() - start < 10
    return str(e.value)


@pytest.mark.parametrize("stage", STAGES)
def test_a_work_dir_that_is_a_file(no_mlflow_no_ray, tmp_path, stage):
    blocker = tmp_path / "a-file"
    blocker.write_text("keep me")
    message = refused(stage, str(blocker), {})
    assert message.startswith("work_dir: ") and "not writable" in message and "not a directory" in message
    assert blocker.read_text() == "keep me" and sorted(p.name for p in tmp_path.iterdir()) == ["a-file"]


@pytest.mark.parametrize("stage", STAGES)
def test_a_work_dir_in_an_unwritable_folder(no_mlflow_no_ray, stage):
    message = refused(stage, f"{UNWRITABLE}/work", {})
    assert message.startswith("work_dir: ") and "not writable" in message


@pytest.mark.parametrize("stage", STAGES)
def test_an_mlflow_store_in_an_unwritable_folder(no_mlflow_no_ray, tmp_path, stage):
    """Failed before: MLflow retried the SQLite store for ~2 minutes, then a long SQLAlchemy traceback."""
    message = refused(stage, str(tmp_path / "work"), {"tracking_uri": f"sqlite:///{UNWRITABLE}/mlflow.db"})
    assert message.startswith("tracking.tracking_uri: ") and "not writable" in message
    assert not (tmp_path / "work").exists()


def test_the_cli_prints_one_line_and_exits_2(tmp_path, capsys):
    from pipeline.cli import main
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    rc = main(["train", "--preset", "tiny", "--set", f"work_dir={blocker}"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and err[0].startswith("error: work_dir: ")
