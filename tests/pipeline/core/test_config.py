from dataclasses import dataclass, field
from typing import Literal

import pytest

from pipeline.core.config import ConfigError, apply_overrides, from_dict, load_config, to_dict
from pipeline.stages.train import TrainConfig


@dataclass(frozen=True)
class Inner:
    rate: float = 1.0
    names: tuple[str, ...] = ()


@dataclass(frozen=True)
class Outer:
    inner: Inner = field(default_factory=Inner)
    mode: Literal["a", "b"] = "a"
    count: int = 1
    pair: tuple[float, float] = (0.0, 1.0)
    maybe: str | None = None


def test_nested_values_and_types():
    cfg = from_dict(Outer, {"inner": {"rate": 2, "names": ["x", "y"]}, "mode": "b", "pair": [1, 2]})
    assert cfg.inner == Inner(2.0, ("x", "y")) and cfg.mode == "b" and cfg.pair == (1.0, 2.0)
    assert to_dict(cfg)["inner"]["names"] == ["x", "y"]


@pytest.mark.parametrize("data,message", [
    ({"cuont": 3}, r"unknown key\(s\): config\.cuont \(did you mean 'count'\?\)"),
    ({"inner": {"rat": 1}}, r"config\.inner\.rat"),
    ({"count": "three"}, r"config\.count: expected an integer, got 'three'"),
    ({"count": True}, r"config\.count: expected an integer"),
    ({"mode": "c"}, r"config\.mode: 'c' is not one of \['a', 'b'\]"),
    ({"pair": [1]}, r"config\.pair: expected a list of 2 values"),
    ({"inner": {"names": "x"}}, r"config\.inner\.names: expected a list"),
    ({"inner": 3}, r"config\.inner: expected a mapping"),
])
def test_errors_name_the_field(data, message):
    with pytest.raises(ConfigError, match=message):
        from_dict(Outer, data)


def test_overrides_are_yaml_values():
    data = apply_overrides({"inner": {"rate": 1}}, ["inner.names=[a, b]", "count=5", "maybe=null"])
    assert data == {"inner": {"rate": 1, "names": ["a", "b"]}, "count": 5, "maybe": None}
    with pytest.raises(ConfigError, match="key.subkey=value"):
        apply_overrides({}, ["count"])


def test_load_from_yaml_file(tmp_path):
    p = tmp_path / "t.yaml"
    p.write_text("iterations: 7\nlosses:\n  landmark: 5e5\nmodel:\n  preset: tiny\n")
    cfg = load_config(TrainConfig, p, ["batch_size=2"])
    assert cfg.iterations == 7 and cfg.batch_size == 2 and cfg.losses.landmark == 5e5
    p.write_text("iterations: 7\nbatchsize: 3\n")
    with pytest.raises(ConfigError, match=r"t\.yaml\.batchsize"):
        load_config(TrainConfig, p)
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(TrainConfig, tmp_path / "missing.yaml")


def test_train_config_validation_names_field():
    with pytest.raises(ConfigError, match=r"model\.preset: 'ffhq9' is not a preset"):
        from_dict(TrainConfig, {"model": {"preset": "ffhq9"}})
    with pytest.raises(ConfigError, match=r"batch_size: 0 must be >= 1"):
        from_dict(TrainConfig, {"batch_size": 0})
    with pytest.raises(ConfigError, match=r"model\.weights\.generator"):
        from_dict(TrainConfig, {"model": {"preset": "tiny", "weights": {"generator": "/x.pt"}}})


def test_duplicate_keys_are_refused_but_merge_keys_may_be_overridden(tmp_path):
    from pipeline.core.config import DuplicateKey, parse_yaml
    with pytest.raises(DuplicateKey, match=r"line 2: duplicate key 'a' \(first on line 1\)"):
        parse_yaml("a: 1\na: 2\n")
    with pytest.raises(DuplicateKey, match="duplicate key 'a'"):
        parse_yaml("{a: 1, a: 2}")
    assert parse_yaml("base: &b {lr: 1}\nrun:\n  <<: *b\n  lr: 2\n") == {"base": {"lr": 1}, "run": {"lr": 2}}
    with pytest.raises(ConfigError, match=r"override losses: line 1: duplicate key 'landmark'"):
        apply_overrides({}, ["losses={landmark: 1, landmark: 2}"])


def test_an_override_under_a_non_mapping_value_is_refused():
    with pytest.raises(ConfigError, match=r"override 'model.preset=tiny': model is set to 5, which is not a mapping"):
        apply_overrides({}, ["model=5", "model.preset=tiny"])
    with pytest.raises(ConfigError, match=r"inner\.rate is set to 1"):
        apply_overrides({"inner": {"rate": 1}}, ["inner.rate.x=2"])
    # an empty (null) section may still be filled in, and a mapping replaced as a whole
    assert apply_overrides({"inner": None}, ["inner.rate=2"]) == {"inner": {"rate": 2}}
    assert apply_overrides({"inner": {"rate": 1}}, ["inner=7"]) == {"inner": 7}


def test_unreadable_config_files_are_config_errors(tmp_path):
    from pipeline.core.config import read_yaml
    (tmp_path / "bin.yaml").write_bytes(b"\xff\xfe\x00binary")
    with pytest.raises(ConfigError, match=r"bin\.yaml: not a YAML text file \(byte 0 is not UTF-8"):
        read_yaml(tmp_path / "bin.yaml")
    with pytest.raises(ConfigError, match="is a folder"):
        read_yaml(tmp_path)
    (tmp_path / "deep.yaml").write_text("[" * 5000 + "]" * 5000)
    with pytest.raises(ConfigError, match="deep.yaml"):
        read_yaml(tmp_path / "deep.yaml")
