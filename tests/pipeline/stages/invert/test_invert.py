"""Stage `invert` end to end with Ray Data on the tiny preset (CPU), and `generate --sources` on its output.

The input is a labelled parquet file as Hugging Face writes it: image structs {bytes, path}, label
columns of several types, a ClassLabel feature. Rows: three starter DCGAN faces (the human fixture's),
a noise image and a black image (no face), a corrupt file and a null image (unreadable). The tiny
preset's random generator does not make faces, so alignment uses the starter's template here (the
detector is BlazeFace from the starter zoo, as for every preset).
"""

from __future__ import annotations

import dataclasses
import io
import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from pipeline.core.config import ConfigError, from_dict, to_dict
from pipeline.core.directions import save_directions
from pipeline.infra.tracking import TrackingConfig
from pipeline.presets.starter import DCGAN64_ALIGNMENT
from pipeline.stages.generate import GenerateConfig, job_config as generate_job_config, run_generate, split_of
from pipeline.stages.invert import InvertConfig, prepare, run_invert
from pipeline.stages.invert.sources import open_source

pytestmark = pytest.mark.timeout(600)

FIXTURE = Path(__file__).resolve().parents[4] / "tests" / "fixtures" / "human" / "human_reference.npz"
EXPECTED_STATUS = ["ok", "no_face", "ok", "unreadable", "ok", "no_face", "unreadable"]
LABEL_COLUMNS = ["emotion", "label", "score", "raw", "tags", "subject"]


def png(pixels: np.ndarray) -> bytes:
    from PIL import Image
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="PNG")
    return buf.getvalue()


def labelled_table():
    """The input rows (see the module docstring) with labels that must survive byte for byte."""
    import pyarrow as pa
    with np.load(FIXTURE) as data:
        src = dict(zip(data["image_names"].tolist(), data["src64"]))
    black = np.zeros((48, 60, 3), np.uint8)
    images = [png(src["starter_face_4"]), png(src["noise"]), png(src["starter_face_11"]), b"\x89PNG\r\n\x1a\nbroken",
              png(src["starter_face_14"]), png(black), None]
    image = pa.array([{"bytes": b, "path": f"img{i}.png"} if b is not None else None for i, b in enumerate(images)],
                     pa.struct([("bytes", pa.binary()), ("path", pa.string())]))
    labels = {
        "emotion": pa.array(["happy", "sad", "日本語 😀", "angry", "", "neutral", "fear"], pa.string()),
        "label": pa.array([3, 4, 0, 0, 6, 6, 2], pa.int64()),
        "score": pa.array([0.5, float("nan"), None, -0.0, 1e-300, 2.5, 7.0], pa.float64()),
        "raw": pa.array([b"\x00\xff", b"", None, b"x", b"\x80", b"y", b"z"], pa.binary()),
        "tags": pa.array([["a", "b"], [], None, ["c"], ["d", "e", "f"], ["g"], ["h"]], pa.list_(pa.string())),
        "subject": pa.array(["s1", "s1", "s2", "s2", "s3", "s3", "s4"], pa.string()),
    }
    features = {"image": {"_type": "Image"},
                "label": {"names": ["angry", "disgust", "fear", "happy", "sad", "surprise", "neutral"],
                          "_type": "ClassLabel"}}
    return pa.table({"image": image, **labels}).replace_schema_metadata(
        {"huggingface": json.dumps({"info": {"features": features}})})


@pytest.fixture(scope="module")
def tracking(tmp_path_factory) -> TrackingConfig:
    db = tmp_path_factory.mktemp("mlflow") / "mlflow.db"
    return TrackingConfig(tracking_uri=f"sqlite:///{db}", experiment="invert-tests")


@pytest.fixture(scope="module")
def input_parquet(tmp_path_factory) -> Path:
    import pyarrow.parquet as pq
    path = tmp_path_factory.mktemp("input") / "faces.parquet"
    pq.write_table(labelled_table(), path, row_group_size=3)     # rows of a chunk span row groups
    return path


def invert_config(input_path: Path, out: Path, tracking: TrackingConfig, starter_cache: Path, **changes) -> InvertConfig:
    data = {"model": {"preset": "tiny", "cache_dir": str(starter_cache.parent)},
            "input": {"path": str(input_path), "id_column": ""},
            "align": {"method": "template", "detector_template": [list(p) for p in DCGAN64_ALIGNMENT.detector_template]},
            "projection": {"steps": 8, "w_std_samples": 500}, "batch_faces": 2, "shard_rows": 3, "seed": 5,
            "device": "cpu", "output_dir": str(out), "tracking": to_dict(tracking),
            "resources": {"cpus_per_actor": 0.25}}
    for key, value in changes.items():
        node, parts = data, key.split(".")
        for p in parts[:-1]:
            node = node.setdefault(p, {})
        node[parts[-1]] = value
    return from_dict(InvertConfig, data, "invert")


@pytest.fixture(scope="module")
def inverted(ray_local, tmp_path_factory, input_parquet, tracking, starter_cache):
    out = tmp_path_factory.mktemp("inverted") / "out"
    cfg = invert_config(input_parquet, out, tracking, starter_cache, progress_every_s=0.01)
    lines: list[str] = []
    result = run_invert(cfg, print_fn=lambda *a, **k: lines.append(" ".join(map(str, a))))
    return {"cfg": cfg, "result": result, "out": out, "lines": lines}


def read(out: Path):
    import pyarrow as pa
    import pyarrow.parquet as pq
    return pa.concat_tables([pq.read_table(f) for f in sorted(out.glob("part-*.parquet"))])


def test_every_row_gets_a_status_and_the_run_continues(inverted):
    table = read(inverted["out"])
    result = inverted["result"]
    assert [f.name for f in sorted(inverted["out"].glob("part-*.parquet"))] == \
        [f"part-{i:05d}-of-00003.parquet" for i in range(3)]
    assert table.column("status").to_pylist() == EXPECTED_STATUS
    assert table.column("source_index").to_pylist() == list(range(7))
    assert table.column("source_id").to_pylist() == [str(i) for i in range(7)]
    assert table.column("source_path").to_pylist() == [f"img{i}.png" for i in range(6)] + [""]
    assert result.counts["ok"] == 3 and result.counts["no_face"] == 2 and result.counts["unreadable"] == 2
    rows = table.to_pylist()
    for r in rows:
        measured = r["status"] == "ok"
        for name in ("wplus", "aligned_image", "reconstruction_image", "psnr", "identity_cosine", "align_matrix",
                     "source_emotion_label", "emotion_agreement", "loss_end"):
            assert (r[name] is not None) == measured, (name, r["status"])
        # the detector's best candidate is kept for no_face rows (below align.min_score)
        assert (r["face_score"] is not None) == (r["status"] != "unreadable")
    for r in rows:
        if r["status"] == "no_face":
            assert r["face_score"] < 0.5
        if r["status"] == "ok":
            assert r["face_score"] >= 0.5 and len(r["wplus"]) == 8 * 32 and len(r["align_matrix"]) == 6
            assert r["loss_end"] < r["loss_start"]
            assert -1 <= r["identity_cosine"] <= 1 and r["psnr"] > 0
    assert table.schema.field("wplus").type.value_type.id == 10        # halffloat (float16)
    from PIL import Image
    crop = Image.open(io.BytesIO(rows[0]["aligned_image"]["bytes"]))
    assert crop.size == (32, 32) and crop.mode == "RGB"
    assert any("ETA" in line for line in inverted["lines"])
    # between shard lines, the heartbeat: rows of the chunks the actors finished (counted once each)
    beats = [tuple(map(int, m.groups())) for line in inverted["lines"]
             if (m := re.match(r"\[invert\] inverting: (\d+)/(\d+) rows in finished chunks", line))]
    assert beats, inverted["lines"]
    assert all(total == inverted["result"].rows_written for _, total in beats)
    done = [d for d, _ in beats]
    assert done == sorted(set(done)) and 0 < done[-1] <= inverted["result"].rows_written


def test_labels_survive_byte_for_byte(inverted, input_parquet):
    import pyarrow.parquet as pq
    source = pq.read_table(input_parquet)
    out = read(inverted["out"])
    for name in LABEL_COLUMNS:
        assert out.schema.field(name).type == source.schema.field(name).type, name
        a, b = out.column(name).combine_chunks(), source.column(name).combine_chunks()
        if name == "score":            # arrow's equals says NaN != NaN: compare without the NaN row
            a, b = a.filter([True, False] + [True] * 5), b.filter([True, False] + [True] * 5)
        assert a.equals(b), name
    # NaN, -0.0 and nulls included: compare the raw value bits
    a = np.asarray(out.column("score").combine_chunks().fill_null(1.25).to_numpy(zero_copy_only=False))
    b = np.asarray(source.column("score").combine_chunks().fill_null(1.25).to_numpy(zero_copy_only=False))
    assert a.tobytes() == b.tobytes()
    meta = json.loads(out.schema.metadata[b"hfld"])
    assert meta["label_columns"] == LABEL_COLUMNS and meta["format"] == "hfld-invert"
    assert meta["n_latent"] == 8 and meta["w_dim"] == 32 and meta["latent_space"] == "w+"


def test_hugging_face_reads_the_output_with_its_features(inverted):
    import datasets
    ds = datasets.load_dataset("parquet", data_files=sorted(str(p) for p in inverted["out"].glob("part-*.parquet")),
                               split="train")
    assert ds.features["label"].names[3] == "happy" and ds[0]["label"] == 3
    assert ds[0]["aligned_image"].size == (32, 32) and ds[1]["aligned_image"] is None


def test_manifest_and_mlflow(inverted, tracking):
    manifest = json.loads((inverted["out"] / "manifest.json").read_text())
    assert manifest["counts"]["rows"] == 7 and manifest["counts"]["ok"] == 3
    assert [s["rows"] for s in manifest["shards"]] == [3, 3, 1]
    import mlflow
    run = mlflow.MlflowClient(tracking.tracking_uri).get_run(inverted["result"].mlflow_run_id)
    assert run.data.metrics["ok"] == 3 and run.data.tags["preset"] == "tiny"
    # provenance (issue 13): who wrote the shards -- packages, device, the weights' licences
    (prov,) = manifest["provenance"]
    assert prov["shards"] == [0, 1, 2] and prov["packages"]["torch"] == torch.__version__
    assert prov["device"].startswith("cpu") and prov["preset"] == "tiny" and prov["weights"]
    assert run.data.tags["provenance.packages.torch"] == torch.__version__


def test_resume_writes_only_the_missing_shards(inverted, tracking, starter_cache):
    from pipeline.core.io import file_sha256
    out = inverted["out"]
    files = sorted(out.glob("part-*.parquet"))
    before = {f.name: file_sha256(f) for f in files}
    untouched = {f.name: f.stat().st_mtime_ns for f in files if f != files[1]}
    files[1].unlink()
    result = run_invert(inverted["cfg"], print_fn=lambda *a, **k: None)
    assert result.shards_written == 1 and result.rows_written == 3
    assert {f.name: file_sha256(f) for f in sorted(out.glob("part-*.parquet"))} == before   # same bytes
    assert {f.name: f.stat().st_mtime_ns for f in sorted(out.glob("part-*.parquet")) if f.name in untouched} == untouched
    # nothing missing: nothing written
    assert run_invert(inverted["cfg"], print_fn=lambda *a, **k: None).shards_written == 0
    # other settings in the same folder are refused
    with pytest.raises(ConfigError, match="different invert job"):
        run_invert(dataclasses.replace(inverted["cfg"], seed=6))


# ---------------------------------------------------------------------------------------------
# generate --sources
# ---------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def directions(tmp_path_factory):
    gen = torch.Generator().manual_seed(2)
    return save_directions(tmp_path_factory.mktemp("T") / "directions.safetensors",
                           torch.randn(8, 32, 2, generator=gen) * 0.3, {"attributes": ["Male", "Young"], "preset": "tiny"})


def generate_config(sources: Path, out: Path, directions: Path, **changes) -> GenerateConfig:
    data = {"model": {"preset": "tiny"}, "directions": str(directions), "sources": str(sources), "variants": 3,
            "shard_sources": 2, "batch_sources": 2, "seed": 4, "output_dir": str(out), "device": "cpu",
            "tracking": {"enabled": False}, "resources": {"cpus_per_actor": 0.1}}
    data.update(changes)
    return from_dict(GenerateConfig, data, "generate")


UNEDITED_FIRST = {"kind": "recipes", "recipes": ["none", "+Male", "-Young"]}    # variant 0: a zero edit


@pytest.fixture(scope="module")
def augmented(inverted, directions, tmp_path_factory):
    """`generate --sources` on the inverted faces (one Ray Data run for the tests below): 3 variants per
    face, the first unedited (recipe 'none'), split by subject."""
    out = tmp_path_factory.mktemp("augmented") / "out"
    cfg = generate_config(inverted["out"], out, directions, policy=UNEDITED_FIRST,
                          split={"fractions": {"train": 0.5, "test": 0.5}, "column": "subject"})
    return {"result": run_generate(cfg, print_fn=lambda *a, **k: None), "out": out}


def test_generate_from_inverted_sources_keeps_ids_labels_and_splits(inverted, augmented):
    import pyarrow.parquet as pq
    out, result = augmented["out"], augmented["result"]
    table = read(out)
    src = read(inverted["out"])
    ok = [r for r in src.to_pylist() if r["status"] == "ok"]
    assert result.n_rows == len(ok) * 3 == table.num_rows
    rows = table.to_pylist()
    for r in rows:
        s = ok[r["source_index"]]
        assert r["source_id"] == s["source_id"]
        for name in LABEL_COLUMNS:
            same = (r[name] == s[name]) or (r[name] != r[name] and s[name] != s[name])   # NaN == NaN here
            assert same, (name, r[name], s[name])
        assert r["split"] == split_of(s["subject"], {"train": 0.5, "test": 0.5}, 0)
        assert r["inversion_identity_cosine"] == pytest.approx(s["identity_cosine"])
    for k in range(len(ok)):       # all variants of a source share its split
        assert len({r["split"] for r in rows if r["source_index"] == k}) == 1
    for name in LABEL_COLUMNS:
        assert table.schema.field(name).type == src.schema.field(name).type
    manifest = json.loads((out / "manifest.json").read_text())
    assert sum(manifest["counts"]["splits"].values()) == table.num_rows
    meta = json.loads(pq.read_schema(sorted(out.glob("*.parquet"))[0]).metadata[b"hfld"])
    assert meta["sources"]["usable"] == 3 and meta["label_columns"] == LABEL_COLUMNS


def test_the_sources_latents_drive_the_generator(inverted, augmented):
    """A variant with a zero edit (recipe 'none') is the source's reconstruction from its stored latent."""
    from PIL import Image
    unedited = [r for r in read(augmented["out"]).to_pylist() if r["variant"] == 0]
    src = [r for r in read(inverted["out"]).to_pylist() if r["status"] == "ok"]
    assert len(unedited) == len(src) and all(g["s"] == [0.0, 0.0] for g in unedited)
    for g, s in zip(unedited, src):
        a = np.asarray(Image.open(io.BytesIO(g["image"]["bytes"])), np.int16)
        b = np.asarray(Image.open(io.BytesIO(s["reconstruction_image"]["bytes"])), np.int16)
        assert np.abs(a - b).mean() < 2.0      # the same face, up to the float16 latent


def test_random_z_jobs_record_no_sources_keys():
    cfg = from_dict(GenerateConfig, {"model": {"preset": "tiny"}, "directions": "T.safetensors"})
    assert not {"sources", "sources_limit", "split"} & set(generate_job_config(cfg))
    with pytest.raises(ConfigError, match="sum to 1"):
        from_dict(GenerateConfig, {"split": {"fractions": {"train": 0.8, "test": 0.1}}})
    with pytest.raises(ConfigError, match="truncation"):
        from_dict(GenerateConfig, {"sources": "x", "truncation": 0.7})


def test_bad_sources_are_refused(inverted, directions, input_parquet, tmp_path):
    from pipeline.stages.generate import prepare as prepare_generate
    with pytest.raises(ConfigError, match="split.column"):
        prepare_generate(generate_config(inverted["out"], tmp_path / "a", directions, split={"column": "nope"}))
    with pytest.raises(ConfigError, match="not an `hfld invert` output"):
        prepare_generate(generate_config(input_parquet, tmp_path / "b", directions))
    with pytest.raises(ConfigError, match="no inverted parquet"):
        prepare_generate(generate_config(tmp_path / "nothing", tmp_path / "c", directions))


# ---------------------------------------------------------------------------------------------
# Inputs: folder, CSV, Hugging Face dataset on disk; refusals
# ---------------------------------------------------------------------------------------------

def test_folder_and_csv_sources_read_rows_and_labels(tmp_path):
    from pipeline.stages.invert.config import InputConfig
    with np.load(FIXTURE) as data:
        faces = data["src64"][2:5]
    for i, who in enumerate(["ann", "bob", "bob"]):
        (tmp_path / "faces" / who).mkdir(parents=True, exist_ok=True)
        (tmp_path / "faces" / who / f"{i}.png").write_bytes(png(faces[i]))
    (tmp_path / "faces" / ".hidden.png").write_bytes(b"x")
    (tmp_path / "faces" / "notes.txt").write_text("not an image")
    folder = open_source(InputConfig(path=str(tmp_path / "faces"), folder_label="person"))
    assert folder.kind == "folder" and folder.n_rows == 3
    assert folder.ids(range(3)) == ["ann/0.png", "bob/1.png", "bob/2.png"]
    assert folder.read_labels([2, 0]).column("person").to_pylist() == ["bob", "ann"]
    assert folder.read_images([1])[0] == png(faces[1])
    (tmp_path / "labels.csv").write_text("file,id,grade\nfaces/ann/0.png,007,1.50\nfaces/bob/9.png,008,x\n")
    csv = open_source(InputConfig(path=str(tmp_path / "labels.csv"), image_column="file", id_column="id"))
    assert csv.kind == "csv" and csv.ids([0, 1]) == ["007", "008"]                # strings stay strings
    assert csv.read_labels([0, 1]).column("grade").to_pylist() == ["1.50", "x"]
    data = csv.read_images([0, 1])
    assert data[0] == png(faces[0]) and data[1] is None                          # a missing file: unreadable


def test_hugging_face_dataset_on_disk_with_noise_maps(ray_local, tmp_path, tracking, starter_cache, directions):
    """A saved Hugging Face dataset in, noise maps optimised, float32 latents; generate --sources then
    reproduces the reconstructions from the stored latents and noise maps."""
    import datasets
    from PIL import Image
    with np.load(FIXTURE) as data:
        faces = data["src64"][2:5]
    features = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=["a", "b"]),
                                  "note": datasets.Value("string")})
    ds = datasets.Dataset.from_dict({"image": [Image.fromarray(f) for f in faces], "label": [1, 0, 1],
                                     "note": ["x", "y", "z"]}, features=features)
    ds.save_to_disk(str(tmp_path / "hf"))
    cfg = invert_config(tmp_path / "hf", tmp_path / "out", tracking, starter_cache, **{
        "align.method": "none", "input.label_columns": ["label", "note"], "latent_dtype": "float32",
        "projection.optimize_noise": True})
    result = run_invert(cfg, print_fn=lambda *a, **k: None)
    table = read(tmp_path / "out")
    assert result.counts["ok"] == 3 and table.column("label").to_pylist() == [1, 0, 1]
    assert table.column("note").to_pylist() == ["x", "y", "z"]
    assert table.schema.field("wplus").type.value_type.id == 11        # float32
    sizes = [r * r for r in (4, 8, 8, 16, 16, 32, 32)]                 # the tiny generator's noise maps
    assert [len(n) for n in table.column("noise").to_pylist()] == [sum(sizes)] * 3
    hf = json.loads(table.schema.metadata[b"huggingface"])["info"]["features"]
    assert hf["label"]["names"] == ["a", "b"]
    out = tmp_path / "unedited"
    run_generate(generate_config(tmp_path / "out", out, directions, variants=1,
                                 policy={"kind": "recipes", "recipes": ["none"]}), print_fn=lambda *a, **k: None)
    for g, s in zip(read(out).to_pylist(), table.to_pylist()):
        a = np.asarray(Image.open(io.BytesIO(g["image"]["bytes"])), np.int16)
        b = np.asarray(Image.open(io.BytesIO(s["reconstruction_image"]["bytes"])), np.int16)
        assert np.abs(a - b).max() <= 1                                  # float32 latent and noise: same image


def test_store_images_false_stores_neither_image(input_parquet, tracking, starter_cache, tmp_path):
    from pipeline.stages.invert.shards import output_schema
    job = prepare(invert_config(input_parquet, tmp_path / "out", tracking, starter_cache, store_images=False))
    names = output_schema(job, 0).names
    assert "aligned_image" not in names and "reconstruction_image" not in names and "wplus" in names


def test_bad_inputs_are_refused_before_any_work(tmp_path, input_parquet, tracking, starter_cache):
    def cfg(**changes):
        return invert_config(input_parquet, tmp_path / "out", tracking, starter_cache, **changes)
    with pytest.raises(ConfigError, match="input.image_column"):
        prepare(cfg(**{"input.image_column": "picture"}))
    with pytest.raises(ConfigError, match="input.label_columns"):
        prepare(cfg(**{"input.label_columns": ["emotion", "nope"]}))
    with pytest.raises(ConfigError, match="not unique"):
        prepare(cfg(**{"input.id_column": "subject"}))
    with pytest.raises(ConfigError, match="does not exist"):
        prepare(cfg(**{"input.path": str(tmp_path / "missing")}))
    with pytest.raises(ConfigError, match="detector_template"):
        prepare(cfg(**{"align.detector_template": None}))            # tiny has no template of its own
    import pyarrow.parquet as pq
    clash = labelled_table().rename_columns(["image", "status", "label", "score", "raw", "tags", "subject"])
    pq.write_table(clash, tmp_path / "clash.parquet")
    with pytest.raises(ConfigError, match="clash"):
        prepare(cfg(**{"input.path": str(tmp_path / "clash.parquet")}))
    assert not (tmp_path / "out").exists()


def test_auto_batch_faces_follows_device_and_resolution():
    from pipeline.stages.invert.config import chunk_faces
    auto = InvertConfig()
    assert auto.batch_faces == 0
    assert chunk_faces(auto, 64, cuda_visible=False) == 16                    # auto device, no GPU
    assert chunk_faces(auto, 64, cuda_visible=True) == 256
    assert chunk_faces(auto, 256, cuda_visible=True) == 64
    assert chunk_faces(auto, 1024, cuda_visible=True) == 16
    assert chunk_faces(dataclasses.replace(auto, device="cpu"), 64, cuda_visible=True) == 16
    assert chunk_faces(dataclasses.replace(auto, device="cuda:1"), 32, cuda_visible=False) == 256
    assert chunk_faces(dataclasses.replace(auto, batch_faces=7), 64, cuda_visible=True) == 7
    with pytest.raises(ConfigError, match="batch_faces"):
        InvertConfig(batch_faces=-1)


def test_invert_check_runs_end_to_end_and_reports_agreement_by_the_judges_margin(ray_local, tmp_path):
    """`hfld invert-check` on the tiny preset: generated faces in, the real path (Ray Data) through, the
    report with its targets and the agreement-by-margin extra out."""
    from pipeline.stages.invert import InvertCheckConfig
    from pipeline.stages.invert.check import run_invert_check
    cfg = from_dict(InvertCheckConfig, {"n_faces": 4, "seed": 2, "output_dir": str(tmp_path / "check"), "invert": {
        "model": {"preset": "tiny"}, "align": {"method": "none"}, "projection": {"steps": 6, "w_std_samples": 200},
        "batch_faces": 2, "device": "cpu", "tracking": {"enabled": False}, "resources": {"cpus_per_actor": 0.25}}})
    result = run_invert_check(cfg, print_fn=lambda *a, **k: None)
    m = json.loads(result.report_json.read_text())
    assert m["faces"] == 4 and m["found"] == 4
    by = m["emotion_agreement_by_input_margin"]
    assert [b["min_margin"] for b in by["by_min_margin"]] == [0.05, 0.1, 0.2]
    assert by["median_margin_agreed"] is not None or by["median_margin_changed"] is not None
    report = result.report_md.read_text()
    assert "emotion agreement, aligned input vs reconstruction" in report and "(extra" in report
