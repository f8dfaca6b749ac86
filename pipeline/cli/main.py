"""`hfld` command line: a thin layer over the stage functions (pipeline/cli/stages.py's STAGES table)
and the setup tools (pipeline/cli/tools.py).

    hfld train --config train.yaml --set iterations=100 --set losses.landmark=0
    hfld zoo fetch starter
    hfld convert nvidia network.pkl out.safetensors

Every stage takes --config (YAML) and repeated --set key=value overrides; errors print one line
that names the field or file and exit with status 2; a stage that ran and failed (a Ray Train run,
a sweep without a result) exits with status 1.

Ctrl-C and SIGTERM (what `timeout`, `ray job stop`, Slurm and Kubernetes send) stop a stage the same
way (pipeline/core/signals.py): it cleans up (checkpoint, MLflow run KILLED, lock released, Ray shut
down) and the command exits with 128 + the signal number: 130 after Ctrl-C, 143 after SIGTERM.
"""

from __future__ import annotations

import argparse
import sys

from pipeline.cli import tools
from pipeline.cli.stages import STAGES, add_stage_arguments, run_stage


class UsageError(Exception):
    pass


def _known_errors() -> tuple[type[BaseException], ...]:
    """Bad input: a short message and status 2."""
    from models.errors import WeightsError
    from pipeline.core.config import ConfigError
    from pipeline.core.directions import CheckpointError
    from pipeline.stages.train import NonFiniteLoss
    return (ConfigError, WeightsError, CheckpointError, NonFiniteLoss, UsageError)


def _failed_runs() -> tuple[type[BaseException], ...]:
    """A stage that ran and failed (its log above has the details): a summary and status 1."""
    from pipeline.stages.train import RayTrainFailed
    from pipeline.stages.tune import TuneFailed
    return (RayTrainFailed, TuneFailed)


def build_parser() -> argparse.ArgumentParser:
    from pipeline.presets import PRESETS
    parser = argparse.ArgumentParser(prog="hfld", description=(
        "Emotion-preserving face editing (He & McGough 2025): learn edit directions T with the HFLD "
        "landmark loss, then generate labelled augmented faces. Stages run locally or on Ray."))
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for stage in STAGES.values():
        p = sub.add_parser(stage.name, help=stage.help)
        add_stage_arguments(p, stage, sorted(PRESETS))
        p.set_defaults(func=lambda args, stage=stage: run_stage(stage, args))
    tools.add_subcommands(sub, sorted(PRESETS))
    return parser


def enable_crash_traces() -> None:
    """A crash in native code (a segmentation fault) prints every thread's Python stack to stderr.
    One `make demo` run (2026-12-02) ended with a segmentation fault AFTER it had written and printed
    everything; a rerun of the same command exited 0 and nothing said where it happened. Costs nothing
    until a crash."""
    import faulthandler
    if not faulthandler.is_enabled() and sys.stderr is not None:
        try:
            faulthandler.enable(file=sys.stderr, all_threads=True)
        except (AttributeError, ValueError, OSError):   # stderr without a file descriptor (embedded use)
            pass


def main(argv: list[str] | None = None) -> int:
    from pipeline.core.signals import interrupt_exit_status, interrupt_handlers
    enable_crash_traces()
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        with interrupt_handlers():
            return int(args.func(args) or 0)
    except _known_errors() as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except _failed_runs() as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt as e:
        status = interrupt_exit_status()
        print(f"interrupted{f' ({e})' if str(e) else ''}", file=sys.stderr)
        return status


if __name__ == "__main__":
    sys.exit(main())
