"""`hfld tune`: sweep lambda4 and landmark subsets with Ray Tune; write the best training config.

    hfld tune --preset starter --space starter --set num_samples=8 --set scheduler.max_steps=2000
    hfld tune --config tune.yaml --space tune_spaces/ffhq.yaml
    hfld train --config ~/hfld-work/tune/<name>/best_train.yaml      # then train the winner

Wiring (pipeline/cli.py): `p = sub.add_parser("tune", ...)`, `add_stage_args(p)`,
`cli_tune.add_arguments(p)`, `p.set_defaults(func=cli_tune.cmd_tune)`. The common --preset sets
train.model.preset here (the tune config nests the training config under `train`).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import yaml


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The tune-only flags (the common --config/--set/--preset/--print-config come from cli.py)."""
    p.add_argument("--space", metavar="FILE", help="search space YAML, or the name of one in tune_spaces/ "
                   "(same as --set space=FILE)")
    p.add_argument("--num-samples", type=int, metavar="N", help="lambda4 draws per combination of the space's "
                   "named choices (same as --set num_samples=N)")


def tune_overrides(args) -> list[str]:
    """--set items plus the shorthand flags, as `key=value` overrides (flags win, being later)."""
    overrides = list(getattr(args, "set", None) or [])
    if getattr(args, "preset", None):
        overrides.append(f"train.model.preset={args.preset}")
    if getattr(args, "space", None):
        overrides.append(f"space={json.dumps(str(args.space))}")   # JSON-quoted: stays a string
    if getattr(args, "num_samples", None) is not None:
        overrides.append(f"num_samples={int(args.num_samples)}")
    return overrides


def load_tune_config(args):
    from pipeline.config import load_config
    from pipeline.tune import TuneConfig
    config = getattr(args, "config", None)
    return load_config(TuneConfig, config, tune_overrides(args), where=Path(config).name if config else "config")


def cmd_tune(args) -> int:
    from pipeline.config import to_dict
    from pipeline.tune import TuneFailed, run_tune

    cfg = load_tune_config(args)
    if getattr(args, "print_config", False):
        print(yaml.safe_dump(to_dict(cfg), sort_keys=False))
        return 0
    try:
        result = run_tune(cfg)
    except TuneFailed as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(f"[tune] trials: {result.table_path}")
    print(f"[tune] Pareto plot: {result.plot_path}")
    print(f"[tune] best training config: {result.best_config_path}")
    return 0
