"""`hfld run`: the whole chain on a tiny budget (tiny random preset)."""

import pyarrow.parquet as pq
import pytest

from pipeline.core.config import ConfigError, from_dict
from pipeline.stages.run import RunConfig, run_pipeline

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]

TINY_BUDGET = {
    "model": {"preset": "tiny"},
    "train": {"iterations": 12, "log_every": 6, "checkpoint_every": 6, "device": "cpu",
              "scaling": {"num_workers": 2, "cpus_per_worker": 0.5}},
    "tune": {"num_samples": 1, "scheduler": {"max_steps": 6, "eval_every": 3, "grace_period": 3},
             "objective": {"n_samples": 8, "intermediate_samples": 4, "device": "cpu"}},
    "generate": {"n_sources": 10, "variants": 4, "device": "cpu"},
    "evaluate": {"n_samples": 8, "bootstrap_resamples": 100, "device": "cpu"},
}


def test_run_produces_report_dataset_and_nested_mlflow_runs(ray_local, tmp_path):
    from mlflow.tracking import MlflowClient

    cfg = from_dict(RunConfig, {**TINY_BUDGET, "work_dir": str(tmp_path), "name": "t"})
    lines = []
    result = run_pipeline(cfg, print_fn=lambda *a, **k: lines.append(" ".join(map(str, a))))
    assert result.evaluation.report_html.is_file() and result.evaluation.report_md.is_file()
    assert "HFLD" in result.evaluation.report_md.read_text()
    rows = sum(pq.ParquetFile(p).metadata.num_rows for p in result.dataset.out_dir.glob("*.parquet"))
    assert rows == 40
    assert result.sweep is not None and result.sweep.table_path.is_file()
    assert result.hfld.directions_path.is_file() and result.baseline.directions_path.is_file()
    text = "\n".join(lines)
    assert "mlflow ui --backend-store-uri" in text and str(result.evaluation.report_html) in text

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
