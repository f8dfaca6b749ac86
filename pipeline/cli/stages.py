"""The STAGES table: every stage subcommand of `hfld` from one description.

Each stage is a config class + an entry function (`run_<stage>(cfg)`) in its package, a key that
--preset sets, and its shorthand flags (flag -> config key). Every subcommand gets the same common
arguments (--config, --set, --preset, --print-config), loads its config the same way and prints its
result lines; modules are imported when a command runs, so `hfld --help` stays fast.
"""

from __future__ import annotations

import argparse
import importlib
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import yaml

from pipeline.stages.profiles import PROFILES, apply_profile


@dataclass(frozen=True)
class Flag:
    """A shorthand flag: `--flag VALUE` is `--set key=VALUE` (strings stay strings, numbers numbers)."""
    names: tuple[str, ...]
    key: str
    help: str
    metavar: str = "VALUE"
    type: type = str
    choices: tuple[str, ...] = ()


@dataclass(frozen=True)
class Stage:
    name: str
    help: str
    module: str                          # package holding the config class and the entry function
    config: str                          # config class name
    entry: str                           # entry function name: entry(cfg) -> result
    preset_key: str = "model.preset"     # what --preset sets
    flags: tuple[Flag, ...] = ()
    report: Callable[[object], list[str]] = lambda result: []
    prepare: Callable[[dict], dict] | None = None   # config data -> data before validation (run: the profile)

    def load(self) -> tuple[type, Callable]:
        module = importlib.import_module(self.module)
        return getattr(module, self.config), getattr(module, self.entry)


def _tune_report(r) -> list[str]:
    return [f"[tune] trials: {r.table_path}", f"[tune] Pareto plot: {r.plot_path}",
            f"[tune] best training config: {r.best_config_path}"]


def _generate_report(r) -> list[str]:
    return [f"[generate] {r.n_rows} rows in {r.n_shards} shards under {r.out_dir}",
            f"[generate] load with: datasets.load_dataset('parquet', data_files='{r.out_dir}/*.parquet')"]


def _gan_report(r) -> list[str]:
    lines = [f"[gan] weights: {r.weights_path}", f"[gan] card: {r.card_path}"]
    if r.quality.get("fd_face") is not None:
        lines.append(f"[gan] {r.quality.get('where', '')}")
        lines.append(f"[gan] FD_face curve: {r.run_dir / 'quality' / 'fd_curve.png'}; contact sheet: "
                     f"{r.run_dir / 'quality' / 'contact_sheet.png'}")
    return lines


def _invert_report(r) -> list[str]:
    c = r.counts
    return [f"[invert] {r.n_rows} rows in {r.n_shards} shards under {r.out_dir} (ok {c['ok']}, no_face "
            f"{c['no_face']}, unreadable {c['unreadable']})",
            f"[invert] augment them with: hfld generate --sources {r.out_dir} -T <T>"]


def _invert_check_report(r) -> list[str]:
    return [f"[invert-check] report: {r.report_md}", f"[invert-check] numbers: {r.report_json}"]


def _evaluate_report(r) -> list[str]:
    return [f"[evaluate] markdown report: {r.report_md}", f"[evaluate] numbers: {r.metrics_json}"]


T_HELP = ("T: a directions .safetensors file (with its .json beside it), runs:/<run_id>[/<path>] or "
          "models:/<name>/<version>")

STAGES: dict[str, Stage] = {s.name: s for s in (
    Stage("train", "optimise the edit directions T", "pipeline.stages.train", "TrainConfig", "run_train"),
    Stage("tune", "sweep lambda4 and landmark subsets against emotion drift (Ray Tune)", "pipeline.stages.tune",
          "TuneConfig", "run_tune", preset_key="train.model.preset",
          flags=(Flag(("--space",), "space", "search space YAML, or the name of one in tune_spaces/", "FILE"),
                 Flag(("--num-samples",), "num_samples", "lambda4 draws per combination of the space's named "
                      "choices", "N", int)),
          report=_tune_report),
    Stage("generate", "generate a labelled augmented dataset into parquet (Ray Data)", "pipeline.stages.generate",
          "GenerateConfig", "run_generate",
          flags=(Flag(("--directions", "-T"), "directions", T_HELP, "T"),
                 Flag(("--output-dir", "-o"), "output_dir", "where the parquet shards go", "DIR"),
                 Flag(("--sources",), "sources", "start from the faces `hfld invert` wrote (its output folder) "
                      "instead of random latents; rows keep their source's id and labels and get a split", "DIR")),
          report=_generate_report),
    Stage("invert", "put real labelled faces into the generator's latent space (detect, align, project; Ray Data)",
          "pipeline.stages.invert", "InvertConfig", "run_invert",
          flags=(Flag(("--input", "-i"), "input.path", "a folder of images, a parquet or CSV file (image + label "
                      "columns) or a saved Hugging Face dataset", "PATH"),
                 Flag(("--output-dir", "-o"), "output_dir", "where the parquet shards go", "DIR")),
          report=_invert_report),
    Stage("invert-check", "held-out quality of the inversion on generated faces with known latents",
          "pipeline.stages.invert", "InvertCheckConfig", "run_invert_check", preset_key="invert.model.preset",
          flags=(Flag(("--n-faces",), "n_faces", "faces to generate and invert", "N", int),
                 Flag(("--output-dir", "-o"), "output_dir", "where faces, inversion and report go", "DIR")),
          report=_invert_check_report),
    Stage("evaluate", "edit strength, drift at matched strength and the paper's tables for baseline vs HFLD T's",
          "pipeline.stages.evaluate", "EvaluateConfig", "run_evaluate",
          flags=(Flag(("--baseline",), "baseline", "baseline T (lambda4 = 0). " + T_HELP + ". One T per training "
                      "seed: --set 'baseline=[T0, T1, T2]'", "PATH"),
                 Flag(("--hfld",), "hfld", "HFLD T(s), given like --baseline", "PATH")),
          report=_evaluate_report),
    Stage("gan", "train a StyleGAN2 generator + discriminator (e.g. distil the starter DCGAN)", "pipeline.stages.gan",
          "GanConfig", "run_gan", preset_key="data.teacher.preset",
          flags=(Flag(("--data",), "data.path", "dataset: an image folder, parquet file/folder/glob or saved HF "
                      "dataset (set data.source too)", "PATH"),
                 Flag(("--total-kimg",), "total_kimg", "training length in thousands of real images", "KIMG", float),
                 Flag(("--minutes",), "time_limit_min", "stop training after this many minutes (resume continues)",
                      "MIN", float)),
          report=_gan_report),
    Stage("run", "the whole chain (tune, train baseline + HFLD seeds, generate, evaluate, report)",
          "pipeline.stages.run", "RunConfig", "run_pipeline",
          flags=(Flag(("--profile",), "profile", "a named budget: " + "; ".join(
              f"{p.name}: {p.description}" for p in PROFILES.values()), "NAME", choices=tuple(PROFILES)),),
          prepare=apply_profile),
)}


def add_stage_arguments(p: argparse.ArgumentParser, stage: Stage, presets: list[str]) -> None:
    p.add_argument("--config", "-c", help="YAML config file (optional: defaults apply)")
    p.add_argument("--set", "-s", action="append", metavar="KEY=VALUE",
                   help="override a config value, e.g. --set losses.landmark=0 (repeatable)")
    p.add_argument("--preset", choices=presets, help=f"model preset (same as --set {stage.preset_key}=...)")
    p.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    for f in stage.flags:
        p.add_argument(*f.names, dest=f.key, metavar=f.metavar, type=f.type, choices=f.choices or None,
                       help=f"{f.help} (same as --set {f.key}=...)")


def stage_overrides(stage: Stage, args: argparse.Namespace) -> list[str]:
    """--set items, then --preset and the shorthand flags, as `key=value` overrides (later ones win)."""
    overrides = list(getattr(args, "set", None) or [])
    if getattr(args, "preset", None):
        overrides.append(f"{stage.preset_key}={args.preset}")
    for f in stage.flags:
        value = getattr(args, f.key, None)
        if value is not None and value != "":
            overrides.append(f"{f.key}={json.dumps(value if f.type is not str else str(value))}")  # JSON is YAML
    return overrides


def load_stage_config(stage: Stage, args: argparse.Namespace):
    """The stage's validated config from --config, --set, --preset and the flags (the one loader)."""
    from pipeline.core.config import apply_overrides, from_dict, load_config, read_yaml
    config_cls, _ = stage.load()
    path = getattr(args, "config", None)
    where = Path(path).name if path else "config"
    if stage.prepare is None:
        return load_config(config_cls, path, stage_overrides(stage, args), where=where)
    data = apply_overrides(read_yaml(path) if path else {}, stage_overrides(stage, args))
    return from_dict(config_cls, stage.prepare(data), where)


def run_stage(stage: Stage, args: argparse.Namespace) -> int:
    """Load the config; print it (--print-config) or run the stage and print where its results are."""
    from pipeline.core.config import to_dict
    cfg = load_stage_config(stage, args)
    if getattr(args, "print_config", False):
        print(yaml.safe_dump(to_dict(cfg), sort_keys=False))
        return 0
    _, entry = stage.load()
    result = entry(cfg)
    for line in stage.report(result):
        print(line)
    return 0
