"""`hfld generate`: a labelled augmented dataset (parquet) from edit directions T, with Ray Data.

    hfld generate --preset starter --directions runs/demo/directions.safetensors \\
        --set n_sources=1000 --set variants=8 --set policy.kind=recipes \\
        --set 'policy.recipes=["+Male", "-Male", "+Young", "-Young"]'
    hfld generate -c generate.yaml --directions models:/hfld-directions/3 --output-dir /data/faces

T may be a file, runs:/<run_id>/<artifact path> or models:/<name>/<version> (MLflow, resolved offline
against the tracking store of `tracking.tracking_uri` / $MLFLOW_TRACKING_URI / <work_dir>/mlflow.db).
Rerunning the same command after an interruption writes only the missing shards.

Wiring (pipeline/cli.py): `p = sub.add_parser("generate", ...)`, `add_stage_args(p)`,
`cli_generate.add_arguments(p)`, `p.set_defaults(func=cli_generate.cmd_generate)`.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import yaml


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The generate-only flags (the common --config/--set/--preset/--print-config come from cli.py)."""
    p.add_argument("--directions", "-T", metavar="T", help="T: a directions .safetensors path, runs:/<run_id>/<path> "
                   "or models:/<name>/<version> (same as --set directions=T)")
    p.add_argument("--output-dir", "-o", metavar="DIR",
                   help="where the parquet shards go (same as --set output_dir=DIR)")


def generate_overrides(args) -> list[str]:
    """--set items plus the shorthand flags, as `key=value` overrides (flags win, being later)."""
    overrides = list(getattr(args, "set", None) or [])
    if getattr(args, "preset", None):
        overrides.append(f"model.preset={args.preset}")
    for flag, key in (("directions", "directions"), ("output_dir", "output_dir")):
        value = getattr(args, flag, None)
        if value:
            overrides.append(f"{key}={json.dumps(str(value))}")  # JSON-quoted: stays a string in YAML
    return overrides


def load_generate_config(args):
    from pipeline.config import load_config
    from pipeline.generate import GenerateConfig
    config = getattr(args, "config", None)
    return load_config(GenerateConfig, config, generate_overrides(args),
                       where=Path(config).name if config else "config")


def cmd_generate(args) -> int:
    from pipeline.config import to_dict
    from pipeline.generate import run_generation

    cfg = load_generate_config(args)
    if getattr(args, "print_config", False):
        print(yaml.safe_dump(to_dict(cfg), sort_keys=False))
        return 0
    result = run_generation(cfg)
    print(f"[generate] {result.n_rows} rows in {result.n_shards} shards under {result.out_dir}")
    print(f"[generate] load with: datasets.load_dataset('parquet', data_files='{result.out_dir}/*.parquet')")
    return 0
