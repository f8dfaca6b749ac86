"""benchmarks/byof_figure.py on hand-made invert / generate outputs: layout, order, the carried label."""

from __future__ import annotations

import importlib.util
import io
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "byof_figure.py"


def load_script():
    spec = importlib.util.spec_from_file_location("byof_figure", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def png(colour) -> dict:
    buf = io.BytesIO()
    Image.new("RGB", (64, 64), colour).save(buf, format="PNG")
    return {"bytes": buf.getvalue(), "path": None}


def write_outputs(tmp_path: Path) -> tuple[Path, Path]:
    inv, aug = tmp_path / "inv", tmp_path / "aug"
    inv.mkdir(), aug.mkdir()
    pq.write_table(pa.Table.from_pylist([
        {"source_id": "a", "status": "ok", "aligned_image": png((255, 0, 0)), "reconstruction_image": png((0, 255, 0)),
         "identity_cosine": 0.95, "emotion": "happy"},
        {"source_id": "b", "status": "no_face", "aligned_image": None, "reconstruction_image": None,
         "identity_cosine": None, "emotion": "sad"},
        {"source_id": "c", "status": "ok", "aligned_image": png((0, 0, 255)), "reconstruction_image": png((9, 9, 9)),
         "identity_cosine": 0.5, "emotion": "angry"}]), inv / "part-00000.parquet")
    pq.write_table(pa.Table.from_pylist([
        {"source_id": s, "variant": v, "image": png((40 * v, 200, 40 * v)), "emotion": lab, "variant_emotion_label": "x"}
        for s, lab in (("c", "angry"), ("a", "happy")) for v in (2, 0, 1)]), aug / "part-00000.parquet")
    return inv, aug


def test_one_row_per_inverted_face_with_its_variants_in_order(tmp_path):
    inv, aug = write_outputs(tmp_path)
    out = tmp_path / "fig.png"
    assert load_script().main(["--inverted", str(inv), "--augmented", str(aug), "--variants", "2",
                               "--tile", "32", "-o", str(out)]) == 0
    sheet = Image.open(out).convert("RGB")
    tile, cap = 32, 34
    assert sheet.size == (4 * tile, cap + 2 * (tile + cap))          # faces a and c (b had no face), 2 variants
    first_row = cap + tile // 2
    assert sheet.getpixel((tile // 2, first_row)) == (255, 0, 0)      # a's aligned input, source order kept
    assert sheet.getpixel((tile + tile // 2, first_row)) == (0, 255, 0)
    assert sheet.getpixel((2 * tile + tile // 2, first_row)) == (0, 200, 0)    # variant 0 first
    assert sheet.getpixel((3 * tile + tile // 2, first_row)) == (40, 200, 40)  # then variant 1
    assert sheet.getpixel((tile // 2, first_row + tile + cap)) == (0, 0, 255)  # c below a


def test_outputs_that_do_not_belong_together_are_refused(tmp_path):
    inv, _ = write_outputs(tmp_path)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(SystemExit, match="no parquet files"):
        load_script().main(["--inverted", str(inv), "--augmented", str(empty), "-o", str(tmp_path / "f.png")])
