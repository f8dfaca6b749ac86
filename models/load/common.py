"""Shared pieces of the weight loaders: safe file reading and strict state-dict matching."""

from __future__ import annotations

import argparse
import hashlib
import json
import pickle
from pathlib import Path
from typing import Mapping

import torch
from torch import nn

from models.errors import WeightsError, describe_key_problems


def file_sha256(path: str | Path) -> str:
    """sha256 of a file, read in 1 MiB blocks (weights and datasets can be large)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def require_file(path: str | Path, role: str, hint: str) -> Path:
    """Return `path` as a Path, or raise WeightsError naming the role, the path and what to do."""
    p = Path(path).expanduser()
    if not p.is_file():
        raise WeightsError(f"{role}: weight file not found: {p}. {hint}")
    return p


def read_torch_file(path: Path, role: str) -> object:
    """torch.load with weights_only=True: tensors and plain containers only, never arbitrary code.

    argparse.Namespace is allowed because rosinality's train.py stores its args that way; it is a
    plain attribute bag and cannot run code.
    """
    try:
        with torch.serialization.safe_globals([argparse.Namespace]):
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise WeightsError(
            f"{role}: {path} holds objects other than tensors and plain containers, refused for safety "
            f"({first[:200]}). If it is an NVIDIA stylegan2-ada pickle, convert it with `hfld convert`.") from e
    except Exception as e:  # torch raises many types (KeyError, RuntimeError...) for non-checkpoints
        raise WeightsError(f"{role}: {path} is not a readable PyTorch checkpoint ({type(e).__name__}: "
                           f"{str(e).splitlines()[0][:200] if str(e) else ''})") from e


def read_safetensors(path: Path, role: str) -> dict[str, torch.Tensor]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file
    try:
        return load_file(str(path), device="cpu")
    except (SafetensorError, OSError, ValueError) as e:
        raise WeightsError(f"{role}: {path} is not a readable safetensors file ({e})") from e


def read_json(path: Path, role: str) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise WeightsError(f"{role}: {path} is not valid JSON ({e})") from e


def load_state_strict(module: nn.Module, state: Mapping[str, torch.Tensor], role: str, source: Path | str) -> nn.Module:
    """Copy `state` into `module`, requiring identical key sets and shapes.

    The error names the first few missing/unexpected keys and shape mismatches, which is what a user
    needs to tell a wrong architecture from a wrong file.
    """
    expected = module.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    mismatched = [f"{k} {list(state[k].shape)} != expected {list(v.shape)}"
                  for k, v in expected.items() if k in state and tuple(state[k].shape) != tuple(v.shape)]
    problems = describe_key_problems(missing, unexpected)
    if mismatched:
        more = f" (+{len(mismatched) - 5} more)" if len(mismatched) > 5 else ""
        problems = "; ".join(filter(None, [problems, "shape mismatch: " + ", ".join(mismatched[:5]) + more]))
    if problems:
        raise WeightsError(f"{role}: {source} does not fit the model: {problems}")
    module.load_state_dict({k: v.to(expected[k].dtype) for k, v in state.items()}, strict=True)
    return module
