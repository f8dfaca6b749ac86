"""Property: every stage's config loader (the STAGES table's `load_stage_config`, what every `hfld`
subcommand runs first) answers any YAML document and any --set overrides with a valid config or a
ConfigError -- never another exception (which the CLI would show as a traceback).

Inputs mix the stage's real (dotted) keys with random ones, and plausible values with random YAML,
random text and random bytes, so both the validation of real fields and the handling of nonsense are
exercised. About 200 examples per stage and input kind; no deadline (a loader call is ~1 ms, but the
first ones import the stage).
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import tempfile
import types
import typing
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pipeline.cli.stages import STAGES, load_stage_config
from pipeline.core.config import ConfigError, flatten, to_dict

EXAMPLES = 200
SETTINGS = settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow],
                    derandomize=True)


def stage_keys(name: str) -> list[str]:
    """Every dotted key of the stage's default config, and every prefix of one (a section)."""
    cls, _ = STAGES[name].load()
    keys = set()
    for key in flatten(to_dict(cls())):
        parts = key.split(".")
        keys.update(".".join(parts[:i]) for i in range(1, len(parts) + 1))
    return sorted(keys)


scalars = st.one_of(st.none(), st.booleans(), st.integers(-10**12, 10**12), st.floats(allow_nan=True),
                    st.text(max_size=12), st.sampled_from(["tiny", "starter", "auto", "cpu", "fp32", "bf16", "", "0",
                                                           "1e5", "-1", "uniform", "png", "asha", "/tmp/x"]))
values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner,
                                                                                       max_size=3), max_leaves=8)


WORDS = ["tiny", "starter", "ffhq256", "auto", "cpu", "cuda", "Male", "Young", "Smiling", "mouth", "eyes", "jaw",
         "training", "tiny-judge", "", "x", "/tmp/hfld-fuzz", "runs:/abc", "models:/m/1", "s3://b/p", "asha"]


def typed(tp) -> st.SearchStrategy:
    """Values of (or near) config type `tp`: right type with edge values, sometimes the wrong type."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if dataclasses.is_dataclass(tp):
        hints = typing.get_type_hints(tp)
        return st.fixed_dictionaries({}, optional={f.name: typed(hints[f.name]) for f in dataclasses.fields(tp)})
    if origin is typing.Literal:
        return st.one_of(st.sampled_from(args), scalars)
    if origin in (typing.Union, types.UnionType):
        return st.one_of(*[typed(a) for a in args if a is not type(None)], st.none())
    if origin is tuple:
        element = typed(args[0]) if args else scalars
        if len(args) == 2 and args[1] is Ellipsis:
            return st.lists(element, max_size=4) | scalars
        return st.tuples(*[typed(a) for a in args]).map(list) | st.lists(element, max_size=4)
    if origin in (dict, typing.Mapping) or tp is dict:
        return st.dictionaries(st.sampled_from(WORDS) | st.text(max_size=6), st.sampled_from(WORDS) | scalars,
                               max_size=3)
    if tp is bool:
        return st.booleans() | st.sampled_from([0, 1, "yes", None])
    if tp is int:
        return st.integers(-3, 10**6) | st.sampled_from([0, 1, 2, -1, 2**63, 1.5, "3", None])
    if tp is float:
        return st.floats(-1e7, 1e7) | st.sampled_from([0.0, 1.0, -1.0, math.nan, math.inf, -math.inf, 1e-300, "5e5",
                                                       "nan", True])
    if tp is str:
        return st.sampled_from(WORDS) | st.text(max_size=10) | st.sampled_from([1, None, [1]])
    return scalars


def leaf_types(cls, prefix: str = "") -> dict[str, object]:
    """Dotted key -> type of every field of config class `cls`, nested dataclasses included."""
    out = {}
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        key, tp = f"{prefix}{f.name}", hints[f.name]
        out[key] = tp
        if dataclasses.is_dataclass(tp):
            out.update(leaf_types(tp, key + "."))
    return out


def pairs_of(name: str) -> st.SearchStrategy:
    """(dotted key, value): mostly a real key with a value of about its type, sometimes anything."""
    leaves = leaf_types(STAGES[name].load()[0])
    real = st.sampled_from(sorted(leaves)).flatmap(lambda k: st.tuples(st.just(k), typed(leaves[k])))
    return st.one_of(real, real, real, st.tuples(keys_of(name), values))


def keys_of(name: str):
    return st.one_of(st.sampled_from(stage_keys(name)), st.text(max_size=15))


def nested(flat: dict) -> dict:
    """{"a.b": 1} -> {"a": {"b": 1}} (later keys win where a prefix is also a leaf)."""
    out: dict = {}
    for key, value in flat.items():
        node, parts = out, key.split(".")
        for p in parts[:-1]:
            if not isinstance(node.get(p), dict):
                node[p] = {}
            node = node[p]
        node[parts[-1]] = value
    return out


def load(name: str, text: str | bytes | None, overrides: list[str]):
    """load_stage_config with a config file holding `text` (None: no file); ConfigError or a config."""
    stage = STAGES[name]
    args = argparse.Namespace(set=overrides, preset=None, print_config=False,
                              **{f.key: None for f in stage.flags})
    with tempfile.TemporaryDirectory() as d:
        path = None
        if text is not None:
            path = Path(d) / "config.yaml"
            path.write_bytes(text if isinstance(text, bytes) else text.encode("utf-8", "surrogatepass"))
        args.config = str(path) if path else None
        try:
            cfg = load_stage_config(stage, args)
        except ConfigError:
            return None
    assert isinstance(cfg, stage.load()[0])
    return cfg


def yaml_text(document) -> str:
    return yaml.safe_dump(document, allow_unicode=True, sort_keys=False)


@pytest.mark.parametrize("name", sorted(STAGES))
def test_random_yaml_documents(name):
    @SETTINGS
    @given(st.lists(pairs_of(name), max_size=6))
    def check(pairs):
        load(name, yaml_text(nested(dict(pairs))), [])
    check()


@pytest.mark.parametrize("name", sorted(STAGES))
def test_random_overrides(name):
    override_values = st.one_of(values.map(lambda v: yaml.safe_dump(v, default_flow_style=True).strip()),
                                st.text(max_size=20))

    @SETTINGS
    @given(st.lists(st.one_of(pairs_of(name).map(lambda kv: (kv[0], yaml.safe_dump(kv[1], default_flow_style=True,
                                                                                    width=10**6).strip())),
                              st.tuples(keys_of(name), override_values)), max_size=5),
           st.lists(st.text(max_size=20), max_size=2))
    def check(pairs, raw):
        load(name, None, [f"{k}={v}" for k, v in pairs] + raw)
    check()


@pytest.mark.parametrize("name", sorted(STAGES))
def test_random_text_and_bytes_as_config_file(name):
    @SETTINGS
    @given(st.one_of(st.text(max_size=200), st.binary(max_size=200),
                     st.lists(st.sampled_from(["a:", " b: 1", "- x", "[", "{", "&a x", "*a", "<<: *a", "!!python/object:os.system",
                                               "? k", "key: value", "  - [1, 2]", "\t", ":", "---", "...", "%YAML 1.1"]),
                              max_size=8).map("\n".join)))
    def check(text):
        load(name, text, [])
    check()


def test_the_properties_can_fail(monkeypatch):
    """The harness lets any exception but ConfigError through (here: a loader that crashes on a key)."""
    def crashing(stage, args):
        raise KeyError("boom")
    monkeypatch.setitem(globals(), "load_stage_config", crashing)
    with pytest.raises(KeyError):
        load("train", None, ["x=1"])


def test_nan_and_inf_values_get_a_config_error_or_a_finite_config():
    for override in ("lr=.nan", "lr=.inf", "truncation=.nan", "losses.landmark=.inf", "batch_size=.nan"):
        cfg = load("train", None, [override])
        assert cfg is None or all(not (isinstance(v, float) and math.isnan(v)) for v in flatten(to_dict(cfg)).values())
