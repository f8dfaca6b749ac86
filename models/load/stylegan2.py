"""Load StyleGAN2 weights: rosinality checkpoints (.pt) and our own safetensors + JSON format.

The architecture (resolution, mapping depth, channel table) is read off the state dict itself, so a
user only points at a file; an optional expected resolution guards against the wrong file.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from pathlib import Path

import torch

from models.errors import WeightsError
from models.load.common import (load_state_strict, read_json, read_safetensors, read_torch_file,
                                require_file)
from models.stylegan2 import Discriminator, Generator

ROLE = "generator (StyleGAN2)"
HINT = ("Point the preset's generator weights at a rosinality stylegan2-pytorch checkpoint (.pt), "
        "or convert an NVIDIA stylegan2-ada pickle with `hfld convert`.")
SAFETENSORS_FORMAT = "hfld-stylegan2"
SAFETENSORS_VERSION = 1


@dataclass
class StyleGAN2Weights:
    generator: Generator
    discriminator: Discriminator | None
    config: dict  # resolution, w_dim, n_mlp, channels: enough to rebuild both networks


def infer_generator_config(g: dict[str, torch.Tensor], source: Path | str) -> dict:
    """Resolution, w_dim, mapping depth and channel table from a rosinality g/g_ema state dict."""
    try:
        w_dim = g["style.1.weight"].shape[1]
        n_mlp = len([k for k in g if re.fullmatch(r"style\.\d+\.weight", k)])
        n_up = len({k.split(".")[1] for k in g if k.startswith("to_rgbs.")})
        resolution = 2 ** (n_up + 2)
        channels = {4: g["conv1.conv.weight"].shape[1]}
        for i in range(n_up):
            channels[2 ** (i + 3)] = g[f"convs.{2 * i}.conv.weight"].shape[1]
    except KeyError as e:
        raise WeightsError(f"{ROLE}: {source} is not a rosinality StyleGAN2 generator state dict "
                           f"(no key {e.args[0]!r}). {HINT}") from None
    return {"resolution": resolution, "w_dim": int(w_dim), "n_mlp": n_mlp,
            "channels": {int(k): int(v) for k, v in channels.items()}}


def infer_discriminator_channels(d: dict[str, torch.Tensor], resolution: int) -> dict[int, int]:
    channels = {resolution: d["convs.0.0.weight"].shape[0]}
    for i in range(int(math.log2(resolution)) - 2):
        channels[resolution // 2 ** (i + 1)] = d[f"convs.{i + 1}.conv2.1.weight"].shape[0]
    return {int(k): int(v) for k, v in channels.items()}


def build_from_state(g: dict, d: dict | None, w_avg: torch.Tensor | None, source: Path | str,
                     expected_resolution: int | None = None) -> StyleGAN2Weights:
    cfg = infer_generator_config(g, source)
    if expected_resolution is not None and cfg["resolution"] != expected_resolution:
        raise WeightsError(f"{ROLE}: {source} is a {cfg['resolution']} px generator, but the preset expects "
                           f"{expected_resolution} px. Use the matching preset or file.")
    gen = Generator(cfg["resolution"], w_dim=cfg["w_dim"], n_mlp=cfg["n_mlp"], channels=cfg["channels"])
    load_state_strict(gen, g, ROLE, source)
    if w_avg is not None:
        gen.w_avg.copy_(w_avg.reshape(-1).float())
    else:
        gen.estimate_mean_latent(generator=torch.Generator().manual_seed(0))
    disc = None
    if d is not None:
        try:
            d_channels = infer_discriminator_channels(d, cfg["resolution"])
        except KeyError as e:
            raise WeightsError(f"discriminator (StyleGAN2): {source} has no key {e.args[0]!r}") from None
        disc = Discriminator(cfg["resolution"], channels={**cfg["channels"], **d_channels})
        load_state_strict(disc, d, "discriminator (StyleGAN2)", source)
    gen.eval()
    if disc is not None:
        disc.eval()
    return StyleGAN2Weights(gen, disc, cfg)


def load_rosinality_checkpoint(path: str | Path, expected_resolution: int | None = None) -> StyleGAN2Weights:
    """rosinality checkpoint {"g_ema", ["d"], ["latent_avg"], ...} -> networks in eval mode."""
    path = require_file(path, ROLE, HINT)
    ckpt = read_torch_file(path, ROLE)
    if not isinstance(ckpt, dict) or "g_ema" not in ckpt:
        keys = list(ckpt)[:5] if isinstance(ckpt, dict) else type(ckpt).__name__
        raise WeightsError(f"{ROLE}: {path} is not a rosinality checkpoint: expected a dict with 'g_ema' "
                           f"(and optionally 'd', 'latent_avg'); found {keys}. {HINT}")
    return build_from_state(ckpt["g_ema"], ckpt.get("d"), ckpt.get("latent_avg"), path, expected_resolution)


def save_stylegan2_safetensors(weights: StyleGAN2Weights, path: str | Path, extra: dict | None = None) -> Path:
    """Write G (+D) as one safetensors file (keys prefixed g_ema./d.) with a JSON sidecar config."""
    from safetensors.torch import save_file
    path = Path(path)
    tensors = {f"g_ema.{k}": v.contiguous() for k, v in weights.generator.state_dict().items()}
    tensors["latent_avg"] = weights.generator.w_avg.clone()
    if weights.discriminator is not None:
        tensors.update({f"d.{k}": v.contiguous() for k, v in weights.discriminator.state_dict().items()})
    meta = {"format": SAFETENSORS_FORMAT, "format_version": SAFETENSORS_VERSION,
            **{k: v for k, v in weights.config.items()}, **(extra or {})}
    save_file(tensors, str(path), metadata={"format": SAFETENSORS_FORMAT})
    path.with_suffix(".json").write_text(json.dumps(meta, indent=1, default=str))
    return path


def load_stylegan2_safetensors(path: str | Path, expected_resolution: int | None = None) -> StyleGAN2Weights:
    path = require_file(path, ROLE, HINT)
    tensors = read_safetensors(path, ROLE)
    sidecar = path.with_suffix(".json")
    if sidecar.is_file():
        meta = read_json(sidecar, ROLE)
        if meta.get("format") != SAFETENSORS_FORMAT or meta.get("format_version") != SAFETENSORS_VERSION:
            raise WeightsError(f"{ROLE}: {sidecar} has format {meta.get('format')!r} version "
                               f"{meta.get('format_version')!r}; expected {SAFETENSORS_FORMAT!r} version "
                               f"{SAFETENSORS_VERSION}. Re-run `hfld convert`.")
    g = {k[len("g_ema."):]: v for k, v in tensors.items() if k.startswith("g_ema.")}
    d = {k[len("d."):]: v for k, v in tensors.items() if k.startswith("d.")} or None
    if not g:
        raise WeightsError(f"{ROLE}: {path} has no 'g_ema.*' tensors. {HINT}")
    return build_from_state(g, d, tensors.get("latent_avg"), path, expected_resolution)


def load_stylegan2(path: str | Path, expected_resolution: int | None = None) -> StyleGAN2Weights:
    """Dispatch on the file suffix: .safetensors (ours / converted) or a rosinality torch checkpoint."""
    if str(path).endswith(".safetensors"):
        return load_stylegan2_safetensors(path, expected_resolution)
    return load_rosinality_checkpoint(path, expected_resolution)
