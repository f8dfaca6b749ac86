import json

import pytest
import torch

from pipeline.core.directions import CheckpointError, load_directions, save_directions


def test_round_trip_with_optimizer(tmp_path):
    T = torch.randn(3, 4, 2)
    opt = {"exp_avg": torch.randn(3, 4, 2), "exp_avg_sq": torch.rand(3, 4, 2), "step": torch.tensor(5.0)}
    p = save_directions(tmp_path / "d.safetensors", T, {"attributes": ["Male", "Young"], "step": 5}, opt)
    f = load_directions(p)
    assert torch.equal(f.T, T) and f.attributes == ["Male", "Young"] and f.meta["step"] == 5
    assert torch.equal(f.optimizer["exp_avg"], opt["exp_avg"])
    assert f.meta["n_latent"] == 3 and f.meta["w_dim"] == 4 and f.meta["format_version"] == 1
    assert not list(tmp_path.glob("*.tmp"))


def test_naming_the_metadata_file_reads_the_T_beside_it(tmp_path):
    T = torch.randn(3, 4, 2)
    p = save_directions(tmp_path / "d.safetensors", T, {"attributes": ["Male", "Young"]})
    assert torch.equal(load_directions(tmp_path / "d.json").T, T)      # was: "contents do not match the sha256"


def test_attribute_count_must_match(tmp_path):
    with pytest.raises(CheckpointError, match="names 1 attributes but T has 2"):
        save_directions(tmp_path / "d.safetensors", torch.zeros(1, 2, 2), {"attributes": ["Male"]})


def test_corruption_and_missing_pieces_are_detected(tmp_path):
    p = save_directions(tmp_path / "d.safetensors", torch.zeros(1, 2, 1), {"attributes": ["Male"]})
    data = bytearray(p.read_bytes())
    data[-1] ^= 0xFF
    p.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="do not match the sha256"):
        load_directions(p)
    p.with_suffix(".json").unlink()
    with pytest.raises(CheckpointError, match="metadata file d.json is missing"):
        load_directions(p)
    with pytest.raises(CheckpointError, match="not found"):
        load_directions(tmp_path / "nope.safetensors")


def test_wrong_format_version(tmp_path):
    p = save_directions(tmp_path / "d.safetensors", torch.zeros(1, 2, 1), {"attributes": ["Male"]})
    meta = json.loads(p.with_suffix(".json").read_text())
    meta["format_version"] = 99
    p.with_suffix(".json").write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match="format version 99 is not supported"):
        load_directions(p)
