"""Edit policies of the `generate` stage: which edit vector s each augmented face gets.

A policy turns (edit seed, variant number) into s [N] over T's N attributes (T's column order).
Two kinds:

- "random": every variant draws amounts uniformly from a range per chosen attribute; the other
  attributes of T stay at 0.
      policy: {kind: random, attributes: [Male, Young], ranges: {Young: [-0.5, 1.0]}, max_active: 1}
  Draws (torch.Generator seeded with the row's edit seed): first one U[0,1) number per chosen
  attribute (in `attributes` order), then, when 0 < max_active < len(attributes), a random
  permutation that picks which max_active of them keep their amount.
- "recipes": named edits, variant v uses recipes[v % len(recipes)], so with variants equal to the
  number of recipes every source face gets each recipe exactly once. A recipe is one or more terms
  `+Name`, `-Name`, `+0.5*Name`, `-1.5*Name` (no number = `strength`), e.g. "+Male", "-Young",
  "+Male-Young", "+0.7*Black_Hair"; the recipe "none" is the unedited face (s = 0).

Validation happens before any work: unknown attributes, bad ranges and unparsable recipes raise
ConfigError naming the field (e.g. `policy.recipes[2]`) and what T offers.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Literal, Sequence

import numpy as np
import torch

from pipeline.core.config import ConfigError, require

PolicyKind = Literal["random", "recipes"]
NO_EDIT = "none"
_TERM = re.compile(r"\s*([+-])\s*(?:(\d+(?:\.\d*)?|\.\d+)\s*\*\s*)?([A-Za-z_][A-Za-z0-9_]*)\s*")


@dataclass(frozen=True)
class EditPolicyConfig:
    """How edit vectors are chosen (see the module docstring).

    kind: "random" or "recipes".
    attributes: random: which of T's attributes vary (empty = all of T's).
    ranges: random: attribute -> [low, high] of its uniform amount (default_range otherwise).
    default_range: random: [low, high] for attributes without an entry in `ranges`.
    max_active: random: edit at most this many of `attributes` per variant (0 = all of them).
    recipes: recipes: the named edits, e.g. ["+Male", "-Young", "+Male-Young", "none"].
    strength: recipes: the amount of a term written without a number ("+Male" = +strength * Male).
    """
    kind: PolicyKind = "random"
    attributes: tuple[str, ...] = ()
    ranges: dict[str, tuple[float, float]] = field(default_factory=dict)
    default_range: tuple[float, float] = (-1.0, 1.0)
    max_active: int = 0
    recipes: tuple[str, ...] = ()
    strength: float = 1.0

    def __post_init__(self):
        require(self.max_active >= 0, "policy.max_active", self.max_active, "must be >= 0 (0 = all attributes)")
        require(math.isfinite(self.strength), "policy.strength", self.strength, "must be a finite number")
        check_range(self.default_range, "policy.default_range")
        for name, rng in self.ranges.items():
            check_range(rng, f"policy.ranges.{name}")
        require(len(set(self.attributes)) == len(self.attributes), "policy.attributes", self.attributes,
                "has duplicates")
        if self.kind == "recipes":
            require(len(self.recipes) > 0, "policy.recipes", self.recipes,
                    "is empty; kind 'recipes' needs at least one recipe such as '+Male'")


def check_range(rng: tuple[float, float], where: str) -> None:
    low, high = rng
    require(math.isfinite(low) and math.isfinite(high), where, list(rng), "must be two finite numbers")
    require(low <= high, where, list(rng), "must be [low, high] with low <= high")


def parse_recipe(text: str, attributes: Sequence[str], strength: float, where: str) -> np.ndarray:
    """A recipe string -> s [N] float32 over `attributes` (T's columns)."""
    s = np.zeros(len(attributes), dtype=np.float32)
    if text.strip().lower() == NO_EDIT:
        return s
    pos, seen = 0, set()
    while pos < len(text):
        m = _TERM.match(text, pos)
        if not m or m.end() == pos:
            raise ConfigError(f"{where}: {text!r} cannot be read at {text[pos:]!r}; write terms like "
                              "'+Male', '-Young', '+0.5*Black_Hair' (or 'none')")
        sign, amount, name = m.groups()
        if name not in attributes:
            raise ConfigError(f"{where}: {name!r} in {text!r} is not an attribute of T; T edits {list(attributes)}")
        if name in seen:
            raise ConfigError(f"{where}: {name!r} appears twice in {text!r}")
        seen.add(name)
        value = float(amount) if amount is not None else strength
        s[list(attributes).index(name)] = value if sign == "+" else -value
        pos = m.end()
    if not seen:
        raise ConfigError(f"{where}: {text!r} is empty; write terms like '+Male' or 'none'")
    return s


@dataclass(frozen=True)
class EditPolicy:
    """A validated policy over T's attributes; `edits` is pure and deterministic (picklable for Ray)."""
    kind: PolicyKind
    attributes: tuple[str, ...]                    # T's columns, in order
    chosen: tuple[int, ...] = ()                   # random: indices into attributes that vary
    lows: tuple[float, ...] = ()                   # random: per chosen attribute
    highs: tuple[float, ...] = ()
    max_active: int = 0
    recipe_names: tuple[str, ...] = ()
    recipe_vectors: tuple[tuple[float, ...], ...] = ()

    def edit(self, edit_seed: int, variant: int) -> np.ndarray:
        """s [N] float32 for one row."""
        n = len(self.attributes)
        if self.kind == "recipes":
            return np.asarray(self.recipe_vectors[variant % len(self.recipe_vectors)], dtype=np.float32)
        g = torch.Generator().manual_seed(int(edit_seed))
        u = torch.rand(len(self.chosen), generator=g, dtype=torch.float64).numpy()
        amounts = np.asarray(self.lows) + (np.asarray(self.highs) - np.asarray(self.lows)) * u
        if 0 < self.max_active < len(self.chosen):
            keep = torch.randperm(len(self.chosen), generator=g)[: self.max_active].numpy()
            mask = np.zeros(len(self.chosen), dtype=bool)
            mask[keep] = True
            amounts = np.where(mask, amounts, 0.0)
        s = np.zeros(n, dtype=np.float32)
        s[list(self.chosen)] = amounts.astype(np.float32)
        return s

    def edits(self, edit_seeds: Sequence[int], variants: Sequence[int]) -> np.ndarray:
        """s [B, N] float32 for rows with the given edit seeds and variant numbers."""
        out = np.zeros((len(edit_seeds), len(self.attributes)), dtype=np.float32)
        for i, (seed, variant) in enumerate(zip(edit_seeds, variants)):
            out[i] = self.edit(int(seed), int(variant))
        return out

    def describe(self) -> dict:
        """Plain description (for file metadata and logs)."""
        if self.kind == "recipes":
            return {"kind": "recipes", "attributes": list(self.attributes), "recipes": list(self.recipe_names),
                    "vectors": [list(v) for v in self.recipe_vectors]}
        return {"kind": "random", "attributes": list(self.attributes),
                "chosen": [self.attributes[i] for i in self.chosen],
                "ranges": {self.attributes[i]: [lo, hi] for i, lo, hi in zip(self.chosen, self.lows, self.highs)},
                "max_active": self.max_active}


def build_policy(cfg: EditPolicyConfig, attributes: Sequence[str]) -> EditPolicy:
    """Validate `cfg` against T's attribute names (in T's column order) and build the policy."""
    attributes = tuple(attributes)
    if not attributes:
        raise ConfigError("directions: T names no attributes; its metadata must list them")
    if cfg.kind == "recipes":
        vectors = tuple(tuple(float(x) for x in parse_recipe(r, attributes, cfg.strength, f"policy.recipes[{i}]"))
                        for i, r in enumerate(cfg.recipes))
        return EditPolicy("recipes", attributes, recipe_names=tuple(cfg.recipes), recipe_vectors=vectors)
    for i, name in enumerate(cfg.attributes):
        if name not in attributes:
            raise ConfigError(f"policy.attributes[{i}]: {name!r} is not an attribute of T; T edits {list(attributes)}")
    chosen_names = cfg.attributes or attributes
    for name in cfg.ranges:
        if name not in chosen_names:
            raise ConfigError(f"policy.ranges.{name}: {name!r} is not among the varied attributes "
                              f"{list(chosen_names)} (T edits {list(attributes)})")
    if cfg.max_active > len(chosen_names):
        raise ConfigError(f"policy.max_active: {cfg.max_active} is more than the {len(chosen_names)} varied attributes")
    ranges = [tuple(cfg.ranges.get(name, cfg.default_range)) for name in chosen_names]
    return EditPolicy("random", attributes, chosen=tuple(attributes.index(n) for n in chosen_names),
                      lows=tuple(float(r[0]) for r in ranges), highs=tuple(float(r[1]) for r in ranges),
                      max_active=cfg.max_active)
