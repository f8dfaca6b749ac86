"""NVIDIA stylegan2-ada pickle converter: parity with the NVIDIA code's outputs, and safety.

The parity data (`nvidia_ada_small64*.{pkl,pt}` in tests/fixtures/stylegan2, see its README) was
produced by running NVlabs/stylegan2-ada-pytorch itself. Nothing here ever loads a pickle with
plain pickle.load / torch.load(weights_only=False): the crafted malicious pickles below would run
their payload if it did, and each payload would create a marker file that the tests look for.
"""

import hashlib
import json
import os
import pickle
import sys
import types

import pytest
import torch

from models.errors import WeightsError
from models.load.nvidia_pickle import (PersistentRecord, convert_network_records, convert_nvidia_pickle,
                                       read_network_pickle, read_nvidia_pickle)
from models.load.stylegan2 import load_stylegan2

TOL = 1e-4  # max abs error allowed against the NVIDIA outputs (measured: <= 1e-5 on images of range ~9)


@pytest.fixture(scope="module")
def ada_pkl(stylegan2_fixtures):
    path = stylegan2_fixtures / "nvidia_ada_small64.pkl"
    if not path.is_file():
        pytest.fail(f"NVIDIA ada fixture not found: {path}: the checkout is incomplete")
    return path


@pytest.fixture(scope="module")
def ada_io(stylegan2_fixtures):
    return torch.load(stylegan2_fixtures / "nvidia_ada_small64_io.pt", weights_only=True)


@pytest.fixture(scope="module")
def converted(ada_pkl):
    return read_nvidia_pickle(ada_pkl)


def max_abs(a: torch.Tensor, b: torch.Tensor) -> float:
    assert a.shape == b.shape, (a.shape, b.shape)
    return (a - b).abs().max().item()


# ---------------------------------------------------------------------------------------------
# Parity with the NVIDIA implementation
# ---------------------------------------------------------------------------------------------

def test_architecture_read_from_the_pickle(converted, stylegan2_fixtures):
    cfg = json.loads((stylegan2_fixtures / "nvidia_ada_small64_config.json").read_text())
    gk, sk = cfg["generator_kwargs"], cfg["generator_kwargs"]["synthesis_kwargs"]
    g, d = converted.generator, converted.discriminator
    assert (g.resolution, g.z_dim, g.w_dim, g.n_latent) == (gk["img_resolution"], gk["z_dim"], gk["w_dim"],
                                                            cfg["num_ws"])
    assert converted.config["n_mlp"] == gk["mapping_kwargs"]["num_layers"]
    # ada's channel table: min(channel_base // res, channel_max)
    resolutions = [2 ** i for i in range(2, g.resolution.bit_length())]
    assert converted.config["channels"] == {r: min(sk["channel_base"] // r, sk["channel_max"]) for r in resolutions}
    assert d is not None and d.resolution == gk["img_resolution"]


@torch.no_grad()
def test_mapping_and_w_avg_match(converted, ada_io):
    g = converted.generator
    ws = ada_io["ws"]
    assert max_abs(g.mapping(ada_io["z"]), ws[:, 0]) < 1e-6
    assert torch.equal(ws, ws[:, :1].expand_as(ws))  # ada broadcasts one w to every layer
    assert max_abs(g.mean_latent, ada_io["w_avg"]) == 0.0
    assert ada_io["w_avg"].abs().max() > 0  # a zero w_avg would make the truncation test vacuous
    assert max_abs(g.truncate(g.mapping(ada_io["z"]), 0.7), ada_io["ws_trunc07"][:, 0]) < 1e-6


@torch.no_grad()
@pytest.mark.parametrize("case", ["z_const", "ws_const", "trunc07_const", "wplus_const", "wplus_none"])
def test_generator_images_match(converted, ada_io, case):
    g = converted.generator
    if case == "z_const":
        ours, ref = g(ada_io["z"], noise="const"), ada_io["img_const"]
    elif case == "ws_const":
        ours, ref = g.synthesis(ada_io["ws"], noise="const"), ada_io["img_const"]
    elif case == "trunc07_const":
        ours, ref = g(ada_io["z"], truncation=0.7, noise="const"), ada_io["img_trunc07_const"]
    elif case == "wplus_const":
        ours, ref = g.synthesis(ada_io["wplus"], noise="const"), ada_io["img_wplus_const"]
    else:  # ada noise_mode="none" is our "zero"
        ours, ref = g.synthesis(ada_io["wplus"], noise="zero"), ada_io["img_wplus_nonoise"]
    err = max_abs(ours, ref)
    print(f"{case}: max abs error {err:.3g} (reference range {ref.abs().max().item():.3g})")
    assert err < TOL


@torch.no_grad()
def test_noise_matters_in_the_fixture(ada_io):
    # Guards the noise tests above: with zero noise strengths "const" and "none" would coincide.
    assert max_abs(ada_io["img_wplus_const"], ada_io["img_wplus_nonoise"]) > 1e-2


@torch.no_grad()
def test_discriminator_logits_match(converted, ada_io):
    logits = converted.discriminator(ada_io["img_wplus_const"])
    err = max_abs(logits, ada_io["d_logits_of_img_wplus"])
    print(f"D logits: max abs error {err:.3g}")
    assert err < TOL


@torch.no_grad()
def test_parity_detects_a_flipped_upsampling_kernel(ada_pkl, ada_io):
    # The upsampling convs must be copied unflipped; a flipped kernel must fail the parity bound.
    weights = read_nvidia_pickle(ada_pkl)
    w = weights.generator.convs[0].conv.weight
    w.copy_(torch.flip(w, (3, 4)))
    assert max_abs(weights.generator.synthesis(ada_io["wplus"], "const"), ada_io["img_wplus_const"]) > 100 * TOL


# ---------------------------------------------------------------------------------------------
# Conversion to safetensors and back
# ---------------------------------------------------------------------------------------------

@torch.no_grad()
def test_round_trip_through_safetensors(ada_pkl, ada_io, converted, tmp_path):
    out = convert_nvidia_pickle(ada_pkl, tmp_path / "sub" / "ada64.safetensors")
    assert out == tmp_path / "sub" / "ada64.safetensors" and out.is_file()
    meta = json.loads(out.with_suffix(".json").read_text())
    assert meta["source_file"] == "nvidia_ada_small64.pkl"
    assert meta["source_sha256"] == hashlib.sha256(ada_pkl.read_bytes()).hexdigest()
    assert meta["source_format"] == "stylegan2-ada-pytorch"
    assert meta["resolution"] == 64 and meta["source_settings"]["num_ws"] == 10

    back = load_stylegan2(out)
    assert torch.equal(back.generator.mean_latent, converted.generator.mean_latent)
    img = back.generator.synthesis(ada_io["wplus"], "const")
    assert torch.equal(img, converted.generator.synthesis(ada_io["wplus"], "const"))
    assert max_abs(img, ada_io["img_wplus_const"]) < TOL
    assert max_abs(back.discriminator(ada_io["img_wplus_const"]), ada_io["d_logits_of_img_wplus"]) < TOL


def test_output_must_be_safetensors(ada_pkl, tmp_path):
    with pytest.raises(WeightsError, match=r"\.safetensors"):
        convert_nvidia_pickle(ada_pkl, tmp_path / "ada64.pt")


# ---------------------------------------------------------------------------------------------
# Gains that differ from rosinality's defaults are rescaled, unsupported settings refused
# ---------------------------------------------------------------------------------------------

def _records(ada_pkl) -> dict:
    return read_network_pickle(ada_pkl)


def _module(top: dict, dotted: str) -> PersistentRecord:
    net, *path = dotted.split(".")
    rec = top[net]
    for name in path:
        rec = rec.children()[name]
    return rec


@torch.no_grad()
def test_mapping_trained_with_another_lr_multiplier_is_rescaled(ada_pkl, ada_io):
    # The same function stored as ada would for lr_multiplier=1: W*0.01 with gain 1/sqrt(in), b*0.01 with gain 1.
    top = _records(ada_pkl)
    layers = [fc for name, fc in _module(top, "G_ema.mapping").children().items() if name.startswith("fc")]
    assert layers
    for fc in layers:
        params = fc.state["_parameters"]
        params["weight"] = params["weight"] * 0.01
        params["bias"] = params["bias"] * 0.01
        fc.state["weight_gain"] = 1 / params["weight"].shape[1] ** 0.5
        fc.state["bias_gain"] = 1
    g = convert_network_records(top, "lr1.pkl")[0].generator
    assert max_abs(g.mapping(ada_io["z"]), ada_io["ws"][:, 0]) < 1e-5


def _set(dotted: str, attr: str, value):
    def mutate(top):
        _module(top, dotted).state[attr] = value
    return mutate


def _bad_filter(top):
    _module(top, "G_ema.synthesis.b8.conv0").state["_buffers"]["resample_filter"] = torch.ones(4, 4) / 16


@pytest.mark.parametrize("mutate, message", [
    (_set("G_ema.synthesis.b64.conv1", "conv_clamp", 256), r"synthesis\.b64\.conv1 has conv_clamp=256"),
    (_set("G_ema.synthesis.b32", "use_fp16", True), r"synthesis\.b32 has use_fp16"),
    (_set("G_ema", "c_dim", 10), r"G_ema has c_dim=10"),
    (_set("G_ema.synthesis.b16", "architecture", "resnet"), r"architecture='resnet'"),
    (_set("D.b32", "conv_clamp", 256), r"D\.b32 has conv_clamp=256"),
    (_set("D.b4.mbstd", "group_size", 8), r"group_size=8"),
    (_set("D", "c_dim", 5), r"D has c_dim=5"),
    (_bad_filter, r"resample_filter"),
], ids=["g_conv_clamp", "g_fp16", "g_conditional", "g_resnet", "d_conv_clamp", "d_mbstd", "d_conditional",
        "filter"])
def test_settings_without_exact_mapping_are_refused(ada_pkl, mutate, message):
    top = _records(ada_pkl)
    mutate(top)
    with pytest.raises(WeightsError, match=message):
        convert_network_records(top, "mutated.pkl")


def test_unmapped_tensor_is_refused(ada_pkl):
    top = _records(ada_pkl)
    _module(top, "G_ema.synthesis.b8").state["_parameters"]["mystery"] = torch.zeros(3)
    with pytest.raises(WeightsError, match=r"no rosinality counterpart: synthesis\.b8\.mystery"):
        convert_network_records(top, "mutated.pkl")


# ---------------------------------------------------------------------------------------------
# Safety: code in a pickle never runs
# ---------------------------------------------------------------------------------------------

def _marker_command(marker) -> str:
    return f"touch '{marker}'"


def _marker_python(marker) -> str:
    return f"__import__('pathlib').Path({str(marker)!r}).write_text('ran')"


@pytest.mark.parametrize("module, name, payload", [
    ("os", "system", _marker_command),
    ("posix", "system", _marker_command),
    ("subprocess", "getoutput", _marker_command),
    ("builtins", "eval", _marker_python),
    ("builtins", "exec", _marker_python),
])
def test_pickle_calling_code_is_refused(tmp_path, module, name, payload):
    marker = tmp_path / "ran.txt"
    # protocol-0 opcodes: GLOBAL module.name, MARK, UNICODE arg, TUPLE, REDUCE, STOP
    evil = tmp_path / "evil.pkl"
    evil.write_bytes(f"c{module}\n{name}\n(V{payload(marker)}\ntR.".encode())
    with pytest.raises(WeightsError, match=rf"refused to load .*evil\.pkl: it references {module}\.{name}, "
                                           r"which could run code; only NVIDIA stylegan2-ada"):
        read_nvidia_pickle(evil)
    assert not marker.exists()


class _RunsCommand:
    def __init__(self, cmd):
        self.cmd = cmd

    def __reduce__(self):
        return os.system, (self.cmd,)


def test_network_dict_with_os_system_reduce_is_refused(tmp_path):
    marker = tmp_path / "ran.txt"
    evil = tmp_path / "network-snapshot.pkl"
    evil.write_bytes(pickle.dumps({"G_ema": _RunsCommand(_marker_command(marker)), "D": None}))
    with pytest.raises(WeightsError, match=r"references (os|posix|nt)\.system"):
        convert_nvidia_pickle(evil, tmp_path / "out.safetensors")
    assert not marker.exists()
    assert not (tmp_path / "out.safetensors").exists()


def test_persistent_object_source_is_never_executed(tmp_path, monkeypatch):
    """A torch_utils.persistence object whose embedded module source would write a marker file."""
    marker = tmp_path / "ran.txt"
    # A stand-in module only so that pickle.dumps can name the reconstruct function; it runs nothing.
    persistence = types.ModuleType("torch_utils.persistence")

    def _reconstruct_persistent_obj(meta):
        raise AssertionError("never called")

    _reconstruct_persistent_obj.__module__ = "torch_utils.persistence"
    _reconstruct_persistent_obj.__qualname__ = "_reconstruct_persistent_obj"
    persistence._reconstruct_persistent_obj = _reconstruct_persistent_obj
    monkeypatch.setitem(sys.modules, "torch_utils", types.ModuleType("torch_utils"))
    monkeypatch.setitem(sys.modules, "torch_utils.persistence", persistence)

    source = f"{_marker_python(marker)}\nclass Generator:\n    pass\n"
    meta = {"type": "class", "version": 6, "module_src": source, "class_name": "Generator",
            "state": {"_parameters": {}, "_buffers": {}, "_modules": {}, "w_dim": 512}}

    class Persistent:
        def __reduce__(self):
            return _reconstruct_persistent_obj, (meta,)

    evil = tmp_path / "persistent.pkl"
    evil.write_bytes(pickle.dumps({"G_ema": Persistent(), "D": Persistent()}, protocol=4))
    monkeypatch.delitem(sys.modules, "torch_utils.persistence")
    monkeypatch.delitem(sys.modules, "torch_utils")

    top = read_network_pickle(evil)
    assert isinstance(top["G_ema"], PersistentRecord) and top["G_ema"].class_name == "Generator"
    assert top["G_ema"].module_src_sha256 == hashlib.sha256(source.encode()).hexdigest()
    assert not marker.exists()
    with pytest.raises(WeightsError, match="G_ema has c_dim=None"):  # recorded, then found not to be a GAN
        convert_nvidia_pickle(evil, tmp_path / "out.safetensors")
    assert not marker.exists()


def test_not_a_pickle_is_refused(tmp_path):
    junk = tmp_path / "notes.pkl"
    junk.write_text("this is not a pickle\n")
    with pytest.raises(WeightsError, match="not a readable pickle"):
        read_nvidia_pickle(junk)


def test_torch_zip_checkpoint_is_refused(tmp_path):
    ckpt = tmp_path / "ckpt.pkl"
    torch.save({"g_ema": {}}, ckpt)
    with pytest.raises(WeightsError, match="zip archive"):
        read_nvidia_pickle(ckpt)


def test_plain_dict_without_networks_is_refused(tmp_path):
    plain = tmp_path / "plain.pkl"
    plain.write_bytes(pickle.dumps({"weights": [1, 2, 3]}))
    with pytest.raises(WeightsError, match="expected a dict with a 'G_ema' network"):
        read_nvidia_pickle(plain)


def test_missing_file_is_refused(tmp_path):
    with pytest.raises(WeightsError, match="weight file not found"):
        read_nvidia_pickle(tmp_path / "absent.pkl")


@pytest.mark.parametrize("protocol", [2, 3, 4, 5])
def test_tensors_and_plain_containers_are_read_in_every_protocol(tmp_path, protocol):
    import collections

    import numpy as np
    data = {"strided": torch.arange(6.0).reshape(3, 2)[:, 1], "param": torch.nn.Parameter(torch.ones(2)),
            "half": torch.zeros(2, dtype=torch.float16), "array": np.arange(6).reshape(2, 3),
            "gain": np.float64(0.5), "od": collections.OrderedDict(a=1), "set": {1, 2}, "dtype": torch.float32}
    path = tmp_path / "plain.pkl"
    path.write_bytes(pickle.dumps(data, protocol=protocol))
    back = read_network_pickle(path)
    assert torch.equal(back["strided"], data["strided"]) and torch.equal(back["param"], data["param"].data)
    assert back["half"].dtype == torch.float16 and back["dtype"] is torch.float32
    assert (back["array"] == data["array"]).all() and back["gain"] == 0.5
    assert back["od"] == {"a": 1} and back["set"] == {1, 2}
