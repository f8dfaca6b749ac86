"""What every output records about how it was made: package versions, the device, and the licences of
the weights used.

    prov = provenance(cfg.model, device)     # one dict, JSON-ready
    meta["provenance"] = prov                # T files (directions.json), manifests, reports, summaries
    log_provenance(tracker, prov)            # and as provenance.* tags of the MLflow run

The licences come from the preset (`Preset.weight_licences`): the zoo's pinned packages for the
starter preset (including the DCGAN's DigiFace-1M non-commercial research terms), "random weights"
for tiny, and for the paper presets the user's files, whose terms hfld cannot know (it says so).
"""

from __future__ import annotations

import os
import platform
from importlib import metadata

import torch

from pipeline.presets.registry import PRESETS, ModelConfig

PACKAGES = ("torch", "ray", "mlflow", "hfld")


def package_versions() -> dict[str, str]:
    """Installed versions of the packages that decide the numbers (read from metadata: imports nothing)."""
    versions = {"torch": torch.__version__}    # with its build tag (e.g. +cu130), which the metadata lacks
    for name in PACKAGES[1:]:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "not installed" + (" (run from a source checkout)" if name == "hfld" else "")
    return versions


def device_description(device: torch.device | str) -> str:
    """"cuda:0 NVIDIA H200 (CUDA 12.8)" or "cpu x86_64 (16 cores)"; for a CUDA device this process cannot
    see (work placed on Ray actors), says so."""
    if not isinstance(device, torch.device):
        try:
            device = torch.device(device)
        except (RuntimeError, ValueError):   # a description already ("none: nothing was computed")
            return str(device)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            return "cuda (on Ray workers; not visible to this process)"
        index = device.index if device.index is not None else torch.cuda.current_device()
        return f"cuda:{index} {torch.cuda.get_device_name(index)} (CUDA {torch.version.cuda})"
    return f"{device.type} {platform.machine() or 'unknown'} ({os.cpu_count()} cores)"


def weight_licences(model: ModelConfig) -> dict[str, dict[str, str]]:
    """Role or package -> {"source": where the weights came from, "licence": their terms}."""
    preset = PRESETS[model.preset]
    if preset.weight_licences is None:
        return {"unknown": {"source": f"preset {model.preset}", "licence": "not declared by the preset"}}
    return preset.weight_licences(model)


def provenance(model: ModelConfig, device: torch.device | str) -> dict:
    """Everything above in one JSON-ready dict (the one function every stage records)."""
    return {"packages": package_versions(), "python": platform.python_version(),
            "device": device_description(device), "preset": model.preset, "weights": weight_licences(model)}
