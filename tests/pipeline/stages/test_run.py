"""`hfld run`: the whole chain on a tiny budget (tiny random preset)."""

import pyarrow.parquet as pq
import pytest

from pipeline.core.config import ConfigError, from_dict
from pipeline.stages.run import RunConfig, run_pipeline

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]

TINY_BUDGET = {
    "model": {"preset": "tiny"},
    "seeds": 2,
    # The run's four T's train in process (Ray Train's start-up costs ~25 s per T on this machine; the Ray
    # Train path of run_train is tested in tests/pipeline/stages/train/test_ray_train.py and by the cluster
    # job); the sweep's trials still run on Ray Tune + Ray Train.
    "train": {"iterations": 12, "log_every": 6, "checkpoint_every": 6, "device": "cpu",
              "scaling": {"num_workers": 0}},
    "tune": {"num_samples": 1, "scheduler": {"max_steps": 6, "eval_every": 3, "grace_period": 3},
             "objective": {"n_samples": 8, "intermediate_samples": 4, "device": "cpu"}},
    "generate": {"n_sources": 10, "variants": 4, "device": "cpu", "resources": {"fuse_scoring": True}},  # 1 actor fewer
    "evaluate": {"n_samples": 8, "bootstrap_resamples": 100, "device": "cpu", "alphas": [0.5, 1.0]},
}


def test_run_produces_report_dataset_and_nested_mlflow_runs(ray_local, tmp_path):
    from mlflow.tracking import MlflowClient

    from pipeline.infra.tracking import MLflowTracker

    space = tmp_path / "one_subset.yaml"     # the baseline and one trial: the sweep's chain, at a third of the cost
    space.write_text("presets: [tiny]\nlambda4: {distribution: loguniform, low: 0.1, high: 1000}\n"
                     "landmark_subsets: {mouth: [mouth]}\n")
    # The sweep's trials as long as the run's trainings: seed 0 of the baseline arm is the baseline trial.
    tune = {**TINY_BUDGET["tune"], "scheduler": {"max_steps": 12, "eval_every": 6, "grace_period": 6}}
    cfg = from_dict(RunConfig, {**TINY_BUDGET, "work_dir": str(tmp_path), "name": "t", "tune_space": str(space),
                                "tune": tune})
    lines = []
    result = run_pipeline(cfg, print_fn=lambda *a, **k: lines.append(" ".join(map(str, a))))
    assert result.evaluation.report_html.is_file() and result.evaluation.report_md.is_file()
    assert "HFLD" in result.evaluation.report_md.read_text()
    rows = sum(pq.ParquetFile(p).metadata.num_rows for p in result.dataset.out_dir.glob("*.parquet"))
    assert rows == 40
    assert result.sweep is not None and result.sweep.table_path.is_file()
    assert any(line.startswith("[run] sweep winner: lambda4 = ") for line in lines)
    assert result.hfld.directions_path.is_file() and result.baseline.directions_path.is_file()
    # issue 14: every arm trains `seeds` T's (seed, seed + 1) and the evaluation takes them all
    assert len(result.baselines) == len(result.hflds) == 2
    assert len({t.directions_path for t in result.baselines + result.hflds}) == 4
    metrics = result.evaluation.metrics
    assert metrics["seeds_per_arm"] == {"baseline": 2, "hfld": 2}
    assert [d["train_seed"] for d in metrics["methods"]["hfld"]["seeds"]] == [0, 1]
    # Seed 0 of the baseline is the sweep's baseline trial, not trained again; and training it again (in
    # this process, not on Ray Train) gives the same T, which is why it may be reused.
    reused = result.baselines[0].directions_path
    assert result.sweep.out_dir in reused.parents and result.baselines[1].directions_path.parent.parent == tmp_path / "t" / "train"
    assert any("baseline T 1/2" in line and "used, not trained again" in line for line in lines)
    from dataclasses import replace

    from pipeline.core.directions import read_meta
    from pipeline.stages.run import train_config
    from pipeline.stages.train import run_train
    again = run_train(replace(train_config(cfg, cfg.train, "again", 0.0), tracking=replace(cfg.tracking, enabled=False)),
                      print_fn=lambda *a, **k: None)
    assert read_meta(again.directions_path)["sha256"] == read_meta(reused)["sha256"]
    assert result.evaluation.statements[0].startswith("Edit strength of Male")
    assert result.evaluation.strength_figures["Male"].is_file()
    text = "\n".join(lines)
    assert "mlflow ui --backend-store-uri" in text and str(result.evaluation.report_html) in text
    assert "Edit strength of Male" in text and "[elapsed" in text

    client = MlflowClient(result.tracking_uri)
    parent = client.get_run(result.mlflow_run_id)
    assert parent.info.status == "FINISHED"
    children = client.search_runs([parent.info.experiment_id],
                                  filter_string=f"tags.mlflow.parentRunId = '{result.mlflow_run_id}'")
    stages = {r.data.tags.get("stage") for r in children}
    assert {"train", "generate", "evaluate", "tune"} <= stages, stages
    assert all(r.info.status == "FINISHED" for r in children)
    # The reused T is registered like a trained one, its source the trial's run.
    trial_run = read_meta(reused)["mlflow_run_id"]
    assert client.search_model_versions(f"run_id = '{trial_run}'"), "the reused trial's T was not registered"
    # Registered once: the same command again (everything reused) adds no version.
    from pipeline.stages.run import register_reused
    versions = len(client.search_model_versions(f"run_id = '{trial_run}'"))
    register_reused(MLflowTracker(client, result.mlflow_run_id, result.tracking_uri, owns_run=False),
                    train_config(cfg, cfg.train, "baseline", 0.0), result.baselines[0], lambda *a, **k: None)
    assert len(client.search_model_versions(f"run_id = '{trial_run}'")) == versions


def test_a_trial_that_trained_exactly_an_arms_config_is_that_arms_T(tmp_path):
    """trained_by_sweep: a completed trial whose result-affecting config, global batch and step count equal
    the arm's is reused; any one of them different, or a trial that did not finish, is not."""
    from dataclasses import replace

    from pipeline.stages.run import trained_by_sweep
    from pipeline.stages.train import TrainConfig, run_train
    from pipeline.stages.tune import TuneResult

    cfg = from_dict(TrainConfig, {"model": {"preset": "tiny"}, "iterations": 2, "batch_size": 2, "device": "cpu",
                                  "work_dir": str(tmp_path / "trials"), "run_name": "trial",
                                  "tracking": {"enabled": False}, "losses": {"landmark": 5.0}})
    trial = run_train(cfg, print_fn=lambda *a, **k: None)

    def sweep(status="COMPLETED"):
        return TuneResult(tmp_path, *(tmp_path / n for n in "abcde"), rows=[
            {"status": "STOPPED", "directions": ""},
            {"status": status, "directions": str(trial.directions_path)}], best={})

    # Where it is, how it logs and on how many workers (at the same global batch) do not matter.
    arm = replace(cfg, work_dir=str(tmp_path / "train"), run_name="hfld-l4_5", log_every=1, checkpoint_every=1,
                  resume="auto", scaling=replace(cfg.scaling, num_workers=1))
    reused = trained_by_sweep(arm, sweep())
    assert reused is not None and reused.directions_path == trial.directions_path and reused.steps == 2
    assert trained_by_sweep(arm, None) is None
    assert trained_by_sweep(arm, sweep("ERROR")) is None
    assert trained_by_sweep(replace(arm, iterations=3), sweep()) is None                  # not as long
    assert trained_by_sweep(replace(arm, lr=arm.lr * 2), sweep()) is None                 # another recipe
    assert trained_by_sweep(replace(arm, losses=replace(arm.losses, landmark=6.0)), sweep()) is None
    assert trained_by_sweep(replace(arm, seed=1), sweep()) is None
    assert trained_by_sweep(replace(arm, scaling=replace(cfg.scaling, num_workers=2)), sweep()) is None  # batch 4


def test_when_the_baseline_scores_best_the_hfld_arm_takes_the_best_hfld_trial(tmp_path):
    import yaml

    from pipeline.core.config import to_dict
    from pipeline.stages.run import hfld_base_from_sweep
    from pipeline.stages.train import TrainConfig, run_train
    from pipeline.stages.tune import TuneResult

    def trial(name, lambda4, groups=()):
        cfg = from_dict(TrainConfig, {"model": {"preset": "tiny"}, "iterations": 1, "batch_size": 1, "device": "cpu",
                                      "work_dir": str(tmp_path), "run_name": name, "tracking": {"enabled": False},
                                      "losses": {"landmark": lambda4}, "landmark_groups": list(groups)})
        return cfg, run_train(cfg, print_fn=lambda *a, **k: None).directions_path

    (base_cfg, base_T), (_, worse_T), (_, better_T) = trial("b", 0.0), trial("h1", 50.0), trial("h2", 7.0, ["mouth"])
    best_path = tmp_path / "best_train.yaml"
    best_path.write_text(yaml.safe_dump(to_dict(base_cfg)))
    rows = [{"trial_id": "0", "role": "baseline", "status": "COMPLETED", "score": 20.0, "directions": str(base_T)},
            {"trial_id": "1", "role": "trial", "status": "COMPLETED", "score": 130.0, "directions": str(worse_T)},
            {"trial_id": "2", "role": "trial", "status": "COMPLETED", "score": 25.0, "directions": str(better_T)},
            {"trial_id": "3", "role": "trial", "status": "STOPPED", "score": 1.0, "directions": ""}]
    sweep = TuneResult(tmp_path, best_path, *(tmp_path / n for n in "abcd"), rows=rows, best=rows[0])
    run_cfg = from_dict(RunConfig, {"model": {"preset": "tiny"}, "work_dir": str(tmp_path)})
    base, lambda4 = hfld_base_from_sweep(run_cfg, sweep)
    assert lambda4 == 7.0 and base.landmark_groups == ("mouth",)
    # No HFLD trial finished: the configured lambda4 (and the run's own recipe).
    sweep.rows = rows[:1]
    assert hfld_base_from_sweep(run_cfg, sweep) == (run_cfg.train, run_cfg.hfld_lambda4)


def test_sections_cannot_override_what_the_run_trains():
    with pytest.raises(ConfigError, match="generate.directions"):
        run_pipeline(from_dict(RunConfig, {**TINY_BUDGET, "generate": {"directions": "/x.safetensors"}}))


def test_sweep_trains_with_the_runs_recipe():
    with pytest.raises(ConfigError, match="tune.train: the run's sweep trains with the run's `train` section"):
        run_pipeline(from_dict(RunConfig, {**TINY_BUDGET, "tune": {"train": {"lr": 0.5}}}))


def test_profiles_come_from_the_registry_and_sit_under_the_users_settings(capsys):
    import argparse

    import yaml

    from pipeline.cli.stages import STAGES, add_stage_arguments, run_stage
    from pipeline.stages.profiles import PROFILES
    from pipeline.stages.run import resolve_run_config

    assert {"demo", "full"} <= set(PROFILES)
    demo = resolve_run_config({"profile": "demo"})
    full = resolve_run_config({"profile": "full"})
    assert demo.seeds == 1 and 100 <= demo.evaluate.n_samples <= 500 and demo.tune.num_samples == 1
    assert full.seeds == 3 and full.evaluate.n_samples == 1000 and 1.0 in full.evaluate.alphas
    assert demo.train.lr >= 1e-3 and full.train.lr >= 1e-3          # not the paper's 1e-4: those T's do not edit
    # The sweeps keep a margin over issue 14's 0.6 (the chosen trial sits at the floor; few faces judge it).
    assert demo.tune.objective.strength_floor >= 0.6 and full.tune.objective.strength_floor >= 0.6
    # The user's values win over the profile's; the profile is recorded.
    mine = resolve_run_config({"profile": "demo", "seeds": 2, "evaluate": {"n_samples": 50}})
    assert mine.seeds == 2 and mine.evaluate.n_samples == 50 and mine.evaluate.alphas == demo.evaluate.alphas
    assert mine.profile == "demo" and mine.tune_space == "starter_demo"
    assert resolve_run_config({"profile": "demo", "model": {"preset": "tiny"}}).tune_space == ""   # the preset's own
    with pytest.raises(ConfigError, match="profile: 'huge' is not a profile"):
        resolve_run_config({"profile": "huge"})
    with pytest.raises(ConfigError, match=r"profile: \[1\] is not a profile"):   # found by the config fuzzer
        resolve_run_config({"profile": [1]})
    # The CLI's --profile choices are the registry's keys, and --set still wins.
    parser = argparse.ArgumentParser()
    add_stage_arguments(parser, STAGES["run"], ["tiny", "starter"])
    flag = next(a for a in parser._actions if a.dest == "profile")
    assert tuple(flag.choices) == tuple(PROFILES)
    args = parser.parse_args(["--profile", "full", "--set", "evaluate.n_samples=20", "--print-config"])
    assert run_stage(STAGES["run"], args) == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["profile"] == "full" and printed["seeds"] == 3 and printed["evaluate"]["n_samples"] == 20
