"""The shipped files of a trained StyleGAN2: G_ema + D + w_avg in one safetensors file, and its JSON card.

    export_weights(state.G_ema, state.D, out / "stylegan2.safetensors", dtype="fp16", card={...})

The file is our `hfld-stylegan2` safetensors format (models/load/stylegan2.py: keys g_ema.*, d.*,
latent_avg; conv_clamp in the header), so `models.load.stylegan2.load_stylegan2` reads it, and
`models.load.stylegan2.load_hfld_gan` reads it strictly together with its card: the card (the JSON
beside it, the format's sidecar) records the architecture, the data source, kimg, FD_face with its
scale, the training time and GPU, the exact command and the weights' sha256, which the loader checks.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import torch
from torch import nn

from models.load.stylegan2 import (ARCH_KEY, CARD_KIND, CARD_VERSION, SAFETENSORS_FORMAT, SAFETENSORS_VERSION)
from pipeline.core.config import ConfigError
from pipeline.core.io import atomic_output, atomic_write_bytes, file_sha256, json_safe

DTYPES = {"fp16": torch.float16, "fp32": torch.float32}


class ExportTooLarge(ConfigError):
    """The exported weights exceed export.max_mb."""


def export_tensors(G_ema: nn.Module, D: nn.Module, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """g_ema.* and d.* state dicts and latent_avg (G_ema's tracked w_avg), floating tensors cast to dtype."""
    def cast(t: torch.Tensor) -> torch.Tensor:
        t = t.detach().cpu().contiguous()
        return t.to(dtype) if t.is_floating_point() else t

    tensors = {f"g_ema.{k}": cast(v) for k, v in G_ema.state_dict().items()}
    tensors["latent_avg"] = cast(G_ema.w_avg)
    tensors.update({f"d.{k}": cast(v) for k, v in D.state_dict().items()})
    return tensors


def export_weights(G_ema: nn.Module, D: nn.Module, path: Path, *, dtype: str = "fp16", card: dict | None = None,
                   max_mb: float = 15.0) -> tuple[Path, Path, dict]:
    """Write path (safetensors) and path.with_suffix('.json') (the card); returns (weights, card path, card)."""
    from safetensors.torch import save_file

    path = Path(path)
    arch = {"conv_clamp": G_ema.conv_clamp, "num_fp16_res": 0, "d_conv_clamp": D.conv_clamp, "d_num_fp16_res": 0}
    tensors = export_tensors(G_ema, D, DTYPES[dtype])
    payload = sum(t.numel() * t.element_size() for t in tensors.values())
    if payload > max_mb * 1e6:
        raise ExportTooLarge(f"export: G_ema + D are {payload / 1e6:.1f} MB in {dtype}, over export.max_mb = {max_mb}; "
                             "use export.dtype=fp16 or a smaller arch")
    with atomic_output(path) as tmp:
        save_file(tensors, str(tmp), metadata={"format": SAFETENSORS_FORMAT, ARCH_KEY: json.dumps(arch)})
    size = path.stat().st_size
    full = {"format": SAFETENSORS_FORMAT, "format_version": SAFETENSORS_VERSION, "kind": CARD_KIND,
            "card_version": CARD_VERSION, "weights_file": path.name, "weights_sha256": file_sha256(path),
            "weights_bytes": size, "dtype": dtype, **arch,
            "parameters": {"G": sum(p.numel() for p in G_ema.parameters()),
                           "D": sum(p.numel() for p in D.parameters())},
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), **(card or {})}
    card_path = path.with_suffix(".json")
    atomic_write_bytes(card_path, json.dumps(json_safe(full), indent=1, default=str).encode())
    return path, card_path, full


def check_init_weights(path: str) -> None:
    """Fail before any run starts when `init_weights` names no file (its card is checked when loaded)."""
    if path and not Path(path).expanduser().is_file():
        raise ConfigError(f"init_weights: no file at {path}; give a gan-stage export (<name>.safetensors with "
                          "its card <name>.json beside it), e.g. zoo/stylegan2_starter64.safetensors")


def init_from_export(G: nn.Module, G_ema: nn.Module, D: nn.Module, path: str, arch) -> dict:
    """Load an export's G_ema into G and G_ema, its D into D and its w_avg into both generators (strict
    keys and shapes; the export's architecture must be `arch`, this run's ArchitectureConfig). Returns
    what the new card records about where the weights came from."""
    from models.load.stylegan2 import load_hfld_gan

    check_init_weights(path)
    weights, card = load_hfld_gan(Path(path).expanduser())
    differ = arch.differences(card.get("architecture", {}))
    if differ:
        raise ConfigError(f"init_weights: {path} has another architecture than this run's arch ({'; '.join(differ)})")
    with torch.no_grad():
        for target in (G, G_ema):
            target.load_state_dict(weights.generator.state_dict(), strict=True)
            target.w_avg.copy_(weights.generator.w_avg)
        D.load_state_dict(weights.discriminator.state_dict(), strict=True)
    training = card.get("training", {})
    return {"path": str(path), "weights_sha256": card.get("weights_sha256"), "kimg": training.get("kimg"),
            "fd_face": card.get("fd_face"), "run_name": card.get("run_name")}
