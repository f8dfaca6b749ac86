"""pipeline/ray_train.py: DDP over T on Ray Train (CPU, gloo), fault tolerance, MLflow.

`ray job submit` of `hfld train` resuming from an explicit checkpoint (resume=<path>) runs as part of the
two-node cluster job of tests/cluster/test_jobs.py (test_job_resumes_training_from_an_explicit_checkpoint).

The Ray runs share one session-wide local Ray (the `ray_local` fixture, 2 CPUs). Sizes are tiny: the
point is the arithmetic of data parallelism and the plumbing, not the networks.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import pytest
import torch
import yaml

from pipeline.core.directions import load_directions
from pipeline.core.config import ConfigError, from_dict, to_dict
from pipeline.presets import ModelConfig, build_bundle
from pipeline.stages.train import TrainConfig, run_train
from pipeline.stages.train.loop import train_loop
from pipeline.stages.train.step import setup_training


PER_WORKER_BATCH = 2
STEPS = 6
CHECKPOINT_EVERY = 2
OUTPUT_FILES = ["checkpoint.json", "checkpoint.safetensors", "config.yaml", "directions.json",
                "directions.safetensors", "metrics.jsonl"]


def train_cfg(work_dir: Path, run_name: str, **changes) -> TrainConfig:
    """Tiny networks; adversarial weight 0 because the discriminator's minibatch-stddev layer couples
    the samples of one forward batch (see pipeline/stages/train/ray_train.py), so only then is W x b == 1 x W*b."""
    data = {
        "model": {"preset": "tiny"}, "iterations": STEPS, "batch_size": PER_WORKER_BATCH, "lr": 1e-3,
        "log_every": 1, "checkpoint_every": CHECKPOINT_EVERY, "device": "cpu", "losses": {"adversarial": 0.0},
        "work_dir": str(work_dir), "run_name": run_name, "tracking": {"enabled": False},
        "scaling": {"num_workers": 0, "cpus_per_worker": 1},
    }
    for key, value in changes.items():
        node, parts = data, key.split("__")
        for p in parts[:-1]:
            node = node.setdefault(p, {})
        node[parts[-1]] = value
    return from_dict(TrainConfig, data, "test")


def trained_state(run_dir: Path) -> dict[str, torch.Tensor]:
    """T and Adam's moments after the last step (checkpoint.safetensors of the run directory)."""
    ckpt = load_directions(run_dir / "checkpoint.safetensors")
    return {"T": ckpt.T, **{k: v for k, v in ckpt.optimizer.items() if k != "step"}}


def max_abs_diff(a: dict, b: dict) -> dict[str, float]:
    return {k: float((a[k] - b[k]).abs().max()) for k in a}


# ---------------------------------------------------------------------------------------------
# Configuration and guards (no Ray)
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("scaling, field", [
    ({"num_workers": -1}, "scaling.num_workers"),
    ({"cpus_per_worker": 0}, "scaling.cpus_per_worker"),
    ({"gpus_per_worker": -1}, "scaling.gpus_per_worker"),
    ({"use_gpu": True, "gpus_per_worker": 0}, "scaling.gpus_per_worker"),
    ({"max_failures": -2}, "scaling.max_failures"),
    ({"num_worker": 2}, "num_workers"),
])
def test_bad_scaling_config_names_the_field(scaling, field):
    with pytest.raises(ConfigError, match=field.replace(".", r"\.")):
        from_dict(TrainConfig, {"scaling": scaling}, "train.yaml")


def test_scaling_and_tracking_sections_round_trip_through_yaml(tmp_path):
    cfg = train_cfg(tmp_path, "rt", scaling__num_workers=3, scaling__cpus_per_worker=0.5,
                    tracking__experiment="e", tracking__register_model=False)
    again = from_dict(TrainConfig, yaml.safe_load(yaml.safe_dump(to_dict(cfg))), "again")
    assert again == cfg and again.scaling.cpus_per_worker == 0.5 and not again.tracking.register_model


def test_ray_path_refuses_bad_requests_before_starting_ray(tmp_path):
    from pipeline.stages.train.ray_train import storage_path, train_with_ray

    with pytest.raises(ConfigError, match="scaling.num_workers"):
        train_with_ray(train_cfg(tmp_path, "zero"))
    with pytest.raises(ConfigError, match="scaling.use_gpu"):
        train_with_ray(train_cfg(tmp_path, "gpu", device="cuda", scaling__num_workers=1))
    with pytest.raises(ConfigError, match="resume"):
        train_with_ray(train_cfg(tmp_path, "missing", resume=str(tmp_path / "nope.safetensors"),
                                scaling__num_workers=1))
    taken = train_cfg(tmp_path, "taken", scaling__num_workers=1)
    (storage_path(taken) / "taken").mkdir(parents=True)
    with pytest.raises(ConfigError, match="resume=auto"):
        train_with_ray(taken)


def test_fault_plan_fires_once_on_its_rank_and_step(tmp_path, monkeypatch):
    from pipeline.stages.train.ray_train import fault_plan_from_env

    assert fault_plan_from_env(tmp_path / "m", 2) is None
    monkeypatch.setenv("HFLD_FAULT_AT_STEP", "3")
    plan = fault_plan_from_env(tmp_path / "m", 2)
    assert (plan.step, plan.rank, plan.marker) == (3, 1, str(tmp_path / "m"))
    (tmp_path / "m").write_text("already happened")
    plan.maybe_fail(1, 3)  # the marker exists: no exit
    plan.maybe_fail(0, 3)
    monkeypatch.setenv("HFLD_FAULT_RANK", "2")
    with pytest.raises(ConfigError, match="HFLD_FAULT_RANK"):
        fault_plan_from_env(tmp_path / "m", 2)


# ---------------------------------------------------------------------------------------------
# References computed in this process
# ---------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def work_root():
    with tempfile.TemporaryDirectory(prefix="hfld-raytrain-") as d:
        yield Path(d)


@pytest.fixture(scope="module")
def one_worker_double_batch(work_root) -> dict[str, torch.Tensor]:
    """1 worker x batch 2b, in this process: what 2 workers x batch b must reproduce."""
    result = run_train(train_cfg(work_root, "ref-1x2b", batch_size=2 * PER_WORKER_BATCH), print_fn=lambda *a, **k: None)
    return trained_state(result.run_dir)


def rank0_without_gradient_sync(work_dir: Path) -> dict[str, torch.Tensor]:
    """Counterfactual: rank 0 of 2 stepping on its own samples' gradient only (no all-reduce)."""
    cfg = train_cfg(work_dir, "no-sync")
    bundle = build_bundle(ModelConfig(preset="tiny"), "cpu")
    state = setup_training(cfg, bundle, torch.device("cpu"))
    train_loop(cfg, bundle, state, rank=0, world_size=2)
    opt = state.optimizer.state_dict()["state"][0]
    return {"T": state.directions.T.detach().clone(), "exp_avg": opt["exp_avg"], "exp_avg_sq": opt["exp_avg_sq"]}


# ---------------------------------------------------------------------------------------------
# Ray Train runs
# ---------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def two_workers(ray_local, work_root):
    """2 CPU workers x batch b, tracked in MLflow, uninterrupted."""
    cfg = train_cfg(work_root / "two", "ddp-2xb", scaling__num_workers=2,
                    tracking__enabled=True, tracking__experiment="exp-ray")
    result = run_train(cfg, print_fn=lambda *a, **k: None)
    return cfg, result


@pytest.mark.timeout(150)
def test_two_workers_match_one_worker_with_double_batch(two_workers, one_worker_double_batch, work_root):
    cfg, result = two_workers
    assert result.steps == STEPS and result.directions_path == cfg.run_dir / "directions.safetensors"
    assert sorted(p.name for p in cfg.run_dir.iterdir()) == OUTPUT_FILES
    ddp = trained_state(cfg.run_dir)
    diff = max_abs_diff(ddp, one_worker_double_batch)
    scale = {k: float(v.abs().max()) for k, v in one_worker_double_batch.items()}
    # T, and Adam's moments: those would be 2x / 4x too large if gradients were summed, not averaged.
    for k in ddp:
        assert diff[k] <= 1e-4 * scale[k], f"{k}: 2 x b differs from 1 x 2b by {diff[k]:.3g} (scale {scale[k]:.3g})"
    unsynced = max_abs_diff(rank0_without_gradient_sync(work_root), one_worker_double_batch)
    assert unsynced["T"] > 100 * max(diff["T"], 1e-9), "the test cannot tell synced from unsynced gradients"
    # The logged losses are global-batch means, the same numbers the 1 x 2b run logs.
    ref_rows = [json.loads(line) for line in (work_root / "ref-1x2b/metrics.jsonl").read_text().splitlines()]
    rows = result.history
    assert [r["step"] for r in rows] == list(range(1, STEPS + 1))
    for mine, ref in zip(rows, ref_rows):
        assert mine["total"] == pytest.approx(ref["total"], rel=1e-4)
        assert mine["landmark"] == pytest.approx(ref["landmark"], rel=1e-4)
    assert result.final_metrics["total"] == pytest.approx(ref_rows[-1]["total"], rel=1e-4)


@pytest.mark.timeout(150)
def test_mlflow_holds_the_ray_run_with_params_metrics_artifact_and_model(two_workers):
    from mlflow import MlflowClient

    cfg, result = two_workers
    uri = f"sqlite:///{Path(cfg.work_dir).resolve()}/mlflow.db"
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    exp = client.get_experiment_by_name("exp-ray")
    runs = client.search_runs([exp.experiment_id], filter_string="attributes.run_name = 'ddp-2xb'")
    assert len(runs) == 1
    run = runs[0]
    assert run.info.status == "FINISHED"
    assert run.data.params["scaling.num_workers"] == "2" and run.data.params["batch_size"] == str(PER_WORKER_BATCH)
    assert run.data.params["losses.adversarial"] == "0.0"
    assert run.data.tags["stage"] == "train" and run.data.tags["world_size"] == "2"
    assert run.data.tags["generator_id"].startswith("random:")
    for name in ("total", "regressor", "perceptual", "adversarial", "landmark", "samples_per_s"):
        history = client.get_metric_history(run.info.run_id, name)
        assert sorted(m.step for m in history) == list(range(1, STEPS + 1)), name
    assert run.data.metrics["total"] == pytest.approx(result.final_metrics["total"])
    assert {a.path for a in client.list_artifacts(run.info.run_id, "directions")} == {
        "directions/directions.safetensors", "directions/directions.json"}
    versions = client.search_model_versions("name = 'hfld-directions'")
    assert [v.run_id for v in versions] == [run.info.run_id]
    assert load_directions(result.directions_path).meta["mlflow_run_id"] == run.info.run_id


@pytest.fixture(scope="module")
def fault_run(ray_local, work_root):
    """2 CPU workers x batch b, tracked in MLflow; rank 1 exits abruptly after step 5, once
    (max_failures=1). What the tests below read is taken here: the resume test extends this run."""
    marker = work_root / "fault-marker"
    env = pytest.MonkeyPatch()
    env.setenv("HFLD_FAULT_AT_STEP", "5")
    env.setenv("HFLD_FAULT_MARKER", str(marker))
    # Ray registers a reported checkpoint when it next polls the workers (every 0.2 s here, see
    # tests/conftest.py): a crash right after a checkpoint would resume from the one before. Rank 1
    # lingers so "last" is step 4.
    env.setenv("HFLD_FAULT_DELAY_S", "2")
    try:
        cfg = train_cfg(work_root / "fault", "ddp-fault", scaling__num_workers=2, scaling__max_failures=1,
                        tracking__enabled=True, tracking__experiment="ray-resume", tracking__register_model=False)
        result = run_train(cfg, print_fn=lambda *a, **k: None)
    finally:
        env.undo()
    return {"cfg": cfg, "result": result, "fault_injected": marker.is_file(), "state": trained_state(cfg.run_dir),
            "meta": load_directions(result.directions_path).meta,
            "steps": [json.loads(line)["step"] for line in (cfg.run_dir / "metrics.jsonl").read_text().splitlines()]}


@pytest.mark.timeout(200)
def test_killed_worker_resumes_from_last_checkpoint_and_ends_with_the_same_T(fault_run, two_workers):
    _, uninterrupted = two_workers
    assert fault_run["fault_injected"], "the fault was never injected"
    meta = fault_run["meta"]
    assert meta["resumed_at_step"] == 4 and meta["resumed_from"] == "ray-checkpoint"
    assert fault_run["result"].steps == STEPS
    diff = max_abs_diff(fault_run["state"], trained_state(uninterrupted.run_dir))
    assert max(diff.values()) <= 1e-7, f"resumed run differs from the uninterrupted one: {diff}"
    assert fault_run["steps"] == list(range(1, STEPS + 1)), "metrics.jsonl must hold each step once across the restart"


@pytest.mark.timeout(300)
def test_ray_resume_continues_its_mlflow_run_and_refuses_a_changed_config(fault_run):
    """Ray path: resume=auto restores Ray's own checkpoint (here: of the run above, which a restart
    already continued once); the driver reads that checkpoint's metadata first, so a changed config is
    refused before any worker starts, and the MLflow run of the checkpoint is the one that continues."""
    from dataclasses import replace

    from mlflow import MlflowClient
    quiet = dict(print_fn=lambda *a, **k: None)
    cfg = fault_run["cfg"]
    run_id = fault_run["meta"]["mlflow_run_id"]
    with pytest.raises(ConfigError, match=r"resume: Ray's checkpoint .* lr: 0\.001 -> 0\.01"):
        run_train(replace(cfg, iterations=STEPS + 2, lr=1e-2, resume="auto"), **quiet)
    second = run_train(replace(cfg, iterations=STEPS + 2, resume="auto"), **quiet)
    meta = load_directions(second.directions_path).meta
    assert second.steps == STEPS + 2 and meta["mlflow_run_id"] == run_id and meta["resumed_at_step"] == STEPS
    client = MlflowClient(f"sqlite:///{Path(cfg.work_dir).resolve()}/mlflow.db")
    runs = client.search_runs([client.get_experiment_by_name("ray-resume").experiment_id])
    assert [r.info.run_id for r in runs] == [run_id] and runs[0].info.status == "FINISHED"
