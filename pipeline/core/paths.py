"""Where outputs go: the work dir, URIs vs. paths, and the one check every stage runs on its output
locations before any work (so a bad location fails in a second with the field's name, not after
minutes of work or an MLflow retry loop)."""

from __future__ import annotations

import copy
import dataclasses
import os
import tempfile
from pathlib import Path

from pipeline.core.config import ConfigError

# Set by Ray for the entrypoint of a `ray job submit` job (and inherited by the commands it runs).
RAY_JOB_ENV = "RAY_JOB_CONFIG_JSON_ENV_VAR"


def default_work_dir() -> str:
    return os.environ.get("HFLD_WORK_DIR", str(Path.home() / "hfld-work"))


def is_uri(location: str) -> bool:
    """s3://bucket/prefix, gs://..., file:///...: a pyarrow/fsspec filesystem URI rather than a path."""
    return "://" in location


def absolute(path: str | Path) -> Path:
    """`path` with ~ expanded, made absolute against the current directory (what files record)."""
    return Path(path).expanduser().resolve()


def check_writable_dir(field_name: str, path: Path) -> None:
    """`path` is a directory this process can write, or can be created as one: nothing on the way is
    a file, and the deepest existing folder takes a probe file (removed at once). Creates nothing."""
    existing = path
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        why = "it exists and is not a directory" if existing == path else f"{existing} is a file"
        raise ConfigError(f"{field_name}: {path} is not writable: {why}; choose another {field_name}")
    try:
        fd, probe = tempfile.mkstemp(dir=existing, prefix=".write-probe-")
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        where = "" if existing == path else f" (its folder {existing} cannot be written)"
        raise ConfigError(f"{field_name}: {path} is not writable{where}: {e.strerror or e}; choose another "
                          f"{field_name}") from None


def check_output_locations(paths: dict[str, str | Path], uris_allowed: dict[str, str] | None = None, *,
                           probe: bool = True) -> None:
    """Refuse output locations that would fail late or land in the wrong place (field name -> value).

    `paths` must be filesystem paths (local, NFS...): a URI there would become a folder named "s3:"
    in the current directory. Inside a `ray job submit` job, the current directory is a temporary copy
    of --working-dir on the head node, deleted with the job, so relative paths are refused there too
    (`uris_allowed` fields, e.g. Ray's storage_path, may also be URIs). With `probe`, every path in
    `paths` must be a directory this process can write or create (check_writable_dir).
    """
    in_job = bool(os.environ.get(RAY_JOB_ENV))
    for field_name, value in {**paths, **(uris_allowed or {})}.items():
        if not value:
            continue
        value = str(value)
        if is_uri(value):
            if field_name in paths:
                raise ConfigError(f"{field_name}: {value!r} is a URI; it must be a filesystem path (a shared "
                                  "mount such as NFS on a cluster)")
            continue
        if in_job and not Path(value).expanduser().is_absolute():
            raise ConfigError(f"{field_name}: {value!r} is a relative path, and this runs as a Ray job whose "
                              "current directory is a temporary copy of --working-dir on the head node, deleted "
                              "with the job; give an absolute path on storage every node mounts (e.g. "
                              "/mnt/hfld/work), or set HFLD_WORK_DIR")
        if probe and field_name in paths:
            check_writable_dir(field_name, absolute(value))


# ---------------------------------------------------------------------------------------------
# Path fields of configs: recorded absolute
# ---------------------------------------------------------------------------------------------

PATH_KEY = "hfld_path"
# Field metadata: a filesystem path ("" = unset; URIs and runs:/ models:/ references are kept as given).
PATH = {PATH_KEY: "path"}
# A shipped name (e.g. a tune space "starter") or a path (anything with "/", a .yaml suffix or an existing file).
NAME_OR_PATH = {PATH_KEY: "name_or_path"}
KEPT_AS_GIVEN = ("auto",)   # resume: "auto" is a keyword, not a path


def absolute_text(value: str, kind: str = "path") -> str:
    """`value` as an absolute path (~ expanded, relative to the current directory, `..` folded, symlinks
    kept), or unchanged when it is not a local path: "", a keyword, a URI, runs:/ or models:/, a name."""
    if not value or value in KEPT_AS_GIVEN or is_uri(value) or value.startswith(("runs:", "models:")):
        return value
    if kind == "name_or_path" and "/" not in value and Path(value).suffix not in (".yaml", ".yml") \
            and not Path(value).is_file():
        return value
    return os.path.abspath(os.path.expanduser(value))


def absolute_paths(cfg):
    """A copy of config dataclass `cfg` (nested ones included) whose path fields (metadata PATH or
    NAME_OR_PATH; a dict or tuple field: its values) hold absolute paths.

    Stages call it once, after check_output_locations (which must still see relative paths, to refuse
    them inside a Ray job): from then on every file, manifest, T file and MLflow param records the
    paths the stage really used, whatever the current directory of a later reader. The copy skips
    __post_init__ (values only become absolute; their validation does not change).
    """
    if not dataclasses.is_dataclass(cfg) or isinstance(cfg, type):
        return cfg
    out = copy.copy(cfg)
    for f in dataclasses.fields(cfg):
        value, kind = getattr(cfg, f.name), f.metadata.get(PATH_KEY)
        if kind and isinstance(value, str):
            value = absolute_text(value, kind)
        elif kind and isinstance(value, dict):
            value = {k: absolute_text(v, kind) if isinstance(v, str) else v for k, v in value.items()}
        elif kind and isinstance(value, tuple):
            value = tuple(absolute_text(v, kind) if isinstance(v, str) else v for v in value)
        elif dataclasses.is_dataclass(value):
            value = absolute_paths(value)
        object.__setattr__(out, f.name, value)
    return out
