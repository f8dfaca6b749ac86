"""Files written so that an interrupted writer never leaves a half-written file under its final name.

    atomic_write_bytes(path, data)              # small files: JSON records, T, manifests
    with atomic_output(path) as tmp:            # streaming writers (parquet, archive members):
        write_somehow(tmp)                      #   write the temp file, inspect it (hash, size)...
    # ...and only a clean exit renames it into place; an exception removes it

Temp files are hidden (`.<name>.<random>.tmp`) and live beside the final file (same filesystem, so
the rename is atomic); `remove_stale_temps` clears those an interrupted process left behind.
sha256 of files has one implementation, `models.load.common.file_sha256` (models may not import
pipeline), re-used here and everywhere else.

Also the small JSON-lines helpers shared by the stages.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from models.load.common import file_sha256
from pipeline.core.config import ConfigError, flatten

__all__ = ["atomic_output", "atomic_write_bytes", "current_umask", "file_sha256", "jsonl_bytes", "json_safe",
           "read_jsonl", "refuse_different_job", "remove_stale_temps"]

TEMP_SUFFIX = ".tmp"


def current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextmanager
def atomic_output(path: str | Path, mode: int | None = None) -> Iterator[Path]:
    """Yield a temp path beside `path`; on a clean exit fsync it, give it the usual file mode (or
    `mode`) and rename it to `path`; on an exception delete it. The parent folder is created."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=TEMP_SUFFIX)
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.chmod(tmp, mode if mode is not None else 0o666 & ~current_umask())  # mkstemp makes 0600
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def atomic_write_bytes(path: str | Path, data: bytes, mode: int | None = None) -> Path:
    with atomic_output(path, mode) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def remove_stale_temps(*folders: Path) -> int:
    """Delete the hidden temp files an interrupted writer left in `folders`; returns how many."""
    stale = [p for d in folders for p in Path(d).glob(f".*{TEMP_SUFFIX}")]
    for p in stale:
        p.unlink(missing_ok=True)
    return len(stale)


def read_jsonl(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def jsonl_bytes(rows: list[dict]) -> bytes:
    return "".join(json.dumps(r) + "\n" for r in rows).encode()


def json_safe(node):
    """NaN/inf -> None (strict JSON); tuples -> lists."""
    if isinstance(node, dict):
        return {k: json_safe(v) for k, v in node.items()}
    if isinstance(node, (list, tuple)):
        return [json_safe(v) for v in node]
    if isinstance(node, float) and not math.isfinite(node):
        return None
    return node


def refuse_different_job(out_dir: Path, record: dict, stage: str) -> None:
    """An output directory holds one job: `out_dir/_meta/job.json` (written by the job's first run) must
    equal this job's `record` (its output-affecting settings), else ConfigError naming what differs."""
    path = Path(out_dir) / "_meta" / "job.json"
    if not path.is_file():
        return
    try:
        old = json.loads(path.read_text())
    except json.JSONDecodeError:
        raise ConfigError(f"output_dir: {path} is not valid JSON; remove it only if the shards beside it are "
                          "yours to regenerate") from None
    new = json.loads(json.dumps(record))
    if old != new:
        a, b = flatten(old), flatten(new)
        diff = sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))
        raise ConfigError(f"output_dir: {out_dir} holds a different {stage} job (differs in {diff[:6]}); "
                          "use another output_dir, or the same settings to resume it")
