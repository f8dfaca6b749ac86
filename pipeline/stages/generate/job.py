"""A generate job: everything the actors need, validated on the driver before any work."""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch

from pipeline.core.config import ConfigError, flatten, to_dict
from pipeline.core.metrics import eye_groups
from pipeline.core.paths import check_writable_dir
from pipeline.core.policies import EditPolicy, build_policy
from pipeline.infra.directions_source import ResolvedDirections, check_fits_generator, resolve_directions
from pipeline.infra.tracking import resolve_tracking_uri
from pipeline.presets import ModelBundle, build_bundle
from pipeline.stages.generate.config import GenerateConfig, job_config
from pipeline.stages.generate.plan import Plan

FORMAT = "hfld-generate"
FORMAT_VERSION = 1


BundleFactory = Callable[[str], ModelBundle]


@dataclass
class ModelFacts:
    """What the driver learns from the bundle (and records in every file)."""
    generator_id: str
    n_latent: int
    w_dim: int
    z_dim: int
    resolution: int
    emotion_labels: tuple[str, ...]
    regressor_names: tuple[str, ...]
    landmark_points: int
    landmark_groups: dict[str, list[int]]
    judge_labels: dict[str, tuple[str, ...]]


@dataclass
class GenerateJob:
    cfg: GenerateConfig
    plan: Plan
    directions: ResolvedDirections
    policy: EditPolicy
    facts: ModelFacts
    bundle_factory: BundleFactory
    device: str                       # "cuda" or "cpu" for the actors ("auto" until Ray is up)
    out_dir: Path
    provenance: dict = field(default_factory=dict)   # of this invocation (packages, device, licences)

    @property
    def T(self) -> torch.Tensor:
        return self.directions.T

    def file_metadata(self) -> dict:
        """The `hfld` key of every shard's parquet metadata (plus the shard index, added per file)."""
        f = self.facts
        return {
            "format": FORMAT, "format_version": FORMAT_VERSION,
            "edit_attributes": list(self.directions.attributes),
            "regressor_attributes": list(f.regressor_names),
            "emotion_labels": list(f.emotion_labels),
            "judges": {k: list(v) for k, v in f.judge_labels.items()},
            "landmark_points": f.landmark_points,
            "landmark_layout": "x0, y0, x1, y1, ... in [0, 1] of the image width/height",
            "landmark_drift_unit": "inter-ocular distance" if has_eye_groups(f.landmark_groups) else "image side",
            "emotion_drift": "total variation 0.5 * sum |p - q| of the emotion probabilities",
            "generator_id": f.generator_id, "resolution": f.resolution,
            "directions_source": self.directions.source, "directions_sha256": self.directions.sha256,
            "directions_run_id": self.directions.run_id,
            "policy": self.policy.describe(), "seed": self.cfg.seed, "variants": self.cfg.variants,
            "n_sources": self.cfg.n_sources, "truncation": self.cfg.truncation, "noise_mode": self.cfg.noise_mode,
            "qc": to_dict(self.cfg.qc), "image_format": self.cfg.image.format,
            "seeds": "latent_seed = derive_seed(seed, GENERATE, source_index); "
                     "edit_seed = derive_seed(latent_seed, GENERATE, variant)",
        }

    def job_record(self) -> dict:
        """_meta/job.json: what must match for a rerun to continue this output directory."""
        return {"format": FORMAT, "format_version": FORMAT_VERSION, "config": job_config(self.cfg),
                "generator_id": self.facts.generator_id, "directions_sha256": self.directions.sha256,
                "n_shards": self.plan.n_shards, "n_rows": self.cfg.n_rows}


def has_eye_groups(groups: dict) -> bool:
    return eye_groups(groups) is not None


def model_facts(bundle: ModelBundle, judges: tuple[str, ...]) -> ModelFacts:
    g = bundle.generator
    unknown = [j for j in judges if j not in bundle.judges]
    if unknown:
        raise ConfigError(f"judges: {unknown} not in the {bundle.preset!r} preset; it has {sorted(bundle.judges)}")
    return ModelFacts(
        generator_id=bundle.generator_id or "unknown", n_latent=int(g.n_latent), w_dim=int(g.w_dim),
        z_dim=int(getattr(g, "z_dim", g.w_dim)), resolution=int(g.resolution),
        emotion_labels=tuple(bundle.emotion.labels), regressor_names=tuple(bundle.regressor.names),
        landmark_points=int(bundle.landmarks.n_points),
        landmark_groups={k: list(v) for k, v in getattr(bundle.landmarks, "groups", {}).items()},
        judge_labels={j: tuple(getattr(bundle.judges[j], "labels", bundle.emotion.labels)) for j in judges})


def prepare(cfg: GenerateConfig, bundle_factory: BundleFactory | None = None) -> GenerateJob:
    """Every check that can fail, before any work: output dir, T, policy, preset, judges, an older job.

    Raises ConfigError (or WeightsError for missing preset weights) naming the field. The output
    directory is checked last and only created (empty) when everything else is valid; nothing already
    in it is touched.
    """
    from_mlflow = cfg.directions.startswith(("runs:", "models:"))
    tracking_uri = resolve_tracking_uri(cfg.tracking, cfg.work_dir) if from_mlflow else None
    directions = resolve_directions(cfg.directions, tracking_uri)
    policy = build_policy(cfg.policy, directions.attributes)
    factory = bundle_factory or functools.partial(build_bundle, cfg.model)
    bundle = factory("cpu")
    check_fits_generator(directions, bundle.generator)
    facts = model_facts(bundle, cfg.judges)
    del bundle
    out_dir = cfg.out_dir
    check_writable_dir("output_dir", out_dir)
    plan = Plan(cfg.n_sources, cfg.variants, cfg.shard_sources, cfg.batch_sources)
    job = GenerateJob(cfg, plan, directions, policy, facts, factory, "auto", out_dir)
    check_same_job(job)
    return job


def check_same_job(job: GenerateJob) -> None:
    """An output directory holds one job: a rerun with different output-affecting settings is refused."""
    path = job.out_dir / "_meta" / "job.json"
    if not path.is_file():
        return
    try:
        old = json.loads(path.read_text())
    except json.JSONDecodeError:
        raise ConfigError(f"output_dir: {path} is not valid JSON; remove it only if the shards beside it are "
                          "yours to regenerate") from None
    new = json.loads(json.dumps(job.job_record()))
    if old != new:
        a, b = flatten(old), flatten(new)
        diff = sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))
        raise ConfigError(f"output_dir: {job.out_dir} holds a different generate job (differs in {diff[:6]}); "
                          "use another output_dir, or the same settings to resume it")
