"""Every writing stage (train on both paths, generate, tune, run, invert) locks its folder before any work: a
second process gets a ConfigError naming the holder (pid, host, since) instead of sharing the folder."""

from __future__ import annotations

import os
import socket

import pytest

from pipeline.core.config import ConfigError, from_dict
from pipeline.core.locks import run_lock


@pytest.fixture(scope="module")
def tiny_T(tmp_path_factory):
    from pipeline.stages.train import TrainConfig, run_train
    work = tmp_path_factory.mktemp("T")
    cfg = from_dict(TrainConfig, {"model": {"preset": "tiny"}, "iterations": 1, "batch_size": 1, "device": "cpu",
                                  "work_dir": str(work), "run_name": "T", "tracking": {"enabled": False}})
    return run_train(cfg, print_fn=lambda *a, **k: None).directions_path


@pytest.fixture
def no_ray(monkeypatch):
    import ray

    def refuse(*a, **k):
        raise AssertionError("Ray was started although the folder is locked")
    monkeypatch.setattr(ray, "init", refuse)


def held_by_us(field: str) -> str:
    return rf"^{field}: .* is in use by pid {os.getpid()} on {socket.gethostname()} since .*; wait for it"


def test_train_on_ray_locks_its_run_folder(no_ray, tmp_path):
    from pipeline.stages.train import TrainConfig, run_train
    cfg = from_dict(TrainConfig, {"model": {"preset": "tiny"}, "work_dir": str(tmp_path), "run_name": "r",
                                  "device": "cpu", "tracking": {"enabled": False}, "scaling": {"num_workers": 1}})
    with run_lock(cfg.run_dir, "run_name"):
        with pytest.raises(ConfigError, match=held_by_us("run_name")):
            run_train(cfg, print_fn=lambda *a, **k: None)


def test_generate_locks_its_output_folder(no_ray, tmp_path, tiny_T):
    from pipeline.stages.generate import GenerateConfig, run_generate
    cfg = from_dict(GenerateConfig, {"model": {"preset": "tiny"}, "directions": str(tiny_T), "n_sources": 2,
                                     "work_dir": str(tmp_path), "tracking": {"enabled": False}, "device": "cpu"})
    with run_lock(cfg.out_dir, "output_dir"):
        with pytest.raises(ConfigError, match=held_by_us("output_dir")):
            run_generate(cfg, print_fn=lambda *a, **k: None)
    assert not cfg.out_dir.exists()     # nothing of the refused run (the lock removed its empty folder)


def test_tune_locks_its_sweep_folder(no_ray, tmp_path):
    from pipeline.stages.tune import TuneConfig, run_tune
    cfg = from_dict(TuneConfig, {"train": {"model": {"preset": "tiny"}}, "space": "tiny", "work_dir": str(tmp_path),
                                 "tracking": {"enabled": False}})
    with run_lock(cfg.out_dir, "run_name"):
        with pytest.raises(ConfigError, match=held_by_us("run_name")):
            run_tune(cfg, print_fn=lambda *a, **k: None)


def test_run_locks_its_folder(no_ray, tmp_path):
    from pipeline.stages.run import RunConfig, run_pipeline
    cfg = from_dict(RunConfig, {"model": {"preset": "tiny"}, "work_dir": str(tmp_path), "name": "x",
                                "tracking": {"enabled": False}})
    with run_lock(cfg.out_dir, "name"):
        with pytest.raises(ConfigError, match=held_by_us("name")):
            run_pipeline(cfg, print_fn=lambda *a, **k: None)
    assert not (cfg.out_dir / "run_config.yaml").exists()


def test_invert_locks_its_output_folder(no_ray, tmp_path):
    import numpy as np
    from PIL import Image
    from pipeline.stages.invert import InvertConfig, run_invert
    (tmp_path / "faces").mkdir()
    Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(tmp_path / "faces" / "a.png")
    cfg = from_dict(InvertConfig, {"model": {"preset": "tiny"}, "input": {"path": str(tmp_path / "faces")},
                                   "align": {"method": "none"}, "work_dir": str(tmp_path),
                                   "output_dir": str(tmp_path / "inv"), "tracking": {"enabled": False},
                                   "device": "cpu"})
    with run_lock(tmp_path / "inv", "output_dir"):
        with pytest.raises(ConfigError, match=held_by_us("output_dir")):
            run_invert(cfg, print_fn=lambda *a, **k: None)
