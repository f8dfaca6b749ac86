"""`hfld evaluate`: compare a baseline T with an HFLD T and write the report.

    hfld evaluate --baseline runs/base/directions.safetensors --hfld runs/hfld/directions.safetensors \\
        --preset starter --set n_samples=200

Wiring (pipeline/cli.py): `p = sub.add_parser("evaluate", ...)`, `add_stage_args(p)`,
`cli_evaluate.add_arguments(p)`, `p.set_defaults(func=cli_evaluate.cmd_evaluate)`.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import yaml


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The evaluate-only flags (the common --config/--set/--preset/--print-config come from cli.py)."""
    p.add_argument("--baseline", metavar="PATH", help="baseline T (lambda4 = 0): a directions .safetensors "
                   "file with its .json beside it, or runs:/<run_id>/directions or models:/<name>/<version> "
                   "(same as --set baseline=PATH)")
    p.add_argument("--hfld", metavar="PATH", help="HFLD T, given like --baseline (same as --set hfld=PATH)")


def evaluate_overrides(args) -> list[str]:
    """--set items plus the shorthand flags, as `key=value` overrides (flags win, being later)."""
    overrides = list(getattr(args, "set", None) or [])
    if getattr(args, "preset", None):
        overrides.append(f"model.preset={args.preset}")
    for key in ("baseline", "hfld"):
        value = getattr(args, key, None)
        if value:
            # JSON-quoted (valid YAML) so the path stays a string whatever it looks like.
            overrides.append(f"{key}={json.dumps(str(value))}")
    return overrides


def load_evaluate_config(args):
    from pipeline.config import load_config
    from pipeline.evaluate import EvaluateConfig
    config = getattr(args, "config", None)
    return load_config(EvaluateConfig, config, evaluate_overrides(args),
                       where=Path(config).name if config else "config")


def cmd_evaluate(args) -> int:
    from pipeline.config import to_dict
    from pipeline.evaluate import run_evaluate
    from pipeline.tracking import open_tracker
    from pipeline.train import check_output_locations

    cfg = load_evaluate_config(args)
    if getattr(args, "print_config", False):
        print(yaml.safe_dump(to_dict(cfg), sort_keys=False))
        return 0
    check_output_locations({"work_dir": cfg.work_dir, "output_dir": cfg.output_dir})  # before the MLflow run
    with open_tracker(cfg.tracking, work_dir=cfg.work_dir, run_name=cfg.name, stage="evaluate",
                      tags={"preset": cfg.model.preset}) as tracker:
        result = run_evaluate(cfg, tracker)
    print(f"[evaluate] markdown report: {result.report_md}")
    print(f"[evaluate] numbers: {result.metrics_json}")
    return 0
