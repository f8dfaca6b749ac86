"""A generate job: everything the actors need, validated on the driver before any work."""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch

from pipeline.core.config import ConfigError, to_dict
from pipeline.core.io import refuse_different_job
from pipeline.core.metrics import eye_groups
from pipeline.core.paths import check_writable_dir
from pipeline.core.policies import EditPolicy, build_policy
from pipeline.infra.directions_source import ResolvedDirections, check_fits_generator, resolve_directions
from pipeline.infra.tracking import resolve_tracking_uri
from pipeline.presets import ModelBundle, build_bundle
from pipeline.stages.generate.config import GenerateConfig, job_config
from pipeline.stages.generate.plan import Plan
from pipeline.stages.generate.sources import LatentSources, open_latent_sources

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
    sources: LatentSources | None = None   # --sources: the inverted faces (None: random z)

    @property
    def n_sources(self) -> int:
        return self.plan.n_sources

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
            "n_sources": self.n_sources, "truncation": self.cfg.truncation, "noise_mode": self.cfg.noise_mode,
            "qc": to_dict(self.cfg.qc), "image_format": self.cfg.image.format,
            "seeds": "latent_seed = derive_seed(seed, GENERATE, source_index); "
                     "edit_seed = derive_seed(latent_seed, GENERATE, variant)",
        } | (self.sources_metadata() if self.sources is not None else {})

    def sources_metadata(self) -> dict:
        src = self.sources
        return {"sources": {"path": src.path, "rows": src.n_rows, "usable": src.n_sources, "used": self.n_sources,
                            "latent_space": src.meta.get("latent_space"), "preset": src.meta.get("preset"),
                            "input": src.meta.get("input")},
                "label_columns": src.label_names, "split": to_dict(self.cfg.split),
                "source_index": "position of the source among the usable (status ok) rows of the sources, "
                                "in file order"}

    def job_record(self) -> dict:
        """_meta/job.json: what must match for a rerun to continue this output directory."""
        return {"format": FORMAT, "format_version": FORMAT_VERSION, "config": job_config(self.cfg),
                "generator_id": self.facts.generator_id, "directions_sha256": self.directions.sha256,
                "n_shards": self.plan.n_shards, "n_rows": self.n_sources * self.cfg.variants}


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
    check_fits_generator(directions, bundle.generator, generator_id=bundle.generator_id)
    facts = model_facts(bundle, cfg.judges)
    del bundle
    out_dir = cfg.out_dir
    sources = check_sources(cfg, facts) if cfg.sources else None
    check_writable_dir("output_dir", out_dir)
    n_sources = cfg.n_sources if sources is None else min(sources.n_sources, cfg.sources_limit or sources.n_sources)
    plan = Plan(n_sources, cfg.variants, cfg.shard_sources, cfg.batch_sources)
    job = GenerateJob(cfg, plan, directions, policy, facts, factory, "auto", out_dir, sources=sources)
    check_same_job(job)
    return job


# Columns of every generated row; a sources label column may not take one of these names.
GENERATED_COLUMNS = ("image", "source_image", "row_index", "source_index", "variant", "latent_seed", "edit_seed",
                     "generator_id", "directions_sha256", "directions_run_id", "s", "source_emotion",
                     "source_emotion_label", "source_landmarks", "source_attributes", "variant_emotion",
                     "variant_emotion_label", "variant_landmarks", "variant_attributes", "emotion_drift",
                     "landmark_drift", "emotion_label_kept", "qc_pass", "source_id", "split",
                     "inversion_identity_cosine", "inversion_psnr")


def check_sources(cfg: GenerateConfig, facts: ModelFacts) -> LatentSources:
    """Open the --sources and check they fit this generator, the output columns and the split config."""
    sources = open_latent_sources(cfg.sources)
    meta = sources.meta
    if (int(meta.get("n_latent", -1)), int(meta.get("w_dim", -1))) != (facts.n_latent, facts.w_dim):
        raise ConfigError(f"sources: latents of shape [{meta.get('n_latent')}, {meta.get('w_dim')}] do not fit this "
                          f"generator's [{facts.n_latent}, {facts.w_dim}] (preset {cfg.model.preset!r})")
    if meta.get("generator_id") != facts.generator_id:
        raise ConfigError(f"sources: inverted with generator {meta.get('generator_id')} (preset "
                          f"{meta.get('preset')!r}); this preset's generator is {facts.generator_id}: a latent "
                          "only means that face in the generator that made it")
    clash = [n for n in sources.label_names if n in GENERATED_COLUMNS or n.startswith("judge_")]
    if clash:
        raise ConfigError(f"sources: label column(s) {clash} clash with generate's own columns; rename them in the "
                          "input and invert again")
    if cfg.split.column != "source_id" and cfg.split.column not in sources.label_names:
        raise ConfigError(f"split.column: {cfg.split.column!r} is neither 'source_id' nor a label column of the "
                          f"sources ({sources.label_names})")
    if sources.noise_shapes and cfg.noise_mode != "const":
        raise ConfigError(f"noise_mode: the sources carry their own noise maps (inverted with "
                          f"projection.optimize_noise); leave noise_mode at 'const', got {cfg.noise_mode!r}")
    return sources


def check_same_job(job: GenerateJob) -> None:
    """An output directory holds one job: a rerun with different output-affecting settings is refused."""
    refuse_different_job(job.out_dir, job.job_record(), "generate")
