"""Checkpoints of the gan stage: split into small files, verified, and a resumed run equals an uninterrupted one."""

from __future__ import annotations

import json

import pytest
import torch

from pipeline.core.config import ConfigError
from pipeline.stages.gan import run_gan
from pipeline.stages.gan.checkpoint import (HEADER_MARGIN, find_checkpoint, read_checkpoint, restore_state,
                                            save_checkpoint)
from pipeline.stages.gan.data import TeacherSource
from pipeline.stages.gan.step import setup_gan, train_step
from tests.pipeline.stages.gan.helpers import state_tensors, tiny_config

QUIET = dict(print_fn=lambda *a, **k: None)
WEIGHT_PREFIXES = ("G.", "D.", "G_ema.", "opt_g.", "opt_d.", "pl_mean")


class Crash(RuntimeError):
    pass


def weights_of(run_dir) -> dict[str, torch.Tensor]:
    ckpt = read_checkpoint(run_dir)
    return {k: v for k, v in ckpt.tensors.items() if k.startswith(WEIGHT_PREFIXES)}


def test_checkpoint_parts_stay_under_the_limit_and_read_back_exactly(tmp_path, tiny_bundle):
    cfg = tiny_config(tmp_path)
    state = setup_gan(cfg, torch.device("cpu"))
    train_step(state, cfg, TeacherSource(tiny_bundle.generator, 16, torch.device("cpu")))
    limit = HEADER_MARGIN + 8_000                          # forces many parts and chunked tensors
    folder = save_checkpoint(tmp_path / "ck", state, {"note": "x"}, max_bytes=limit)
    manifest = json.loads((folder / "manifest.json").read_text())
    assert len(manifest["parts"]) > 3 and manifest["chunked"]
    assert all((folder / p["file"]).stat().st_size <= limit for p in manifest["parts"])
    ckpt = read_checkpoint(tmp_path / "ck")
    assert ckpt.step == 1 and ckpt.extra == {"note": "x"}
    other = setup_gan(cfg, torch.device("cpu"))
    restore_state(other, ckpt)
    a, b = state_tensors(state), state_tensors(other)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert other.step == 1 and other.cur_nimg == cfg.batch_size


def test_a_damaged_part_is_refused(tmp_path):
    cfg = tiny_config(tmp_path)
    state = setup_gan(cfg, torch.device("cpu"))
    folder = save_checkpoint(tmp_path / "ck", state)
    part = folder / "part-000.safetensors"
    data = bytearray(part.read_bytes())
    data[-1] ^= 0xFF
    part.write_bytes(bytes(data))
    with pytest.raises(ConfigError, match="sha256"):
        read_checkpoint(folder)


def test_only_the_latest_checkpoint_is_kept_and_latest_json_points_at_it(tmp_path):
    cfg = tiny_config(tmp_path)
    state = setup_gan(cfg, torch.device("cpu"))
    save_checkpoint(tmp_path / "ck", state)
    state.step = 7
    folder = save_checkpoint(tmp_path / "ck", state)
    assert [p.name for p in (tmp_path / "ck").glob("step-*")] == [folder.name]
    assert find_checkpoint(tmp_path / "ck") == folder


def test_resume_after_a_crash_gives_the_weights_of_an_uninterrupted_run(tmp_path):
    """8 steps straight vs. a run killed after step 5 (last checkpoint: step 4) and resumed to step 8.
    R1 (every 4) and path length (every 2) both fall on both sides of the resume point."""
    straight = run_gan(tiny_config(tmp_path, "run_name=straight", "total_kimg=0.032"), **QUIET)
    assert straight.steps == 8

    def crash_after_5(state):
        if state.step == 5:
            raise Crash("killed")

    cfg = tiny_config(tmp_path, "run_name=resumed", "total_kimg=0.032")
    with pytest.raises(Crash):
        run_gan(cfg, on_step=crash_after_5, **QUIET)
    assert read_checkpoint(cfg.run_dir).step == 4
    with pytest.raises(ConfigError, match="already holds a run"):
        run_gan(cfg, **QUIET)
    resumed = run_gan(tiny_config(tmp_path, "run_name=resumed", "total_kimg=0.032", "resume=auto"), **QUIET)
    assert resumed.steps == 8
    a, b = weights_of(straight.run_dir), weights_of(resumed.run_dir)
    assert a.keys() == b.keys() and len(a) > 50
    different = [k for k in a if not torch.equal(a[k], b[k])]
    assert not different, different[:5]
    # The exported G_ema is the same too.
    from safetensors.torch import load_file
    ea, eb = load_file(str(straight.weights_path)), load_file(str(resumed.weights_path))
    assert all(torch.equal(ea[k], eb[k]) for k in ea)
    card = json.loads(resumed.card_path.read_text())
    assert [round(i["from_kimg"], 3) for i in card["training"]["invocations"]] == [0.0, 0.016]


def test_a_time_limit_stops_early_exports_and_resume_continues(tmp_path):
    cfg = tiny_config(tmp_path, "total_kimg=0.2", "time_limit_min=0.0001", "time_reserve_min=0")
    first = run_gan(cfg, **QUIET)
    assert 0 < first.kimg < 0.2 and first.weights_path.is_file()
    second = run_gan(tiny_config(tmp_path, "total_kimg=0.04", "resume=auto"), **QUIET)
    assert second.kimg == pytest.approx(0.04) and second.steps == 10


def test_resume_refuses_another_architecture(tmp_path):
    run_gan(tiny_config(tmp_path, "total_kimg=0.008"), **QUIET)
    other = tiny_config(tmp_path, "total_kimg=0.016", "resume=auto", "arch.n_mlp=3")
    with pytest.raises(ConfigError, match="resume: .* was trained with arch"):
        run_gan(other, **QUIET)
