"""Stage `gan`: train a StyleGAN2 (models/stylegan2.py) of our own, e.g. by distilling the starter DCGAN.

    result = run_gan(cfg)                     # in this process, or on Ray Train workers
    result.weights_path                       # <work_dir>/<run_name>/export/stylegan2.safetensors (+ .json card)

Layers: config.py (GanConfig), data.py (one DataSource over a teacher preset's generator, an image
folder, parquet, a saved Hugging Face dataset), objective.py (the losses, pure), step.py (one G/D step
with lazy regularisation, EMA, w_avg), checkpoint.py (split safetensors + manifest), quality.py (FD_face
and its scale, landmark order, emotion TV, pictures), export.py (weights + card), loop.py (the loop, the
run directory, resume, the in-process stage body), ray_gan.py (Ray Train glue: data parallel over G and
D on any number of workers). `scaling.num_workers` picks the path: 0 = this process, >= 1 = Ray Train.
docs/gan.md explains the stage, FD_face and the GPU recipe.
"""

from __future__ import annotations

from pipeline.core.paths import check_output_locations
from pipeline.infra.tracking import Tracker, stage_run
from pipeline.stages.gan.config import (ArchitectureConfig, DataConfig, ExportConfig, GanConfig, GanResult,
                                        QualityConfig)
from pipeline.stages.gan.export import check_init_weights
from pipeline.stages.gan.loop import resolve_resume, train_in_process
from pipeline.stages.gan.quality import QualityJudges, frechet_distance
from pipeline.stages.gan.step import build_networks, parameter_count

__all__ = ["ArchitectureConfig", "DataConfig", "ExportConfig", "GanConfig", "GanResult", "QualityConfig",
           "QualityJudges", "build_networks", "frechet_distance", "parameter_count", "run_gan"]


def run_gan(cfg: GanConfig, *, tracker: Tracker | None = None, print_fn=print, teacher=None, judges=None,
            on_step=None) -> GanResult:
    """What `hfld gan` runs: in this process (scaling.num_workers == 0) or on Ray Train workers.

    tracker: None = an MLflow run of its own (cfg.tracking); a tracker = a child run of it.
    teacher / judges: a generator / QualityJudges instead of the presets' (in-process only; tests).
    on_step(state): called after every step (in-process only; tests inject faults with it).
    """
    check_output_locations({"work_dir": cfg.work_dir}, {"scaling.storage_path": cfg.scaling.storage_path})
    check_init_weights(cfg.init_weights)
    if cfg.scaling.num_workers == 0:
        resolve_resume(cfg)  # a bad run_name/resume fails before an MLflow run is created
        with stage_run(cfg.tracking, tracker, work_dir=cfg.work_dir, run_name=cfg.name, stage="gan",
                       tags={"data": cfg.data.source, "num_workers": 0}) as run:
            return train_in_process(cfg, tracker=run, print_fn=print_fn, teacher=teacher, judges=judges,
                                    on_step=on_step)
    if teacher is not None or judges is not None or on_step is not None:
        raise ValueError("run_gan: teacher/judges/on_step cannot be sent to Ray workers; they build their own")
    # Imported here, not above: Ray (seconds to import) is only needed on this path.
    from pipeline.stages.gan.ray_gan import train_with_ray
    return train_with_ray(cfg, tracker=tracker, print_fn=print_fn)
