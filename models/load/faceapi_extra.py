"""Load face-api.js's age/gender and face-recognition TF.js weights into the torch ports.

Files (the npm package `@vladmandic/face-api@1.7.15`, folder model/, as `hfld zoo fetch starter`
extracts them to $HFLD_CACHE/starter/face_api/model/):
    age_gender_model-weights_manifest.json + age_gender_model.bin
    face_recognition_model-weights_manifest.json + face_recognition_model.bin

Mapping is strict: every torch parameter comes from exactly one named TF.js tensor, and every
TF.js tensor in the file must be used; otherwise WeightsError lists the first few problems.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import torch
from torch import nn

from models.errors import WeightsError
from models.faceapi_age_gender import AgeGenderNet, FaceApiAgeGender
from models.faceapi_recognition import FaceApiDescriptor, FaceRecognitionNet
from models.load.common import load_state_strict, require_file
from models.load.tfjs import read_tfjs_weights, tf_conv_to_torch, tf_dense_to_torch, tf_depthwise_to_torch

AGE_GENDER_ROLE = "attribute regressor (face-api age/gender)"
RECOGNITION_ROLE = "perceptual (face-api descriptor)"
AGE_GENDER_MODEL = "age_gender_model"
RECOGNITION_MODEL = "face_recognition_model"
FETCH_HINT = "run `hfld zoo fetch starter` (or point the preset at face-api's model/ folder)"

Converter = Callable[[torch.Tensor], torch.Tensor]
NameTable = dict[str, tuple[str, Converter]]  # torch key -> (TF.js name, layout converter)


def _same(t: torch.Tensor) -> torch.Tensor:
    return t


def _conv(torch_prefix: str, tf_prefix: str, weight: str = "filters", bias: str | None = "bias") -> NameTable:
    table = {f"{torch_prefix}.weight": (f"{tf_prefix}/{weight}", tf_conv_to_torch)}
    if bias is not None:
        table[f"{torch_prefix}.bias"] = (f"{tf_prefix}/{bias}", _same)
    return table


def _separable(torch_prefix: str, tf_prefix: str) -> NameTable:
    return {
        f"{torch_prefix}.depthwise.weight": (f"{tf_prefix}/depthwise_filter", tf_depthwise_to_torch),
        f"{torch_prefix}.pointwise.weight": (f"{tf_prefix}/pointwise_filter", tf_conv_to_torch),
        f"{torch_prefix}.bias": (f"{tf_prefix}/bias", _same),
    }


def _reduction_block(torch_prefix: str, tf_prefix: str) -> NameTable:
    return {
        **_separable(f"{torch_prefix}.separable_conv0", f"{tf_prefix}/separable_conv0"),
        **_separable(f"{torch_prefix}.separable_conv1", f"{tf_prefix}/separable_conv1"),
        **_conv(f"{torch_prefix}.expansion_conv", f"{tf_prefix}/expansion_conv"),
    }


def age_gender_name_table(num_main_blocks: int = 2) -> NameTable:
    """AgeGenderNet state-dict key -> face-api TF.js weight name (TinyXception + fc heads)."""
    table = {
        **_conv("features.conv_in", "entry_flow/conv_in"),
        **_reduction_block("features.reduction_block_0", "entry_flow/reduction_block_0"),
        **_reduction_block("features.reduction_block_1", "entry_flow/reduction_block_1"),
        **_reduction_block("features.exit_reduction_block", "exit_flow/reduction_block"),
        **_separable("features.exit_separable_conv", "exit_flow/separable_conv"),
    }
    for i in range(num_main_blocks):
        for j in range(3):
            table.update(_separable(f"features.main_blocks.{i}.separable_conv{j}",
                                    f"middle_flow/main_block_{i}/separable_conv{j}"))
    for head in ("age", "gender"):
        table[f"fc_{head}.weight"] = (f"fc/{head}/weights", tf_dense_to_torch)
        table[f"fc_{head}.bias"] = (f"fc/{head}/bias", _same)
    return table


def _conv_layer(prefix: str) -> NameTable:
    """A recognition ConvLayer: torch `<p>.conv`, `<p>.scale` <- TF `<p>/conv/*`, `<p>/scale/*`."""
    tf_prefix = prefix.replace(".", "/")
    return {
        **_conv(f"{prefix}.conv", f"{tf_prefix}/conv"),
        f"{prefix}.scale.weight": (f"{tf_prefix}/scale/weights", _same),
        f"{prefix}.scale.bias": (f"{tf_prefix}/scale/biases", _same),
    }


def recognition_name_table(net: FaceRecognitionNet) -> NameTable:
    """FaceRecognitionNet state-dict key -> face-api TF.js weight name (names mirror face-api's)."""
    table = _conv_layer("conv32_down")
    for name, _ in net._blocks():
        table.update(_conv_layer(f"{name}.conv1"))
        table.update(_conv_layer(f"{name}.conv2"))
    table["fc.weight"] = ("fc", tf_dense_to_torch)
    return table


def _read_model(model_dir: str | Path, model_name: str, role: str) -> tuple[Path, dict[str, torch.Tensor]]:
    model_dir = Path(model_dir).expanduser()
    manifest = require_file(model_dir / f"{model_name}-weights_manifest.json", role, FETCH_HINT)
    require_file(model_dir / f"{model_name}.bin", role, FETCH_HINT)
    try:
        return manifest, read_tfjs_weights(manifest)
    except WeightsError as err:
        raise WeightsError(f"{role}: {err}. {FETCH_HINT}") from err


def _first(items: list[str], limit: int = 5) -> str:
    more = f" (+{len(items) - limit} more)" if len(items) > limit else ""
    return ", ".join(items[:limit]) + more


def map_tfjs_state(tensors: dict[str, torch.Tensor], table: NameTable, role: str, source: Path) -> dict[str, torch.Tensor]:
    """Build a torch state dict from TF.js tensors via `table`; every TF.js tensor must be used."""
    absent = sorted({tf_name for tf_name, _ in table.values() if tf_name not in tensors})
    unused = sorted(set(tensors) - {tf_name for tf_name, _ in table.values()})
    problems = []
    if absent:
        problems.append(f"missing TF.js weights: {_first(absent)}")
    if unused:
        problems.append(f"unexpected TF.js weights: {_first(unused)}")
    if problems:
        raise WeightsError(f"{role}: {source} does not fit the model: {'; '.join(problems)}. "
                           f"Is it the right face-api model file? {FETCH_HINT}")
    state = {}
    for key, (tf_name, convert) in table.items():
        try:
            state[key] = convert(tensors[tf_name]).to(torch.float32)
        except WeightsError as err:
            raise WeightsError(f"{role}: {source}: weight {tf_name!r}: {err}") from err
    return state


def _frozen(module: nn.Module) -> nn.Module:
    module.eval()
    module.requires_grad_(False)  # pretrained judge: losses differentiate w.r.t. the image only
    return module


def load_faceapi_age_gender(model_dir: str | Path, young_age: float = 30.0,
                            temperature: float = 5.0) -> FaceApiAgeGender:
    """The AttributeRegressor ("Male", "Young") from face-api's age_gender_model in `model_dir`.

    The returned wrapper is in eval mode with frozen parameters; `.net` is the pure AgeGenderNet.
    """
    manifest, tensors = _read_model(model_dir, AGE_GENDER_MODEL, AGE_GENDER_ROLE)
    net = AgeGenderNet()
    state = map_tfjs_state(tensors, age_gender_name_table(len(net.features.main_blocks)), AGE_GENDER_ROLE, manifest)
    load_state_strict(net, state, AGE_GENDER_ROLE, manifest)
    return _frozen(FaceApiAgeGender(net, young_age=young_age, temperature=temperature))


def load_faceapi_recognition(model_dir: str | Path) -> FaceApiDescriptor:
    """The PerceptualModel (features + 128-d descriptor) from face-api's face_recognition_model.

    The returned wrapper is in eval mode with frozen parameters; `.net` is the pure FaceRecognitionNet.
    """
    manifest, tensors = _read_model(model_dir, RECOGNITION_MODEL, RECOGNITION_ROLE)
    net = FaceRecognitionNet()
    state = map_tfjs_state(tensors, recognition_name_table(net), RECOGNITION_ROLE, manifest)
    load_state_strict(net, state, RECOGNITION_ROLE, manifest)
    return _frozen(FaceApiDescriptor(net))
