"""Search spaces of the `tune` stage: YAML files (tune_spaces/<name>.yaml or any path), validated before
anything starts. Structure and types come from `pipeline.core.config.from_dict` (unknown keys, wrong
types); ranges, names and emptiness from the dataclasses' checks; names against what the preset
knows (landmark groups, attributes, latent layers) from `check_space`. Every error names the file
and the key.

    presets: [starter]                  # optional: presets whose landmark model the group names fit
    lambda4: {distribution: loguniform, low: 1.0e-2, high: 1.0e+4}   # or uniform, or choice + values
    landmark_subsets:                   # name -> groups of the preset's landmark model
      mouth: [outer_mouth, inner_mouth]
    attribute_sets: {male: [Male]}      # optional: name -> edited attributes
    layer_masks: {coarse: [0, 1, 2, 3]} # optional: name -> latent layers T may edit ([] = all)
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Literal

from pipeline.core.config import ConfigError, from_dict, read_yaml, to_dict
from pipeline.presets import PRESETS

BASELINE_SUBSET = "-"          # the baseline's subset name: lambda4 = 0, no landmark groups
DEFAULT_CHOICE = "default"     # attribute set / layer mask name when the space does not search them
CHOICE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


def spaces_dir() -> Path:
    """The shipped spaces: the `tune_spaces` package's YAML files (editable or installed)."""
    return Path(str(resources.files("tune_spaces")))


def _finite(value: float | None, field_name: str) -> None:
    if value is not None and not math.isfinite(value):
        raise ConfigError(f"{field_name}: {value!r} is not a finite number")


@dataclass(frozen=True)
class Lambda4Space:
    """loguniform / uniform over [low, high], or a choice among `values` (all > 0: the baseline
    lambda4 = 0 is always run on its own)."""
    distribution: Literal["loguniform", "uniform", "choice"]
    low: float | None = None
    high: float | None = None
    values: tuple[float, ...] = ()

    def __post_init__(self):
        for name in ("low", "high"):
            _finite(getattr(self, name), f"lambda4.{name}")
        for i, v in enumerate(self.values):
            _finite(v, f"lambda4.values[{i}]")
        if self.distribution == "choice":
            if self.low is not None or self.high is not None:
                raise ConfigError("lambda4: a choice takes `values`, not low/high")
            if not self.values:
                raise ConfigError("lambda4.values: expected a non-empty list of numbers")
            bad = [v for v in self.values if v <= 0]
            if bad:
                raise ConfigError(f"lambda4.values: {bad} must be > 0 (the baseline lambda4 = 0 is run on its own)")
            return
        if self.values:
            raise ConfigError(f"lambda4: a {self.distribution} range takes low/high, not `values`")
        for name in ("low", "high"):
            if getattr(self, name) is None:
                raise ConfigError(f"lambda4.{name}: missing (a {self.distribution} range needs low and high)")
        if self.distribution == "loguniform" and self.low <= 0:
            raise ConfigError(f"lambda4.low: {self.low:g} must be > 0 for a log-uniform range (the baseline 0 is "
                              "run on its own)")
        if self.distribution == "uniform" and self.low < 0:
            raise ConfigError(f"lambda4.low: {self.low:g} must be >= 0 (lambda4 is a loss weight)")
        if self.low >= self.high:
            raise ConfigError(f"lambda4.high: {self.high:g} must be greater than low ({self.low:g})")

    def domain(self):
        from ray import tune
        if self.distribution == "loguniform":
            return tune.loguniform(self.low, self.high)
        if self.distribution == "uniform":
            return tune.uniform(self.low, self.high)
        return tune.choice(list(self.values))


def _check_named_lists(node: dict, key: str, allow_empty: bool) -> None:
    for name, values in node.items():
        where = f"{key}.{name}"
        if not CHOICE_NAME.match(name) or name in (BASELINE_SUBSET, DEFAULT_CHOICE):
            raise ConfigError(f"{where}: names must be letters, digits, '_', '.', '-' (and not "
                              f"{DEFAULT_CHOICE!r}); got {name!r}")
        if not values and not allow_empty:
            raise ConfigError(f"{where}: empty; name at least one entry")
        if len(set(values)) != len(values):
            raise ConfigError(f"{where}: has duplicates: {list(values)}")


@dataclass(frozen=True)
class TuneSpace:
    """A parsed search space. `path` is the file it came from (set by load_space)."""
    lambda4: Lambda4Space | None = None
    landmark_subsets: dict[str, tuple[str, ...]] | None = None
    attribute_sets: dict[str, tuple[str, ...]] = field(default_factory=dict)   # {} = not searched
    layer_masks: dict[str, tuple[int, ...]] = field(default_factory=dict)      # {} = not searched
    presets: tuple[str, ...] = ()
    description: str = ""
    path: str = field(default="", init=False)     # the file it came from (set by parse_space)

    def __post_init__(self):
        if self.lambda4 is None or self.landmark_subsets is None:
            missing = "lambda4" if self.lambda4 is None else "landmark_subsets"
            raise ConfigError(f"{missing}: missing (a space needs lambda4 and landmark_subsets)")
        if not self.landmark_subsets:
            raise ConfigError("landmark_subsets: expected a non-empty mapping of name -> list")
        _check_named_lists(self.landmark_subsets, "landmark_subsets", allow_empty=False)
        _check_named_lists(self.attribute_sets, "attribute_sets", allow_empty=False)
        _check_named_lists(self.layer_masks, "layer_masks", allow_empty=True)
        for name, layers in self.layer_masks.items():
            bad = [i for i in layers if i < 0]
            if bad:
                raise ConfigError(f"layer_masks.{name}: {bad} are not layer indices (>= 0)")

    def as_dict(self) -> dict:
        return {"path": self.path, "description": self.description, "presets": list(self.presets),
                "lambda4": {k: v for k, v in to_dict(self.lambda4).items() if v not in ((), [], None)},
                "landmark_subsets": {k: list(v) for k, v in self.landmark_subsets.items()},
                "attribute_sets": {k: list(v) for k, v in self.attribute_sets.items()},
                "layer_masks": {k: list(v) for k, v in self.layer_masks.items()}}


@dataclass(frozen=True)
class Vocabulary:
    """What a preset's networks accept: landmark group names, attribute names, latent layers.
    None = not known without building the networks (checked after the bundle is built)."""
    groups: tuple[str, ...] | None
    attributes: tuple[str, ...] | None = None
    n_latent: int | None = None


def preset_vocabulary(preset: str) -> Vocabulary:
    """What the preset declares, without loading any weights."""
    p = PRESETS[preset]
    return Vocabulary(p.landmark_groups or None, p.attribute_names, p.n_latent)


def bundle_vocabulary(bundle) -> Vocabulary:
    return Vocabulary(tuple(getattr(bundle.landmarks, "groups", {})), tuple(bundle.regressor.names),
                      int(bundle.generator.n_latent))


def resolve_space_path(space: str) -> Path:
    """A path as given, or <tune_spaces>/<name>.yaml for a bare name."""
    p = Path(space).expanduser()
    if p.is_file():
        return p.resolve()
    if "/" not in space and p.suffix not in (".yaml", ".yml"):
        shipped = spaces_dir()
        candidate = shipped / f"{space}.yaml"
        if candidate.is_file():
            return candidate
        known = sorted(f.stem for f in shipped.glob("*.yaml"))
        raise ConfigError(f"space: {space!r} is neither a file nor one of the spaces in {shipped}: {known}")
    raise ConfigError(f"space: search space file {p} not found")


def check_space(space: TuneSpace, preset: str, vocab: Vocabulary) -> None:
    """Names in the space against what the preset's networks know (parts skipped where vocab is None)."""
    where = space.path
    unknown_presets = [p for p in space.presets if p not in PRESETS]
    if unknown_presets:
        raise ConfigError(f"{where}: presets: {unknown_presets} are not presets; known: {sorted(PRESETS)}")
    if space.presets and preset not in space.presets:
        raise ConfigError(f"{where}: presets: this space is for {list(space.presets)}, the sweep uses preset "
                          f"{preset!r}; use a space written for it (e.g. tune_spaces/<preset>.yaml)")
    if vocab.groups is not None:
        for name, groups in space.landmark_subsets.items():
            bad = [g for g in groups if g not in vocab.groups]
            if bad:
                raise ConfigError(f"{where}: landmark_subsets.{name}: unknown group(s) {bad}; the {preset!r} "
                                  f"landmark model's groups are {list(vocab.groups)}")
    if vocab.attributes is not None:
        for name, attrs in space.attribute_sets.items():
            bad = [a for a in attrs if a not in vocab.attributes]
            if bad:
                raise ConfigError(f"{where}: attribute_sets.{name}: unknown attribute(s) {bad}; the {preset!r} "
                                  f"regressor has {list(vocab.attributes)}")
    if vocab.n_latent is not None:
        for name, layers in space.layer_masks.items():
            bad = [i for i in layers if i >= vocab.n_latent]
            if bad:
                raise ConfigError(f"{where}: layer_masks.{name}: layer(s) {bad} outside the {preset!r} generator's "
                                  f"latent layers 0..{vocab.n_latent - 1}")


def parse_space(data: dict, where: str) -> TuneSpace:
    """Structure, types and ranges of a space (no preset knowledge); errors are prefixed with `where`."""
    try:
        space = from_dict(TuneSpace, data, "")
    except ConfigError as e:
        raise ConfigError(f"{where}: {e}") from None
    object.__setattr__(space, "path", where)      # frozen; set once, right after parsing
    return space


def load_space(space: str | Path, preset: str, vocab: Vocabulary | None = None) -> TuneSpace:
    """Read, parse and check a search space file; every error names the file and the key."""
    path = resolve_space_path(str(space))
    data = read_yaml(path)
    parsed = parse_space(data, str(path))
    check_space(parsed, preset, vocab if vocab is not None else preset_vocabulary(preset))
    return parsed
