"""pipeline/core/paths.py: output-location checks, and path fields recorded absolute."""

from __future__ import annotations

import os

import pytest

from pipeline.core.config import ConfigError, from_dict
from pipeline.core.paths import absolute_paths, check_output_locations


def test_path_fields_become_absolute_and_everything_else_stays(tmp_path, monkeypatch):
    from pipeline.stages.generate import GenerateConfig
    from pipeline.stages.train import TrainConfig
    from pipeline.stages.tune import TuneConfig
    monkeypatch.chdir(tmp_path)
    gen = absolute_paths(from_dict(GenerateConfig, {
        "directions": "runs/T.safetensors", "work_dir": "work", "output_dir": "../out",
        "model": {"preset": "ffhq256", "weights": {"generator": "w/g.pt"}, "cache_dir": "~/cache"}}))
    assert gen.directions == str(tmp_path / "runs/T.safetensors") and gen.work_dir == str(tmp_path / "work")
    assert gen.output_dir == str(tmp_path.parent / "out")
    assert gen.model.weights == {"generator": str(tmp_path / "w/g.pt")}
    assert gen.model.cache_dir == os.path.expanduser("~/cache")
    for kept in ("runs:/abc/directions", "models:/m/1", ""):
        assert absolute_paths(from_dict(GenerateConfig, {"directions": kept})).directions == kept
    train = absolute_paths(from_dict(TrainConfig, {"resume": "auto", "scaling": {"storage_path": "s3://b/p"}}))
    assert train.resume == "auto" and train.scaling.storage_path == "s3://b/p"
    assert absolute_paths(from_dict(TrainConfig, {"resume": "c.safetensors"})).resume == str(tmp_path / "c.safetensors")
    tune = absolute_paths(from_dict(TuneConfig, {"space": "tiny"}))
    assert tune.space == "tiny"                                   # a shipped space's name
    assert absolute_paths(from_dict(TuneConfig, {"space": "my/space.yaml"})).space == str(tmp_path / "my/space.yaml")


def test_check_output_locations_refuses_files_and_unwritable_folders(tmp_path):
    (tmp_path / "f").write_text("x")
    with pytest.raises(ConfigError, match=r"^work_dir: .* not writable: it exists and is not a directory"):
        check_output_locations({"work_dir": tmp_path / "f"})
    with pytest.raises(ConfigError, match=r"^output_dir: .* not writable: .*/f is a file"):
        check_output_locations({"output_dir": tmp_path / "f" / "sub"})
    with pytest.raises(ConfigError, match=r"^work_dir: .* not writable"):
        check_output_locations({"work_dir": "/sys/hfld-unwritable"})
    check_output_locations({"work_dir": tmp_path / "new" / "deeper"})
    assert not (tmp_path / "new").exists()     # checking creates nothing
