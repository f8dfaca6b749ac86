"""An invert job: everything the actors need, validated on the driver before any work."""

from __future__ import annotations

import dataclasses
import functools
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch

from pipeline.core.config import ConfigError, to_dict
from pipeline.core.io import refuse_different_job
from pipeline.core.paths import check_writable_dir
from pipeline.presets import PRESETS, ModelBundle, build_bundle
from pipeline.presets.registry import AlignmentSpec
from pipeline.stages.generate import INVERTED_FORMAT, Plan
from pipeline.stages.invert.align import three_point_groups
from pipeline.stages.invert.config import InvertConfig, chunk_faces, job_config
from pipeline.stages.invert.project import expression_judge, latent_space
from pipeline.stages.invert.sources import Source, check_unique_ids, open_source

FORMAT = INVERTED_FORMAT
FORMAT_VERSION = 1
STATUSES = ("ok", "no_face", "unreadable")

# The stage's own columns; an input label column may not take one of these names.
OUTPUT_COLUMNS = ("source_index", "source_id", "source_path", "status", "face_score", "face_box", "align_matrix",
                  "aligned_image", "reconstruction_image", "wplus", "noise", "psnr", "identity_cosine",
                  "landmark_error", "source_emotion", "source_emotion_label", "reconstruction_emotion",
                  "reconstruction_emotion_label", "emotion_agreement", "emotion_tv", "loss_start", "loss_end",
                  "generator_id")

BundleFactory = Callable[[str], ModelBundle]


@dataclass
class InvertFacts:
    """What the driver learns from the bundle (and records in every file)."""
    generator_id: str
    latent_space: str
    n_latent: int
    w_dim: int
    resolution: int
    noise_shapes: list[list[int]]          # optimised noise maps [r, r] per layer ([] when not optimised)
    emotion_labels: tuple[str, ...]
    emotion_judge: str
    landmark_model: str
    landmark_groups: dict[str, list[int]]
    perceptual: str
    identity_term: bool                    # the preset has an identity model (the loss's identity term)
    heldout_identity: str
    # the expression net IN the inversion loss (losses.expression > 0): "key (class)"; "" = no expression term
    expression_term: str = ""


@dataclass
class InvertJob:
    cfg: InvertConfig
    plan: Plan                      # rows as "sources" with one variant: shards and chunks of rows
    source: Source
    facts: InvertFacts
    alignment: AlignmentSpec
    bundle_factory: BundleFactory
    device: str                     # "cuda" or "cpu" for the actors ("auto" until Ray is up)
    out_dir: Path
    provenance: dict = field(default_factory=dict)   # of this invocation (packages, device, licences)

    @property
    def n_rows(self) -> int:
        return self.plan.n_sources

    def file_metadata(self) -> dict:
        """The `hfld` key of every shard's parquet metadata (plus the shard index, added per file)."""
        f, cfg = self.facts, self.cfg
        return {
            "format": FORMAT, "format_version": FORMAT_VERSION, "preset": cfg.model.preset,
            "generator_id": f.generator_id, "latent_space": f.latent_space, "n_latent": f.n_latent,
            "w_dim": f.w_dim, "resolution": f.resolution, "noise_shapes": f.noise_shapes,
            "latent_layout": "wplus: n_latent x w_dim values, row-major (layer, then channel); noise: every "
                             "layer's r x r map flattened, in layer order",
            "latent_dtype": cfg.latent_dtype, "label_columns": list(self.source.label_names),
            "input": {"kind": self.source.kind, "path": str(self.source.root), "image_column": cfg.input.image_column,
                      "id_column": cfg.input.id_column, "rows": self.n_rows},
            "statuses": {"ok": "face found and inverted", "no_face": "no face reached align.min_score (labels "
                         "kept, nothing measured)", "unreadable": "the image could not be read or decoded"},
            "alignment": to_dict(self.alignment), "align_matrix": "2x3 row-major: photo pixel = M @ (u, v, 1) for "
                                                                  "crop pixel (u, v), continuous coordinates",
            "emotion_labels": list(f.emotion_labels), "emotion_judge": f.emotion_judge,
            "landmark_model": f.landmark_model, "perceptual": f.perceptual, "identity_term": f.identity_term,
            "heldout_identity": f.heldout_identity, "expression_term": f.expression_term,
            "quality": "psnr (dB, uint8 crop vs reconstruction), identity_cosine (held-out descriptor), "
                       "landmark_error (landmark model, inter-ocular distances), emotion agreement/TV (emotion judge)",
            "projection": to_dict(cfg.projection), "seed": cfg.seed,
        }

    def job_record(self) -> dict:
        """_meta/job.json: what must match for a rerun to continue this output directory."""
        return {"format": FORMAT, "format_version": FORMAT_VERSION, "config": job_config(self.cfg),
                "generator_id": self.facts.generator_id, "n_shards": self.plan.n_shards, "n_rows": self.n_rows,
                "input": {"kind": self.source.kind, "rows": self.n_rows, "labels": list(self.source.label_names)}}


def resolve_alignment(cfg: InvertConfig) -> AlignmentSpec:
    """The preset's AlignmentSpec with the config's overrides."""
    spec = PRESETS[cfg.model.preset].alignment
    a = cfg.align
    method = spec.method if a.method == "preset" else a.method
    # the preset's measured framing belongs to its own method and templates
    keeps_framing = method == spec.method and not a.detector_template and not a.landmark_template
    try:
        spec = dataclasses.replace(spec, method=method,
                                   detector_template=a.detector_template or spec.detector_template,
                                   landmark_template=a.landmark_template or spec.landmark_template,
                                   framing_centre=spec.framing_centre if keeps_framing else None,
                                   framing_spread=spec.framing_spread if keeps_framing else None)
    except ConfigError as e:
        raise ConfigError(f"align: {e} (preset {cfg.model.preset!r} has no template; set "
                          "align.detector_template or another align.method)") from None
    return spec


def invert_facts(bundle: ModelBundle, cfg: InvertConfig, heldout: str) -> InvertFacts:
    g = bundle.generator
    space = latent_space(g)
    noise_shapes = []
    if cfg.projection.optimize_noise:
        if space != "w+" or not g.make_noise("const", 1):
            raise ConfigError(f"projection.optimize_noise: the {cfg.model.preset!r} generator has no noise inputs")
        noise_shapes = [list(n.shape[-2:]) for n in g.make_noise("const", 1)]
    # the same choice as the Projector's (project.expression_judge): in the inversion loop, not held out
    found = expression_judge(bundle, cfg.projection.losses.expression)
    return InvertFacts(
        generator_id=bundle.generator_id or "unknown", latent_space=space, n_latent=int(g.n_latent),
        w_dim=int(g.w_dim), resolution=int(g.resolution), noise_shapes=noise_shapes,
        emotion_labels=tuple(getattr(bundle.emotion, "labels", [f"class{i}" for i in range(7)])),
        emotion_judge=type(bundle.emotion).__name__, landmark_model=type(bundle.landmarks).__name__,
        landmark_groups={k: list(v) for k, v in getattr(bundle.landmarks, "groups", {}).items()},
        perceptual=type(bundle.perceptual).__name__, identity_term=bundle.identity is not None,
        heldout_identity=heldout, expression_term=f"{found[0]} ({type(found[1]).__name__})" if found else "")


def prepare(cfg: InvertConfig, bundle_factory: BundleFactory | None = None) -> InvertJob:
    """Every check that can fail, before any work: input, labels, preset, alignment, detector and
    descriptor weights, output dir, an older job. Raises ConfigError / WeightsError naming the field."""
    from pipeline.presets.faces import build_face_detector, build_heldout_identity
    source = open_source(cfg.input)
    check_unique_ids(source)
    clash = [n for n in source.label_names if n in OUTPUT_COLUMNS]
    if clash:
        raise ConfigError(f"input.label_columns: {clash} clash with the output's own columns; leave them out "
                          "(input.label_columns) or rename them")
    alignment = resolve_alignment(cfg)
    factory = bundle_factory or functools.partial(build_bundle, cfg.model)
    bundle = factory("cpu")
    heldout, _ = build_heldout_identity(cfg.model)          # loads it: a missing file fails here
    facts = invert_facts(bundle, cfg, heldout)
    if alignment.method != "none":
        build_face_detector(cfg.model, cfg.align.min_score)  # the zoo's BlazeFace must load
        if alignment.method == "template" and alignment.landmark_template and \
                three_point_groups(facts.landmark_groups) is None:
            alignment = dataclasses.replace(alignment, landmark_template=None)   # H has no eye pair: one pass
    del bundle
    out_dir = cfg.out_dir
    check_writable_dir("output_dir", out_dir)
    plan = Plan(source.n_rows, 1, cfg.shard_rows, chunk_faces(cfg, facts.resolution, torch.cuda.is_available()))
    job = InvertJob(cfg, plan, source, facts, alignment, factory, "auto", out_dir)
    check_same_job(job)
    return job


def check_same_job(job: InvertJob) -> None:
    """An output directory holds one job: a rerun with different output-affecting settings is refused."""
    refuse_different_job(job.out_dir, job.job_record(), "invert")
