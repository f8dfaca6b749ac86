"""tools/train_starter_gan.py on CPU with a tiny student: the GPU recipe's plumbing (real starter files)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

from models.load.stylegan2 import load_hfld_gan

SCRIPT = Path(__file__).resolve().parents[4] / "tools" / "train_starter_gan.py"
TINY = ["arch.resolution=16", "arch.channels={4: 16, 8: 16, 16: 8}", "arch.w_dim=32", "arch.n_mlp=2",
        "batch_size=4", "total_kimg=0.008", "snapshot_kimg=0.004", "log_every=1", "precision=fp32",
        "channels_last=false", "quality.n_images=8", "quality.batch_size=8", "quality.every_kimg=0", "device=cpu"]


def launcher():
    spec = importlib.util.spec_from_file_location("train_starter_gan", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.timeout(600)
def test_launcher_trains_resumes_and_brings_back_at_most_8_flat_files(tmp_path, starter_cache):
    tool = launcher()
    cache = starter_cache.parent
    sets = [a for s in TINY for a in ("--set", s)]
    out1 = tmp_path / "out1"
    assert tool.main(["--cache", str(cache), "--out", str(out1), "--work", str(tmp_path / "w1"), "--minutes", "20",
                      *sets]) == 0
    files = sorted(p.relative_to(out1).as_posix() for p in out1.rglob("*") if p.is_file())
    assert len(files) <= 8 and all(f.count("/") <= 1 for f in files), files
    assert "ckpt/manifest.json" in files and "stylegan2_starter64.safetensors" in files
    assert "fd_curve.png" in files and "contact_sheet.png" in files
    _, card = load_hfld_gan(out1 / "stylegan2_starter64.safetensors")
    assert card["training"]["kimg"] == pytest.approx(0.008)
    assert "train_starter_gan.py" in card["command"] and card["quality"]["scale"]["n"] == 8
    # The second invocation continues from out1/ckpt on "another machine" (a fresh work dir).
    out2 = tmp_path / "out2"
    assert tool.main(["--cache", str(cache), "--out", str(out2), "--work", str(tmp_path / "w2"), "--minutes", "20",
                      "--resume", str(out1 / "ckpt"), *sets, "--set", "total_kimg=0.016"]) == 0
    card2 = json.loads((out2 / "stylegan2_starter64.json").read_text())
    assert card2["training"]["kimg"] == pytest.approx(0.016) and len(card2["training"]["invocations"]) == 2
    assert [round(h["kimg"], 3) for h in card2["quality"]["fd_history"]] == [0.008, 0.016]


def test_launcher_builds_the_teacher_preset_from_its_cache(tmp_path):
    """The filter's landmark net comes from the teacher preset, built by name: from --cache, not ~/.cache/hfld."""
    tool = launcher()
    argv = ["--cache", str(tmp_path / "c"), "--out", str(tmp_path / "o"),
            "--set", "data.teacher_filter=landmarks_in_order"]
    cfg = tool.load_config(tool.parse_args(argv), argv)
    assert cfg.data.teacher.cache_dir == str((tmp_path / "c").resolve())
    assert cfg.data.teacher_filter == "landmarks_in_order"
