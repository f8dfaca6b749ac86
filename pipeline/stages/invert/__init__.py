"""Stage `invert`: real labelled faces into the generator's latent space, labels carried over.

    cfg = load_config(InvertConfig, "invert.yaml")     # or: hfld invert --input faces/ --output-dir inv/
    result = run_invert(cfg)                           # validation, then Ray Data inside an MLflow run
    # then: hfld generate --sources <result.out_dir> -T <T>   (augment the inverted faces)

Modules: config.py (InvertConfig), sources.py (folder / parquet / CSV / Hugging Face input, labels kept
verbatim), align.py (decode, BlazeFace detection, alignment to the generator's framing, template
measurement), project.py (the per-face latent optimisation), quality.py (held-out measurements),
job.py (validation before any work), actors.py (read + invert), shards.py (parquet, manifest),
ray_data.py (the Ray Data pipeline), stage.py (run_invert), check.py (the held-out quality check on faces with known latents).

Per input row (in input order; every row gives one output row, whatever happens to it):
  1. read and decode the image (EXIF orientation applied); failure -> status "unreadable";
  2. find the face with BlazeFace (@vladmandic/human 3.3.6, from the starter zoo) and warp it to the
     framing of the generator's own faces (the preset's AlignmentSpec: a measured template of eye and
     mouth positions for the starter, the FFHQ rule for ffhq presets; refined with the preset's
     landmark model; a face already framed like the generator's, judged from the spread of the
     generator's own framing, is only resized: align.keep_framed); no face with score >=
     align.min_score -> status "no_face";
  3. optimise a latent (W+ for StyleGAN2, z for the DCGAN, whose W = Z) for the aligned crop with the
     StyleGAN2 projector's schedule and the preset's loss (pixel + perceptual + identity + landmark
     [+ noise regularisation]), many faces at once, on the GPU when there is one;
  4. measure the reconstruction against the crop with networks outside the loss where the preset has
     them: PSNR, identity cosine (held-out descriptor), landmark error, emotion agreement.
Labels (and everything else about failed rows) are kept: a no_face or unreadable row still carries
its id and labels, with nulls where nothing could be measured.

Seeds: face row r draws its noise maps and latent noise from derive_seed(seed, INVERT, r) alone, and a
chunk is always the same `batch_faces` rows, so a rerun (or a resumed run) writes the same bytes on
the same hardware and software.

Output directory (like generate's): part-*.parquet (shard i = rows [i*shard_rows, (i+1)*shard_rows)),
_meta/job.json, _meta/<shard>.json records, manifest.json with counts and mean quality. A rerun skips
shards whose file matches its record and writes only the others.
"""

from pipeline.stages.invert.check import InvertCheckConfig, InvertCheckResult, run_invert_check
from pipeline.stages.invert.config import (AlignConfig, InputConfig, InvertConfig, InvertResources, LossConfig,
                                           ProjectionConfig, job_config)
from pipeline.stages.invert.job import InvertJob, prepare
from pipeline.stages.invert.stage import InvertResult, run_invert

__all__ = ["AlignConfig", "InputConfig", "InvertCheckConfig", "InvertCheckResult", "InvertConfig", "InvertJob",
           "InvertResources", "InvertResult", "LossConfig", "ProjectionConfig", "job_config", "prepare",
           "run_invert", "run_invert_check"]
