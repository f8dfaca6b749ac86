"""Data sources of the gan stage: teacher, image folder, parquet (the generate stage's format), saved HF dataset."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
import torch
from PIL import Image

from pipeline.core.config import ConfigError
from pipeline.stages.gan import run_gan
from pipeline.stages.gan.config import DataConfig
from pipeline.stages.gan.data import MAX_FILTER_DRAWS, TeacherSource, decode_square, load_or_build_cache, open_source
from pipeline.stages.gan.loop import landmark_order_filter
from tests.pipeline.stages.gan.helpers import face_points, tiny_config


def png_bytes(seed: int, size=(24, 20), fmt="PNG") -> bytes:
    rng = np.random.default_rng(seed)
    arr = (rng.random((size[1], size[0], 3)) * 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr, "RGB").save(buf, format=fmt)
    return buf.getvalue()


def image_folder(root, n=6, corrupt=("broken.png",)):
    root.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        (root / f"face{i:02d}.png" if i % 2 else root / "sub" / f"face{i:02d}.jpg").parent.mkdir(exist_ok=True)
        path = root / f"face{i:02d}.png" if i % 2 else root / "sub" / f"face{i:02d}.jpg"
        path.write_bytes(png_bytes(i, fmt="PNG" if i % 2 else "JPEG"))
    for name in corrupt:
        (root / name).write_bytes(b"\x89PNG\r\n\x1a\n this is not an image")
    (root / "notes.txt").write_text("not an image, ignored")
    return root


def generate_format_parquet(path, n=5, with_bad=True):
    """A parquet file shaped like the generate stage's shards: image = struct {bytes, path} (+ other columns)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    cells = [{"bytes": png_bytes(100 + i), "path": None} for i in range(n)]
    if with_bad:
        cells.append({"bytes": b"garbage", "path": None})
    image = pa.array(cells, pa.struct([("bytes", pa.binary()), ("path", pa.string())]))
    table = pa.table({"image": image, "row_index": pa.array(range(len(cells)), pa.int64())})
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, path, row_group_size=2)
    return path


def test_decode_square_crops_the_centre_and_resizes():
    arr = np.zeros((20, 40, 3), np.uint8)
    arr[:, 10:30] = 255                                     # the centre square is white, the sides black
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    out = decode_square(buf.getvalue(), 8)
    assert out.shape == (3, 8, 8) and out.dtype == np.uint8
    assert out.min() >= 250


def test_a_corrupt_image_in_a_folder_is_skipped_and_counted(tmp_path):
    folder = image_folder(tmp_path / "faces", n=6, corrupt=("broken.png", "empty.jpg"))
    (folder / "empty.jpg").write_bytes(b"")
    cfg = DataConfig(source="folder", path=str(folder), cache_dir=str(tmp_path / "cache"))
    lines = []
    images, report = load_or_build_cache(cfg, 16, str(tmp_path), print_fn=lambda *a, **k: lines.append(a[0]))
    assert images.shape == (6, 3, 16, 16) and images.dtype == torch.uint8
    assert report["n_unreadable"] == 2 and report["n_images"] == 6 and report["ignored_files"] == 1
    assert any("broken.png" in u for u in report["unreadable"]) and any("empty.jpg" in u for u in report["unreadable"])
    assert any("skipped 2 unreadable" in line for line in lines)
    # The second time the cache answers (no decoding), with the same counts.
    lines.clear()
    again, report2 = load_or_build_cache(cfg, 16, str(tmp_path), print_fn=lambda *a, **k: lines.append(a[0]))
    assert torch.equal(again, images) and report2["n_unreadable"] == 2
    assert any("from the cache" in line for line in lines)
    # A changed folder is a different dataset: decoded again.
    (folder / "face99.png").write_bytes(png_bytes(99))
    grown, _ = load_or_build_cache(cfg, 16, str(tmp_path), print_fn=lambda *a, **k: None)
    assert grown.shape[0] == 7


def test_a_folder_without_readable_images_is_a_config_error(tmp_path):
    folder = tmp_path / "bad"
    folder.mkdir()
    (folder / "a.png").write_bytes(b"nope")
    with pytest.raises(ConfigError, match="none of the 1 folder images could be decoded"):
        load_or_build_cache(DataConfig(source="folder", path=str(folder)), 16, str(tmp_path), print_fn=lambda *a, **k: None)
    with pytest.raises(ConfigError, match="data.path"):
        DataConfig(source="folder", path="")


def test_parquet_in_the_generate_stage_format(tmp_path):
    path = generate_format_parquet(tmp_path / "shards" / "part-00000.parquet")
    cfg = DataConfig(source="parquet", path=str(path.parent), cache_dir=str(tmp_path / "cache"))
    images, report = load_or_build_cache(cfg, 8, str(tmp_path), print_fn=lambda *a, **k: None)
    assert images.shape == (5, 3, 8, 8) and report["n_unreadable"] == 1
    with pytest.raises(ConfigError, match="data.image_column: 'picture' is not a column"):
        load_or_build_cache(DataConfig(source="parquet", path=str(path), image_column="picture"), 8, str(tmp_path),
                            print_fn=lambda *a, **k: None)


def test_a_saved_hugging_face_dataset(tmp_path):
    datasets = pytest.importorskip("datasets")
    ds = datasets.Dataset.from_dict({"image": [{"bytes": png_bytes(i), "path": None} for i in range(4)],
                                     "label": [0, 1, 0, 1]}).cast_column("image", datasets.Image())
    datasets.DatasetDict({"train": ds}).save_to_disk(str(tmp_path / "hf"))
    cfg = DataConfig(source="hf", path=str(tmp_path / "hf"), split="train", cache_dir=str(tmp_path / "cache"))
    images, report = load_or_build_cache(cfg, 8, str(tmp_path), print_fn=lambda *a, **k: None)
    assert images.shape == (4, 3, 8, 8) and report["kind"] == "hf"
    with pytest.raises(ConfigError, match="data.split"):
        load_or_build_cache(DataConfig(source="hf", path=str(tmp_path / "hf")), 8, str(tmp_path),
                            print_fn=lambda *a, **k: None)


def test_dataset_batches_and_reference_sets(tmp_path):
    folder = image_folder(tmp_path / "faces", n=10, corrupt=())
    cfg = DataConfig(source="folder", path=str(folder), cache_dir=str(tmp_path / "cache"), mirror=True)
    source = open_source(cfg, 16, torch.device("cpu"), seed=0, work_dir=str(tmp_path), print_fn=lambda *a, **k: None)
    x = source.batch(torch.Generator().manual_seed(0), 7)
    assert x.shape == (7, 3, 16, 16) and x.min() >= -1 and x.max() <= 1
    y = source.batch(torch.Generator().manual_seed(0), 7)
    assert torch.equal(x, y)                                # the generator decides everything
    a = torch.cat(list(source.reference(100, 0, 3)))
    b = torch.cat(list(source.reference(100, 1, 3)))
    assert a.shape[0] == b.shape[0] == 5                    # a small dataset: two disjoint halves
    assert not any(torch.equal(i, j) for i in a for j in b)


def test_the_teacher_draws_fresh_resized_samples(tiny_bundle):
    source = TeacherSource(tiny_bundle.generator, 16, torch.device("cpu"), seed=3)
    g = torch.Generator().manual_seed(1)
    first, second = source.batch(g, 4), source.batch(g, 4)
    assert first.shape == (4, 3, 16, 16) and not torch.allclose(first, second)
    ref0 = torch.cat(list(source.reference(6, 0, 4)))
    assert torch.equal(ref0, torch.cat(list(source.reference(6, 0, 4))))   # a fixed set
    assert not torch.allclose(ref0, torch.cat(list(source.reference(6, 1, 4))))


def bright(images: torch.Tensor) -> torch.Tensor:
    """A toy filter: keep the images brighter than mid-grey on average (about half of the tiny teacher's)."""
    return images.mean(dim=(1, 2, 3)) > 0


def test_a_filtered_teacher_trains_on_kept_samples_only_and_measures_against_all(tiny_bundle):
    plain = TeacherSource(tiny_bundle.generator, 16, torch.device("cpu"), seed=3)
    filtered = TeacherSource(tiny_bundle.generator, 16, torch.device("cpu"), seed=3, keep=bright, keep_name="bright")
    batch = filtered.batch(torch.Generator().manual_seed(1), 8)
    assert batch.shape == (8, 3, 16, 16) and bright(batch).all()
    assert not bright(plain.batch(torch.Generator().manual_seed(1), 64)).all()     # the filter had work to do
    assert torch.equal(batch, filtered.batch(torch.Generator().manual_seed(1), 8))  # the rng decides (resume)
    share = filtered.kept_share()
    assert 0 < share < 1 and filtered.report["filter"] == "bright"
    assert plain.kept_share() is None
    # the quality reference sets are the teacher's own, unfiltered
    assert torch.equal(torch.cat(list(plain.reference(6, 0, 4))), torch.cat(list(filtered.reference(6, 0, 4))))


def test_a_filter_that_rejects_everything_stops_with_the_field_named(tiny_bundle):
    source = TeacherSource(tiny_bundle.generator, 16, torch.device("cpu"), keep=lambda x: torch.zeros(
        x.shape[0], dtype=torch.bool), keep_name="landmarks_in_order")
    with pytest.raises(RuntimeError, match=r"data.teacher_filter='landmarks_in_order' kept 0 of"):
        source.batch(torch.Generator().manual_seed(0), 2)
    assert source.drawn == 2 + (MAX_FILTER_DRAWS - 1) * 6          # a batch of 2, then top-ups of 2 x 2 + 2


class PointsByBrightness(torch.nn.Module):
    """A landmark net stand-in: an ordered frontal layout for bright images, the same upside down otherwise."""

    def forward(self, images):
        face = face_points().expand(images.shape[0], 68, 2).clone()
        upright = bright(images)[:, None]                                     # [B, 1]
        face[..., 1] = torch.where(upright, face[..., 1], 1 - face[..., 1])
        return face


def test_the_landmark_order_filter_keeps_faces_whose_landmarks_are_in_order():
    keep = landmark_order_filter(PointsByBrightness(), torch.device("cpu"))
    images = torch.stack([torch.full((3, 8, 8), 0.5), torch.full((3, 8, 8), -0.5)])
    assert keep(images).tolist() == [True, False]
    with pytest.raises(ConfigError, match="needs a landmark network"):
        landmark_order_filter(None, torch.device("cpu"))


def test_teacher_filter_config_is_checked(tmp_path):
    with pytest.raises(ConfigError, match="data.teacher_filter.*filters a teacher's samples; data.source is 'folder'"):
        DataConfig(source="folder", path=str(tmp_path), teacher_filter="landmarks_in_order")
    with pytest.raises(ConfigError, match="data.teacher_filter"):
        DataConfig(teacher_filter="sharp")
    assert "only those with landmarks in order" in DataConfig(teacher_filter="landmarks_in_order").describe()
    with pytest.raises(ValueError, match="needs its keep predicate"):
        open_source(DataConfig(teacher_filter="landmarks_in_order"), 16, torch.device("cpu"), seed=0,
                    work_dir=str(tmp_path), teacher=torch.nn.Identity())


def test_a_gan_run_with_a_landmark_filter_refuses_a_teacher_preset_without_68_points(tmp_path):
    cfg = tiny_config(tmp_path, "total_kimg=0.012",
                      data={"teacher": {"preset": "tiny"}, "teacher_filter": "landmarks_in_order"})
    with pytest.raises(ConfigError, match=r"needs 68 points \[B, 68, 2\]; the teacher preset's landmark net gives"):
        run_gan(cfg, print_fn=lambda *a, **k: None)
    assert not list(tmp_path.rglob("*.safetensors"))                # nothing trained, nothing written


def test_a_filtered_gan_run_logs_and_records_the_kept_share(tmp_path, monkeypatch):
    import pipeline.stages.gan.loop as loop
    monkeypatch.setattr(loop, "landmark_order_filter", lambda landmarks, device: bright)   # tiny has no 68 points
    cfg = tiny_config(tmp_path, "total_kimg=0.016",
                      data={"teacher": {"preset": "tiny"}, "teacher_filter": "landmarks_in_order"})
    result = run_gan(cfg, print_fn=lambda *a, **k: None)
    rows = [json.loads(line) for line in (result.run_dir / "metrics.jsonl").read_text().splitlines()]
    assert rows and all(0 < r["teacher_kept"] < 1 for r in rows)
    report = json.loads(result.card_path.read_text())["data_source"]["report"]
    assert report["filter"] == "landmarks_in_order" and report["kept_share_last_invocation"] == rows[-1]["teacher_kept"]


@pytest.mark.parametrize("kind", ["teacher", "folder", "parquet", "hf"])
def test_a_few_gan_steps_from_each_data_source(tmp_path, kind):
    data = {"source": kind, "cache_dir": str(tmp_path / "cache")}
    if kind == "folder":
        data["path"] = str(image_folder(tmp_path / "faces", n=6))
    elif kind == "parquet":
        data["path"] = str(generate_format_parquet(tmp_path / "p" / "part-00000.parquet"))
    elif kind == "hf":
        datasets = pytest.importorskip("datasets")
        datasets.Dataset.from_dict({"image": [{"bytes": png_bytes(i), "path": None} for i in range(4)]}).cast_column(
            "image", datasets.Image()).save_to_disk(str(tmp_path / "hf"))
        data["path"] = str(tmp_path / "hf")
    else:
        data["teacher"] = {"preset": "tiny"}
    cfg = tiny_config(tmp_path, "total_kimg=0.012", data=data)
    result = run_gan(cfg, print_fn=lambda *a, **k: None)
    assert result.steps == 3 and result.weights_path.is_file()
    card = json.loads(result.card_path.read_text())
    assert card["data_source"]["config"]["source"] == kind
    if kind in ("folder", "parquet"):
        assert card["data_source"]["report"]["n_unreadable"] == 1
