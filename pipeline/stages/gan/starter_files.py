"""The starter DCGAN (teacher) and the starter judges, built from the few zoo files they need.

`build_bundle(ModelConfig(preset="starter"))` verifies the whole starter package set (31 MB, including
the @vladmandic/human graph models the gan stage never uses). On a machine that receives files
through a size-limited channel (the GPU machine), this builds only what GAN training needs from
22 MB: gan_face_generate/weights.tar, face_api's recognition and 68-landmark models, fer's emotion
model; every file is checked against its sha256 pin in the zoo registry first.

    teacher, judges = starter_teacher_and_judges(cache_dir, device)
    run_gan(cfg, teacher=teacher, judges=judges)
"""

from __future__ import annotations

from pathlib import Path

import torch

from models.errors import WeightsError
from pipeline.core.io import file_sha256
from pipeline.presets import zoo
from pipeline.stages.gan.quality import QualityJudges

NEEDED = ("starter/gan_face_generate/", "starter/fer/", "starter/face_api/model/face_recognition_model",
          "starter/face_api/model/face_landmark_68_model")


def needed_files() -> list[zoo.Member]:
    return [m for a in zoo.preset_artifacts("starter") for m in a.members if m.dest.startswith(NEEDED)]


def verify_needed(cache: str | Path) -> list[str]:
    """Problems ("missing: ...", "corrupt: ...") with the files GAN training needs; [] when all are there."""
    cache = Path(cache).expanduser()
    problems = []
    for m in needed_files():
        path = cache / m.dest
        if not path.is_file():
            problems.append(f"missing: {path}")
        elif file_sha256(path) != m.sha256:
            problems.append(f"corrupt: {path} (sha256 differs from the zoo pin)")
    return problems


def starter_teacher_and_judges(cache: str | Path, device: torch.device | str = "cpu"):
    """(DCGAN generator, QualityJudges named "starter") from the cache, on `device`, frozen."""
    from models.faceapi import FaceApiLandmarks68
    from models.load.dcgan import load_dcgan_generator
    from models.load.faceapi import load_faceapi_landmarks68
    from models.load.faceapi_extra import load_faceapi_recognition
    from models.load.keras_h5 import load_fer_emotion
    from pipeline.presets.starter import DescriptorOnly

    cache = Path(cache).expanduser()
    problems = verify_needed(cache)
    if problems:
        more = f" (+{len(problems) - 1} more)" if len(problems) > 1 else ""
        raise WeightsError(f"starter files for GAN training are not ready in {cache}: {problems[0]}{more}. "
                           "Run `hfld zoo fetch starter` (and copy starter/gan_face_generate, starter/face_api, "
                           "starter/fer from it)")
    root = cache / "starter"
    teacher = load_dcgan_generator(root / "gan_face_generate" / "weights.tar")
    faceapi = root / "face_api" / "model"
    judges = QualityJudges(DescriptorOnly(load_faceapi_recognition(faceapi)),
                           FaceApiLandmarks68(load_faceapi_landmarks68(faceapi)),
                           load_fer_emotion(root / "fer" / "emotion_model.hdf5"), name="starter")
    device = torch.device(device)
    teacher = teacher.to(device).eval().requires_grad_(False)
    for m in (judges.identity, judges.landmarks, judges.emotion):
        m.to(device).eval().requires_grad_(False)
    return teacher, judges
