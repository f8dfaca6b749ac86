"""Latent sources: faces whose latents come from a file instead of random z (`hfld generate --sources`).

The file is what `hfld invert` writes (format "hfld-invert"): parquet shards, one row per input image,
with `status` ("ok" rows have a latent), `source_id`, the input's label columns (names listed in the
file metadata), and the latent `wplus` (list of float16/float32, L x w_dim values, row-major) plus, when
the inversion optimised them, the noise maps `noise` (every layer's r x r map, flattened, in order).
The column names below are the contract between the two stages; invert imports them from here.

Source k of a sources run is the k-th usable ("ok") row in file order; its split is a function of its
id (or of another column, e.g. a subject id) alone, so all variants of a face share one split and a
rerun (or another job on the same sources) assigns the same splits.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from pipeline.core.config import ConfigError

INVERTED_FORMAT = "hfld-invert"
STATUS_COLUMN, OK_STATUS = "status", "ok"
ID_COLUMN, LATENT_COLUMN, NOISE_COLUMN = "source_id", "wplus", "noise"
# Inversion quality copied onto every generated row (filter sources by how well they were inverted).
QUALITY_COLUMNS = ("identity_cosine", "psnr")


class ParquetRows:
    """Read rows of a list of parquet files by global row number (file order, then row order), reading
    only the row groups that hold them; the last row group read is kept (consecutive reads share it).
    Picklable: files are opened lazily in the reading process."""

    def __init__(self, files: list[str] | tuple[str, ...]):
        import pyarrow.parquet as pq
        self.files = tuple(str(f) for f in files)
        counts = [pq.ParquetFile(f).metadata.num_rows for f in self.files]
        self.offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
        self._open: dict = {}

    @property
    def n_rows(self) -> int:
        return int(self.offsets[-1])

    def __getstate__(self):
        return {"files": self.files, "offsets": self.offsets, "_open": {}}

    def _file(self, f: int):
        import pyarrow.parquet as pq
        key = ("file", f)
        if key not in self._open:        # one file open at a time (drops the row group of another file)
            pf = pq.ParquetFile(self.files[f])
            meta = pf.metadata
            starts = np.concatenate([[0], np.cumsum([meta.row_group(g).num_rows for g in range(meta.num_row_groups)])])
            self._open = {key: (pf, starts)}
        return self._open[key]

    def _group(self, f: int, g: int, columns: tuple[str, ...]):
        pf, starts = self._file(f)
        key = ("group", f, g, columns)
        if key not in self._open:
            self._open = {("file", f): (pf, starts), key: pf.read_row_group(g, columns=list(columns))}
        return self._open[key]

    def read(self, rows, columns: list[str]):
        """pyarrow table of `columns` for the global `rows`, in the order given."""
        import pyarrow as pa
        rows = np.asarray(rows, dtype=np.int64)
        if not columns:
            return pa.table({})
        if len(rows) == 0:
            import pyarrow.parquet as pq
            return pq.read_schema(self.files[0]).empty_table().select(columns)
        file_of = np.searchsorted(self.offsets, rows, side="right") - 1
        parts, positions = [], []
        for f in np.unique(file_of):
            sel = np.nonzero(file_of == f)[0]
            local = rows[sel] - self.offsets[f]
            _, starts = self._file(int(f))
            group_of = np.searchsorted(starts, local, side="right") - 1
            for g in np.unique(group_of):
                inside = np.nonzero(group_of == g)[0]
                table = self._group(int(f), int(g), tuple(columns))
                parts.append(table.take(pa.array(local[inside] - starts[g])))
                positions.append(sel[inside])
        table = pa.concat_tables(parts)
        return table.take(pa.array(np.argsort(np.concatenate(positions), kind="stable")))


def inverted_files(path: str | Path) -> list[Path]:
    """The shards of an invert output (folder or one file)."""
    p = Path(path).expanduser().resolve()
    files = [p] if p.is_file() else sorted(p.glob("part-*.parquet")) if p.is_dir() else []
    if not files:
        raise ConfigError(f"sources: no inverted parquet at {p}; give the output folder of `hfld invert` "
                          "(part-*.parquet) or one of its files")
    return files


def read_inverted_metadata(file: Path) -> dict:
    import pyarrow.parquet as pq
    meta = pq.read_schema(file).metadata or {}
    try:
        info = json.loads(meta.get(b"hfld", b"{}"))
    except ValueError:
        info = {}
    if info.get("format") != INVERTED_FORMAT:
        raise ConfigError(f"sources: {file} is not an `hfld invert` output (format {info.get('format')!r}, "
                          f"expected {INVERTED_FORMAT!r})")
    return info


@dataclass
class LatentSources:
    """The usable rows of an invert output (see the module docstring)."""
    path: str
    reader: ParquetRows
    usable: np.ndarray                         # [n] global row numbers of the "ok" rows, file order
    n_rows: int                                # all rows, usable or not
    meta: dict = field(default_factory=dict)   # the files' `hfld` metadata (shard-independent part)
    label_schema_bytes: bytes = b""
    hf_features: dict = field(default_factory=dict)

    @property
    def n_sources(self) -> int:
        return int(len(self.usable))

    @property
    def label_names(self) -> list[str]:
        return list(self.meta.get("label_columns", []))

    @property
    def label_schema(self):
        import pyarrow as pa
        return pa.ipc.read_schema(pa.py_buffer(self.label_schema_bytes))

    @property
    def noise_shapes(self) -> list[list[int]]:
        return [list(s) for s in self.meta.get("noise_shapes", [])]

    def latents(self, k: np.ndarray) -> tuple[np.ndarray, list[np.ndarray] | None]:
        """Sources k -> (wplus float32 [u, L, w_dim], per-layer noise [u, 1, r, r] float32 or None)."""
        n_latent, w_dim = int(self.meta["n_latent"]), int(self.meta["w_dim"])
        columns = [LATENT_COLUMN] + ([NOISE_COLUMN] if self.noise_shapes else [])
        table = self.reader.read(self.usable[np.asarray(k, np.int64)], columns)
        wplus = list_column(table.column(LATENT_COLUMN), n_latent * w_dim).reshape(-1, n_latent, w_dim)
        if not self.noise_shapes:
            return wplus, None
        flat = list_column(table.column(NOISE_COLUMN), sum(h * w for h, w in self.noise_shapes))
        maps, start = [], 0
        for h, w in self.noise_shapes:
            maps.append(flat[:, start:start + h * w].reshape(-1, 1, h, w))
            start += h * w
        return wplus, maps

    def columns(self, k: np.ndarray):
        """Sources k -> pyarrow table: source_id, the label columns (verbatim), the inversion quality."""
        names = [ID_COLUMN] + self.label_names + list(QUALITY_COLUMNS)
        return self.reader.read(self.usable[np.asarray(k, np.int64)], names)


def list_column(column, width: int) -> np.ndarray:
    """A list<float16|float32> column of fixed width -> float32 [n, width]."""
    import pyarrow as pa
    arr = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    values = arr.flatten().to_numpy(zero_copy_only=False).astype(np.float32)
    if len(values) != len(arr) * width:
        raise ConfigError(f"sources: a latent column holds {len(values)} values for {len(arr)} rows, expected "
                          f"{width} per row")
    return values.reshape(len(arr), width)


def open_latent_sources(path: str | Path) -> LatentSources:
    """Index the usable rows of an invert output (checks its format; reads only the status column)."""
    import pyarrow.parquet as pq
    files = inverted_files(path)
    metas = [read_inverted_metadata(f) for f in files]
    shared = {k: v for k, v in metas[0].items() if k not in ("shard", "n_shards")}
    for f, m in zip(files[1:], metas[1:]):
        if {k: v for k, v in m.items() if k not in ("shard", "n_shards")} != shared:
            raise ConfigError(f"sources: {f.name} belongs to another invert job than {files[0].name}")
    reader = ParquetRows([str(f) for f in files])
    status = np.concatenate([pq.read_table(f, columns=[STATUS_COLUMN]).column(0).to_numpy(zero_copy_only=False)
                             for f in files]) if files else np.zeros(0, dtype=object)
    usable = np.nonzero(status == OK_STATUS)[0].astype(np.int64)
    if len(usable) == 0:
        raise ConfigError(f"sources: none of the {len(status)} rows of {path} has status 'ok' (no face was "
                          "inverted)")
    schema = pq.read_schema(files[0])
    labels = shared.get("label_columns", [])
    import pyarrow as pa
    label_schema = pa.schema([schema.field(n) for n in labels])
    from_meta = json.loads((schema.metadata or {}).get(b"huggingface", b"{}")).get("info", {}).get("features", {})
    return LatentSources(str(Path(path).expanduser().resolve()), reader, usable, int(len(status)), shared,
                         label_schema.serialize().to_pybytes(),
                         {k: v for k, v in from_meta.items() if k in labels})


def split_of(value: str, fractions: dict[str, float], seed: int) -> str:
    """The split of one source: u = first 8 bytes of sha256(seed, value) as a fraction of 2^64, then the
    first split whose cumulative fraction exceeds u (the order of `fractions`)."""
    digest = hashlib.sha256(f"{int(seed)}\x00{value}".encode()).digest()
    u = int.from_bytes(digest[:8], "big") / 2.0 ** 64
    total = 0.0
    names = list(fractions)
    for name in names:
        total += fractions[name]
        if u < total:
            return name
    return names[-1]
