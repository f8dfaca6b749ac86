"""Load @vladmandic/human 3.3.6's TF.js graph models (facemesh, faceres, blazeface) into the torch ports.

Files (npm `@vladmandic/human@3.3.6`, folder package/models/, as `hfld zoo fetch starter` extracts
them to $HFLD_CACHE/starter/human/models/): `<name>.json` (format "graph-model": a GraphDef in
`modelTopology` plus `weightsManifest`) and its one shard `<name>.bin`. Every loader takes that folder.

The tensors are read (and float16-dequantised) by models.load.tfjs.read_tfjs_weights. Mapping is
strict, per model:
- a name table gives, for every torch parameter, the one graph constant it comes from; every float
  constant of the file must be used exactly once and have the parameter's shape;
- the structural int32/scalar constants (Pad paddings, Reshape shapes, ReLU6 bounds, Mean axes) must
  hold exactly the values the torch module hard-codes;
- the GraphDef must wire each kernel into the op the torch layer implements (depthwise vs plain conv,
  stride, 'SAME' vs 'VALID'; dense layers into MatMul; PReLU slopes into Prelu) and take an input of
  the net's size.
Otherwise WeightsError names the role, the file and the first few problems.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from models.errors import WeightsError
from models.faceapi_age_gender import Conv2dSame
from models.human_blazeface import (BACKBONE as BLAZEFACE_BACKBONE, BLAZEFACE_INPUT_SIZE, DEFAULT_IOU_THRESHOLD,
                                    DEFAULT_MAX_FACES, DEFAULT_MIN_SCORE, BlazeFaceDetector, BlazeFaceNet)
from models.human_facemesh import FACEMESH_INPUT_SIZE, FaceMeshNet, HumanFaceMesh
from models.human_faceres import BLOCKS as FACERES_BLOCKS, FACERES_INPUT_SIZE, FaceResNet, HumanFaceRes
from models.load.common import load_state_strict, read_json, require_file
from models.load.tfjs import read_tfjs_weights, tf_conv_to_torch, tf_dense_to_torch, tf_depthwise_to_torch

FACEMESH_ROLE = "landmark judge (human facemesh)"
FACERES_ROLE = "attribute judge (human faceres)"
BLAZEFACE_ROLE = "face detector (human blazeface)"
FACEMESH_MODEL, FACERES_MODEL, BLAZEFACE_MODEL = "facemesh", "faceres", "blazeface"
FETCH_HINT = ("run `hfld zoo fetch starter` (it puts @vladmandic/human 3.3.6's models/ files under "
              "$HFLD_CACHE/starter/human/models/)")

# Framing for the judges: black border added on every side, as a fraction of the image side (a
# negative margin crops). human crops a face from the BlazeFace box enlarged 1.4x and squared; on 64
# generated starter faces (seed 1) that square is 1.02x the image side (median; quartiles 0.95, 1.12),
# centred 0.02 right of and 0.09 below the image centre, so the starter's 64x64 faces are fed whole.
# Images framed more loosely (e.g. FFHQ-aligned) want a negative margin.
DEFAULT_JUDGE_MARGIN = 0.0

Converter = Callable[[torch.Tensor], torch.Tensor]
NameTable = dict[str, tuple[str, Converter]]  # torch state-dict key -> (graph constant, layout converter)
Constants = dict[str, object]  # structural graph constant -> the value the torch module hard-codes


def human_models_dir(cache: str | Path) -> Path:
    """$HFLD_CACHE -> the folder holding human's model files (<cache>/starter/human/models)."""
    return Path(cache).expanduser() / "starter" / "human" / "models"


# ---------------------------------------------------------------------------------------------
# Reading a graph model
# ---------------------------------------------------------------------------------------------

def _same(t: torch.Tensor) -> torch.Tensor:
    return t


def _prelu_slopes(t: torch.Tensor) -> torch.Tensor:
    """Prelu alpha [1, 1, C] (broadcast over NHWC) -> nn.PReLU weight [C]."""
    if t.dim() != 3 or t.shape[:2] != (1, 1):
        raise WeightsError(f"expected PReLU slopes [1, 1, C], got shape {list(t.shape)}")
    return t.reshape(-1)


def read_graph_model(models_dir: str | Path, model_name: str, role: str) -> tuple[Path, dict, dict[str, torch.Tensor]]:
    """(path of <models_dir>/<model_name>.json, its JSON, its tensors by graph-constant name)."""
    path = require_file(Path(models_dir).expanduser() / f"{model_name}.json", role, FETCH_HINT)
    model = read_json(path, role)
    if not isinstance(model, dict) or model.get("format") != "graph-model" or not isinstance(
            model.get("modelTopology", {}).get("node"), list):
        raise WeightsError(f"{role}: {path} is not a TF.js graph model (expected format 'graph-model' with a "
                           f"GraphDef in modelTopology.node). {FETCH_HINT}")
    try:
        tensors = read_tfjs_weights(path)
    except WeightsError as err:
        raise WeightsError(f"{role}: {err}. {FETCH_HINT}") from err
    return path, model, tensors


def _attr_ints(node: dict, name: str) -> list[int]:
    return [int(v) for v in node.get("attr", {}).get(name, {}).get("list", {}).get("i", [])]


def _attr_string(node: dict, name: str) -> str:
    import base64
    raw = node.get("attr", {}).get(name, {}).get("s")
    return base64.b64decode(raw).decode() if raw else ""


def graph_consumers(model: dict) -> dict[str, list[dict]]:
    """Graph constant / node name -> the nodes that take it as an input."""
    consumers: dict[str, list[dict]] = defaultdict(list)
    for node in model["modelTopology"]["node"]:
        for name in node.get("input", []):
            consumers[name.split(":")[0].lstrip("^")].append(node)
    return consumers


def _input_size(model: dict) -> int | None:
    for node in model["modelTopology"]["node"]:
        if node.get("op") == "Placeholder":
            dims = node.get("attr", {}).get("shape", {}).get("shape", {}).get("dim", [])
            if len(dims) == 4:
                return int(dims[1].get("size", -1))
    return None


def _wiring_problem(module: nn.Module, nodes: list[dict]) -> str | None:
    """Why the graph nodes using a kernel do not implement `module` (None when one of them does)."""
    if isinstance(module, nn.Conv2d):
        depthwise = module.groups > 1
        ops = {"DepthwiseConv2dNative"} if depthwise else {"Conv2D", "_FusedConv2D"}
        padding = None if module.kernel_size == (1, 1) else ("SAME" if isinstance(module, Conv2dSame) else "VALID")
        want = f"{'/'.join(sorted(ops))} stride {module.stride[0]}" + (f" {padding}" if padding else "")
        for n in nodes:
            strides = _attr_ints(n, "strides")
            if (n.get("op") in ops and len(strides) == 4 and strides[1] == strides[2] == module.stride[0]
                    and (padding is None or _attr_string(n, "padding") == padding)):
                return None
    elif isinstance(module, nn.Linear):
        want = "MatMul/_FusedMatMul"
        if any(n.get("op") in ("MatMul", "_FusedMatMul") for n in nodes):
            return None
    elif isinstance(module, nn.PReLU):
        want = "Prelu"
        if any(n.get("op") in ("Prelu", "_FusedConv2D") for n in nodes):
            return None
    else:
        return None
    got = ", ".join(f"{n.get('op')} strides {_attr_ints(n, 'strides')} {_attr_string(n, 'padding')}".strip()
                    for n in nodes) or "no node"
    return f"feeds {got}, expected {want}"


def _first(items: list[str], limit: int = 5) -> str:
    more = f" (+{len(items) - limit} more)" if len(items) > limit else ""
    return ", ".join(items[:limit]) + more


def graph_state_dict(net: nn.Module, model: dict, tensors: dict[str, torch.Tensor], table: NameTable,
                     constants: Constants, input_size: int, role: str, source: Path) -> dict[str, torch.Tensor]:
    """The state dict of `net` from a graph model's tensors via `table`, after all strictness checks."""
    names = [tf_name for tf_name, _ in table.values()] + list(constants)
    assert len(set(names)) == len(names), "a graph constant is mapped twice"
    problems = []
    absent = sorted(n for n in names if n not in tensors)
    unused = sorted(set(tensors) - set(names))
    if absent:
        problems.append(f"missing graph weights: {_first(absent)}")
    if unused:
        problems.append(f"unexpected graph weights: {_first(unused)}")
    wrong_values = [f"{n} = {tensors[n].tolist()} (expected {value})" for n, value in constants.items()
                    if n in tensors and tensors[n].tolist() != value]
    if wrong_values:
        problems.append(f"structural constants differ: {_first(wrong_values, 3)}")
    size = _input_size(model)
    if size != input_size:
        problems.append(f"graph input is {size}x{size}, the net takes {input_size}x{input_size}")
    consumers = graph_consumers(model)
    miswired = []
    for key, (tf_name, _) in table.items():
        module_path, _, leaf = key.rpartition(".")
        if leaf == "weight" and tf_name in tensors:
            why = _wiring_problem(net.get_submodule(module_path), consumers.get(tf_name, []))
            if why:
                miswired.append(f"{tf_name} {why} (for {key})")
    if miswired:
        problems.append(f"graph wiring differs: {_first(miswired, 3)}")
    if problems:
        raise WeightsError(f"{role}: {source} does not fit the model: {'; '.join(problems)}. "
                           f"Is it the right @vladmandic/human 3.3.6 model file? {FETCH_HINT}")
    state = {}
    for key, (tf_name, convert) in table.items():
        try:
            state[key] = convert(tensors[tf_name]).to(torch.float32)
        except WeightsError as err:
            raise WeightsError(f"{role}: {source}: graph weight {tf_name!r}: {err}") from err
    return state


def _load_net(net: nn.Module, models_dir: str | Path, model_name: str, role: str, table: NameTable,
              constants: Constants, input_size: int) -> nn.Module:
    path, model, tensors = read_graph_model(models_dir, model_name, role)
    state = graph_state_dict(net, model, tensors, table, constants, input_size, role, path)
    load_state_strict(net, state, role, path)
    return net.eval()


def _frozen(module: nn.Module) -> nn.Module:
    module.eval()
    module.requires_grad_(False)  # pretrained judge: gradients flow to the image only
    return module


# ---------------------------------------------------------------------------------------------
# facemesh
# ---------------------------------------------------------------------------------------------

_FM = "StatefulPartitionedCall/model_1/"


def _fm_conv(key: str, n: int) -> NameTable:
    """A 1x1/3x3 conv with folded batch norm: conv2d_<n>/Conv2D_weights, conv2d_<n>/Conv2D_bn_offset."""
    return {f"{key}.weight": (f"{_FM}conv2d_{n}/Conv2D_weights", tf_conv_to_torch),
            f"{key}.bias": (f"{_FM}conv2d_{n}/Conv2D_bn_offset", _same)}


def _fm_block(key: str, depthwise: int, conv: int, prelu: int) -> NameTable:
    return {f"{key}.depthwise.weight": (f"{_FM}depthwise_conv2d_{depthwise}/depthwise/ReadVariableOp",
                                        tf_depthwise_to_torch),
            **_fm_conv(f"{key}.pointwise", conv),
            f"{key}.act.weight": (f"{_FM}p_re_lu_{prelu}/Neg", _prelu_slopes)}


def _fm_head(key: str, blocks: list[tuple[int, int, int]], project: tuple[int, int],
             refine: tuple[int, int, int], out: int) -> NameTable:
    """blocks: (depthwise, conv, prelu) numbers of the /2 block then the plain ones."""
    table = _fm_block(f"{key}.down", *blocks[0])
    for i, numbers in enumerate(blocks[1:]):
        table.update(_fm_block(f"{key}.blocks.{i}", *numbers))
    table.update(_fm_conv(f"{key}.project", project[0]))
    table[f"{key}.project_act.weight"] = (f"{_FM}p_re_lu_{project[1]}/Neg", _prelu_slopes)
    table.update(_fm_block(f"{key}.refine", *refine))
    table[f"{key}.out.weight"] = (f"{_FM}conv2d_{out}/Conv2D/ReadVariableOp", tf_conv_to_torch)
    table[f"{key}.out.bias"] = (f"{_FM}conv2d_{out}/BiasAdd/ReadVariableOp", _same)
    return table


def facemesh_name_table() -> NameTable:
    """FaceMeshNet state-dict key -> facemesh.json graph constant (Keras layer numbers of the graph)."""
    table = {**_fm_conv("stem", 1), "stem_act.weight": (f"{_FM}p_re_lu_1/Neg", _prelu_slopes)}
    for i in range(14):  # backbone block i: depthwise_conv2d_{i+1}, conv2d_{i+2}, p_re_lu_{i+2}
        table.update(_fm_block(f"backbone.{i}", i + 1, i + 2, i + 2))
    table.update(_fm_head("mesh_head", [(15, 16, 16), (16, 17, 17), (17, 18, 18)], (19, 19), (18, 20, 20), 21))
    table.update(_fm_head("contour_head", [(19, 22, 21), (20, 23, 22), (21, 24, 23)], (25, 24), (22, 26, 25), 27))
    table.update(_fm_head("faceflag_head", [(23, 28, 26)], (29, 27), (24, 30, 28), 31))
    return table


def facemesh_constants() -> Constants:
    pad = lambda extra: [[0, 0], [0, 0], [0, 0], [0, extra]]  # noqa: E731
    return {f"{_FM}channel_padding_1/Pad/paddings": pad(16), f"{_FM}channel_padding_2/Pad/paddings": pad(32),
            f"{_FM}channel_padding_3/Pad/paddings": pad(64), f"{_FM}output_mesh/Const": [-1, 1404],
            f"{_FM}output_contours/Const": [-1, 266], f"{_FM}output_faceflag/Const": [-1, 1]}


def load_facemesh_net(models_dir: str | Path) -> FaceMeshNet:
    """FaceMeshNet (eval mode) from `<models_dir>/facemesh.json` + facemesh.bin."""
    return _load_net(FaceMeshNet(), models_dir, FACEMESH_MODEL, FACEMESH_ROLE, facemesh_name_table(),
                     facemesh_constants(), FACEMESH_INPUT_SIZE)


def load_human_facemesh(models_dir: str | Path, margin: float = DEFAULT_JUDGE_MARGIN) -> HumanFaceMesh:
    """The landmark judge (468 MediaPipe points) from human's facemesh in `models_dir`, frozen, eval mode."""
    return _frozen(HumanFaceMesh(load_facemesh_net(models_dir), margin=margin))


# ---------------------------------------------------------------------------------------------
# faceres
# ---------------------------------------------------------------------------------------------

def faceres_name_table() -> NameTable:
    """FaceResNet state-dict key -> faceres.json graph constant (Keras MobileNet layer names)."""
    table = {"stem.weight": ("conv1/convolution/merged_input", tf_conv_to_torch),
             "stem.bias": ("conv1_bn/batchnorm_1/sub", _same)}
    for i in range(len(FACERES_BLOCKS)):
        n, key = i + 1, f"blocks.{i}"
        table.update({
            f"{key}.depthwise.weight": (f"conv_dw_{n}/depthwise_kernel", tf_depthwise_to_torch),
            f"{key}.dw_scale": (f"conv_dw_{n}_bn/batchnorm_1/mul", _same),
            f"{key}.dw_offset": (f"conv_dw_{n}_bn/batchnorm_1/sub", _same),
            f"{key}.pointwise.weight": (f"conv_pw_{n}/convolution/merged_input", tf_conv_to_torch),
            f"{key}.pointwise.bias": (f"conv_pw_{n}_bn/batchnorm_1/sub", _same),
        })
    for head, tf_head in (("feats", "feats"), ("gender", "gender_pred"), ("age", "age_pred")):
        table[f"{head}.weight"] = (f"{tf_head}/kernel", tf_dense_to_torch)
        table[f"{head}.bias"] = (f"{tf_head}/bias", _same)
    return table


def faceres_constants() -> Constants:
    constants: Constants = {"global_pooling/Mean/reduction_indices": [1, 2]}
    layers = ["conv1"] + [f"conv_{kind}_{n}" for n in range(1, len(FACERES_BLOCKS) + 1) for kind in ("dw", "pw")]
    for layer in layers:  # ReLU6 = Relu -> Minimum(<layer>_relu/Cast) -> Maximum(<layer>_relu/Const_1)
        constants[f"{layer}_relu/Cast"] = 6.0
        constants[f"{layer}_relu/Const_1"] = 0.0
    return constants


def load_faceres_net(models_dir: str | Path) -> FaceResNet:
    """FaceResNet (eval mode) from `<models_dir>/faceres.json` + faceres.bin."""
    return _load_net(FaceResNet(), models_dir, FACERES_MODEL, FACERES_ROLE, faceres_name_table(),
                     faceres_constants(), FACERES_INPUT_SIZE)


def load_human_faceres(models_dir: str | Path, margin: float = DEFAULT_JUDGE_MARGIN, young_age: float = 30.0,
                       temperature: float = 5.0) -> HumanFaceRes:
    """The attribute judge ("Male", "Young") from human's faceres in `models_dir`, frozen, eval mode."""
    return _frozen(HumanFaceRes(load_faceres_net(models_dir), margin=margin, young_age=young_age,
                                temperature=temperature))


# ---------------------------------------------------------------------------------------------
# blazeface
# ---------------------------------------------------------------------------------------------

_BF = "StatefulPartitionedCall/functional_1/"


def blazeface_name_table() -> NameTable:
    """BlazeFaceNet state-dict key -> blazeface.json graph constant.

    The converted graph names its constants unknown, unknown_0, unknown_1, ... in layer order: the
    stem (unknown, unknown_0), then per BlazeBlock i a depthwise kernel unknown_{4i+1}, a 1x1 kernel
    unknown_{4i+3} and its bias unknown_{4i+4} (no depthwise biases), the /2 step without shortcut
    (unknown_125/127/128) and the four heads (unknown_129 ... unknown_136); read from the graph nodes.
    """
    u = lambda n: f"unknown_{n}"  # noqa: E731
    table = {"stem.weight": ("unknown", tf_conv_to_torch), "stem.bias": ("unknown_0", _same)}
    for i in range(len(BLAZEFACE_BACKBONE)):
        table.update({f"backbone.{i}.depthwise.weight": (u(4 * i + 1), tf_depthwise_to_torch),
                      f"backbone.{i}.pointwise.weight": (u(4 * i + 3), tf_conv_to_torch),
                      f"backbone.{i}.pointwise.bias": (u(4 * i + 4), _same)})
    table.update({"down.depthwise.weight": (u(125), tf_depthwise_to_torch),
                  "down.pointwise.weight": (u(127), tf_conv_to_torch), "down.pointwise.bias": (u(128), _same)})
    for head, n in (("boxes8", 129), ("boxes16", 131), ("scores8", 133), ("scores16", 135)):
        table[f"{head}.weight"] = (u(n), tf_conv_to_torch)
        table[f"{head}.bias"] = (u(n + 1), _same)
    return table


def blazeface_constants() -> Constants:
    pad = lambda extra: [[0, 0], [0, 0], [0, 0], [0, extra]]  # noqa: E731
    return {f"{_BF}tf_op_layer_Pad/Pad/paddings": pad(24), f"{_BF}tf_op_layer_Pad_1/Pad_1/paddings": pad(48),
            f"{_BF}tf_op_layer_classificators_1/classificators_1/shape": [1, 512, 1],
            f"{_BF}tf_op_layer_regressors_1/regressors_1/shape": [1, 512, 16],
            f"{_BF}tf_op_layer_classificators_2/classificators_2/shape": [1, 384, 1],
            f"{_BF}tf_op_layer_regressors_2/regressors_2/shape": [1, 384, 16]}


def load_blazeface_net(models_dir: str | Path) -> BlazeFaceNet:
    """BlazeFaceNet (eval mode) from `<models_dir>/blazeface.json` + blazeface.bin."""
    return _load_net(BlazeFaceNet(), models_dir, BLAZEFACE_MODEL, BLAZEFACE_ROLE, blazeface_name_table(),
                     blazeface_constants(), BLAZEFACE_INPUT_SIZE)


def load_human_blazeface(models_dir: str | Path, max_faces: int = DEFAULT_MAX_FACES,
                         iou_threshold: float = DEFAULT_IOU_THRESHOLD,
                         min_score: float = DEFAULT_MIN_SCORE) -> BlazeFaceDetector:
    """The face detector from human's blazeface in `models_dir`, frozen, eval mode."""
    return _frozen(BlazeFaceDetector(load_blazeface_net(models_dir), max_faces=max_faces,
                                     iou_threshold=iou_threshold, min_score=min_score))
