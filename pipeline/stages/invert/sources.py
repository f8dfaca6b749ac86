"""Reading the labelled faces to invert: a folder of images, parquet, CSV, or a local Hugging Face dataset.

A `Source` is a picklable description (paths, the row index) made on the driver; it opens its files
lazily in whichever process reads (a Ray task, the writer actor). Rows are numbered 0..n-1 in a fixed
order (folder: relative paths sorted; tables: file order, then row order), and everything is read by
row number:
    read_images(rows) -> [encoded bytes or None]      (None: missing file / null image)
    read_labels(rows) -> pyarrow table of the label columns, types and values as in the input
    ids(rows), paths(rows) -> source ids and image paths (strings)
Labels are never converted: the arrow columns are taken from the input and written out as they are
(CSV columns are read as strings, so "007" stays "007").
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from pipeline.core.config import ConfigError
from pipeline.stages.generate import ParquetRows
from pipeline.stages.invert.config import InputConfig

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".gif", ".tif", ".tiff")


def detect_kind(path: Path) -> str:
    """auto -> folder / parquet / csv / hf from what `path` holds."""
    if path.is_file():
        suffix = path.suffix.lower()
        if suffix == ".parquet":
            return "parquet"
        if suffix == ".csv":
            return "csv"
        raise ConfigError(f"input.path: {path} is a {suffix or 'suffix-less'} file; give a folder of images, a "
                          ".parquet or .csv file, a folder of .parquet files or a saved Hugging Face dataset")
    if (path / "dataset_info.json").is_file() or (path / "dataset_dict.json").is_file() or (path / "state.json").is_file():
        return "hf"
    if any(path.glob("*.parquet")):
        return "parquet"
    return "folder"


def read_file_bytes(path: Path) -> bytes | None:
    try:
        return path.read_bytes()
    except OSError:
        return None


@dataclass
class Source:
    """Base: n rows, the label columns' arrow schema (and Hugging Face features when known)."""
    cfg: InputConfig
    root: Path
    n_rows: int = 0
    label_names: tuple[str, ...] = ()
    label_schema_bytes: bytes = b""          # serialised pyarrow schema of the label columns
    hf_features: dict = field(default_factory=dict)

    @property
    def label_schema(self):
        import pyarrow as pa
        return pa.ipc.read_schema(pa.py_buffer(self.label_schema_bytes)) if self.label_schema_bytes else pa.schema([])

    def set_label_schema(self, schema) -> None:
        self.label_names = tuple(schema.names)
        self.label_schema_bytes = schema.serialize().to_pybytes()

    def describe(self) -> str:
        return f"{self.kind} {self.root} ({self.n_rows} rows; labels {list(self.label_names) or 'none'})"

    kind = "?"


# ---------------------------------------------------------------------------------------------
# Folder of images
# ---------------------------------------------------------------------------------------------

@dataclass
class FolderSource(Source):
    files: tuple[str, ...] = ()               # relative POSIX paths, sorted
    kind = "folder"

    @classmethod
    def open(cls, cfg: InputConfig, root: Path) -> "FolderSource":
        import pyarrow as pa
        files = sorted(p.relative_to(root).as_posix() for p in root.rglob("*")
                       if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES
                       and not any(part.startswith(".") for part in p.relative_to(root).parts))
        if cfg.limit:
            files = files[: cfg.limit]
        if not files:
            raise ConfigError(f"input.path: no image files ({', '.join(IMAGE_SUFFIXES)}) under {root}")
        if cfg.id_column or cfg.label_columns:
            raise ConfigError("input.id_column / input.label_columns: a folder of images has no columns; its ids are "
                              "the relative paths; use input.folder_label for the parent folder's name, or give a "
                              "CSV/parquet with a path column and the labels")
        src = cls(cfg, root, len(files), files=tuple(files))
        src.set_label_schema(pa.schema([(cfg.folder_label, pa.string())] if cfg.folder_label else []))
        return src

    def read_images(self, rows) -> list[bytes | None]:
        return [read_file_bytes(self.root / self.files[int(r)]) for r in rows]

    def read_labels(self, rows):
        import pyarrow as pa
        if not self.cfg.folder_label:
            return pa.table({})
        names = [Path(self.files[int(r)]).parent.name for r in rows]
        return pa.table({self.cfg.folder_label: pa.array(names, pa.string())})

    def ids(self, rows) -> list[str]:
        return [self.files[int(r)] for r in rows]

    def paths(self, rows) -> list[str]:
        return [self.files[int(r)] for r in rows]


# ---------------------------------------------------------------------------------------------
# Tables: parquet, CSV, Hugging Face
# ---------------------------------------------------------------------------------------------

def split_image_value(value) -> tuple[bytes | None, str]:
    """An image cell (struct {bytes, path}, binary, or a path string) -> (bytes or None, path or "")."""
    if value is None:
        return None, ""
    if isinstance(value, dict):
        return value.get("bytes") or None, value.get("path") or ""
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value), ""
    if isinstance(value, str):
        return None, value
    raise ConfigError(f"input.image_column: cells of type {type(value).__name__} are not images (want a struct "
                      "{bytes, path}, binary or a path string)")


@dataclass
class TableSource(Source):
    """Rows of one logical table: parquet files, a CSV file, or a Hugging Face dataset on disk."""
    kind: str = "parquet"
    files: tuple[str, ...] = ()
    parquet: ParquetRows | None = None        # parquet: the row reader over `files`
    image_root: str = ""
    _cache: dict = field(default_factory=dict, repr=False, compare=False)

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_cache"] = {}                  # open files stay in the process that opened them
        return state

    # -- opening --------------------------------------------------------------------------------

    @classmethod
    def open(cls, cfg: InputConfig, root: Path, kind: str) -> "TableSource":
        src = cls(cfg, root, kind=kind)
        if kind == "parquet":
            import pyarrow.parquet as pq
            files = [root] if root.is_file() else sorted(root.glob("*.parquet"))
            if not files:
                raise ConfigError(f"input.path: no .parquet files in {root}")
            schema = pq.read_schema(files[0])
            for f in files[1:]:
                other = pq.read_schema(f)
                if not other.remove_metadata().equals(schema.remove_metadata()):
                    raise ConfigError(f"input.path: {f.name} has a different schema from {files[0].name}")
            src.files = tuple(str(f) for f in files)
            src.parquet = ParquetRows(src.files)
            src.n_rows = src.parquet.n_rows
            src.hf_features = hf_features_from_metadata(schema.metadata)
        elif kind == "csv":
            src.files = (str(root),)
            schema = src.table().schema
            src.n_rows = src.table().num_rows
        else:
            ds = src.hf_dataset()
            schema = ds.data.schema
            src.n_rows = len(ds)
            src.hf_features = ds.features.to_dict()
        src.image_root = cfg.image_root or str(root.parent if root.is_file() else root)
        if cfg.limit:
            src.n_rows = min(src.n_rows, cfg.limit)
        src.check_columns(schema)
        return src

    def check_columns(self, schema) -> None:
        cfg, names = self.cfg, list(schema.names)
        if cfg.image_column not in names:
            raise ConfigError(f"input.image_column: {cfg.image_column!r} is not a column of {self.root}; its "
                              f"columns: {names}")
        if cfg.id_column and cfg.id_column not in names:
            raise ConfigError(f"input.id_column: {cfg.id_column!r} is not a column of {self.root}; its columns: {names}")
        labels = [n for n in names if n != cfg.image_column] if cfg.label_columns is None else list(cfg.label_columns)
        missing = [n for n in labels if n not in names]
        if missing:
            raise ConfigError(f"input.label_columns: {missing} not in {self.root}; its columns: {names}")
        if cfg.image_column in labels:
            raise ConfigError(f"input.label_columns: the image column {cfg.image_column!r} cannot be a label")
        if cfg.folder_label:
            raise ConfigError("input.folder_label: only for a folder of images")
        import pyarrow as pa
        self.set_label_schema(pa.schema([schema.field(n) for n in labels]))
        self.hf_features = {k: v for k, v in self.hf_features.items() if k in labels}

    # -- lazily opened data ---------------------------------------------------------------------

    def table(self):
        """CSV: the whole table (every column as a string, so values stay verbatim)."""
        if "csv" not in self._cache:
            import csv
            import pyarrow as pa
            import pyarrow.csv as pacsv
            with open(self.files[0], newline="", encoding="utf-8") as f:
                names = next(csv.reader(f), [])
            if not names:
                raise ConfigError(f"input.path: {self.files[0]} has no header row")
            opts = pacsv.ConvertOptions(column_types={n: pa.string() for n in names}, strings_can_be_null=False,
                                        quoted_strings_can_be_null=False)
            self._cache["csv"] = pacsv.read_csv(self.files[0], convert_options=opts)
        return self._cache["csv"]

    def hf_dataset(self):
        if "hf" not in self._cache:
            try:
                import datasets
            except ImportError:
                raise ConfigError(f"input.path: {self.root} is a saved Hugging Face dataset; reading it needs the "
                                  "`datasets` package (pip install 'hfld[hf]' or pip install datasets)") from None
            try:
                ds = datasets.load_from_disk(str(self.root))
            except Exception as e:   # datasets raises FileNotFoundError / its own errors for a bad folder
                raise ConfigError(f"input.path: {self.root} is not a saved Hugging Face dataset ({e})") from None
            if isinstance(ds, datasets.DatasetDict):
                if not self.cfg.split:
                    raise ConfigError(f"input.split: {self.root} holds splits {list(ds)}; choose one")
                if self.cfg.split not in ds:
                    raise ConfigError(f"input.split: {self.cfg.split!r} is not one of {list(ds)}")
                ds = ds[self.cfg.split]
            self._cache["hf"] = ds
        return self._cache["hf"]

    def rows(self, rows, columns: list[str]):
        import pyarrow as pa
        rows = np.asarray(rows, dtype=np.int64)
        if not columns:
            return pa.table({})
        if self.kind == "parquet":
            return self.parquet.read(rows, columns)
        if self.kind == "csv":
            return self.table().select(columns).take(pa.array(rows))
        return self.hf_dataset().with_format("arrow")[rows.tolist()].select(columns)

    # -- the interface --------------------------------------------------------------------------

    def read_images(self, rows) -> list[bytes | None]:
        column = self.rows(rows, [self.cfg.image_column]).column(0).to_pylist()
        out = []
        for value in column:
            data, path = split_image_value(value)
            if data is None and path:
                p = Path(path)
                data = read_file_bytes(p if p.is_absolute() else Path(self.image_root) / p)
            out.append(data)
        return out

    def read_labels(self, rows):
        return self.rows(rows, list(self.label_names))

    def ids(self, rows) -> list[str]:
        if not self.cfg.id_column:
            return [str(int(r)) for r in rows]
        return [str(v) for v in self.rows(rows, [self.cfg.id_column]).column(0).to_pylist()]

    def paths(self, rows) -> list[str]:
        return [split_image_value(v)[1] for v in self.rows(rows, [self.cfg.image_column]).column(0).to_pylist()]


def hf_features_from_metadata(metadata) -> dict:
    """The Hugging Face features recorded in a parquet schema's metadata (datasets writes them), or {}."""
    try:
        return json.loads((metadata or {}).get(b"huggingface", b"{}")).get("info", {}).get("features", {}) or {}
    except (ValueError, AttributeError):
        return {}


def open_source(cfg: InputConfig) -> Source:
    """Check the input and index its rows (on the driver, before any work)."""
    if not cfg.path:
        raise ConfigError("input.path: empty; give a folder of images, a parquet/CSV file or a saved Hugging Face "
                          "dataset (--input PATH)")
    root = Path(cfg.path).expanduser().resolve()
    if not root.exists():
        raise ConfigError(f"input.path: {root} does not exist")
    kind = detect_kind(root) if cfg.kind == "auto" else cfg.kind
    if kind == "folder":
        if not root.is_dir():
            raise ConfigError(f"input.path: {root} is not a folder (input.kind = folder)")
        return FolderSource.open(cfg, root)
    return TableSource.open(cfg, root, kind)


def check_unique_ids(source: Source) -> None:
    """Source ids must be unique: generate assigns splits from them."""
    ids = source.ids(np.arange(source.n_rows))
    seen, dup = set(), []
    for i in ids:
        if i in seen:
            dup.append(i)
        seen.add(i)
    if dup:
        raise ConfigError(f"input.id_column: ids are not unique ({dup[0]!r} and {len(dup) - 1} more repeat); "
                          "choose a column with one value per image")
