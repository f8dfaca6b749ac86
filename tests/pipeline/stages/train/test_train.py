"""Single-process trainer on the tiny preset (pipeline/stages/train, scaling.num_workers = 0)."""

import json

import pytest
import torch

from pipeline.core.config import ConfigError, from_dict
from pipeline.core.directions import load_directions
from pipeline.stages.train import NonFiniteLoss, TrainConfig, run_train
from pipeline.stages.train.step import new_directions


def cfg_for(tmp_path, **over):
    base = {"iterations": 6, "batch_size": 2, "log_every": 2, "checkpoint_every": 3, "device": "cpu",
            "work_dir": str(tmp_path), "losses": {"landmark": 100.0}, "noise_mode": "random",
            "model": {"preset": "tiny"}, "tracking": {"enabled": False}}
    base.update(over)
    return from_dict(TrainConfig, base)


def quiet(*a, **k):
    pass


def test_run_writes_outputs_and_T_changes(tmp_path):
    res = run_train(cfg_for(tmp_path), print_fn=quiet)
    f = load_directions(res.directions_path)
    assert f.T.shape == (8, 32, 2) and f.attributes == ["Male", "Young"] and f.meta["step"] == 6
    assert f.meta["preset"] == "tiny" and f.meta["lambdas"]["landmark"] == 100.0
    rows = [json.loads(line) for line in (res.run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [2, 4, 6]
    assert all({"regressor", "perceptual", "adversarial", "landmark", "total", "samples_per_s"} <= set(r) for r in rows)
    assert (res.run_dir / "config.yaml").is_file()
    init = torch.randn(8, 32, 2, generator=torch.Generator().manual_seed(0))  # not the init, just a sanity bound
    assert not torch.allclose(f.T, torch.zeros_like(f.T)) and f.T.abs().max() < 1 + init.abs().max()


def test_resume_gives_the_same_T_as_an_uninterrupted_run(tmp_path):
    straight = run_train(cfg_for(tmp_path / "a"), print_fn=quiet)
    first = run_train(cfg_for(tmp_path / "b", iterations=3), print_fn=quiet)
    resumed = run_train(cfg_for(tmp_path / "b", iterations=6, resume="auto"), print_fn=quiet)
    assert first.steps == 3 and resumed.steps == 6
    a, b = load_directions(straight.directions_path), load_directions(resumed.directions_path)
    assert torch.allclose(a.T, b.T, atol=1e-6), (a.T - b.T).abs().max()


def test_existing_run_is_not_overwritten(tmp_path):
    res = run_train(cfg_for(tmp_path), print_fn=quiet)
    before = res.directions_path.read_bytes()
    with pytest.raises(ConfigError, match="already holds a run.*resume=auto"):
        run_train(cfg_for(tmp_path), print_fn=quiet)
    assert res.directions_path.read_bytes() == before


def test_unknown_attribute_fails_before_writing(tmp_path):
    with pytest.raises(ConfigError, match=r"attributes: \['Bald'\] not known"):
        run_train(cfg_for(tmp_path, attributes=["Bald"]), print_fn=quiet)
    with pytest.raises(ConfigError, match=r"landmark_groups: \['ears'\] unknown"):
        run_train(cfg_for(tmp_path, landmark_groups=["ears"]), print_fn=quiet)
    with pytest.raises(ConfigError, match=r"layer_mask: \[99\] outside"):
        run_train(cfg_for(tmp_path, layer_mask=[99]), print_fn=quiet)
    assert not any(tmp_path.rglob("*.safetensors"))


def test_nan_loss_stops_with_a_clear_error_and_keeps_last_checkpoint(tmp_path, tiny_bundle):
    cfg = cfg_for(tmp_path, iterations=6, checkpoint_every=2)
    calls = {"n": 0}
    real_forward = tiny_bundle.regressor.forward

    def poisoned(image):
        calls["n"] += 1
        out = real_forward(image)
        return out * float("nan") if calls["n"] > 8 else out  # 2 calls per step: NaN from step 5

    tiny_bundle.regressor.forward = poisoned
    with pytest.raises(NonFiniteLoss, match="non-finite loss at step 5.*T was not updated"):
        run_train(cfg, bundle=tiny_bundle, print_fn=quiet)
    ckpt = load_directions(cfg.run_dir / "checkpoint.safetensors")
    assert ckpt.meta["step"] == 4 and torch.isfinite(ckpt.T).all()
    assert not (cfg.run_dir / "directions.safetensors").exists()


def test_target_edit_sampling_and_layer_mask(tmp_path, tiny_bundle):
    cfg = cfg_for(tmp_path, edit_sampling="target", layer_mask=[0, 1], iterations=2)
    res = run_train(cfg, print_fn=quiet)
    trained = load_directions(res.directions_path)
    init = new_directions(cfg, tiny_bundle.generator, 2).T.detach()  # the seeded initial T
    assert torch.equal(trained.T[2:], init[2:])          # masked layers get no gradient
    assert not torch.allclose(trained.T[:2], init[:2])   # edited layers moved
    assert trained.meta["layer_mask"] == [0, 1]


# ---------------------------------------------------------------------------------------------
# Locks, honest resume, the same MLflow run, provenance, absolute paths
# ---------------------------------------------------------------------------------------------

def tracked(tmp_path, **over):
    return cfg_for(tmp_path, tracking={"enabled": True, "experiment": "exp-resume", "register_model": False},
                   run_name="r", **over)


def mlflow_run(cfg):
    from mlflow import MlflowClient
    from pipeline.infra.tracking import resolve_tracking_uri
    client = MlflowClient(resolve_tracking_uri(cfg.tracking, cfg.work_dir))
    exp = client.get_experiment_by_name(cfg.tracking.experiment)
    runs = client.search_runs([exp.experiment_id])
    return client, runs


def test_a_second_training_of_the_same_run_name_is_refused_while_the_first_runs(tmp_path):
    """Two trainings with one run name used to run at once and mix their files in one folder."""
    import os
    from pipeline.core.locks import run_lock
    cfg = cfg_for(tmp_path, run_name="busy")
    with run_lock(cfg.run_dir, "run_name"):          # the first training, as far as the folder can tell
        with pytest.raises(ConfigError, match=rf"run_name: .*busy is in use by pid {os.getpid()} on .* since "):
            run_train(cfg, print_fn=quiet)
    assert not (cfg.run_dir / "checkpoint.safetensors").exists()
    assert run_train(cfg, print_fn=quiet).steps == 6    # free again


def test_resume_refuses_a_changed_config_and_resume_force_records_both(tmp_path):
    """resume=auto used to accept lambda4 = 0, lr 0.5 and rewrite directions.json as a baseline T."""
    first = run_train(tracked(tmp_path, iterations=3, lr=1e-3), print_fn=quiet)
    changed = {"losses": {"landmark": 0.0}, "lr": 0.5}
    with pytest.raises(ConfigError) as e:
        run_train(tracked(tmp_path, iterations=5, resume="auto", **changed), print_fn=quiet)
    msg = str(e.value)
    assert "losses.landmark: 100.0 -> 0.0" in msg and "lr: 0.001 -> 0.5" in msg and "resume_force=true" in msg
    assert "iterations" not in msg                   # extending a run is not a change of config
    assert load_directions(first.directions_path).meta["config"]["lr"] == 1e-3   # untouched

    forced = run_train(tracked(tmp_path, iterations=5, resume="auto", resume_force=True, **changed), print_fn=quiet)
    meta = load_directions(forced.directions_path).meta
    assert meta["config"]["lr"] == 0.5 and meta["lambdas"]["landmark"] == 0.0 and meta["step"] == 5
    (change,) = meta["config_history"]
    assert change["step"] == 3 and change["previous_config"]["lr"] == 1e-3
    assert change["changed"] == {"losses.landmark": [100.0, 0.0], "lr": [0.001, 0.5]}
    client, runs = mlflow_run(tracked(tmp_path))
    assert len(runs) == 1, "a resumed run continues its MLflow run"
    run = runs[0]
    assert run.info.status == "FINISHED" and run.data.tags["resume_forced_at_step"] == "3"
    assert run.data.params["lr"] == "0.001" and run.data.tags["param_changed.lr"] == "0.5"
    assert "config_history.json" in {a.path for a in client.list_artifacts(run.info.run_id)}

    again = run_train(tracked(tmp_path, iterations=6, resume="auto", **changed), print_fn=quiet)  # same config now
    assert load_directions(again.directions_path).meta["config_history"] == meta["config_history"]


def test_a_resumed_run_continues_the_same_mlflow_run(tmp_path):
    first = run_train(tracked(tmp_path, iterations=3), print_fn=quiet)
    run_id = load_directions(first.directions_path).meta["mlflow_run_id"]
    second = run_train(tracked(tmp_path, iterations=6, resume="auto"), print_fn=quiet)
    assert load_directions(second.directions_path).meta["mlflow_run_id"] == run_id
    client, runs = mlflow_run(tracked(tmp_path))
    assert [r.info.run_id for r in runs] == [run_id] and runs[0].info.status == "FINISHED"
    assert [m.step for m in client.get_metric_history(run_id, "total")] == [2, 3, 4, 6]   # 3: the first end
    assert runs[0].data.params["iterations"] == "3" and runs[0].data.tags["param_changed.iterations"] == "6"


def test_t_files_record_provenance_and_absolute_paths(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    res = run_train(cfg_for("relative-work", run_name="p"), print_fn=quiet)
    meta = load_directions(res.directions_path).meta
    assert meta["config"]["work_dir"] == str(tmp_path / "relative-work")
    assert meta["run_dir"] == str(tmp_path / "relative-work" / "p") and res.run_dir.is_absolute()
    prov = meta["provenance"]
    assert prov["packages"]["torch"] == torch.__version__ and {"ray", "mlflow", "hfld"} <= set(prov["packages"])
    assert prov["device"].startswith("cpu") and prov["weights"]["tiny"]["licence"].startswith("none")
    assert load_directions(res.run_dir / "checkpoint.safetensors").meta["provenance"] == prov


def test_the_loop_trains_step_k_on_the_batch_of_step_k(tmp_path, tiny_bundle):
    """train_loop draws each next batch ahead (step_and_prepare): T must equal that of plain steps on
    sample_batch(global ids of step k), one after another."""
    from pipeline.core.seeding import global_sample_ids
    from pipeline.stages.train.loop import train_loop
    from pipeline.stages.train.step import make_step, sample_batch, setup_training
    cfg = cfg_for(tmp_path)
    looped = setup_training(cfg, tiny_bundle, torch.device("cpu"))
    train_loop(cfg, tiny_bundle, looped)
    plain = setup_training(cfg, tiny_bundle, torch.device("cpu"))
    step, n_attr = make_step(plain, cfg), plain.directions.n_attributes
    for k in range(cfg.iterations):
        step(sample_batch(cfg, tiny_bundle.generator, n_attr, global_sample_ids(k, 0, cfg.batch_size, 1), plain.device))
    assert looped.step == plain.step == cfg.iterations
    assert torch.equal(looped.directions.T, plain.directions.T)
    assert not torch.equal(plain.directions.T, setup_training(cfg, tiny_bundle, torch.device("cpu")).directions.T)


def test_step_and_prepare_draws_the_next_batch_while_a_graphed_step_runs():
    """With a replayed graph the order is launch, prepare, finish (the GPU works while Python draws);
    any other step runs before prepare."""
    from pipeline.stages.train.step import GraphedTrainStep, step_and_prepare
    calls = []

    class RecordingGraphStep(GraphedTrainStep):
        graph = "captured"

        def __init__(self):
            pass

        def launch(self, batch):
            calls.append(("launch", batch))

        def finish(self):
            calls.append("finish")
            return {"total": 1.0}

    values, upcoming = step_and_prepare(RecordingGraphStep(), "b1", lambda: calls.append("prepare") or "b2")
    assert (values, upcoming) == ({"total": 1.0}, "b2") and calls == [("launch", "b1"), "prepare", "finish"]
    calls.clear()
    values, upcoming = step_and_prepare(lambda b: calls.append(("step", b)) or {"total": 2.0}, "b1",
                                        lambda: calls.append("prepare") or None)
    assert (values, upcoming) == ({"total": 2.0}, None) and calls == [("step", "b1"), "prepare"]
