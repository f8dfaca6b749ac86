"""Saving and loading the direction matrix T (and the trainer state needed to resume).

Format: `<name>.safetensors` holds tensors ("T", and for training checkpoints "optim.exp_avg",
"optim.exp_avg_sq", "optim.step"); `<name>.json` beside it holds plain metadata (format, version,
attribute names, L, w_dim, layer mask, preset, lambdas, step, resolved config). Both are written
atomically (temp file + rename), so an interrupted save never leaves a half-written checkpoint.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

import torch

from pipeline.core.io import atomic_write_bytes

FORMAT = "hfld-directions"
FORMAT_VERSION = 1
DIRECTIONS_ARTIFACT = "directions"   # MLflow artifact folder of a train run holding T (.safetensors + .json)


class CheckpointError(ValueError):
    """A directions/checkpoint file is missing, corrupt, or does not fit the run."""


@dataclass
class DirectionsFile:
    T: torch.Tensor                      # [L, w_dim, N]
    meta: dict
    optimizer: dict = field(default_factory=dict)  # exp_avg / exp_avg_sq / step tensors, if saved

    @property
    def attributes(self) -> list[str]:
        return list(self.meta["attributes"])


def sidecar(path: Path) -> Path:
    return path.with_suffix(".json")


def save_directions(path: str | Path, T: torch.Tensor, meta: dict, optimizer_state: dict | None = None) -> Path:
    """Write T [L, w_dim, N] (+ optimizer tensors) and metadata; returns the safetensors path."""
    from safetensors.torch import save

    path = Path(path)
    assert T.ndim == 3, f"T must be [L, w_dim, N], got {list(T.shape)}"
    if len(meta.get("attributes", ())) != T.shape[2]:
        raise CheckpointError(f"metadata names {len(meta.get('attributes', ()))} attributes but T has {T.shape[2]}")
    tensors = {"T": T.detach().float().cpu().contiguous()}
    for k, v in (optimizer_state or {}).items():
        tensors[f"optim.{k}"] = v.detach().cpu().contiguous()
    blob = save(tensors, metadata={"format": FORMAT})
    full_meta = {"format": FORMAT, "format_version": FORMAT_VERSION, "n_latent": T.shape[0], "w_dim": T.shape[1],
                 "sha256": hashlib.sha256(blob).hexdigest(), **meta}
    # The JSON goes first: a reader finds tensors only once their metadata is in place.
    atomic_write_bytes(sidecar(path), json.dumps(full_meta, indent=1, sort_keys=True, default=str).encode())
    atomic_write_bytes(path, blob)
    return path


def read_meta(path: str | Path) -> dict:
    """The metadata (.json beside it) of a directions/checkpoint file, without reading its tensors."""
    meta_path = sidecar(Path(path).expanduser())
    try:
        meta = json.loads(meta_path.read_text())
    except FileNotFoundError:
        raise CheckpointError(f"{path}: its metadata file {meta_path.name} is missing; keep the .json beside it") \
            from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{meta_path}: not valid JSON ({e})") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not a {FORMAT!r} file")
    return meta


def load_directions(path: str | Path) -> DirectionsFile:
    """Read and validate a directions file written by `save_directions`."""
    from safetensors import SafetensorError
    from safetensors.torch import load

    path = Path(path).expanduser()
    if path.suffix == ".json" and path.with_suffix(".safetensors").is_file():
        path = path.with_suffix(".safetensors")      # the metadata file was named: read the T beside it
    if not path.is_file():
        raise CheckpointError(f"directions file not found: {path}")
    meta_path = sidecar(path)
    if not meta_path.is_file():
        raise CheckpointError(f"{path}: its metadata file {meta_path.name} is missing; keep the .json beside it")
    try:
        meta = json.loads(meta_path.read_text())
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{meta_path}: not valid JSON ({e})") from None
    if meta.get("format") != FORMAT:
        raise CheckpointError(f"{path}: format {meta.get('format')!r} is not {FORMAT!r}")
    if meta.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(f"{path}: format version {meta.get('format_version')} is not supported "
                              f"(this version reads {FORMAT_VERSION})")
    blob = path.read_bytes()
    if meta.get("sha256") and hashlib.sha256(blob).hexdigest() != meta["sha256"]:
        raise CheckpointError(f"{path}: contents do not match the sha256 in {meta_path.name} (corrupt or replaced)")
    try:
        tensors = load(blob)
    except (SafetensorError, ValueError) as e:
        raise CheckpointError(f"{path}: not a readable safetensors file ({e})") from None
    if "T" not in tensors:
        raise CheckpointError(f"{path}: no tensor named 'T'")
    T = tensors["T"]
    expected = (meta.get("n_latent"), meta.get("w_dim"), len(meta.get("attributes", ())))
    if tuple(T.shape) != expected:
        raise CheckpointError(f"{path}: T has shape {list(T.shape)} but its metadata says {list(expected)}")
    optim = {k[len("optim."):]: v for k, v in tensors.items() if k.startswith("optim.")}
    return DirectionsFile(T, meta, optim)
