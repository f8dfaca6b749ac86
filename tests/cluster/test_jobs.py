"""Stages as `ray job submit` jobs on a real multi-node Ray cluster (two `ray start` nodes on this
machine) tracked by an MLflow server: the path docs/cluster.md documents.

One job runs `hfld train` (Ray Train, 2 DDP workers) then `hfld generate` (Ray Data, 200 rows) with T
taken from the tracking server's model registry (models:/...), as a user would after training on a
cluster, and then `hfld train --set resume=<checkpoint>` (one Ray Train worker) resumed from a
checkpoint made in this process, whose T must equal an uninterrupted in-process run's. Three tests read
its results: the Ray side (job status, placement, files), the explicit resume, and the MLflow side
(runs, params, metrics, artifacts, lineage). Sharing one cluster and one job keeps the module near 2
minutes on 2 cores (a separate head for the resume job cost ~40 s more).

The cluster (tests/cluster/ray_cluster.py) is private: its own temp dirs and ports, 2 logical CPUs per
node, token auth off for cluster and client alike; it is stopped by killing exactly the processes it
started, and the module checks that none is left. The test process itself never calls ray.init (the
session's in-process `ray_local` is another, unrelated instance).

What keeps the job honest about "nothing on the driver's CWD or the head node's disk":
- the job's working dir holds only its YAML configs, and `ray job submit` runs from another directory;
- outputs go where HFLD_WORK_DIR in --runtime-env-json says (as on a cluster), while each node's own
  environment points HFLD_WORK_DIR elsewhere: nothing may appear there;
- Ray Train's checkpoints go to a storage URI (file://..., the same code path as s3://...);
- training asks 1.5 CPUs per worker on 2-CPU nodes, so its 2 workers can only run on different nodes
  (checked through Ray's state API);
- T reaches the generate stage through the tracking server, not through a file path;
- MLflow artifacts are uploaded through the server (proxied), so no node writes into another's disk.
"""

from __future__ import annotations

import json
import os
import re
import time
from pathlib import Path

import pytest
import yaml

from pipeline.core.directions import load_directions
from pipeline.core.config import ConfigError, from_dict
from tests.cluster.ray_cluster import VENV_BIN, JobRun, LocalCluster, MlflowServer
from tests.pipeline.stages.train.test_ray_train import OUTPUT_FILES, max_abs_diff, train_cfg, trained_state

TRAIN_STEPS = 4
N_SOURCES, VARIANTS, SHARD_SOURCES = 25, 8, 5          # 200 rows in 5 shards
EXPERIMENT, MODEL_NAME = "cluster-jobs", "hfld-cluster-T"
JOB_TIMEOUT_S = 260


# ---------------------------------------------------------------------------------------------
# Fixtures: one MLflow server, one cluster, one job for the module
# ---------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("cluster-jobs")


@pytest.fixture(scope="module")
def mlflow_server(root):
    server = MlflowServer(root / "mlflow-server", root / "mlflow-server.log")
    try:
        yield server       # waited for by `pipeline_job`: the cluster starts meanwhile
    finally:
        server.stop()
        assert not server.leftovers(), f"the MLflow server left processes behind: {server.leftovers()}"


@pytest.fixture(scope="module")
def node_defaults(root) -> dict[str, Path]:
    """Each node's own HFLD_WORK_DIR: a job that wrote there would depend on that node's disk."""
    return {"head": root / "head-node-default-work", "worker": root / "worker-node-default-work"}


@pytest.fixture(scope="module")
def cluster(root, node_defaults, mlflow_server):
    env = {"MLFLOW_TRACKING_URI": "", "HFLD_WORK_DIR": str(node_defaults["head"])}
    t0 = time.monotonic()
    with LocalCluster(root / "ray-logs", worker_nodes=1, head_cpus=2, worker_cpus=2, env=env,
                      worker_env={"HFLD_WORK_DIR": str(node_defaults["worker"])}) as c:
        print(f"\n[cluster] head + worker node up in {time.monotonic() - t0:.1f} s")
        yield c
    assert not c.leftovers(), f"the test's Ray nodes left processes behind: {c.leftovers()}"


@pytest.fixture(scope="module")
def shared(root) -> dict[str, Path]:
    """"Shared storage": every node of this machine sees these folders."""
    return {"work": root / "shared" / "work", "ray": root / "shared" / "ray-storage"}


def write_job_dir(path: Path, configs: dict[str, dict]) -> Path:
    """The --working-dir shipped with a job: only its YAML configs."""
    path.mkdir()
    for file, data in configs.items():
        (path / file).write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def train_config(shared: dict[str, Path]) -> dict:
    return {"model": {"preset": "tiny"}, "iterations": TRAIN_STEPS, "batch_size": 2, "lr": 1e-3, "log_every": 1,
            "checkpoint_every": 2, "device": "cpu", "run_name": "cluster-train",
            # 1.5 CPUs on 2-CPU nodes: the two DDP workers cannot share a node.
            "scaling": {"num_workers": 2, "cpus_per_worker": 1.5, "storage_path": shared["ray"].as_uri()},
            "tracking": {"experiment": EXPERIMENT, "model_name": MODEL_NAME}}


def generate_config() -> dict:
    return {"model": {"preset": "tiny"}, "n_sources": N_SOURCES, "variants": VARIANTS,
            "shard_sources": SHARD_SOURCES, "batch_sources": SHARD_SOURCES, "seed": 1, "device": "cpu",
            "run_name": "cluster-generate",
            # Few actors (each is a process to start): generation + scoring fused, one encoder, one writer.
            "resources": {"generators": 1, "fuse_scoring": True, "encoders": 1, "cpus_per_actor": 0.25},
            "tracking": {"experiment": EXPERIMENT}}


def resume_work(root: Path) -> Path:
    return root / "resume-work"


def resume_job_config(work: Path) -> tuple[dict, Path]:
    """The resume job's train.yaml (1 Ray Train worker, 4 steps, no tracking, no work_dir: the command line
    gives it) and the checkpoint it resumes from: step 2 of an in-process run made here."""
    from pipeline.core.config import to_dict
    from pipeline.stages.train import run_train

    seed = run_train(train_cfg(work, "seed", iterations=2), print_fn=lambda *a, **k: None)
    job_cfg = to_dict(train_cfg(work, "from-job", iterations=4, scaling__num_workers=1))
    job_cfg.pop("work_dir")
    return job_cfg, seed.run_dir / "checkpoint.safetensors"


@pytest.fixture(scope="module")
def pipeline_job(cluster, mlflow_server, root, shared) -> JobRun:
    """`ray job submit --working-dir <configs> --runtime-env-json '{"env_vars": ...}' -- bash -c
    "hfld train ... && hfld generate ... -T models:/<name>/1"`, run to its end."""
    mlflow_server.wait_ready()
    resume_cfg, resume_seed = resume_job_config(resume_work(root))
    job_dir = write_job_dir(root / "job", {"train.yaml": train_config(shared), "gen.yaml": generate_config(),
                                           "resume.yaml": resume_cfg})
    env_vars = {"PATH": f"{VENV_BIN}{os.pathsep}${{PATH}}",          # the venv's console scripts
                "HFLD_WORK_DIR": str(shared["work"]), "MLFLOW_TRACKING_URI": mlflow_server.uri}
    command = (f"hfld train --config train.yaml && hfld generate --config gen.yaml -T models:/{MODEL_NAME}/1"
               # work_dir and resume given on the command line, as a user would
               f" && hfld train --config resume.yaml --set work_dir={resume_work(root)} --set resume={resume_seed}")
    job = cluster.submit(["bash", "-c", command],
                         working_dir=job_dir, env_vars=env_vars, timeout_s=JOB_TIMEOUT_S)
    print(f"\n[cluster] train + generate job: {job.seconds:.1f} s")
    return job


def require_success(job: JobRun) -> None:
    assert job.status == "SUCCEEDED", \
        f"job {job.job_id}: `ray job status` says {job.status}:\n{job.output[-8000:]}"


def parquet_rows(out: Path) -> tuple[list[str], int]:
    import pyarrow.parquet as pq
    files = sorted(out.glob("*.parquet"))
    return [f.name for f in files], sum(pq.ParquetFile(f).metadata.num_rows for f in files)


# ---------------------------------------------------------------------------------------------
# The job, seen from Ray and the file system
# ---------------------------------------------------------------------------------------------

@pytest.mark.slow
@pytest.mark.timeout(400)
def test_two_node_job_trains_with_two_workers_and_generates(pipeline_job, cluster, root, shared, node_defaults):
    require_success(pipeline_job)
    work = shared["work"]

    # Training: 2 DDP workers (pids from Ray Train's log, up to the end of `hfld train --config train.yaml`:
    # the resume command's worker follows) that ran on the 2 different nodes.
    train_output = pipeline_job.output.split(f"T written to {work / 'cluster-train'}", 1)[0]
    ranks = dict(re.findall(r"pid=(\d+)\) world_rank=(\d+)", train_output))
    assert sorted(ranks.values()) == ["0", "1"], pipeline_job.output[-4000:]
    nodes = {a["node_id"] for a in cluster.actors() if a.get("class_name") == "RayTrainWorker"
             and str(a.get("pid")) in ranks}
    assert len(nodes) == 2, f"the train workers ran on {len(nodes)} node(s)"
    T = work / "cluster-train" / "directions.safetensors"
    meta = load_directions(T).meta
    assert meta["step"] == TRAIN_STEPS and meta["world_size"] == 2
    assert sorted(p.name for p in (shared["ray"] / "cluster-train").glob("checkpoint_*")), \
        "Ray Train's checkpoints belong under scaling.storage_path"

    # Generation: 200 rows in 5 parquet shards and a manifest naming the trained T.
    out = work / "cluster-generate"
    names, rows = parquet_rows(out)
    assert names == [f"part-{i:05d}-of-00005.parquet" for i in range(5)] and rows == N_SOURCES * VARIANTS
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["counts"]["rows"] == N_SOURCES * VARIANTS and len(manifest["shards"]) == 5
    assert manifest["identifiers"]["directions_sha256"] == meta["sha256"]
    assert manifest["identifiers"]["directions_source"] == f"models:/{MODEL_NAME}/1"

    # Nothing landed in the job's working dir, at a node's own default work dir, or in a local MLflow store.
    assert sorted(p.name for p in (root / "job").iterdir()) == ["gen.yaml", "resume.yaml", "train.yaml"]
    for node, path in node_defaults.items():
        assert not path.exists(), f"the job wrote to the {node} node's default work dir {path}"
    assert not (work / "mlflow.db").exists(), "a stage fell back to the local SQLite store"


@pytest.mark.slow
@pytest.mark.timeout(400)
def test_job_resumes_training_from_an_explicit_checkpoint(pipeline_job, root):
    """The job's last command (`hfld train --config resume.yaml --set resume=<path>`, 1 Ray Train worker)
    resumed from a checkpoint made in this process and must end where an uninterrupted in-process run
    ends."""
    from pipeline.stages.train import run_train

    require_success(pipeline_job)
    work = resume_work(root)
    reference = run_train(train_cfg(work, "uninterrupted", iterations=4), print_fn=lambda *a, **k: None)
    run_dir = work / "from-job"
    assert sorted(p.name for p in run_dir.iterdir()) == OUTPUT_FILES
    meta = load_directions(run_dir / "directions.safetensors").meta
    assert (meta["step"], meta["resumed_at_step"]) == (4, 2)
    diff = max_abs_diff(trained_state(run_dir), trained_state(reference.run_dir))
    scale = float(trained_state(reference.run_dir)["T"].abs().max())
    assert diff["T"] <= 1e-5 * scale, f"job's T differs from the uninterrupted run by {diff}"


# ---------------------------------------------------------------------------------------------
# The job, seen from the MLflow tracking server
# ---------------------------------------------------------------------------------------------

@pytest.mark.slow
@pytest.mark.timeout(400)
def test_mlflow_server_holds_the_jobs_runs_with_artifacts_and_lineage(pipeline_job, mlflow_server, shared):
    from mlflow import MlflowClient

    require_success(pipeline_job)
    client = MlflowClient(tracking_uri=mlflow_server.uri, registry_uri=mlflow_server.uri)
    exp = client.get_experiment_by_name(EXPERIMENT)
    train, = client.search_runs([exp.experiment_id], filter_string="attributes.run_name = 'cluster-train'")
    assert train.info.status == "FINISHED"
    assert train.data.params["scaling.num_workers"] == "2" and train.data.params["model.preset"] == "tiny"
    assert train.data.tags["stage"] == "train" and train.data.tags["world_size"] == "2"
    history = client.get_metric_history(train.info.run_id, "total")
    assert sorted(m.step for m in history) == list(range(1, TRAIN_STEPS + 1))

    # T went through the server into its artifact store (proxied upload from the rank 0 worker's node).
    assert train.info.artifact_uri.startswith("mlflow-artifacts:")
    assert {a.path for a in client.list_artifacts(train.info.run_id, "directions")} == {
        "directions/directions.safetensors", "directions/directions.json"}
    stored = list((mlflow_server.root / "artifacts").rglob("directions.safetensors"))
    assert len(stored) == 1
    assert stored[0].read_bytes() == (shared["work"] / "cluster-train" / "directions.safetensors").read_bytes()
    version, = client.search_model_versions(f"name = '{MODEL_NAME}'")
    assert version.run_id == train.info.run_id and version.version == "1"

    generate, = client.search_runs([exp.experiment_id], filter_string="attributes.run_name = 'cluster-generate'")
    assert generate.info.status == "FINISHED" and generate.data.tags["stage"] == "generate"
    assert generate.data.tags["directions_run_id"] == train.info.run_id          # lineage through the registry
    assert generate.data.metrics["rows"] == N_SOURCES * VARIANTS
    assert "manifest.json" in {a.path for a in client.list_artifacts(generate.info.run_id)}


# ---------------------------------------------------------------------------------------------
# Output locations a job must not depend on (no cluster needed)
# ---------------------------------------------------------------------------------------------

@pytest.fixture
def in_ray_job(monkeypatch):
    """The environment `ray job submit` gives its entrypoint."""
    from pipeline.core.paths import RAY_JOB_ENV
    monkeypatch.setenv(RAY_JOB_ENV, json.dumps({"runtime_env": {}, "metadata": {}}))


def test_stages_refuse_relative_output_paths_inside_a_ray_job(in_ray_job, tmp_path):
    from pipeline.stages.evaluate import EvaluateConfig, run_evaluate
    from pipeline.stages.generate import GenerateConfig, run_generate
    from pipeline.stages.train import TrainConfig, run_train

    absolute = str(tmp_path / "work")
    with pytest.raises(ConfigError, match=r"^work_dir: 'runs' is a relative path.*Ray job"):
        run_train(from_dict(TrainConfig, {"model": {"preset": "tiny"}, "work_dir": "runs"}))
    with pytest.raises(ConfigError, match=r"^scaling\.storage_path: 'ckpt' is a relative path"):
        run_train(from_dict(TrainConfig, {"work_dir": absolute, "scaling": {"num_workers": 2,
                                                                               "storage_path": "ckpt"}}))
    with pytest.raises(ConfigError, match=r"^output_dir: 'out' is a relative path"):
        run_generate(from_dict(GenerateConfig, {"work_dir": absolute, "output_dir": "out"}))
    with pytest.raises(ConfigError, match=r"^work_dir: 'w' is a relative path"):
        run_evaluate(from_dict(EvaluateConfig, {"work_dir": "w"}))
    assert not (tmp_path / "work").exists() and not Path("runs").exists() and not Path("out").exists()


def test_output_locations_outside_a_job_and_uris(tmp_path, monkeypatch):
    from pipeline.core.paths import RAY_JOB_ENV, check_output_locations
    from pipeline.stages.train import TrainConfig
    from pipeline.stages.train.ray_train import ray_run_location, storage_path

    monkeypatch.delenv(RAY_JOB_ENV, raising=False)
    check_output_locations({"work_dir": "relative/is/fine/locally"}, {"scaling.storage_path": "ckpt"})
    with pytest.raises(ConfigError, match=r"^work_dir: 's3://bucket/work' is a URI"):
        check_output_locations({"work_dir": "s3://bucket/work"})
    check_output_locations({"work_dir": str(tmp_path)}, {"scaling.storage_path": "s3://bucket/ray"})

    # Ray's storage path may be object storage: kept as given, not turned into <cwd>/s3:/bucket/...
    cfg = from_dict(TrainConfig, {"work_dir": str(tmp_path), "run_name": "r",
                                  "scaling": {"storage_path": "s3://bucket/ray/"}})
    assert storage_path(cfg) == "s3://bucket/ray" and ray_run_location(cfg) == "s3://bucket/ray/r"
    local = from_dict(TrainConfig, {"work_dir": str(tmp_path), "run_name": "r"})
    assert ray_run_location(local) == tmp_path.resolve() / "ray" / "r"


def test_docs_job_configs_load_and_write_only_to_absolute_paths(in_ray_job):
    """docs/jobs/*.yaml (the configs docs/cluster.md submits) are valid configs of their stage, with
    absolute output paths, and runtime_env.yaml sets the documented variables."""
    from pipeline.core.config import load_config
    from pipeline.stages.evaluate import EvaluateConfig
    from pipeline.core.paths import check_output_locations
    from pipeline.stages.generate import GenerateConfig
    from pipeline.stages.run import RunConfig
    from pipeline.stages.train import TrainConfig
    from pipeline.stages.tune import TuneConfig
    from pipeline.stages.tune.space import resolve_space_path
    from tests.conftest import REPO

    jobs = REPO / "docs" / "jobs"
    train = load_config(TrainConfig, jobs / "train.yaml")
    assert train.scaling.num_workers >= 2 and train.scaling.use_gpu
    check_output_locations({"work_dir": train.work_dir}, {"scaling.storage_path": train.scaling.storage_path},
                           probe=False)
    tune = load_config(TuneConfig, jobs / "tune.yaml")
    assert resolve_space_path(tune.space).is_file() and tune.trial_scaling.use_gpu
    generate = load_config(GenerateConfig, jobs / "generate.yaml")
    check_output_locations({"output_dir": generate.output_dir, "work_dir": generate.work_dir}, probe=False)
    assert Path(generate.output_dir).is_absolute() and not generate.resources.writer_on_driver_node
    evaluate = load_config(EvaluateConfig, jobs / "evaluate.yaml")
    run = load_config(RunConfig, jobs / "run.yaml")
    assert run.train.scaling.use_gpu and run.tune.trial_scaling.use_gpu
    for cfg in (train, tune.train, generate, evaluate, run):
        assert all(Path(p).is_absolute() for p in cfg.model.weights.values()), cfg.model.weights
    env = yaml.safe_load((jobs / "runtime_env.yaml").read_text())["env_vars"]
    assert {"HFLD_WORK_DIR", "MLFLOW_TRACKING_URI", "DEEPFACE_HOME"} <= set(env)
    assert env["MLFLOW_TRACKING_URI"].startswith("http://") and Path(env["HFLD_WORK_DIR"]).is_absolute()
