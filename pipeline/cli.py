"""`hfld` command line: a thin layer over the stage functions.

    hfld train --config train.yaml --set iterations=100 --set losses.landmark=0
    hfld zoo fetch starter
    hfld convert nvidia network.pkl out.safetensors

Every stage takes --config (YAML) and repeated --set key=value overrides; errors print one line
that names the field or file and exit with status 2.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import yaml

CONFIG_DIR = Path(__file__).parent / "configs"


class UsageError(Exception):
    pass


def _known_errors() -> tuple[type[BaseException], ...]:
    from models.errors import WeightsError
    from pipeline.checkpoints import CheckpointError
    from pipeline.config import ConfigError
    from pipeline.train import NonFiniteLoss
    return (ConfigError, WeightsError, CheckpointError, NonFiniteLoss, UsageError)


def _stage_config(cls, args):
    from pipeline.config import load_config
    overrides = list(args.set or [])
    if getattr(args, "preset", None):
        overrides.append(f"model.preset={args.preset}")
    return load_config(cls, args.config, overrides, where=Path(args.config).name if args.config else "config")


def cmd_train(args) -> int:
    """In this process (scaling.num_workers=0) or on Ray Train workers (>= 1), tracked in MLflow."""
    from pipeline.config import to_dict
    from pipeline.ray_train import RayTrainFailed
    from pipeline.train import TrainConfig, run_training
    cfg = _stage_config(TrainConfig, args)
    if args.print_config:
        print(yaml.safe_dump(to_dict(cfg), sort_keys=False))
        return 0
    try:
        run_training(cfg)
    except RayTrainFailed as e:  # a worker's error, summarised (Ray's log above has the details)
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


def cmd_run(args) -> int:
    from pipeline.config import to_dict
    from pipeline.run import RunConfig, run_pipeline
    cfg = _stage_config(RunConfig, args)
    if args.print_config:
        print(yaml.safe_dump(to_dict(cfg), sort_keys=False))
        return 0
    run_pipeline(cfg)
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
    from pipeline.preview import write_contact_sheet
    bundle = build_bundle(ModelConfig(preset=args.preset, cache_dir=args.cache or ""), "cpu")
    out = write_contact_sheet(bundle, Path(args.out), n=args.n, seed=args.seed)
    print(f"wrote {out}: {args.n} {args.preset} faces with landmarks and emotion labels")
    return 0


def add_stage_args(p: argparse.ArgumentParser, with_preset: bool = True):
    p.add_argument("--config", "-c", help="YAML config file (optional: defaults apply)")
    p.add_argument("--set", "-s", action="append", metavar="KEY=VALUE",
                   help="override a config value, e.g. --set losses.landmark=0 (repeatable)")
    if with_preset:
        from pipeline.presets import PRESETS
        p.add_argument("--preset", choices=sorted(PRESETS), help="model preset (same as --set model.preset=...)")
    p.add_argument("--print-config", action="store_true", help="print the resolved config and exit")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="hfld", description=(
        "Emotion-preserving face editing (He & McGough 2025): learn edit directions T with the HFLD "
        "landmark loss, then generate labelled augmented faces. Stages run locally or on Ray."))
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("train", help="optimise the edit directions T")
    add_stage_args(p)
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("presets", help="list the model presets and the weight files they take")
    p.set_defaults(func=cmd_presets)

    from pipeline.presets import PRESETS
    p = sub.add_parser("preview", help="contact sheet of generated faces with landmarks and emotion labels")
    p.add_argument("--preset", choices=sorted(PRESETS), default="starter")
    p.add_argument("--out", default="faces.png", help="output PNG path")
    p.add_argument("--n", type=int, default=16, help="number of faces")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--cache", help="zoo cache (default $HFLD_CACHE or ~/.cache/hfld)")
    p.set_defaults(func=cmd_preview)

    from pipeline import cli_evaluate
    p = sub.add_parser("evaluate", help="the paper's tables, figures and a report for a baseline vs HFLD pair of T")
    add_stage_args(p)
    cli_evaluate.add_arguments(p)
    p.set_defaults(func=cli_evaluate.cmd_evaluate)

    from pipeline import cli_generate
    p = sub.add_parser("generate", help="generate a labelled augmented dataset into parquet (Ray Data)")
    add_stage_args(p)
    cli_generate.add_arguments(p)
    p.set_defaults(func=cli_generate.cmd_generate)

    p = sub.add_parser("run", help="the whole chain (tune, train baseline + HFLD, generate, evaluate, report)")
    add_stage_args(p)
    p.set_defaults(func=cmd_run)

    from pipeline import cli_tune
    p = sub.add_parser("tune", help="sweep lambda4 and landmark subsets against emotion drift (Ray Tune)")
    add_stage_args(p)
    cli_tune.add_arguments(p)
    p.set_defaults(func=cli_tune.cmd_tune)

    from pipeline import cli_tools
    cli_tools.add_subcommands(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except _known_errors() as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
