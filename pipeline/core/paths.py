"""Where outputs go: the work dir, URIs vs. paths, and the one check every stage runs on its output
locations before any work (so a bad location fails in a second with the field's name, not after
minutes of work or an MLflow retry loop)."""

from __future__ import annotations

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
