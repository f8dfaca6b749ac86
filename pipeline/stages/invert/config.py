"""Configuration of the `invert` stage (see pipeline/stages/invert/__init__.py)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from pipeline.core.config import require, to_dict
from pipeline.core.paths import default_work_dir
from pipeline.infra.tracking import TrackingConfig
from pipeline.presets import ModelConfig

InputKind = Literal["auto", "folder", "parquet", "csv", "hf"]
Point = tuple[float, float]
Precision = Literal["fp32", "tf32", "bf16"]


@dataclass(frozen=True)
class InputConfig:
    """The labelled faces to invert (nothing is downloaded: a local path).

    path: a folder of images, a .parquet file, a folder of .parquet files, a .csv file, or a folder
      written by `datasets.Dataset.save_to_disk` (a local Hugging Face dataset).
    kind: auto (from what `path` holds) or folder / parquet / csv / hf.
    image_column: tables: the image column (struct {bytes, path} as Hugging Face writes it, binary, or
      a string path relative to `image_root`).
    id_column: the column whose values identify a source ("" = folder: the relative file path;
      tables: the row number). Ids must be unique; generate assigns splits from them.
    label_columns: the columns copied verbatim to the output (null = every column but the image column).
    folder_label: folder input: name of a column that takes each image's parent folder name ("" = none).
    split: Hugging Face DatasetDict: the split to read.
    image_root: tables with path strings: the folder they are relative to ("" = the table file's folder).
    limit: only the first `limit` rows (0 = all).
    """
    path: str = ""
    kind: InputKind = "auto"
    image_column: str = "image"
    id_column: str = ""
    label_columns: tuple[str, ...] | None = None
    folder_label: str = ""
    split: str = ""
    image_root: str = ""
    limit: int = 0

    def __post_init__(self):
        require(self.limit >= 0, "input.limit", self.limit, "must be >= 0 (0 = all rows)")


@dataclass(frozen=True)
class AlignConfig:
    """Face detection and alignment (pipeline/stages/invert/align.py).

    method: "preset" (the preset's AlignmentSpec), or none / template / ffhq to override it.
    detector_template / landmark_template: override the preset's template points (right eye, left eye,
      mouth as (x, y) fractions of the crop; null = the preset's).
    refine: run the second pass (the preset's landmark model on the first crop, then the transform again
      from its eye and mouth centres) when the spec and the landmark model allow it.
    min_score: BlazeFace score below which a photo gets status "no_face". human's default, 0.2, lets
      noise through: a 120x90 image of uniform random pixels scored 0.37, a black one 0.25 (before the
      detector's border, align.DETECTOR_MARGIN; with it the non-faces of the tests score <= 0.28). On
      300 generated 64 px starter StyleGAN2 faces (with the border) 10% scored below 0.63 and 11 below
      0.5 (without it: 10% below 0.47, 37 below 0.5); photos of real faces score higher.
    keep_framed: decide from the generator's own framing whether a face needs re-framing. The preset's
      AlignmentSpec records how the alignment frames the generator's faces (framing_centre /
      framing_spread: median and robust spread of the final warp's log scale, rotation and centre
      shift against the plain centre-square resize, measured by `hfld align-template`). A face whose
      warp lies within keep_sigmas spreads of that centre on every parameter is only resized: it is
      already framed like the generator's faces, and warping it would add the keypoints' noise and
      resampling blur. Any other face is moved only to the edge of that range, not all the way to the
      template. No effect for presets without a measured framing (they always warp). On the starter's
      own 64 px faces the final warp has a robust spread of 0.15 in log scale (16%), 4.6 degrees and
      2.5-2.9% shift (keypoint noise included; the heavy tails are keypoint failures); at keep_sigmas
      2.5, 71% of 289 found faces of seed 7001, 61% of 46 of seed 99 and 26 of the 31 invert-check
      faces (seed 0) are kept, and on invert-check all 26 kept faces reached identity >= 0.9, none of
      the 5 moved ones (benchmarks/results_invert_check_starter_cpu.txt). False: every face is
      warped to the template (on the H200, benchmarks/results_sweep_invert_starter_h200.txt,
      identity >= 0.9 on 8% of faces vs 91% without alignment, align.method=none).
    keep_sigmas: the k of keep_framed, in robust spreads (AlignmentSpec.framing_spread) per parameter.
      Overriding method or a template drops the preset's measured framing: keep_framed then has no effect.
    fit_both: a face keep_framed would move is inverted twice, moved and plainly resized, and the framing
      whose reconstruction loss ends lower is kept (its crop, warp and latent are the output). The
      generator's range is what it can reproduce: the framing readings of 64 px faces are noisy enough
      that 2.5 spreads moved ~30% of the generator's own faces, which then mostly lost their identity,
      while a photo that really is framed differently reconstructs worse unmoved. Costs one more
      projection per moved face only.
    """
    method: Literal["preset", "none", "template", "ffhq"] = "preset"
    detector_template: tuple[Point, Point, Point] | None = None
    landmark_template: tuple[Point, Point, Point] | None = None
    refine: bool = True
    min_score: float = 0.5
    keep_framed: bool = True
    keep_sigmas: float = 2.5
    fit_both: bool = True

    def __post_init__(self):
        require(0 <= self.min_score < 1, "align.min_score", self.min_score, "must be in [0, 1)")
        require(0 < self.keep_sigmas <= 10, "align.keep_sigmas", self.keep_sigmas,
                "must be in (0, 10] (spreads of the generator's own framing)")


@dataclass(frozen=True)
class LossConfig:
    """Weights of the inversion loss, per face (each term averaged over its own elements).

    Defaults: on 8 starter (DCGAN) faces at 200 steps, l2 + perceptual 3 beat l1 + perceptual 1 on the
    held-out identity cosine (5 vs 2 faces >= 0.9), emotion agreement (8 vs 6) and PSNR on 3 of 4
    comparisons; landmark 100 was worse than 10. A small CPU sample, not a tuning: calibrate a new
    generator with `hfld invert-check` (e.g. --set invert.projection.losses.perceptual=10).

    pixel: |x - y| (l1) or (x - y)^2 (l2) over the pixels in [-1, 1];
    perceptual: mean over the preset's perceptual feature layers of the squared feature difference;
    identity: 1 - cosine of the preset's identity descriptors (skipped when the preset has none);
    landmark: mean |H(x) - H(y)| of the preset's landmark model, coordinates in [0, 1] (our HFLD term);
    noise: StyleGAN2 noise-map regularisation (only when projection.optimize_noise);
    wplus_spread: W+ generators: mean over layers of |w_l - mean_l w|^2 / w_std^2. It keeps the layers
      near one common w: Adam takes full-size steps even along directions the image barely depends on,
      so an unregularised W+ latent drifts off the W manifold, where the faces the edit directions T
      were trained on live (T is learned on w broadcast to every layer). On the tiny preset's random
      generator, weight 10 (vs 1) both lowered the final loss and brought the latent closer to the
      truth (tests/pipeline/stages/invert/test_project.py);
    z_prior: Z-space generators: (|z|^2 / dim - 1)^2, keeps z on the shell where N(0, I) samples lie.
    expression: an expression term (0 = off, today's loss). Why: on the starter, the faces whose
      emotion label (fer) changes in the reconstruction are mostly faces the alignment kept unchanged,
      i.e. the projection misses the expression while pixels, descriptor and 68 points are close; an
      expression net in the loss targets that directly. The net is the preset's expression net (the
      first of its held-out emotion judges with the expression-net protocol, `expression_features` /
      `expression_probs`: face-api's expression net for the starter family; never the preset's emotion
      judge, fer for the starter, which measures emotion agreement and must stay out of the loss so
      that measure stays independent). With weight > 0 that net is IN the inversion loss (the manifest's
      `expression_term` names it). This does not change evaluate, where the same net is a held-out
      judge of T's emotion drift: T is never optimised or selected against it; invert only fits
      latents to photos. Skipped (with weight > 0 too) for presets without such a net.
      Off by default because it did not help where measured: on the starter (`hfld invert-check`, CPU,
      32 faces, seeds 0 and 1; benchmarks/results_invert_check_starter_cpu.txt) features at weight 1
      raised face-api's own agreement (77% -> 97% / 77% -> 90%) but left fer's emotion agreement at
      90.3% / 76.7% (2 and 4 faces changed each way), at -1 dB PSNR and -0.007 mean identity; kl at
      weight 1 wrecked the faces (identity >= 0.9 on 26% / 23%, fer agreement 61% / 53%); kl at 0.1
      left seed 0 at 90.3% and raised seed 1 to 83.3% (+4/-2 faces), at -1 to -1.6 dB PSNR. On the
      shipped 4,557-kimg starter (seed 11, 64 faces, 400 steps, CPU, 2026-12-05) features at weight 1
      lowered fer's agreement from 90.5% to 87.3% and identity >= 0.9 from 96.8% to 92.1% (-1 dB).
    expression_kind: "features": mean over the net's penultimate features ([B, 256] for face-api) of
      the squared difference; "kl": KL(p(target) || p(reconstruction)) of its 7 probabilities.
    """
    pixel: float = 1.0
    pixel_kind: Literal["l1", "l2"] = "l2"
    perceptual: float = 3.0
    identity: float = 1.0
    landmark: float = 10.0
    noise: float = 1e5
    wplus_spread: float = 10.0
    z_prior: float = 0.1
    expression: float = 0.0
    expression_kind: Literal["features", "kl"] = "features"

    def __post_init__(self):
        for name in ("pixel", "perceptual", "identity", "landmark", "noise", "wplus_spread", "z_prior"):
            require(getattr(self, name) >= 0, f"projection.losses.{name}", getattr(self, name), "must be >= 0")
        require(math.isfinite(self.expression) and self.expression >= 0, "projection.losses.expression",
                self.expression, "must be a finite number >= 0 (0 = no expression term)")
        require(self.expression_kind in ("features", "kl"), "projection.losses.expression_kind",
                self.expression_kind, "must be 'features' (penultimate features) or 'kl' (probabilities)")


@dataclass(frozen=True)
class ProjectionConfig:
    """The optimisation of each face's latent (the StyleGAN2 projector's schedule).

    steps: Adam steps per face. lr: peak learning rate; it ramps up (cosine-free, linear) over the first
      `lr_rampup` fraction of the steps and down with a half cosine over the last `lr_rampdown` fraction.
    latent_noise: scale of the noise added to the latent at step t: w_std * latent_noise *
      max(0, 1 - t / latent_noise_ramp)^2 (t = step / steps), w_std the spread of mapped latents.
    optimize_noise: also optimise per-face noise maps (stored with the latent; StyleGAN2 only).
    w_std_samples: mapped samples for w_std (W-space generators).
    start: where each face's optimisation starts. "mean": w_avg (the StyleGAN2 projector's start);
      "pool": whichever of w_avg and `start_candidates` mapped samples (one pool per job seed) has the
      lowest loss against the face (a nearest-neighbour start); "both": two runs per face, from w_avg and
      from its pool pick, `steps` each, and the one whose loss ends lower is kept (twice the cost).
    start_candidates: the pool's size K for "pool" and "both".
    """
    steps: int = 200
    lr: float = 0.1
    lr_rampup: float = 0.05
    lr_rampdown: float = 0.25
    latent_noise: float = 0.05
    latent_noise_ramp: float = 0.75
    optimize_noise: bool = False
    w_std_samples: int = 10000
    start: Literal["mean", "pool", "both"] = "pool"
    start_candidates: int = 2048
    losses: LossConfig = field(default_factory=LossConfig)

    def __post_init__(self):
        require(self.steps >= 1, "projection.steps", self.steps, "must be >= 1")
        require(self.lr > 0, "projection.lr", self.lr, "must be > 0")
        for name in ("lr_rampup", "lr_rampdown", "latent_noise_ramp"):
            require(0 < getattr(self, name) <= 1, f"projection.{name}", getattr(self, name), "must be in (0, 1]")
        require(self.latent_noise >= 0, "projection.latent_noise", self.latent_noise, "must be >= 0")
        require(self.w_std_samples >= 2, "projection.w_std_samples", self.w_std_samples, "must be >= 2")
        require(self.start in ("mean", "pool", "both"), "projection.start", self.start,
                "must be 'mean' (w_avg), 'pool' (the nearest of a pool) or 'both' (two runs, the better kept)")
        require(self.start_candidates >= 1, "projection.start_candidates", self.start_candidates, "must be >= 1")


@dataclass(frozen=True)
class InvertResources:
    """Ray placement (as in generate).

    address: Ray address ("" = the running instance, else a local one).
    actors: inverting actors (each holds the models; GPU share gpus_per_actor on CUDA).
    cpus_per_actor: CPU share reserved by each actor and reader task.
    torch_threads: torch intra-op threads per actor (part of the determinism contract).
    writer_on_driver_node: place the shard writer on the driver's node (output_dir need only exist there).
    """
    address: str = ""
    actors: int = 1
    gpus_per_actor: float = 1.0
    cpus_per_actor: float = 0.5
    torch_threads: int = 1
    writer_on_driver_node: bool = True

    def __post_init__(self):
        require(self.actors >= 1, "resources.actors", self.actors, "must be >= 1")
        require(self.torch_threads >= 1, "resources.torch_threads", self.torch_threads, "must be >= 1")
        require(0 < self.gpus_per_actor <= 8, "resources.gpus_per_actor", self.gpus_per_actor, "must be in (0, 8]")
        require(0 < self.cpus_per_actor <= 64, "resources.cpus_per_actor", self.cpus_per_actor, "must be in (0, 64]")


@dataclass(frozen=True)
class InvertConfig:
    """An invert job: every row of `input` -> one output row (aligned crop, W+ latent, quality, labels).

    store_images: store the aligned crop and the reconstruction (PNG); false stores neither (for data
      about real people: the latents and measurements remain).
    latent_dtype: float16 (half the size) or float32 for the stored latent.
    batch_faces: faces optimised together (one chunk; each face has its own latent). 0 = auto
      (`chunk_faces`): 16 on the CPU; on CUDA by the generator's resolution, 256 up to 64 px, 64 up to
      256 px, 16 above (faces/s per GPU grows with the batch: benchmarks/bench_invert.py).
    shard_rows: input rows per parquet file (the unit of output and of resume).
    progress_every_s: seconds between progress lines while a shard is being worked on (rows of finished
      chunks; a CPU shard of 1,024 rows takes hours); 0 = shard lines only.
    seed: seeds the per-face noise of the projection (derive_seed(seed, INVERT, row)).
    output_dir: "" = <work_dir>/<name>.
    """
    model: ModelConfig = field(default_factory=ModelConfig)
    input: InputConfig = field(default_factory=InputConfig)
    align: AlignConfig = field(default_factory=AlignConfig)
    projection: ProjectionConfig = field(default_factory=ProjectionConfig)
    store_images: bool = True
    png_compress_level: int = 6
    latent_dtype: Literal["float16", "float32"] = "float16"
    seed: int = 0
    batch_faces: int = 0
    shard_rows: int = 1024
    progress_every_s: float = 30.0
    resources: InvertResources = field(default_factory=InvertResources)
    device: str = "auto"
    precision: Precision = "fp32"
    output_dir: str = ""
    work_dir: str = field(default_factory=default_work_dir)
    run_name: str = ""
    verify_existing: bool = True
    tracking: TrackingConfig = field(default_factory=TrackingConfig)

    def __post_init__(self):
        require(self.batch_faces >= 0, "batch_faces", self.batch_faces, "must be >= 1 (or 0 = auto)")
        require(self.shard_rows >= 1, "shard_rows", self.shard_rows, "must be >= 1")
        require(math.isfinite(self.progress_every_s) and self.progress_every_s >= 0, "progress_every_s",
                self.progress_every_s, "must be a finite number of seconds >= 0 (0 = shard lines only)")
        require(0 <= self.png_compress_level <= 9, "png_compress_level", self.png_compress_level, "must be in 0..9")
        require(self.device in ("auto", "cpu", "cuda") or self.device.startswith("cuda:"), "device", self.device,
                "must be auto, cpu or cuda")

    @property
    def name(self) -> str:
        return self.run_name or f"invert-{self.model.preset}-{Path(self.input.path).name or 'input'}"

    @property
    def out_dir(self) -> Path:
        return Path(self.output_dir or Path(self.work_dir) / self.name).expanduser().resolve()


AUTO_BATCH_CPU = 16
AUTO_BATCH_CUDA = ((64, 256), (256, 64))     # (up to this resolution, faces per chunk); above: 16


def chunk_faces(cfg: InvertConfig, resolution: int, cuda_visible: bool) -> int:
    """cfg.batch_faces, or for 0 (auto) the chunk size for where the job runs: device "cpu" (or
    "auto" with no CUDA device visible to the driver) -> 16, CUDA -> by resolution (AUTO_BATCH_CUDA).
    On a cluster whose driver has no GPU, "auto" device resolves as CPU here: set batch_faces."""
    if cfg.batch_faces:
        return cfg.batch_faces
    on_cuda = cfg.device.startswith("cuda") or (cfg.device == "auto" and cuda_visible)
    if not on_cuda:
        return AUTO_BATCH_CPU
    return next((b for limit, b in AUTO_BATCH_CUDA if resolution <= limit), AUTO_BATCH_CPU)


# Fields that do not change a single output byte.
NON_OUTPUT_FIELDS = ("resources", "output_dir", "work_dir", "run_name", "verify_existing", "tracking",
                     "progress_every_s")


def job_config(cfg: InvertConfig) -> dict:
    """The output-affecting part of the config (recorded in _meta/job.json and the manifest)."""
    d = to_dict(cfg)
    for k in NON_OUTPUT_FIELDS:
        d.pop(k, None)
    return d
