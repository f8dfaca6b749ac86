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

    space = tmp_path / "one_subset.yaml"     # the baseline and one trial: the sweep's chain, at a third of the cost
    space.write_text("presets: [tiny]\nlambda4: {distribution: loguniform, low: 0.1, high: 1000}\n"
                     "landmark_subsets: {mouth: [mouth]}\n")
    cfg = from_dict(RunConfig, {**TINY_BUDGET, "work_dir": str(tmp_path), "name": "t", "tune_space": str(space)})
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
