"""The gan stage end to end: run directory, quality files, card, MLflow, CLI, Ray Train."""

from __future__ import annotations

import json

import pytest
import torch

from pipeline.cli.main import main
from pipeline.stages.gan import QualityJudges, run_gan
from pipeline.stages.gan.checkpoint import read_checkpoint
from tests.pipeline.stages.gan.helpers import PooledDescriptor, tiny_config

QUIET = dict(print_fn=lambda *a, **k: None)


def test_in_process_run_writes_quality_card_and_mlflow(tmp_path):
    cfg = tiny_config(tmp_path, "total_kimg=0.016", "grid_kimg=0.008", "quality.every_kimg=0.008",
                      "quality.judges=tiny", "tracking.enabled=true", "export.command=hfld gan --test")
    result = run_gan(cfg, judges=QualityJudges(PooledDescriptor(), name="pooled"), **QUIET)
    run = result.run_dir
    for rel in ("config.yaml", "metrics.jsonl", "quality/fd_curve.png", "quality/contact_sheet.png",
                "quality/quality.json", "quality/scale.json", "quality/reference.safetensors",
                "export/stylegan2.safetensors", "export/stylegan2.json", "checkpoints/latest.json"):
        assert (run / rel).is_file(), rel
    assert len(list((run / "samples").glob("kimg-*.png"))) >= 2
    card = json.loads(result.card_path.read_text())
    assert card["command"] == "hfld gan --test" and card["training"]["kimg"] == pytest.approx(0.016)
    assert card["training"]["gpu"] == "cpu" and card["architecture"]["n_latent"] == 6
    q = card["quality"]
    assert q["fd_face"] == result.quality["fd_face"] and set(q["scale"]) >= {"noise_floor", "jpeg30", "blur1"}
    assert [round(h["kimg"], 3) for h in q["fd_history"]] == [0.008, 0.016]
    # the FD history survives in the checkpoint (a resumed run continues the curve)
    assert len(read_checkpoint(run).extra["record"]["fd_history"]) == 2
    # MLflow: metrics, artifacts and a registered model version
    from mlflow import MlflowClient
    client = MlflowClient(tracking_uri=f"sqlite:///{(tmp_path / 'work' / 'mlflow.db').resolve()}")
    versions = client.search_model_versions("name='hfld-stylegan2'")
    assert len(versions) == 1
    r = client.get_run(versions[0].run_id)
    assert {"loss_d", "loss_g", "r1", "kimg_per_s", "fd_face"} <= set(r.data.metrics)
    artifacts = {a.path for a in client.list_artifacts(r.info.run_id)}
    assert {"gan_weights", "quality", "samples"} <= artifacts


def test_cli_prints_the_config_and_names_bad_fields(capsys):
    assert main(["gan", "--preset", "tiny", "--total-kimg", "3", "--print-config"]) == 0
    out = capsys.readouterr().out
    assert "preset: tiny" in out and "total_kimg: 3.0" in out
    assert main(["gan", "--set", "r1_every=0"]) == 2
    assert "r1_every" in capsys.readouterr().err
    assert main(["gan", "--set", "arch.channels={4: 8}", "--print-config"]) == 2
    assert "arch.channels" in capsys.readouterr().err


def checkpoint_weights(run_dir):
    t = read_checkpoint(run_dir).tensors
    return {k: v for k, v in t.items() if k.startswith(("G.", "D.", "G_ema.", "opt_", "pl_mean"))}


@pytest.mark.slow
def test_ray_train_one_worker_equals_in_process_and_two_workers_run(tmp_path, ray_local):
    # bit-identity needs the same intra-op thread count: the worker uses cpus_per_worker (1) threads
    assert torch.get_num_threads() == 1, "in-process run must use the 1-CPU worker's thread count"
    local = run_gan(tiny_config(tmp_path, "run_name=local", "total_kimg=0.016"), **QUIET)
    one = run_gan(tiny_config(tmp_path, "run_name=ray1", "total_kimg=0.016", "scaling.num_workers=1"), **QUIET)
    a, b = checkpoint_weights(local.run_dir), checkpoint_weights(one.run_dir)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    two = run_gan(tiny_config(tmp_path, "run_name=ray2", "total_kimg=0.016", "scaling.num_workers=2"), **QUIET)
    assert two.steps == 2 and two.kimg == pytest.approx(0.016)       # global batch 2 x 4
    card = json.loads(two.card_path.read_text())
    assert card["training"]["workers"] == 2 and card["training"]["global_batch"] == 8
    assert read_checkpoint(two.run_dir).manifest["world_size"] == 2


class CountingDescriptor(PooledDescriptor):
    def __init__(self):
        super().__init__()
        self.images = 0

    def forward(self, image):
        self.images += image.shape[0]
        return super().forward(image)


def test_a_resume_elsewhere_reuses_the_scale_from_the_checkpoint(tmp_path):
    """The reference statistics travel inside the checkpoint: a run resumed from a copied checkpoint
    folder in a fresh work dir (another machine) measures only the student, not the scale again."""
    import shutil

    first = CountingDescriptor()
    cfg = tiny_config(tmp_path, "total_kimg=0.008", "quality.judges=tiny")
    result = run_gan(cfg, judges=QualityJudges(first, name="pooled"), **QUIET)
    assert first.images == 4 * 32 + 32                       # four reference sets + the final student set
    moved = tmp_path / "moved"
    shutil.copytree(read_checkpoint(result.run_dir).folder, moved)
    second = CountingDescriptor()
    lines = []
    other = tiny_config(tmp_path / "elsewhere", "total_kimg=0.016", "quality.judges=tiny", f"resume={moved}")
    resumed = run_gan(other, judges=QualityJudges(second, name="pooled"), print_fn=lambda *a, **k: lines.append(a[0]))
    assert second.images == 32 and any("reused" in line for line in lines)
    assert resumed.quality["scale"] == result.quality["scale"]


def _average_worker(rank: int, world: int, port: int, out: str) -> None:
    import os

    import torch.distributed as dist

    from pipeline.stages.gan.ray_gan import GradientAverager

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        m = torch.nn.Linear(3, 2)
        m.weight.grad = torch.full_like(m.weight, float(rank + 1))
        m.bias.grad = None                                   # a missing grad counts as zeros
        GradientAverager(world)(m)
        if rank == 0:
            torch.save({"w": m.weight.grad, "b": m.bias.grad}, out)
    finally:
        dist.destroy_process_group()


def test_gradient_averager_averages_over_workers(tmp_path):
    import socket

    import torch.multiprocessing as mp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = tmp_path / "grads.pt"
    mp.spawn(_average_worker, args=(2, port, str(out)), nprocs=2, join=True)
    grads = torch.load(out)
    assert torch.equal(grads["w"], torch.full((2, 3), 1.5)) and torch.equal(grads["b"], torch.zeros(2))


def test_ray_refuses_a_run_name_ray_already_holds(tmp_path):
    from pipeline.core.config import ConfigError
    from pipeline.stages.gan.ray_gan import train_with_ray

    cfg = tiny_config(tmp_path, "scaling.num_workers=1")
    (tmp_path / "work" / "ray" / cfg.name).mkdir(parents=True)
    with pytest.raises(ConfigError, match="Ray already holds a run"):
        train_with_ray(cfg, **QUIET)
