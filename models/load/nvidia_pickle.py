"""Convert NVIDIA stylegan2-ada-pytorch network pickles without running any code stored in them.

An ada network pickle (`{"G", "D", "G_ema", "training_set_kwargs", "augment_pipe"}`) stores each
network as a `torch_utils.persistence` object: the pickle asks `_reconstruct_persistent_obj(meta)` to
`exec` the embedded module source (`meta["module_src"]`) and then to fill an instance of the class it
defines with `meta["state"]` (the module's `__dict__`). Plain `pickle.load` would therefore run
whatever source the file carries.

`NetworkPickleReader` is a `pickle.Unpickler` whose `find_class` answers only an explicit allow-list
of harmless names (tensor/storage rebuilders, plain containers, numpy scalars and dtypes) and replaces
`_reconstruct_persistent_obj` with a stand-in that records the persistent object's state in a
`PersistentRecord` without ever looking at the source beyond hashing it. Any other global (os.system,
builtins.eval, subprocess.Popen, ...) stops the load with a WeightsError before it is called.

The recorded ada tensors are then renamed and, where the two implementations scale differently,
rescaled onto the rosinality layout of models.stylegan2, and every ada setting our modules cannot
reproduce exactly (class conditioning, other architectures, other filters, a conv_clamp that differs
between layers of one network) is refused with a message naming it. Differences that ARE handled
(checked against the fixtures made with the NVIDIA code, see tests/models/load/test_nvidia_pickle.py):
- conv_clamp (256 in every network stylegan2-ada-pytorch trains): passed on to our modules'
  `conv_clamp`, which clamp where ada does (SynthesisLayer and D Conv2dLayer outputs after the gain,
  at conv_clamp * the layer's extra gain; ToRGB outputs); recorded in the config.
- fp16 blocks (`num_fp16_res`): the weights are the same; ada computes those blocks in float16, we in
  the input's dtype, which reproduces ada's force_fp32=True outputs. The number of blocks ada ran in
  float16 is recorded in the config (num_fp16_res, d_num_fp16_res) as provenance.
- Mapping depth: any num_layers (the converted generator gets n_mlp = num_layers).
- FC layers: ada multiplies weights by `weight_gain` and biases by `bias_gain` at run time, stored in
  each layer's state; rosinality uses lr_mul/sqrt(fan_in) and lr_mul (0.01 in the mapping network).
  Weights/biases are rescaled by the ratio, which is exactly 1 for standard ada networks.
- Modulated 3x3 convs: ada uses the raw weight (demodulation makes a constant gain irrelevant);
  rosinality multiplies by 1/sqrt(fan_in) before demodulating: copied as is, like rosinality's own
  TF converter (the only difference is where the 1e-8 of the demodulation sits).
- ToRGB: ada scales the styles by 1/sqrt(fan_in), rosinality the weight: same product.
- Noise: ada adds `noise_const[R, R] * noise_strength[]`; rosinality `noises.noise_i[1,1,R,R] *
  noise.weight[1]`. Noise mode "none" is our "zero".
- Upsampling convs: both run a transposed convolution without flipping the kernel, then the
  [1,3,3,1] filter with gain 4; the kernel is copied unflipped.
- D: ada's resnet blocks scale skip and main paths by sqrt(0.5) each, rosinality divides the sum by
  sqrt(2); same minibatch-stddev (group 4, 1 channel); `b4.fc` / `b4.out` are final_linear.0/1.

Shapes: the converted generator maps z [B, w_dim] -> w [B, w_dim] and wplus [B, L, w_dim] ->
image [B, 3, R, R]; the discriminator image [B, 3, R, R] -> logits [B, 1].
"""

from __future__ import annotations

import collections
import hashlib
import io
import math
import pickle
import warnings
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from models.errors import WeightsError
from models.load.common import file_sha256, require_file
from models.load.stylegan2 import StyleGAN2Weights, build_from_state, save_stylegan2_safetensors
from models.stylegan2 import make_blur_kernel

ROLE = "NVIDIA stylegan2-ada pickle"
HINT = "Point at a network pickle written by NVlabs/stylegan2-ada-pytorch (e.g. network-snapshot-*.pkl)."
SOURCE_FORMAT = "stylegan2-ada-pytorch"
ACCEPTED = "only NVIDIA stylegan2-ada network pickles are accepted"
BLUR_TAPS = (1, 3, 3, 1)  # the only resample filter our modules implement
ROSINALITY_MAPPING_LR = 0.01  # lr_mlp of models.stylegan2.Generator, as build_from_state builds it
SQRT2 = math.sqrt(2)


# ---------------------------------------------------------------------------------------------
# Restricted unpickling
# ---------------------------------------------------------------------------------------------

@dataclass
class PersistentRecord:
    """What a `torch_utils.persistence` object would have become, minus its code.

    `state` is the object's `__dict__` as pickled: nn.Module bookkeeping (`_parameters`, `_buffers`,
    `_modules`), plain attributes (`weight_gain`, `conv_clamp`, ...) and `_init_args`/`_init_kwargs`.
    """

    class_name: str
    version: Any
    module_src_sha256: str
    state: dict = field(repr=False)

    def attr(self, name: str, default: Any = ...) -> Any:
        if name in self.state:
            return self.state[name]
        if default is ...:
            raise KeyError(name)
        return default

    def tensors(self) -> dict[str, torch.Tensor]:
        """This module's own parameters and buffers (not its children's), None entries dropped."""
        out = {}
        for group in ("_parameters", "_buffers"):
            for name, value in (self.state.get(group) or {}).items():
                if value is not None:
                    out[name] = value
        return out

    def children(self) -> dict[str, "PersistentRecord"]:
        return {k: v for k, v in (self.state.get("_modules") or {}).items() if v is not None}

    @property
    def init_kwargs(self) -> dict:
        return dict(self.state.get("_init_kwargs") or {})


class _AttrDict(dict):
    """Stand-in for dnnlib.util.EasyDict (a dict with attribute access) in init kwargs."""


def _refuse(source: Path | str, what: str, why: str = "which could run code") -> WeightsError:
    return WeightsError(f"refused to load {source}: it references {what}, {why}; {ACCEPTED}")


def _record_persistent_obj(meta: Any) -> PersistentRecord:
    """Stand-in for torch_utils.persistence._reconstruct_persistent_obj: keep the state, never exec."""
    if not isinstance(meta, dict) or meta.get("type") != "class" or not isinstance(meta.get("class_name"), str):
        raise WeightsError(f"{ROLE}: a persistent object has an unexpected description "
                           f"(type {meta.get('type') if isinstance(meta, dict) else type(meta).__name__!r}); "
                           f"{ACCEPTED}")
    state = meta.get("state")
    if not isinstance(state, dict):
        raise WeightsError(f"{ROLE}: persistent object {meta['class_name']} has no state dict; {ACCEPTED}")
    src = meta.get("module_src")
    digest = hashlib.sha256(src.encode("utf-8", "replace")).hexdigest() if isinstance(src, str) else ""
    return PersistentRecord(meta["class_name"], meta.get("version"), digest, dict(state))


def _load_storage_from_bytes(data: bytes) -> torch.storage.TypedStorage:
    """Stand-in for torch.storage._load_from_bytes: the bytes are a legacy torch.save of one storage.

    torch's own version calls torch.load with weights_only=False; weights_only=True reads the same
    legacy format with torch's restricted unpickler.
    """
    if not isinstance(data, (bytes, bytearray)):
        raise WeightsError(f"{ROLE}: a storage is not stored as bytes; {ACCEPTED}")
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*TypedStorage is deprecated.*")
        storage = torch.load(io.BytesIO(bytes(data)), map_location="cpu", weights_only=True)
    if not isinstance(storage, torch.storage.TypedStorage):
        raise WeightsError(f"{ROLE}: a tensor storage decoded to {type(storage).__name__}; {ACCEPTED}")
    return storage


def _rebuild_tensor(storage, offset, size, stride, requires_grad=False, backward_hooks=None, metadata=None):
    """Stand-in for torch._utils._rebuild_tensor_v2 that refuses tensors carrying hooks."""
    if not isinstance(storage, torch.storage.TypedStorage):
        raise WeightsError(f"{ROLE}: a tensor is built from {type(storage).__name__}, not a storage; {ACCEPTED}")
    if backward_hooks:
        raise WeightsError(f"{ROLE}: a tensor carries backward hooks; {ACCEPTED}")
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*TypedStorage is deprecated.*")
        return torch._utils._rebuild_tensor_v2(storage, offset, tuple(size), tuple(stride), False,
                                               collections.OrderedDict(), metadata)


def _rebuild_parameter(data, requires_grad=False, backward_hooks=None, state=None):
    """Stand-in for torch._utils._rebuild_parameter(_with_state): we only want the tensor."""
    if not isinstance(data, torch.Tensor) or backward_hooks or state:
        raise WeightsError(f"{ROLE}: a parameter is not a plain tensor; {ACCEPTED}")
    return data


class _TypeToken:
    """Names a type the pickle mentions only as an argument (tensor/array subtype), without being callable.

    Handing out the real classes would let a crafted REDUCE call torch.Tensor(huge) and the like.
    """

    def __init__(self, name: str):
        self.name = name

    def __repr__(self) -> str:
        return self.name


_TENSOR, _PARAMETER = _TypeToken("torch.Tensor"), _TypeToken("torch.nn.Parameter")
_NDARRAY = _TypeToken("numpy.ndarray")


def _rebuild_from_type(func, new_type, args, state):
    """Stand-in for torch._tensor._rebuild_from_type_v2 limited to plain tensors/parameters."""
    if func not in (_rebuild_tensor, _rebuild_parameter) or new_type not in (_TENSOR, _PARAMETER) or state:
        raise WeightsError(f"{ROLE}: a tensor of type {new_type!r} with extra state; {ACCEPTED}")
    return func(*args)


def _numpy_scalar(dtype, data=None):
    """Stand-in for numpy's multiarray.scalar for numeric dtypes (ada stores gains as float64)."""
    if not isinstance(dtype, np.dtype) or dtype.hasobject or not isinstance(data, bytes):
        raise WeightsError(f"{ROLE}: a numpy scalar of dtype {dtype!r} is not plain numeric data; {ACCEPTED}")
    return np.frombuffer(data, dtype=dtype, count=1)[0]


def _numpy_reconstruct(subtype, shape, dtype):
    """Stand-in for numpy's multiarray._reconstruct: an empty ndarray that BUILD then fills."""
    if subtype is not _NDARRAY:
        raise WeightsError(f"{ROLE}: a numpy array of subtype {subtype!r}; {ACCEPTED}")
    return np.ndarray.__new__(np.ndarray, shape, dtype)


def _numpy_frombuffer(buffer, dtype, shape, order):
    """Stand-in for numpy's numeric._frombuffer (protocol-5 arrays): a copy of plain numeric data."""
    if not isinstance(dtype, np.dtype) or dtype.hasobject or order not in ("C", "F"):
        raise WeightsError(f"{ROLE}: a numpy array of dtype {dtype!r} is not plain numeric data; {ACCEPTED}")
    return np.frombuffer(bytes(buffer), dtype=dtype).reshape(shape, order=order).copy()


def _latin1_bytes(text, encoding="utf-8"):
    """Stand-in for _codecs.encode as protocol-2 pickles use it to spell bytes: latin-1 text only."""
    if not isinstance(text, str) or str(encoding).lower().replace("-", "") != "latin1":
        raise WeightsError(f"{ROLE}: a bytes object encoded as {encoding!r}; {ACCEPTED}")
    return text.encode("latin-1")


def _allowed_globals() -> dict[tuple[str, str], Any]:
    allowed: dict[tuple[str, str], Any] = {
        ("torch_utils.persistence", "_reconstruct_persistent_obj"): _record_persistent_obj,
        ("collections", "OrderedDict"): collections.OrderedDict,
        ("builtins", "set"): set,
        ("builtins", "frozenset"): frozenset,
        ("_codecs", "encode"): _latin1_bytes,
        ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
        ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
        ("torch._utils", "_rebuild_parameter_with_state"): _rebuild_parameter,
        ("torch._tensor", "_rebuild_from_type_v2"): _rebuild_from_type,
        ("torch.storage", "_load_from_bytes"): _load_storage_from_bytes,
        ("torch", "Tensor"): _TENSOR,
        ("torch._tensor", "Tensor"): _TENSOR,
        ("torch.nn.parameter", "Parameter"): _PARAMETER,
        ("torch", "Size"): torch.Size,
        ("numpy", "dtype"): np.dtype,
        ("numpy", "ndarray"): _NDARRAY,
        ("dnnlib.util", "EasyDict"): _AttrDict,
        ("dnnlib", "EasyDict"): _AttrDict,
    }
    for numpy_core in ("numpy.core.multiarray", "numpy._core.multiarray"):  # numpy 1.x / 2.x names
        allowed[(numpy_core, "scalar")] = _numpy_scalar
        allowed[(numpy_core, "_reconstruct")] = _numpy_reconstruct
    for numpy_numeric in ("numpy.core.numeric", "numpy._core.numeric"):
        allowed[(numpy_numeric, "_frombuffer")] = _numpy_frombuffer
    return allowed


_ALLOWED = _allowed_globals()


class NetworkPickleReader(pickle.Unpickler):
    """Unpickler that resolves only allow-listed globals; persistent objects become PersistentRecord."""

    def __init__(self, file, source: Path | str):
        super().__init__(file)
        self.source = source

    def find_class(self, module: str, name: str) -> Any:
        if module == "__builtin__":  # protocol-2 pickles spell builtins the Python 2 way
            module = "builtins"
        if (module, name) in _ALLOWED:
            return _ALLOWED[(module, name)]
        if module == "torch" and isinstance(getattr(torch, name, None), torch.dtype):
            return getattr(torch, name)  # dtype constants such as torch.float32
        raise _refuse(self.source, f"{module}.{name}")

    def persistent_load(self, pid: Any) -> Any:
        raise _refuse(self.source, "a persistent id (an external object)",
                      "which a network pickle never uses (is it a torch.save checkpoint?)")


def read_network_pickle(path: str | Path) -> Any:
    """Unpickle `path` safely: plain containers, tensors, numpy scalars and PersistentRecords only."""
    path = require_file(path, ROLE, HINT)
    if zipfile.is_zipfile(path):
        raise WeightsError(f"{ROLE}: {path} is a zip archive (a torch.save checkpoint?), not a network pickle. "
                           f"Load rosinality checkpoints with the StyleGAN2 loader instead. {HINT}")
    try:
        with open(path, "rb") as f:
            return NetworkPickleReader(f, path).load()
    except WeightsError:
        raise
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, KeyError, AttributeError, IndexError,
            RuntimeError, UnicodeDecodeError, OverflowError, MemoryError) as e:
        first = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
        raise WeightsError(f"{ROLE}: {path} is not a readable pickle ({type(e).__name__}: {first}). {HINT}") from e


# ---------------------------------------------------------------------------------------------
# Checks: settings our rosinality-layout modules reproduce exactly, or a clear refusal
# ---------------------------------------------------------------------------------------------

class _Checker:
    def __init__(self, source: Path | str):
        self.source = source
        self.clamps: dict[str, tuple[float | None, str]] = {}  # network -> (conv_clamp, first layer seen)

    def fail(self, where: str, setting: str, value: Any, why: str) -> WeightsError:
        return WeightsError(f"{ROLE}: {self.source}: {where} has {setting}={value!r}, which this converter cannot "
                            f"reproduce exactly ({why}).")

    def equal(self, rec: PersistentRecord, where: str, name: str, expected: Any, why: str):
        value = rec.attr(name, None)
        if isinstance(expected, float):
            ok = value is not None and math.isclose(float(value), expected, rel_tol=1e-9)
        else:
            ok = value == expected
        if not ok:
            raise self.fail(where, name, _plain(value), why)

    def same_clamp(self, rec: PersistentRecord, where: str, net: str) -> None:
        """Check a clamped layer's conv_clamp against the first one seen in the same network `net`.

        ada stores conv_clamp on each layer (unscaled: the layer multiplies it by its extra gain at run
        time); our Generator / Discriminator take one conv_clamp each, so all layers must agree.
        """
        value = rec.attr("conv_clamp", None)
        if value is not None:
            try:
                value = float(value)
            except (TypeError, ValueError):
                raise self.fail(where, "conv_clamp", _plain(value), "it must be None or a number") from None
            if not value >= 0:
                raise self.fail(where, "conv_clamp", value, "a clamp bound must be >= 0")
        first = self.clamps.setdefault(net, (value, where))
        if first[0] != value:
            raise self.fail(where, "conv_clamp", value, f"{first[1]} has conv_clamp={first[0]!r}, and our "
                            f"modules clamp every layer of a network with one bound")

    def conv_clamp(self, net: str) -> float | None:
        return self.clamps.get(net, (None, ""))[0]

    def no_clamp(self, rec: PersistentRecord, where: str) -> None:
        """Layers that ada never clamps (resnet skip convs): a clamp there has no counterpart."""
        if rec.attr("conv_clamp", None) is not None:
            raise self.fail(where, "conv_clamp", _plain(rec.attr("conv_clamp")),
                            "stylegan2-ada never clamps this layer, and neither do our modules")

    def refuse_conditional(self, rec: PersistentRecord, where: str) -> None:
        """The clear refusal for class-conditional networks (ada's c_dim > 0), before anything else."""
        c_dim = rec.attr("c_dim", None)
        if isinstance(c_dim, (int, np.integer)) and not isinstance(c_dim, (bool, np.bool_)) and c_dim > 0:
            raise WeightsError(f"{ROLE}: {self.source}: {where} is a conditional network (c_dim={int(c_dim)}); "
                               f"conditional networks with c_dim > 0 are not supported yet (our generator and "
                               f"discriminator take no class label). Convert an unconditional network "
                               f"(trained without --cond).")

    def child(self, rec: PersistentRecord, name: str, where: str, class_name: str | None = None) -> PersistentRecord:
        kids = rec.children()
        if name not in kids or not isinstance(kids[name], PersistentRecord):
            raise WeightsError(f"{ROLE}: {self.source}: {where} has no sub-network {name!r}; {ACCEPTED}")
        if class_name is not None and kids[name].class_name != class_name:
            raise WeightsError(f"{ROLE}: {self.source}: {where}.{name} is a {kids[name].class_name}, expected "
                               f"{class_name}; {ACCEPTED}")
        return kids[name]

    def tensor(self, rec: PersistentRecord, name: str, where: str) -> torch.Tensor:
        t = rec.tensors().get(name)
        if not isinstance(t, torch.Tensor):
            raise WeightsError(f"{ROLE}: {self.source}: {where} has no tensor {name!r}; {ACCEPTED}")
        return t.detach().float()

    def resample_filter(self, rec: PersistentRecord, where: str):
        f = rec.tensors().get("resample_filter")
        expected = make_blur_kernel(BLUR_TAPS)
        if f is None or tuple(f.shape) != tuple(expected.shape) or not torch.allclose(f.float(), expected, atol=1e-7):
            raise self.fail(where, "resample_filter", None if f is None else f.tolist(),
                            f"only the {list(BLUR_TAPS)} filter is implemented")

    def unmapped(self, rec: PersistentRecord, where: str, used: set[str]):
        """Every ada tensor must have gone somewhere: leftovers mean a layout we do not understand."""
        left = sorted(set(flatten_tensors(rec)) - used)
        if left:
            raise WeightsError(f"{ROLE}: {self.source}: {where} has tensors with no rosinality counterpart: "
                               f"{', '.join(left[:6])}{' ...' if len(left) > 6 else ''}; {ACCEPTED}")


def flatten_tensors(rec: PersistentRecord, prefix: str = "") -> dict[str, torch.Tensor]:
    """All parameters/buffers of a record tree under ada's dotted names (e.g. synthesis.b4.const)."""
    out = {prefix + k: v for k, v in rec.tensors().items()}
    for name, kid in rec.children().items():
        if isinstance(kid, PersistentRecord):
            out.update(flatten_tensors(kid, f"{prefix}{name}."))
    return out


def _plain(x: Any) -> Any:
    """JSON-friendly copy of init kwargs / attribute values (numpy scalars -> Python numbers)."""
    if isinstance(x, dict):
        return {str(k): _plain(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_plain(v) for v in x]
    if isinstance(x, np.generic):
        return x.item()
    if isinstance(x, (str, int, float, bool)) or x is None:
        return x
    return repr(x)


def _rescaled(t: torch.Tensor, ratio: float) -> torch.Tensor:
    """t * ratio, leaving t bit-identical when the ratio is 1 (the usual case)."""
    if math.isclose(ratio, 1.0, rel_tol=1e-12):
        return t.clone()
    return (t.double() * ratio).float()


# ---------------------------------------------------------------------------------------------
# Generator: ada G_ema -> rosinality g_ema keys
# ---------------------------------------------------------------------------------------------

def _fully_connected(chk: _Checker, rec: PersistentRecord, where: str, lr_mul: float,
                     activation: str) -> tuple[torch.Tensor, torch.Tensor]:
    """ada FullyConnectedLayer -> (weight, bias) for a rosinality EqualLinear with this lr_mul.

    ada computes x @ (W * weight_gain).T + b * bias_gain; rosinality x @ (W' * lr_mul/sqrt(in)).T + b' * lr_mul.
    """
    chk.equal(rec, where, "activation", activation, f"the rosinality layer here is '{activation}'")
    weight = chk.tensor(rec, "weight", where)
    if "bias" not in rec.tensors():
        raise chk.fail(where, "bias", None, "every rosinality EqualLinear has a bias")
    bias = chk.tensor(rec, "bias", where)
    scale = lr_mul / math.sqrt(weight.shape[1])
    weight_gain, bias_gain = float(rec.attr("weight_gain")), float(rec.attr("bias_gain"))
    return _rescaled(weight, weight_gain / scale), _rescaled(bias, bias_gain / lr_mul)


def _mapping_state(chk: _Checker, mapping: PersistentRecord, w_dim: int) -> tuple[dict, torch.Tensor | None, int]:
    where = "G_ema.mapping"
    chk.equal(mapping, where, "c_dim", 0, "class-conditional mapping (label embedding) is not implemented")
    chk.equal(mapping, where, "z_dim", w_dim, "our generator needs z_dim == w_dim")
    if "embed" in mapping.children():
        raise chk.fail(where, "embed", "present", "class-conditional mapping is not implemented")
    n_layers = int(mapping.attr("num_layers"))
    state = {}
    for i in range(n_layers):
        fc = chk.child(mapping, f"fc{i}", where, "FullyConnectedLayer")
        weight, bias = _fully_connected(chk, fc, f"{where}.fc{i}", ROSINALITY_MAPPING_LR, "lrelu")
        if tuple(weight.shape) != (w_dim, w_dim):
            raise chk.fail(f"{where}.fc{i}", "weight shape", list(weight.shape),
                           f"rosinality mapping layers are {w_dim}x{w_dim} (layer_features == w_dim)")
        state[f"style.{i + 1}.weight"], state[f"style.{i + 1}.bias"] = weight, bias
    w_avg = mapping.tensors().get("w_avg")
    return state, None if w_avg is None else w_avg.detach().float().clone(), n_layers


def _synthesis_layer(chk: _Checker, layer: PersistentRecord, where: str, up: int) -> dict[str, torch.Tensor]:
    """ada SynthesisLayer -> our StyledConv tensors (relative names) plus 'noise_buffer'."""
    chk.equal(layer, where, "up", up, "unexpected block layout")
    chk.equal(layer, where, "activation", "lrelu", "rosinality uses leaky ReLU")
    chk.equal(layer, where, "act_gain", SQRT2, "rosinality's fused leaky ReLU has gain sqrt(2)")
    chk.same_clamp(layer, where, "G")
    chk.resample_filter(layer, where)
    weight = chk.tensor(layer, "weight", where)
    if weight.shape[2:] != (3, 3):
        raise chk.fail(where, "kernel_size", weight.shape[2], "rosinality's styled convs are 3x3")
    affine_w, affine_b = _fully_connected(chk, chk.child(layer, "affine", where), f"{where}.affine", 1.0, "linear")
    res = int(layer.attr("resolution"))
    if layer.attr("use_noise", True):
        strength = chk.tensor(layer, "noise_strength", where).reshape(1)
        noise = chk.tensor(layer, "noise_const", where).reshape(1, 1, res, res)
    else:  # no noise input: a zero strength reproduces it exactly
        strength, noise = torch.zeros(1), torch.zeros(1, 1, res, res)
    return {"conv.weight": weight[None].clone(), "conv.modulation.weight": affine_w,
            "conv.modulation.bias": affine_b, "noise.weight": strength.clone(),
            "activate.bias": chk.tensor(layer, "bias", where).clone(), "noise_buffer": noise.clone()}


def _to_rgb(chk: _Checker, torgb: PersistentRecord, where: str) -> dict[str, torch.Tensor]:
    """ada ToRGBLayer -> our ToRGB tensors. ada scales the styles by weight_gain, we scale the weight."""
    chk.same_clamp(torgb, where, "G")
    weight = chk.tensor(torgb, "weight", where)
    if weight.shape[0] != 3 or weight.shape[2:] != (1, 1):
        raise chk.fail(where, "weight shape", list(weight.shape), "rosinality's ToRGB is a 1x1 conv to 3 channels")
    affine_w, affine_b = _fully_connected(chk, chk.child(torgb, "affine", where), f"{where}.affine", 1.0, "linear")
    our_scale = 1 / math.sqrt(weight.shape[1])
    return {"conv.weight": _rescaled(weight, float(torgb.attr("weight_gain")) / our_scale)[None],
            "conv.modulation.weight": affine_w, "conv.modulation.bias": affine_b,
            "bias": chk.tensor(torgb, "bias", where).reshape(1, 3, 1, 1).clone()}


def _check_synthesis_block(chk: _Checker, block: PersistentRecord, where: str, res: int) -> bool:
    """Check one ada SynthesisBlock; returns whether ada ran it in float16 (its use_fp16)."""
    chk.equal(block, where, "architecture", "skip", "rosinality's generator uses the 'skip' architecture")
    chk.equal(block, where, "resolution", res, "unexpected block layout")
    chk.equal(block, where, "img_channels", 3, "our generator makes RGB images")
    chk.resample_filter(block, where)
    if "skip" in block.children():
        raise chk.fail(where, "skip", "present", "rosinality's generator has no residual blocks")
    return bool(block.attr("use_fp16", False))


def _synthesis_state(chk: _Checker, synthesis: PersistentRecord) -> tuple[dict, dict[int, int], int, int]:
    """ada SynthesisNetwork -> (state, channel table, resolution, number of blocks ada ran in float16)."""
    where = "G_ema.synthesis"
    resolution = int(synthesis.attr("img_resolution"))
    log2 = int(round(math.log2(resolution))) if resolution > 0 else 0
    if resolution < 8 or 2 ** log2 != resolution:
        raise chk.fail(where, "img_resolution", resolution, "StyleGAN2 needs a power of two >= 8")
    up_kernel = make_blur_kernel(BLUR_TAPS) * 4  # what our upsampling Blur/Upsample buffers hold
    state, channels, noise_index, fp16_blocks = {}, {}, 0, 0

    def put(prefix: str, tensors: dict[str, torch.Tensor]):
        nonlocal noise_index
        noise = tensors.pop("noise_buffer", None)
        if noise is not None:
            state[f"noises.noise_{noise_index}"] = noise
            noise_index += 1
        state.update({f"{prefix}.{k}": v for k, v in tensors.items()})

    b4 = chk.child(synthesis, "b4", where, "SynthesisBlock")
    fp16_blocks += _check_synthesis_block(chk, b4, f"{where}.b4", 4)
    const = chk.tensor(b4, "const", f"{where}.b4")
    channels[4] = const.shape[0]
    state["input.input"] = const[None].clone()
    put("conv1", _synthesis_layer(chk, chk.child(b4, "conv1", f"{where}.b4"), f"{where}.b4.conv1", up=1))
    put("to_rgb1", _to_rgb(chk, chk.child(b4, "torgb", f"{where}.b4"), f"{where}.b4.torgb"))
    for k, res in enumerate(2 ** j for j in range(3, log2 + 1)):
        name = f"{where}.b{res}"
        block = chk.child(synthesis, f"b{res}", where, "SynthesisBlock")
        fp16_blocks += _check_synthesis_block(chk, block, name, res)
        put(f"convs.{2 * k}", _synthesis_layer(chk, chk.child(block, "conv0", name), f"{name}.conv0", up=2))
        state[f"convs.{2 * k}.conv.blur.kernel"] = up_kernel.clone()
        put(f"convs.{2 * k + 1}", _synthesis_layer(chk, chk.child(block, "conv1", name), f"{name}.conv1", up=1))
        put(f"to_rgbs.{k}", _to_rgb(chk, chk.child(block, "torgb", name), f"{name}.torgb"))
        state[f"to_rgbs.{k}.upsample.kernel"] = up_kernel.clone()
        channels[res] = state[f"convs.{2 * k}.conv.weight"].shape[1]
    return state, channels, resolution, fp16_blocks


def _generator_state(chk: _Checker, g: PersistentRecord) -> tuple[dict, torch.Tensor | None, dict]:
    """ada G_ema record -> (rosinality g_ema state dict, w_avg [w_dim] or None, ada settings for the sidecar)."""
    if g.class_name != "Generator":
        raise WeightsError(f"{ROLE}: {chk.source}: G_ema is a {g.class_name}, expected Generator; {ACCEPTED}")
    chk.refuse_conditional(g, "G_ema")
    chk.equal(g, "G_ema", "c_dim", 0, "class-conditional generators are not implemented")
    chk.equal(g, "G_ema", "img_channels", 3, "our generator makes RGB images")
    w_dim = int(g.attr("w_dim"))
    synthesis = chk.child(g, "synthesis", "G_ema", "SynthesisNetwork")
    mapping = chk.child(g, "mapping", "G_ema", "MappingNetwork")
    state, channels, resolution, fp16_blocks = _synthesis_state(chk, synthesis)
    mapping_state, w_avg, n_mlp = _mapping_state(chk, mapping, w_dim)
    state.update(mapping_state)
    n_latent = 2 * int(round(math.log2(resolution))) - 2
    for rec, where in ((g, "G_ema"), (synthesis, "G_ema.synthesis"), (mapping, "G_ema.mapping")):
        chk.equal(rec, where, "num_ws", n_latent, f"a {resolution} px rosinality generator has {n_latent} latents")
    used = {n for n in flatten_tensors(g) if n.endswith("resample_filter")} | {"mapping.w_avg"}
    used |= {n for n in flatten_tensors(g) if _maps_to_rosinality(n, n_mlp)}
    chk.unmapped(g, "G_ema", used)
    settings = {"z_dim": w_dim, "w_dim": w_dim, "img_resolution": resolution, "num_ws": n_latent,
                "mapping_layers": n_mlp, "channels": channels, "conv_clamp": chk.conv_clamp("G"),
                "num_fp16_res": fp16_blocks, "init_kwargs": _plain(g.init_kwargs)}
    return state, w_avg, settings


_G_LAYER_TENSORS = {"weight", "bias", "noise_strength", "noise_const", "affine.weight", "affine.bias"}


def _maps_to_rosinality(ada_name: str, n_mlp: int) -> bool:
    """Whether a G_ema tensor name is one the generator mapping above consumes (fc0..fc{n_mlp-1})."""
    parts = ada_name.split(".")
    if parts[0] == "mapping":
        return len(parts) == 3 and parts[1] in {f"fc{i}" for i in range(n_mlp)} and parts[2] in ("weight", "bias")
    if parts[0] != "synthesis" or len(parts) < 3:
        return False
    if parts[2:] == ["const"]:
        return parts[1] == "b4"
    return parts[2] in ("conv0", "conv1", "torgb") and ".".join(parts[3:]) in _G_LAYER_TENSORS


# ---------------------------------------------------------------------------------------------
# Discriminator: ada D -> rosinality d keys
# ---------------------------------------------------------------------------------------------

def _conv_layer(chk: _Checker, rec: PersistentRecord, where: str, activation: str, down: int,
                has_bias: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
    """ada Conv2dLayer -> (weight, bias) for our EqualConv2d (+ FusedLeakyReLU bias).

    Activated layers share D's conv_clamp (ada scales it by the layer's gain at run time, our
    ResBlock reproduces that); linear ones (the resnet skips) are never clamped.
    """
    chk.equal(rec, where, "activation", activation, f"the rosinality layer here is '{activation}'")
    chk.equal(rec, where, "down", down, "unexpected block layout")
    chk.equal(rec, where, "up", 1, "unexpected block layout")
    if activation == "linear":
        chk.no_clamp(rec, where)
    else:
        chk.same_clamp(rec, where, "D")
    if down > 1:
        chk.resample_filter(rec, where)
    expected_gain = SQRT2 if activation == "lrelu" else 1.0
    chk.equal(rec, where, "act_gain", expected_gain, "rosinality's activation gain differs")
    weight = chk.tensor(rec, "weight", where)
    our_scale = 1 / math.sqrt(weight.shape[1] * weight.shape[2] * weight.shape[3])
    weight = _rescaled(weight, float(rec.attr("weight_gain")) / our_scale)
    has = "bias" in rec.tensors()
    if has != has_bias:
        raise chk.fail(where, "bias", "present" if has else "absent", "unexpected block layout")
    return weight, chk.tensor(rec, "bias", where).clone() if has_bias else None


def _discriminator_state(chk: _Checker, d: PersistentRecord, resolution: int) -> tuple[dict, dict]:
    """ada D record -> (rosinality d state dict, {"d_conv_clamp", "d_num_fp16_res"})."""
    if d.class_name != "Discriminator":
        raise WeightsError(f"{ROLE}: {chk.source}: D is a {d.class_name}, expected Discriminator; {ACCEPTED}")
    chk.refuse_conditional(d, "D")
    chk.equal(d, "D", "c_dim", 0, "class-conditional discriminators (cmap) are not implemented")
    chk.equal(d, "D", "img_resolution", resolution, "D and G_ema must have the same resolution")
    chk.equal(d, "D", "img_channels", 3, "our discriminator reads RGB images")
    if "mapping" in d.children():
        raise chk.fail("D", "mapping", "present", "class-conditional discriminators are not implemented")
    down_kernel = make_blur_kernel(BLUR_TAPS)
    state: dict[str, torch.Tensor] = {}
    fp16_blocks = 0
    log2 = int(round(math.log2(resolution)))
    for i, res in enumerate(2 ** j for j in range(log2, 2, -1)):
        where = f"D.b{res}"
        block = chk.child(d, f"b{res}", "D", "DiscriminatorBlock")
        chk.equal(block, where, "architecture", "resnet", "rosinality's discriminator is residual")
        fp16_blocks += bool(block.attr("use_fp16", False))
        if i == 0:
            weight, bias = _conv_layer(chk, chk.child(block, "fromrgb", where), f"{where}.fromrgb", "lrelu", 1, True)
            state["convs.0.0.weight"], state["convs.0.1.bias"] = weight, bias
        elif "fromrgb" in block.children():
            raise chk.fail(where, "fromrgb", "present", "only the first block reads the image")
        prefix = f"convs.{i + 1}"
        w0, b0 = _conv_layer(chk, chk.child(block, "conv0", where), f"{where}.conv0", "lrelu", 1, True)
        w1, b1 = _conv_layer(chk, chk.child(block, "conv1", where), f"{where}.conv1", "lrelu", 2, True)
        ws, _ = _conv_layer(chk, chk.child(block, "skip", where), f"{where}.skip", "linear", 2, False)
        state.update({f"{prefix}.conv1.0.weight": w0, f"{prefix}.conv1.1.bias": b0,
                      f"{prefix}.conv2.0.kernel": down_kernel.clone(), f"{prefix}.conv2.1.weight": w1,
                      f"{prefix}.conv2.2.bias": b1, f"{prefix}.skip.0.kernel": down_kernel.clone(),
                      f"{prefix}.skip.1.weight": ws})
    state.update(_epilogue_state(chk, chk.child(d, "b4", "D", "DiscriminatorEpilogue")))
    used = {n for n in flatten_tensors(d) if n.endswith("resample_filter")}
    used |= {n for n in flatten_tensors(d) if n.split(".")[-1] in ("weight", "bias")
             and n.split(".")[1] in ("fromrgb", "conv0", "conv1", "skip", "conv", "fc", "out")
             and len(n.split(".")) == 3}
    chk.unmapped(d, "D", used)
    return state, {"d_conv_clamp": chk.conv_clamp("D"), "d_num_fp16_res": fp16_blocks}


def _epilogue_state(chk: _Checker, b4: PersistentRecord) -> dict[str, torch.Tensor]:
    where = "D.b4"
    chk.equal(b4, where, "architecture", "resnet", "rosinality's discriminator is residual")
    chk.equal(b4, where, "cmap_dim", 0, "class-conditional discriminators (cmap) are not implemented")
    if "fromrgb" in b4.children():
        raise chk.fail(where, "fromrgb", "present", "only the first block reads the image")
    mbstd = b4.children().get("mbstd")
    if mbstd is None:
        raise chk.fail(where, "mbstd_num_channels", 0, "rosinality always appends one stddev channel")
    chk.equal(mbstd, f"{where}.mbstd", "group_size", 4, "rosinality groups 4 samples")
    chk.equal(mbstd, f"{where}.mbstd", "num_channels", 1, "rosinality appends one stddev channel")
    w_conv, b_conv = _conv_layer(chk, chk.child(b4, "conv", where), f"{where}.conv", "lrelu", 1, True)
    w_fc, b_fc = _fully_connected(chk, chk.child(b4, "fc", where), f"{where}.fc", 1.0, "lrelu")
    w_out, b_out = _fully_connected(chk, chk.child(b4, "out", where), f"{where}.out", 1.0, "linear")
    if w_out.shape[0] != 1:
        raise chk.fail(f"{where}.out", "out_features", w_out.shape[0], "our discriminator outputs one logit")
    return {"final_conv.0.weight": w_conv, "final_conv.1.bias": b_conv,
            "final_linear.0.weight": w_fc, "final_linear.0.bias": b_fc,
            "final_linear.1.weight": w_out, "final_linear.1.bias": b_out}


# ---------------------------------------------------------------------------------------------
# Public API
# ---------------------------------------------------------------------------------------------

def _networks(top: Any, source: Path | str) -> tuple[PersistentRecord, PersistentRecord | None]:
    if not isinstance(top, dict) or not isinstance(top.get("G_ema"), PersistentRecord):
        found = sorted(map(str, top))[:6] if isinstance(top, dict) else type(top).__name__
        raise WeightsError(f"{ROLE}: {source} is not a stylegan2-ada network pickle: expected a dict with a "
                           f"'G_ema' network (and 'D'); found {found}. {HINT}")
    d = top.get("D")
    return top["G_ema"], d if isinstance(d, PersistentRecord) else None


def convert_network_records(top: Any, source: Path | str,
                            expected_resolution: int | None = None) -> tuple[StyleGAN2Weights, dict]:
    """Unpickled network dict (from read_network_pickle) -> (our networks, ada settings for the sidecar)."""
    g_rec, d_rec = _networks(top, source)
    chk = _Checker(source)
    g_state, w_avg, settings = _generator_state(chk, g_rec)
    d_state = None
    if d_rec is not None:
        d_state, d_settings = _discriminator_state(chk, d_rec, settings["img_resolution"])
        settings.update(d_settings)
    weights = build_from_state(g_state, d_state, w_avg, source, expected_resolution,
                               conv_clamp=settings["conv_clamp"], num_fp16_res=settings["num_fp16_res"],
                               d_conv_clamp=settings.get("d_conv_clamp"),
                               d_num_fp16_res=settings.get("d_num_fp16_res") or 0)
    if weights.generator.n_latent != settings["num_ws"]:  # build_from_state infers the layout again
        raise WeightsError(f"{ROLE}: {source}: converted generator has {weights.generator.n_latent} latents, "
                           f"ada had {settings['num_ws']}")
    return weights, settings


def read_nvidia_pickle(pkl_path: str | Path, expected_resolution: int | None = None) -> StyleGAN2Weights:
    """NVIDIA stylegan2-ada network pickle -> our Generator (from G_ema) and Discriminator (from D), eval mode.

    Never executes code from the pickle. Raises WeightsError for unsafe, unreadable or unsupported files.
    """
    path = require_file(pkl_path, ROLE, HINT)
    return convert_network_records(read_network_pickle(path), path, expected_resolution)[0]


def convert_nvidia_pickle(pkl_path: str | Path, out_path: str | Path) -> Path:
    """Convert an ada network pickle to `<out>.safetensors` + `<out>.json` (load with load_stylegan2).

    The JSON sidecar records the source file name, its sha256, the source format and ada's settings;
    conv_clamp / num_fp16_res (and d_*) are top-level entries, also kept in the safetensors header
    (see models.load.stylegan2).
    """
    pkl_path = require_file(pkl_path, ROLE, HINT)
    out_path = Path(out_path).expanduser()
    if out_path.suffix != ".safetensors":
        raise WeightsError(f"{ROLE}: output {out_path} must end with .safetensors (the loaders dispatch on it)")
    weights, settings = convert_network_records(read_network_pickle(pkl_path), pkl_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    extra = {"source_file": pkl_path.name, "source_sha256": file_sha256(pkl_path), "source_format": SOURCE_FORMAT,
             "source_settings": settings}
    return save_stylegan2_safetensors(weights, out_path, extra)


__all__ = ["PersistentRecord", "NetworkPickleReader", "read_network_pickle", "read_nvidia_pickle",
           "convert_nvidia_pickle", "convert_network_records", "flatten_tensors"]
