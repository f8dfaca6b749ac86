"""Load StyleGAN2 weights: rosinality checkpoints (.pt) and our own safetensors + JSON format.

The architecture (resolution, mapping depth, channel table) is read off the state dict itself, so a
user only points at a file; an optional expected resolution guards against the wrong file.

What tensor shapes cannot tell is recorded beside them. Our safetensors format (version 2) stores
ada's `conv_clamp` (None = no clamp, always None for rosinality checkpoints) and `num_fp16_res` for G
and D, both in the safetensors header (it travels with the tensors, and is what the loader obeys) and
in the JSON sidecar (for people). num_fp16_res is provenance only: our modules compute every layer in
the input's dtype (see models.stylegan2.Generator). Version-1 files predate the clamp (the converter
refused clamped networks then) and load with no clamp.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from pathlib import Path

import torch

from models.errors import WeightsError
from models.load.common import (file_sha256, load_state_strict, read_json, read_safetensors, read_torch_file,
                                require_file)
from models.stylegan2 import Discriminator, Generator

ROLE = "generator (StyleGAN2)"
HINT = ("Point the preset's generator weights at a rosinality stylegan2-pytorch checkpoint (.pt), "
        "or convert an NVIDIA stylegan2-ada pickle with `hfld convert`.")
SAFETENSORS_FORMAT = "hfld-stylegan2"
SAFETENSORS_VERSION = 2  # 2: conv_clamp / num_fp16_res recorded (header key ARCH_KEY and sidecar)
READABLE_VERSIONS = (1, 2)
ARCH_KEY = "hfld_stylegan2_arch"  # safetensors header entry: JSON of the ARCH_FIELDS below
ARCH_FIELDS = ("conv_clamp", "num_fp16_res", "d_conv_clamp", "d_num_fp16_res")
# A generator trained by the gan stage: the sidecar JSON is its card (pipeline/stages/gan/export.py).
CARD_KIND = "hfld-gan-card"
CARD_VERSION = 1
CARD_ARCH_KEYS = ("resolution", "w_dim", "n_mlp", "channels")


@dataclass
class StyleGAN2Weights:
    generator: Generator
    discriminator: Discriminator | None
    # resolution, w_dim, n_mlp, channels, and ARCH_FIELDS: conv_clamp / num_fp16_res of G and (d_*) of D,
    # None for d_* when there is no D. Enough to rebuild both networks.
    config: dict


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
                     expected_resolution: int | None = None, *, conv_clamp: float | None = None,
                     num_fp16_res: int = 0, d_conv_clamp: float | None = None,
                     d_num_fp16_res: int = 0) -> StyleGAN2Weights:
    """rosinality state dicts (g_ema, optional d) + w_avg [w_dim] -> networks in eval mode.

    The layout comes from the tensors; conv_clamp (None = none) and num_fp16_res (provenance only)
    come from the caller, because no tensor holds them.
    """
    cfg = infer_generator_config(g, source)
    if expected_resolution is not None and cfg["resolution"] != expected_resolution:
        raise WeightsError(f"{ROLE}: {source} is a {cfg['resolution']} px generator, but the preset expects "
                           f"{expected_resolution} px. Use the matching preset or file.")
    cfg.update(conv_clamp=None if conv_clamp is None else float(conv_clamp), num_fp16_res=int(num_fp16_res),
               d_conv_clamp=None, d_num_fp16_res=None)
    gen = Generator(cfg["resolution"], w_dim=cfg["w_dim"], n_mlp=cfg["n_mlp"], channels=cfg["channels"],
                    conv_clamp=cfg["conv_clamp"])
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
        cfg.update(d_conv_clamp=None if d_conv_clamp is None else float(d_conv_clamp),
                   d_num_fp16_res=int(d_num_fp16_res))
        disc = Discriminator(cfg["resolution"], channels={**cfg["channels"], **d_channels},
                             conv_clamp=cfg["d_conv_clamp"])
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


def _arch_of(weights: StyleGAN2Weights) -> dict:
    """The ARCH_FIELDS of a network pair, read off the modules themselves (what they really compute)."""
    disc = weights.discriminator
    return {"conv_clamp": weights.generator.conv_clamp,
            "num_fp16_res": int(weights.config.get("num_fp16_res") or 0),
            "d_conv_clamp": None if disc is None else disc.conv_clamp,
            "d_num_fp16_res": None if disc is None else int(weights.config.get("d_num_fp16_res") or 0)}


def save_stylegan2_safetensors(weights: StyleGAN2Weights, path: str | Path, extra: dict | None = None) -> Path:
    """Write G (+D) as one safetensors file (keys prefixed g_ema./d.) with a JSON sidecar config.

    conv_clamp and num_fp16_res go into both the safetensors header and the sidecar (module docstring).
    """
    from safetensors.torch import save_file
    path = Path(path)
    tensors = {f"g_ema.{k}": v.contiguous() for k, v in weights.generator.state_dict().items()}
    tensors["latent_avg"] = weights.generator.w_avg.clone()
    if weights.discriminator is not None:
        tensors.update({f"d.{k}": v.contiguous() for k, v in weights.discriminator.state_dict().items()})
    arch = _arch_of(weights)
    meta = {"format": SAFETENSORS_FORMAT, "format_version": SAFETENSORS_VERSION,
            **{k: v for k, v in weights.config.items()}, **arch, **(extra or {})}
    save_file(tensors, str(path), metadata={"format": SAFETENSORS_FORMAT, ARCH_KEY: json.dumps(arch)})
    path.with_suffix(".json").write_text(json.dumps(meta, indent=1, default=str))
    return path


def _header_arch(path: Path) -> dict:
    """ARCH_FIELDS from the safetensors header; {} for files written before version 2."""
    from safetensors import safe_open
    with safe_open(str(path), framework="pt", device="cpu") as f:
        raw = (f.metadata() or {}).get(ARCH_KEY)
    if raw is None:
        return {}
    try:
        arch = json.loads(raw)
    except json.JSONDecodeError as e:
        raise WeightsError(f"{ROLE}: {path} has an unreadable {ARCH_KEY!r} header entry ({e}). "
                           "Re-run `hfld convert`.") from e
    def bad(value) -> bool:  # each field is None or a number >= 0 (NaN fails the comparison)
        return value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))
                                      or not value >= 0)

    if not isinstance(arch, dict) or any(bad(arch.get(k)) for k in ARCH_FIELDS):
        raise WeightsError(f"{ROLE}: {path} has a malformed {ARCH_KEY!r} header entry: {raw[:200]}. "
                           "Re-run `hfld convert`.")
    return {k: arch.get(k) for k in ARCH_FIELDS}


def load_stylegan2_safetensors(path: str | Path, expected_resolution: int | None = None) -> StyleGAN2Weights:
    """Our safetensors (+ optional JSON sidecar) -> networks in eval mode, clamped as recorded."""
    path = require_file(path, ROLE, HINT)
    tensors = read_safetensors(path, ROLE)
    arch = _header_arch(path)
    sidecar = path.with_suffix(".json")
    if sidecar.is_file():
        meta = read_json(sidecar, ROLE)
        if meta.get("format") != SAFETENSORS_FORMAT or meta.get("format_version") not in READABLE_VERSIONS:
            raise WeightsError(f"{ROLE}: {sidecar} has format {meta.get('format')!r} version "
                               f"{meta.get('format_version')!r}; expected {SAFETENSORS_FORMAT!r} version "
                               f"{' or '.join(map(str, READABLE_VERSIONS))}. Re-run `hfld convert`.")
        # The header decides; a sidecar that says otherwise was edited or belongs to another file.
        differ = [f"{k}: sidecar {meta.get(k)!r}, header {arch.get(k)!r}" for k in ("conv_clamp", "d_conv_clamp")
                  if k in meta and meta.get(k) != arch.get(k)]
        if differ:
            raise WeightsError(f"{ROLE}: {sidecar} does not match {path.name} ({'; '.join(differ)}). "
                               "Re-run `hfld convert`.")
    g = {k[len("g_ema."):]: v for k, v in tensors.items() if k.startswith("g_ema.")}
    d = {k[len("d."):]: v for k, v in tensors.items() if k.startswith("d.")} or None
    if not g:
        raise WeightsError(f"{ROLE}: {path} has no 'g_ema.*' tensors. {HINT}")
    return build_from_state(g, d, tensors.get("latent_avg"), path, expected_resolution,
                            conv_clamp=arch.get("conv_clamp"), num_fp16_res=arch.get("num_fp16_res") or 0,
                            d_conv_clamp=arch.get("d_conv_clamp"), d_num_fp16_res=arch.get("d_num_fp16_res") or 0)


def load_stylegan2(path: str | Path, expected_resolution: int | None = None) -> StyleGAN2Weights:
    """Dispatch on the file suffix: .safetensors (ours / converted) or a rosinality torch checkpoint."""
    if str(path).endswith(".safetensors"):
        return load_stylegan2_safetensors(path, expected_resolution)
    return load_rosinality_checkpoint(path, expected_resolution)


def load_hfld_gan(path: str | Path, expected_sha256: str | None = None,
                  expected_resolution: int | None = None) -> tuple[StyleGAN2Weights, dict]:
    """A StyleGAN2 trained by the gan stage: weights + card, both required and checked strictly.

    The card (the JSON beside the file) must be an hfld-gan-card whose weights_sha256 is the file's
    sha256 (and `expected_sha256`, e.g. a zoo pin, when given) and whose architecture is what the
    tensors hold; G_ema and D must load with exact key and shape matching. Returns the networks (eval
    mode, w_avg = the tracked average w) and the card.
    """
    path = require_file(path, ROLE, "Export one with `hfld gan` (pipeline/stages/gan).")
    card_path = path.with_suffix(".json")
    if not card_path.is_file():
        raise WeightsError(f"{ROLE}: {path} has no card {card_path.name} beside it; a gan-stage export ships both")
    card = read_json(card_path, ROLE)
    if card.get("kind") != CARD_KIND or card.get("card_version") != CARD_VERSION:
        raise WeightsError(f"{ROLE}: {card_path} is not a {CARD_KIND} v{CARD_VERSION} (kind {card.get('kind')!r}, "
                           f"version {card.get('card_version')!r})")
    digest = file_sha256(path)
    for what, want in (("its card", card.get("weights_sha256")), ("the expected pin", expected_sha256)):
        if want is not None and digest != want:
            raise WeightsError(f"{ROLE}: {path} has sha256 {digest}, {what} says {want}: the file was changed "
                               "or belongs to another card")
    weights = load_stylegan2_safetensors(path, expected_resolution)
    if weights.discriminator is None:
        raise WeightsError(f"{ROLE}: {path} holds no discriminator (d.*); a gan-stage export ships G_ema and D")
    arch = card.get("architecture", {})
    found = {"resolution": weights.config["resolution"], "w_dim": weights.config["w_dim"],
             "n_mlp": weights.config["n_mlp"], "channels": {str(k): v for k, v in weights.config["channels"].items()}}
    differ = [f"{k}: card {arch.get(k)!r}, tensors {found[k]!r}" for k in CARD_ARCH_KEYS if arch.get(k) != found[k]]
    if differ:
        raise WeightsError(f"{ROLE}: {card_path} does not describe {path.name}: {'; '.join(differ)}")
    return weights, card
