"""Real images for the discriminator: one interface over a teacher generator and image datasets.

    source = open_source(cfg, device, teacher=bundle.generator)
    real = source.batch(rng, 64)                      # [64, 3, R, R] in [-1, 1] on `device`
    for chunk in source.reference(10_000, set_index=0, batch_size=500): ...   # quality sets

Every source hands out float images [B, 3, R, R] in [-1, 1] on the training device, drawn with a
torch.Generator the step derives from (seed, step, rank): a resumed run draws exactly what an
uninterrupted one would, and nothing crosses the host between steps.

- TeacherSource: a preset's generator (the starter DCGAN) makes fresh faces every step on the
  training device: z ~ N(0, I), w = mapping(z) (truncated with teacher_truncation), then synthesis;
  resized (antialiased) when its resolution differs from the student's. No sample is ever repeated,
  so nothing overfits and no augmentation is needed.
- TensorSource: a dataset decoded ONCE into a uint8 tensor [N, 3, R, R] (centre-cropped to a square,
  resized with Lanczos), kept on the training device; a batch is N-uniform indices (with replacement)
  and, with data.mirror, random horizontal flips. The decoded tensor is cached as a safetensors file
  keyed by the file list (names, sizes, modification times) and the resolution, so reruns and resumes
  skip decoding. Files that cannot be decoded are skipped and counted (never a crash mid-run); a
  dataset with no readable image at all is a ConfigError.

Dataset kinds: "folder" (image files under a folder, recursively, sorted by path), "parquet" (a
file, a folder of *.parquet or a glob; an image column of struct {bytes, path} as the generate stage
writes, or of plain bytes) and "hf" (a Hugging Face dataset saved with save_to_disk; the image column
is read undecoded).
"""

from __future__ import annotations

import glob
import hashlib
import io
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator, Protocol

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from pipeline.core.config import ConfigError
from pipeline.core.io import atomic_output
from pipeline.core.sampling import latents_from_z
from pipeline.core.seeding import Stream, rng_for
from pipeline.stages.gan.config import DataConfig

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff"}
CACHE_FORMAT = "hfld-gan-data-cache"
CACHE_VERSION = 1
MAX_LISTED_FAILURES = 20        # failures named in the cache record and the log (all are counted)


class DataSource(Protocol):
    resolution: int
    description: str
    report: dict                        # what was read: counts, skipped files, cache file

    def batch(self, rng: torch.Generator, batch_size: int) -> torch.Tensor:
        """[B, 3, R, R] float in [-1, 1] on the source's device, drawn with `rng` (on that device)."""

    def reference(self, n: int, set_index: int, batch_size: int) -> Iterator[torch.Tensor]:
        """The fixed reference set `set_index` (0, 1: independent) of n images, in batches."""

    def kept_share(self) -> float | None:
        """Share of the drawn samples a filter (data.teacher_filter) kept in this process; None: no filter."""


def to_unit_range(images_u8: torch.Tensor) -> torch.Tensor:
    """uint8 [B, 3, R, R] in 0..255 -> float [B, 3, R, R] in [-1, 1]."""
    return images_u8.float().div_(127.5).sub_(1.0)


def to_uint8(images: torch.Tensor) -> torch.Tensor:
    """float [B, 3, R, R] in [-1, 1] -> uint8 [B, 3, R, R] (rounded, clamped)."""
    return ((images.detach().float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)


def resize_images(images: torch.Tensor, resolution: int) -> torch.Tensor:
    """[B, 3, H, W] -> [B, 3, R, R] (antialiased bilinear), unchanged when already that size."""
    if images.shape[-1] == resolution and images.shape[-2] == resolution:
        return images
    return F.interpolate(images, size=(resolution, resolution), mode="bilinear", align_corners=False,
                         antialias=True)


# ---------------------------------------------------------------------------------------------
# Teacher
# ---------------------------------------------------------------------------------------------

Keep = Callable[[torch.Tensor], torch.Tensor]   # images [B, 3, R, R] in [-1, 1] -> bool [B]: train on it?
MAX_FILTER_DRAWS = 64                          # draws of batch_size per batch before a filter is called broken


class TeacherSource:
    """Fresh samples of a frozen generator (the Generator contract of docs/architecture.md).

    `keep` (optional) filters the training batches: a batch is filled with the samples it keeps, from a
    draw of batch_size and then top-ups sized by what is still missing, all with the step's rng (so a
    resumed run draws the same images); `kept_share()` gives the share kept. The reference sets stay
    unfiltered: quality is measured against the teacher itself, not against what the student was shown.
    """

    def __init__(self, generator: nn.Module, resolution: int, device: torch.device, *, truncation: float = 1.0,
                 seed: int = 0, description: str = "teacher", keep: Keep | None = None, keep_name: str = ""):
        self.generator = generator.to(device).eval().requires_grad_(False)
        self.resolution, self.device, self.truncation, self.seed = resolution, device, truncation, seed
        self.description = description
        self.keep = keep
        self.drawn = self.kept = 0
        self.report = {"kind": "teacher", "teacher_resolution": int(generator.resolution),
                       "truncation": truncation, "filter": keep_name or ("custom" if keep else "none")}

    @torch.no_grad()
    def _generate(self, z: torch.Tensor, rng: torch.Generator | None) -> torch.Tensor:
        wplus = latents_from_z(self.generator, z, self.truncation)
        noise = self.generator.make_noise("random", z.shape[0], generator=rng, device=self.device)
        image = self.generator.synthesis(wplus, noise)
        return resize_images(image.float(), self.resolution).clamp_(-1, 1)

    def _draw(self, rng: torch.Generator, batch_size: int) -> torch.Tensor:
        z = torch.randn(batch_size, self.generator.z_dim, generator=rng, device=self.device)
        return self._generate(z, rng)

    def batch(self, rng: torch.Generator, batch_size: int) -> torch.Tensor:
        if self.keep is None:
            return self._draw(rng, batch_size)
        kept, n_kept, n_drawn, size = [], 0, 0, batch_size
        for _ in range(MAX_FILTER_DRAWS):
            images = self._draw(rng, size)
            mask = self.keep(images)
            assert mask.shape == (size,) and mask.dtype == torch.bool, "keep must return bool [B]"
            kept.append(images[mask])
            n_mask = int(mask.sum())                  # one device-to-host read per draw
            n_kept, n_drawn = n_kept + n_mask, n_drawn + size
            self.drawn, self.kept = self.drawn + size, self.kept + n_mask
            if n_kept >= batch_size:
                return torch.cat(kept)[:batch_size]
            # top up with a few spare samples: sizes depend only on what this batch's draws kept, so a
            # resumed run draws exactly what an uninterrupted one did
            size = 2 * (batch_size - n_kept) + 2
        raise RuntimeError(f"data.teacher_filter={self.report['filter']!r} kept {n_kept} of {n_drawn} teacher "
                           f"samples in {MAX_FILTER_DRAWS} draws, fewer than one batch of {batch_size}: the filter "
                           "rejects almost everything this teacher makes (set data.teacher_filter=none)")

    def kept_share(self) -> float | None:
        """Share of the teacher's samples the filter kept so far in this process (None: no filter / no draw)."""
        return self.kept / self.drawn if self.keep is not None and self.drawn else None

    def reference(self, n: int, set_index: int, batch_size: int) -> Iterator[torch.Tensor]:
        rng = rng_for(self.seed, Stream.HELD_OUT, 1000 + set_index, self.device)
        for start in range(0, n, batch_size):
            yield self._draw(rng, min(batch_size, n - start))


# ---------------------------------------------------------------------------------------------
# Datasets decoded once into a uint8 tensor
# ---------------------------------------------------------------------------------------------

class TensorSource:
    """A decoded dataset uint8 [N, 3, R, R] on the training device."""

    def __init__(self, images_u8: torch.Tensor, device: torch.device, *, mirror: bool = False, seed: int = 0,
                 description: str = "dataset", report: dict | None = None):
        assert images_u8.dtype == torch.uint8 and images_u8.ndim == 4 and images_u8.shape[1] == 3, (
            f"images must be uint8 [N, 3, R, R], got {images_u8.dtype} {list(images_u8.shape)}")
        self.images = images_u8.to(device)
        self.resolution = int(images_u8.shape[-1])
        self.device, self.mirror, self.seed, self.description = device, mirror, seed, description
        self.report = report or {"kind": "tensor", "n_images": int(images_u8.shape[0])}

    def batch(self, rng: torch.Generator, batch_size: int) -> torch.Tensor:
        idx = torch.randint(0, self.images.shape[0], (batch_size,), generator=rng, device=self.device)
        x = to_unit_range(self.images[idx])
        if self.mirror:
            flip = torch.rand(batch_size, generator=rng, device=self.device) < 0.5
            x = torch.where(flip[:, None, None, None], x.flip(-1), x)
        return x

    def reference(self, n: int, set_index: int, batch_size: int) -> Iterator[torch.Tensor]:
        """Sets 0 and 1 are disjoint halves of one fixed permutation when the dataset holds 2n images;
        a smaller dataset gives each set half of it (the caller sees the size it got)."""
        total = self.images.shape[0]
        perm = torch.randperm(total, generator=rng_for(self.seed, Stream.HELD_OUT, 2000))
        size = min(n, total // 2) if total >= 2 else total
        idx = perm[set_index * size:(set_index + 1) * size]
        for start in range(0, len(idx), batch_size):
            yield to_unit_range(self.images[idx[start:start + batch_size].to(self.device)])

    def kept_share(self) -> float | None:
        return None                                  # a dataset is used whole: no filter


@dataclass
class ImageItem:
    """One image of a dataset: a stable key (for the log and the fingerprint) and how to get its bytes."""
    key: str
    read: Callable[[], bytes]


@dataclass
class DatasetListing:
    kind: str
    items: list[ImageItem]
    fingerprint_parts: list = field(default_factory=list)   # (name, size, mtime_ns) of the files read
    ignored: int = 0                                         # files skipped by suffix (folder kind)


def decode_square(data: bytes, resolution: int) -> np.ndarray:
    """Image bytes -> uint8 [3, R, R]: RGB, centre-cropped to a square, Lanczos-resized.

    Raises on anything PIL cannot decode (the caller skips and counts it).
    """
    from PIL import Image

    with Image.open(io.BytesIO(data)) as im:
        im.load()
        rgb = im.convert("RGB")
    w, h = rgb.size
    if w == 0 or h == 0:
        raise ValueError("empty image")
    side = min(w, h)
    left, top = (w - side) // 2, (h - side) // 2
    square = rgb.crop((left, top, left + side, top + side))
    if side != resolution:
        square = square.resize((resolution, resolution), Image.Resampling.LANCZOS)
    return np.asarray(square, dtype=np.uint8).transpose(2, 0, 1).copy()


def _file_part(p: Path) -> tuple[str, int, int]:
    st = p.stat()
    return (str(p.resolve()), st.st_size, st.st_mtime_ns)


def list_folder(path: Path) -> DatasetListing:
    if not path.is_dir():
        raise ConfigError(f"data.path: {path} is not a folder (data.source=folder)")
    files = sorted(p for p in path.rglob("*") if p.is_file())
    images = [p for p in files if p.suffix.lower() in IMAGE_SUFFIXES]
    if not images:
        raise ConfigError(f"data.path: no image files ({', '.join(sorted(IMAGE_SUFFIXES))}) under {path}")
    items = [ImageItem(str(p.relative_to(path)), p.read_bytes) for p in images]
    return DatasetListing("folder", items, [_file_part(p) for p in images], ignored=len(files) - len(images))


def parquet_files(path_text: str) -> list[Path]:
    p = Path(path_text).expanduser()
    if any(ch in path_text for ch in "*?["):
        files = sorted(Path(f) for f in glob.glob(str(p), recursive=True))
    elif p.is_dir():
        files = sorted(p.rglob("*.parquet"))
    else:
        files = [p] if p.is_file() else []
    if not files:
        raise ConfigError(f"data.path: no parquet files at {path_text} (a .parquet file, a folder of them or a glob)")
    return files


def _cell_reader(cell, base: Path, key: str) -> Callable[[], bytes]:
    """An image cell -> a function returning its bytes: {bytes, path} struct (bytes first), raw bytes,
    or a path (relative to the dataset). A cell with neither is an unreadable image (raised on read)."""
    def read() -> bytes:
        data, path = (cell.get("bytes"), cell.get("path")) if isinstance(cell, dict) else (cell, None)
        if isinstance(data, (bytes, bytearray, memoryview)) and len(data):
            return bytes(data)
        if isinstance(path, str) and path:
            p = Path(path) if Path(path).is_absolute() else base / path
            return p.read_bytes()
        raise ValueError(f"{key}: the image cell holds neither bytes nor a path")
    return read


def list_parquet(path_text: str, column: str) -> DatasetListing:
    import pyarrow.parquet as pq

    files = parquet_files(path_text)
    items: list[ImageItem] = []
    for f in files:
        pf = pq.ParquetFile(f)
        if column not in pf.schema_arrow.names:
            raise ConfigError(f"data.image_column: {column!r} is not a column of {f}; it has "
                              f"{pf.schema_arrow.names}")
        row = 0
        for group in range(pf.num_row_groups):
            for cell in pf.read_row_group(group, columns=[column]).column(0).to_pylist():
                key = f"{f.name}#{row}"
                items.append(ImageItem(key, _cell_reader(cell, f.parent, key)))
                row += 1
    return DatasetListing("parquet", items, [_file_part(f) for f in files])


def list_hf(path_text: str, column: str, split: str) -> DatasetListing:
    try:
        import datasets
    except ImportError:
        raise ConfigError("data.source: 'hf' needs the `datasets` package (pip install datasets), or save the "
                          "dataset as parquet and use data.source=parquet") from None
    path = Path(path_text).expanduser()
    try:
        ds = datasets.load_from_disk(str(path))
    except (FileNotFoundError, ValueError) as e:
        raise ConfigError(f"data.path: {path} is not a dataset saved with save_to_disk ({e})") from None
    if isinstance(ds, datasets.DatasetDict):
        if not split:
            raise ConfigError(f"data.split: {path} holds splits {list(ds)}; name one")
        if split not in ds:
            raise ConfigError(f"data.split: {split!r} is not a split of {path}; it has {list(ds)}")
        ds = ds[split]
    elif split:
        raise ConfigError(f"data.split: {path} is a single dataset without splits; leave data.split empty")
    if column not in ds.column_names:
        raise ConfigError(f"data.image_column: {column!r} is not a column of {path}; it has {ds.column_names}")
    if isinstance(ds.features[column], datasets.Image):
        ds = ds.cast_column(column, datasets.Image(decode=False))
    items = [ImageItem(f"{path.name}#{i}", _cell_reader(cell, path, f"{path.name}#{i}"))
             for i, cell in enumerate(ds[column])]
    parts = [_file_part(Path(c["filename"])) for c in ds.cache_files]
    return DatasetListing("hf", items, parts)


def list_dataset(cfg: DataConfig) -> DatasetListing:
    if cfg.source == "folder":
        return list_folder(Path(cfg.path).expanduser())
    if cfg.source == "parquet":
        return list_parquet(cfg.path, cfg.image_column)
    if cfg.source == "hf":
        return list_hf(cfg.path, cfg.image_column, cfg.split)
    raise ConfigError(f"data.source: {cfg.source!r} is not a dataset kind")


def dataset_fingerprint(cfg: DataConfig, listing: DatasetListing, resolution: int) -> str:
    """Names, sizes and modification times of the files read, the column, the resolution and the cap."""
    record = {"format": CACHE_FORMAT, "version": CACHE_VERSION, "kind": listing.kind, "column": cfg.image_column,
              "split": cfg.split, "resolution": resolution, "max_images": cfg.max_images,
              "files": listing.fingerprint_parts, "items": len(listing.items)}
    return hashlib.sha256(json.dumps(record, sort_keys=True).encode()).hexdigest()


def decode_all(listing: DatasetListing, resolution: int, max_images: int = 0,
               print_fn=print) -> tuple[np.ndarray, dict]:
    """Decode every item (up to max_images good ones) -> uint8 [N, 3, R, R] and a report.

    Unreadable items are skipped and counted; the first MAX_LISTED_FAILURES are named with the reason.
    """
    good: list[np.ndarray] = []
    failures: list[str] = []
    n_failed = 0
    t0 = last = time.perf_counter()
    for i, item in enumerate(listing.items):
        if max_images and len(good) >= max_images:
            break
        try:
            good.append(decode_square(item.read(), resolution))
        except Exception as e:  # PIL raises many types (OSError, SyntaxError, ValueError, DecompressionBomb...)
            n_failed += 1
            if len(failures) < MAX_LISTED_FAILURES:
                failures.append(f"{item.key}: {type(e).__name__}: {str(e)[:120]}")
        now = time.perf_counter()
        if now - last > 10:
            rate = (i + 1) / (now - t0)
            print_fn(f"[gan] decoding {listing.kind} images: {i + 1}/{len(listing.items)} "
                     f"({rate:.0f}/s, {n_failed} unreadable)", flush=True)
            last = now
    report = {"kind": listing.kind, "n_items": len(listing.items), "n_images": len(good),
              "n_unreadable": n_failed, "unreadable": failures, "ignored_files": listing.ignored}
    if not good:
        raise ConfigError(f"data.path: none of the {len(listing.items)} {listing.kind} images could be decoded"
                          + (f" (first: {failures[0]})" if failures else ""))
    return np.stack(good), report


def cache_path(cfg: DataConfig, work_dir: str, fingerprint: str, resolution: int, kind: str) -> Path:
    root = Path(cfg.cache_dir or Path(work_dir) / "gan-data-cache").expanduser()
    return root / f"{kind}-{resolution}px-{fingerprint[:20]}.safetensors"


def load_or_build_cache(cfg: DataConfig, resolution: int, work_dir: str, print_fn=print) -> tuple[torch.Tensor, dict]:
    """The dataset as uint8 [N, 3, R, R] (CPU): from its cache file, or decoded once and cached."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    listing = list_dataset(cfg)
    fingerprint = dataset_fingerprint(cfg, listing, resolution)
    path = cache_path(cfg, work_dir, fingerprint, resolution, listing.kind)
    if path.is_file():
        try:
            with safe_open(str(path), framework="pt", device="cpu") as f:
                meta = json.loads((f.metadata() or {})["report"])
                images = f.get_tensor("images")
            if meta.get("fingerprint") == fingerprint:
                print_fn(f"[gan] data: {images.shape[0]} images from the cache {path}", flush=True)
                return images, {**meta, "cache": str(path)}
        except Exception as e:  # a damaged cache is rebuilt, never trusted
            print_fn(f"[gan] data cache {path} unreadable ({type(e).__name__}); decoding again", flush=True)
    print_fn(f"[gan] data: decoding {len(listing.items)} {listing.kind} images to {resolution} px (once)", flush=True)
    array, report = decode_all(listing, resolution, cfg.max_images, print_fn)
    report = {**report, "fingerprint": fingerprint, "resolution": resolution}
    images = torch.from_numpy(array)
    with atomic_output(path) as tmp:
        save_file({"images": images}, str(tmp), metadata={"format": CACHE_FORMAT, "report": json.dumps(report)})
    if report["n_unreadable"]:
        print_fn(f"[gan] data: skipped {report['n_unreadable']} unreadable image(s); first: "
                 f"{report['unreadable'][0]}", flush=True)
    print_fn(f"[gan] data: {images.shape[0]} images cached in {path}", flush=True)
    return images, {**report, "cache": str(path)}


# ---------------------------------------------------------------------------------------------
# The one entry point
# ---------------------------------------------------------------------------------------------

def open_source(cfg: DataConfig, resolution: int, device: torch.device, *, seed: int, work_dir: str,
                teacher: nn.Module | None = None, keep: Keep | None = None, print_fn=print) -> DataSource:
    """The data source of `cfg` on `device`; `teacher` is the teacher preset's generator (source teacher),
    `keep` the predicate of cfg.teacher_filter (built by the caller, which holds the judging networks)."""
    if cfg.source == "teacher":
        if teacher is None:
            raise ValueError("open_source: data.source=teacher needs the teacher's generator")
        if (keep is None) != (cfg.teacher_filter == "none"):
            raise ValueError(f"open_source: data.teacher_filter={cfg.teacher_filter!r} needs its keep predicate "
                             "(and only then)")
        return TeacherSource(teacher, resolution, device, truncation=cfg.teacher_truncation, seed=seed,
                             description=cfg.describe(), keep=keep,
                             keep_name="" if cfg.teacher_filter == "none" else cfg.teacher_filter)
    images, report = load_or_build_cache(cfg, resolution, work_dir, print_fn)
    return TensorSource(images, device, mirror=cfg.mirror, seed=seed, description=cfg.describe(), report=report)
