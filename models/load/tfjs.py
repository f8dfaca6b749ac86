"""Read TensorFlow.js weight files (`<name>-weights_manifest.json` + binary shards) into torch tensors.

A TF.js weights manifest is a JSON list of groups, each `{"paths": [shard files], "weights": [specs]}`.
The shards of one group are concatenated; the weights of the group follow each other in that byte
stream in manifest order. A spec is `{"name", "shape", "dtype"}` plus optionally
`"quantization": {"dtype": "uint8"|"uint16"|"float16", "scale", "min"}`; a quantised tensor is stored
as integers q and decoded as `q * scale + min` (computed in double precision and rounded once to
float32, exactly as TF.js's `decodeWeights` does, so ports can reach ~1e-7 parity).

Tensors keep the manifest's TF layouts (conv kernels HWIO, depthwise kernels HWC1, dense kernels
[in, out]); `tf_conv_to_torch`, `tf_depthwise_to_torch` and `tf_dense_to_torch` convert them.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import torch

from models.errors import WeightsError

# Bytes per stored element, by storage dtype (the quantisation dtype when present).
_STORED_ITEM_BYTES = {"float32": 4, "int32": 4, "float16": 2, "uint16": 2, "uint8": 1, "bool": 1}
_PLAIN_NUMPY_DTYPES = {"float32": "<f4", "int32": "<i4", "bool": "u1"}
_QUANTISED_NUMPY_DTYPES = {"uint8": "u1", "uint16": "<u2", "float16": "<f2"}


def read_tfjs_weights(manifest_path: Path) -> dict[str, torch.Tensor]:
    """All tensors of a TF.js weights manifest, by name, in the manifest's shapes.

    float32 (also dequantised ones) -> torch.float32, int32 -> torch.int32, bool -> torch.bool.
    Raises WeightsError naming the file and the problem (missing/unreadable manifest or shard,
    byte count mismatch, unknown dtype or quantisation, duplicate name).
    """
    manifest_path = Path(manifest_path)
    groups = _read_manifest_groups(manifest_path)
    tensors: dict[str, torch.Tensor] = {}
    for group_index, group in enumerate(groups):
        where = f"{manifest_path} (group {group_index})"
        data = _read_group_bytes(manifest_path, group, where)
        offset = 0
        for spec in group["weights"]:
            name, n_bytes = _spec_name(spec, where), _stored_byte_count(spec, where)
            if offset + n_bytes > len(data):
                raise WeightsError(
                    f"{where}: shards hold {len(data)} bytes but weight {name!r} needs bytes "
                    f"{offset}..{offset + n_bytes}; the .bin file is truncated or belongs to another "
                    "model - fetch the model files again"
                )
            if name in tensors:
                raise WeightsError(f"{where}: weight {name!r} appears twice in the manifest")
            tensors[name] = _decode_weight(spec, data[offset : offset + n_bytes], where)
            offset += n_bytes
        if offset != len(data):
            raise WeightsError(
                f"{where}: manifest describes {offset} bytes but the shards hold {len(data)}; "
                "the .bin file does not match this manifest - fetch the model files again"
            )
    return tensors


def tf_conv_to_torch(kernel: torch.Tensor) -> torch.Tensor:
    """TF conv kernel [kH, kW, in, out] (HWIO) -> torch Conv2d weight [out, in, kH, kW]."""
    if kernel.dim() != 4:
        raise WeightsError(f"expected a 4-d HWIO conv kernel, got shape {list(kernel.shape)}")
    return kernel.permute(3, 2, 0, 1).contiguous()


def tf_depthwise_to_torch(kernel: torch.Tensor) -> torch.Tensor:
    """TF depthwise kernel [kH, kW, C, multiplier] -> torch grouped Conv2d weight [C*mult, 1, kH, kW].

    TF orders the outputs channel-major (output c*mult + m comes from input c), like torch groups=C.
    """
    if kernel.dim() != 4:
        raise WeightsError(f"expected a 4-d HWCM depthwise kernel, got shape {list(kernel.shape)}")
    kh, kw, channels, multiplier = kernel.shape
    return kernel.reshape(kh, kw, channels * multiplier).permute(2, 0, 1).unsqueeze(1).contiguous()


def tf_dense_to_torch(kernel: torch.Tensor) -> torch.Tensor:
    """TF dense kernel [in, out] -> torch Linear weight [out, in]."""
    if kernel.dim() != 2:
        raise WeightsError(f"expected a 2-d [in, out] dense kernel, got shape {list(kernel.shape)}")
    return kernel.t().contiguous()


def _read_manifest_groups(manifest_path: Path) -> list[dict]:
    if not manifest_path.is_file():
        raise WeightsError(f"TF.js weights manifest not found: {manifest_path}")
    try:
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise WeightsError(f"{manifest_path}: not a readable JSON weights manifest ({err})") from err
    # A TF.js model.json nests the same list under "weightsManifest".
    if isinstance(manifest, dict) and "weightsManifest" in manifest:
        manifest = manifest["weightsManifest"]
    if not isinstance(manifest, list) or not all(
        isinstance(g, dict) and isinstance(g.get("paths"), list) and isinstance(g.get("weights"), list)
        for g in manifest
    ):
        raise WeightsError(
            f"{manifest_path}: expected a list of groups {{'paths': [...], 'weights': [...]}}"
        )
    return manifest


def _read_group_bytes(manifest_path: Path, group: dict, where: str) -> bytes:
    """The group's shard files, concatenated in manifest order."""
    chunks = []
    for relative in group["paths"]:
        shard = manifest_path.parent / str(relative)
        if not shard.is_file():
            raise WeightsError(
                f"{where}: weight shard {shard} is missing; it must sit next to the manifest"
            )
        try:
            chunks.append(shard.read_bytes())
        except OSError as err:
            raise WeightsError(f"{where}: cannot read weight shard {shard} ({err})") from err
    return b"".join(chunks)


def _spec_name(spec: dict, where: str) -> str:
    name = spec.get("name") if isinstance(spec, dict) else None
    if not isinstance(name, str):
        raise WeightsError(f"{where}: weight entry without a name: {spec!r}")
    return name


def _element_count(spec: dict, where: str) -> int:
    shape = spec.get("shape")
    if not isinstance(shape, list) or not all(isinstance(d, int) and d >= 0 for d in shape):
        raise WeightsError(f"{where}: weight {spec['name']!r} has an invalid shape {shape!r}")
    return math.prod(shape)


def _storage_dtype(spec: dict, where: str) -> str:
    quantization = spec.get("quantization")
    stored = quantization.get("dtype") if isinstance(quantization, dict) else spec.get("dtype")
    if stored not in _STORED_ITEM_BYTES:
        kind = "quantization dtype" if isinstance(quantization, dict) else "dtype"
        raise WeightsError(
            f"{where}: weight {spec['name']!r} has unknown {kind} {stored!r}; supported: "
            f"{', '.join(sorted(_STORED_ITEM_BYTES))}"
        )
    return stored


def _stored_byte_count(spec: dict, where: str) -> int:
    return _element_count(spec, where) * _STORED_ITEM_BYTES[_storage_dtype(spec, where)]


def _decode_weight(spec: dict, raw: bytes, where: str) -> torch.Tensor:
    name, shape, dtype = spec["name"], spec["shape"], spec.get("dtype")
    quantization = spec.get("quantization")
    if isinstance(quantization, dict):
        values = _dequantise(name, dtype, quantization, raw, where)
    elif dtype in _PLAIN_NUMPY_DTYPES:
        values = np.frombuffer(raw, dtype=_PLAIN_NUMPY_DTYPES[dtype])
        values = values.astype(np.bool_) if dtype == "bool" else values
    else:
        raise WeightsError(f"{where}: weight {name!r} has unsupported dtype {dtype!r}")
    return torch.from_numpy(np.array(values).reshape(shape))


def _dequantise(name: str, dtype: str, quantization: dict, raw: bytes, where: str) -> np.ndarray:
    stored = quantization["dtype"]
    if stored not in _QUANTISED_NUMPY_DTYPES:
        raise WeightsError(
            f"{where}: weight {name!r} has unknown quantization dtype {stored!r}; "
            "supported: uint8, uint16, float16"
        )
    q = np.frombuffer(raw, dtype=_QUANTISED_NUMPY_DTYPES[stored])
    if stored == "float16":
        if dtype != "float32":
            raise WeightsError(f"{where}: float16-quantised weight {name!r} must be float32, not {dtype!r}")
        return q.astype(np.float32)
    try:
        scale, minimum = float(quantization["scale"]), float(quantization["min"])
    except (KeyError, TypeError, ValueError) as err:
        raise WeightsError(
            f"{where}: {stored}-quantised weight {name!r} needs numeric 'scale' and 'min'"
        ) from err
    # Double precision then one rounding, like TF.js (JS numbers are doubles).
    exact = q.astype(np.float64) * scale + minimum
    if dtype == "float32":
        return exact.astype(np.float32)
    if dtype == "int32":
        return np.floor(exact + 0.5).astype(np.int32)  # JS Math.round: halves go up
    raise WeightsError(f"{where}: quantised weight {name!r} has unsupported dtype {dtype!r}")
