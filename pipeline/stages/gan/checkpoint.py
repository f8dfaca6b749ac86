"""Trainer checkpoints of the gan stage: safetensors split into files of at most 16 MB + a JSON manifest.

    save_checkpoint(run_dir / "checkpoints", state, extra={"config": ..., "history": ...})
    ckpt = read_checkpoint(folder)           # a run dir, its checkpoints/ folder or one step-... folder
    restore_state(state, ckpt)

Layout (small files so a checkpoint moves between machines through size-limited channels):

    checkpoints/latest.json                      {"folder": "step-000001234"}   (written last, atomically)
    checkpoints/step-000001234/part-000.safetensors ... part-NNN.safetensors  (each <= MAX_PART_BYTES)
    checkpoints/step-000001234/manifest.json     format, step, cur_nimg, parts with sha256, tensor index,
                                                 optimiser param groups, extra (config, histories, timing)

Tensors: G.*, D.*, G_ema.* (state dicts plus w_avg, which StyleGAN2 keeps out of its state dict),
opt_g.<param index>.<exp_avg|exp_avg_sq|step>, opt_d.*, pl_mean, the torch RNG states (rng.cpu,
rng.cuda.<i>) and extra.* (the quality reference statistics, so a resumed run on another machine
need not measure the scale again). A tensor larger than a part is stored flat in chunks (<name>::<k>) and reassembled.
A new checkpoint is complete before latest.json points at it; older step folders are removed after.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import torch

from pipeline.core.config import ConfigError
from pipeline.core.io import atomic_output, atomic_write_bytes, file_sha256, json_safe
from pipeline.stages.gan.step import GanState

FORMAT = "hfld-gan-checkpoint"
VERSION = 1
MAX_PART_BYTES = 16_000_000          # "at most 16 MB" per file, header included
HEADER_MARGIN = 256 * 1024           # room for a part's safetensors header (names, shapes, offsets)
LATEST = "latest.json"
MANIFEST = "manifest.json"
MODULES = ("G", "D", "G_ema")
OPTIMISERS = ("opt_g", "opt_d")


@dataclass
class Checkpoint:
    folder: Path
    manifest: dict
    tensors: dict[str, torch.Tensor]

    @property
    def step(self) -> int:
        return int(self.manifest["step"])

    @property
    def extra(self) -> dict:
        return self.manifest.get("extra", {})

    def extra_tensors(self) -> dict[str, torch.Tensor]:
        return {k[len("extra."):]: v for k, v in self.tensors.items() if k.startswith("extra.")}


# ---------------------------------------------------------------------------------------------
# State <-> flat tensors
# ---------------------------------------------------------------------------------------------

def module_tensors(prefix: str, module: torch.nn.Module) -> dict[str, torch.Tensor]:
    out = {f"{prefix}.{k}": v for k, v in module.state_dict().items()}
    if hasattr(module, "w_avg"):
        out[f"{prefix}.w_avg"] = module.w_avg
    return out


def optimiser_tensors(prefix: str, opt: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], list]:
    sd = opt.state_dict()
    tensors = {f"{prefix}.{idx}.{key}": torch.as_tensor(value) for idx, st in sd["state"].items()
               for key, value in st.items()}
    return tensors, sd["param_groups"]


def state_tensors(state: GanState) -> tuple[dict[str, torch.Tensor], dict]:
    tensors: dict[str, torch.Tensor] = {}
    groups = {}
    for name in MODULES:
        tensors.update(module_tensors(name, getattr(state, name)))
    for name in OPTIMISERS:
        t, g = optimiser_tensors(name, getattr(state, name))
        tensors.update(t)
        groups[name] = g
    tensors["pl_mean"] = state.pl_mean.reshape(())
    tensors["rng.cpu"] = torch.get_rng_state()
    if torch.cuda.is_available() and state.device.type == "cuda":
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"rng.cuda.{i}"] = s
    return tensors, groups


def restore_state(state: GanState, ckpt: Checkpoint) -> None:
    """Load networks, optimisers, path-length mean, counters and RNG states; strict about names and shapes."""
    t = ckpt.tensors
    for name in MODULES:
        module = getattr(state, name)
        expected = module_tensors(name, module)
        missing = [k for k in expected if k not in t]
        bad = [f"{k} {list(t[k].shape)} != {list(v.shape)}" for k, v in expected.items()
               if k in t and tuple(t[k].shape) != tuple(v.shape)]
        if missing or bad:
            raise ConfigError(f"resume: {ckpt.folder} does not fit this run's {name} (different arch?): "
                              + "; ".join(([f"missing {missing[:3]}"] if missing else []) + bad[:3]))
        sd = {k[len(name) + 1:]: t[k] for k in expected if k != f"{name}.w_avg"}
        module.load_state_dict(sd, strict=True)
        if hasattr(module, "w_avg"):
            with torch.no_grad():
                module.w_avg.copy_(t[f"{name}.w_avg"])
    for name in OPTIMISERS:
        opt = getattr(state, name)
        groups = ckpt.manifest["optimisers"][name]
        per_param: dict[int, dict] = {}
        for key, value in t.items():
            if key.startswith(name + "."):
                idx, field_name = key[len(name) + 1:].split(".", 1)
                per_param.setdefault(int(idx), {})[field_name] = value
        opt.load_state_dict({"state": per_param, "param_groups": groups})
    with torch.no_grad():
        state.pl_mean.copy_(t["pl_mean"].to(state.pl_mean.device))
    state.step = int(ckpt.manifest["step"])
    state.cur_nimg = int(ckpt.manifest["cur_nimg"])
    torch.set_rng_state(t["rng.cpu"])
    cuda_states = [t[k] for k in sorted((k for k in t if k.startswith("rng.cuda.")), key=lambda k: int(k.rsplit(".", 1)[1]))]
    if cuda_states and state.device.type == "cuda" and len(cuda_states) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(cuda_states)


# ---------------------------------------------------------------------------------------------
# Writing
# ---------------------------------------------------------------------------------------------

def _nbytes(t: torch.Tensor) -> int:
    return t.numel() * t.element_size()


def pack_parts(tensors: dict[str, torch.Tensor], max_bytes: int = MAX_PART_BYTES) -> tuple[list[dict], dict]:
    """Greedy packing into parts of at most max_bytes - HEADER_MARGIN payload; oversized tensors are
    split flat into chunks. Returns (parts: [{name -> tensor}], chunked: {name -> {shape, dtype, chunks}})."""
    budget = max_bytes - HEADER_MARGIN
    parts: list[dict] = [{}]
    used = [0]
    chunked: dict[str, dict] = {}

    def put(name: str, t: torch.Tensor) -> None:
        size = _nbytes(t)
        if used[-1] + size > budget and parts[-1]:
            parts.append({})
            used.append(0)
        parts[-1][name] = t
        used[-1] += size

    for name, t in tensors.items():
        t = t.detach().cpu().contiguous()
        if _nbytes(t) <= budget:
            put(name, t)
            continue
        flat = t.reshape(-1)
        per = max(1, budget // t.element_size())
        names = []
        for k, start in enumerate(range(0, flat.numel(), per)):
            names.append(f"{name}::{k}")
            put(names[-1], flat[start:start + per].clone())
        chunked[name] = {"shape": list(t.shape), "chunks": names}
    return parts, chunked


def save_checkpoint(root: Path, state: GanState, extra: dict | None = None, keep: int = 1,
                    max_bytes: int = MAX_PART_BYTES, extra_tensors: dict[str, torch.Tensor] | None = None) -> Path:
    """Write the state into root/step-XXXXXXXXX/, then point root/latest.json at it; returns the folder.

    extra_tensors (names prefixed "extra.") travel with the state, e.g. the quality reference statistics."""
    from safetensors.torch import save_file

    root = Path(root)
    folder = root / f"step-{state.step:09d}"
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    tensors, groups = state_tensors(state)
    tensors.update({f"extra.{k}": v for k, v in (extra_tensors or {}).items()})
    parts, chunked = pack_parts(tensors, max_bytes)
    part_records = []
    for i, part in enumerate(parts):
        path = folder / f"part-{i:03d}.safetensors"
        with atomic_output(path) as tmp:
            save_file(part, str(tmp), metadata={"format": FORMAT, "part": str(i)})
        size = path.stat().st_size
        if size > max_bytes:
            raise RuntimeError(f"checkpoint part {path} is {size} bytes, over the {max_bytes} limit")
        part_records.append({"file": path.name, "sha256": file_sha256(path), "bytes": size, "tensors": sorted(part)})
    manifest = {"format": FORMAT, "version": VERSION, "step": state.step, "cur_nimg": state.cur_nimg,
                "kimg": state.kimg, "world_size": state.world_size, "parts": part_records, "chunked": chunked,
                "optimisers": groups, "extra": json_safe(extra or {})}
    atomic_write_bytes(folder / MANIFEST, json.dumps(manifest, indent=1).encode())
    atomic_write_bytes(root / LATEST, json.dumps({"folder": folder.name, "step": state.step,
                                                  "kimg": state.kimg}).encode())
    old = sorted(p for p in root.glob("step-*") if p.is_dir() and p != folder)
    for p in old[:max(0, len(old) - (keep - 1))]:
        shutil.rmtree(p, ignore_errors=True)
    return folder


# ---------------------------------------------------------------------------------------------
# Reading
# ---------------------------------------------------------------------------------------------

def find_checkpoint(path: str | Path) -> Path | None:
    """The step folder a path means: itself (has manifest.json), the one its latest.json names, or the one
    its checkpoints/latest.json names; None when there is none."""
    p = Path(path).expanduser()
    if (p / MANIFEST).is_file():
        return p
    for root in (p, p / "checkpoints"):
        latest = root / LATEST
        if latest.is_file():
            try:
                folder = root / json.loads(latest.read_text())["folder"]
            except (json.JSONDecodeError, KeyError, TypeError) as e:
                raise ConfigError(f"resume: {latest} is not a valid pointer ({e})") from None
            if not (folder / MANIFEST).is_file():
                raise ConfigError(f"resume: {latest} names {folder.name}, which has no {MANIFEST}")
            return folder
    return None


def read_checkpoint(path: str | Path) -> Checkpoint:
    """Read and verify (format, every part's sha256) the checkpoint at `path` (see find_checkpoint)."""
    from safetensors.torch import load_file

    folder = find_checkpoint(path)
    if folder is None:
        raise ConfigError(f"resume: no gan checkpoint at {path} (expected manifest.json, latest.json or "
                          "checkpoints/latest.json)")
    try:
        manifest = json.loads((folder / MANIFEST).read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ConfigError(f"resume: {folder / MANIFEST} is unreadable ({e})") from None
    if manifest.get("format") != FORMAT or manifest.get("version") != VERSION:
        raise ConfigError(f"resume: {folder} is {manifest.get('format')!r} v{manifest.get('version')}, expected "
                          f"{FORMAT!r} v{VERSION}")
    tensors: dict[str, torch.Tensor] = {}
    for rec in manifest["parts"]:
        p = folder / rec["file"]
        if not p.is_file():
            raise ConfigError(f"resume: {p} is missing (the checkpoint is incomplete)")
        digest = file_sha256(p)
        if digest != rec["sha256"]:
            raise ConfigError(f"resume: {p} has sha256 {digest[:12]}..., the manifest says {rec['sha256'][:12]}... "
                              "(damaged or mixed up in transfer)")
        tensors.update(load_file(str(p), device="cpu"))
    for name, info in manifest.get("chunked", {}).items():
        flat = torch.cat([tensors.pop(c) for c in info["chunks"]])
        tensors[name] = flat.reshape(info["shape"])
    return Checkpoint(folder, manifest, tensors)
