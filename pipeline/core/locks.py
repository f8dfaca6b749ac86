"""One process per run folder: the lock every writing stage (train, generate, tune, run) takes.

    with run_lock(cfg.run_dir, "run_name") as lock:    # ConfigError if another process holds it
        lock.update(mlflow={"run_id": ..., "tracking_uri": ...})   # what a successor may need to clean up
        ...                                                        # the stage's work
    # released (the lock file removed) on return, on an exception and on KeyboardInterrupt

The lock is `<folder>/.hfld.lock`, a small JSON record of its holder (pid, host, start time, command
and whatever the stage adds with `update`), held with an exclusive `flock`. The kernel releases a
flock when its process dies, however it dies, so a lock file left by a killed process (SIGKILL, a
lost node) is free: the next process takes it over, prints a note naming the dead holder, and finds
the dead holder's record in `lock.previous` (the stages use it to mark the MLflow run that process
left RUNNING as KILLED). A live holder is never taken over: the second process gets a ConfigError
naming it (pid, host, since, command) and what to do.

On a filesystem without flock support (rare: some FUSE mounts) the record alone decides: a holder
on this host whose pid is gone is stale; a holder on another host is assumed alive (its pid cannot
be checked from here) and the message says which file to delete once that process is known to be
gone.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import shlex
import socket
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from pipeline.core.config import ConfigError

LOCK_FILE = ".hfld.lock"


def this_host() -> str:
    return socket.gethostname()


def pid_alive(pid: int) -> bool:
    """Whether process `pid` exists on this host (a zombie counts as gone)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:   # exists, owned by someone else
        return True
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True


def describe(record: dict) -> str:
    """"pid 123 on host-a since 2026-12-02 01:02:03 (hfld train ...)" from a lock record."""
    command = record.get("command") or "?"
    return (f"pid {record.get('pid', '?')} on {record.get('host', '?')} since {record.get('since', '?')} "
            f"({command if len(command) <= 200 else command[:197] + '...'})")


@dataclass
class RunLock:
    """A held lock: `path` (the lock file), `record` (what it says about this process), `previous`
    (the record of a dead holder it took over, or None)."""
    path: Path
    fd: int
    record: dict
    previous: dict | None = None
    created: Path | None = None       # the topmost folder acquire() created (None: the folder existed)
    uses_flock: bool = True
    _released: bool = field(default=False, repr=False)

    def update(self, **info) -> None:
        """Add `info` to the lock record (e.g. the MLflow run this process opened)."""
        self.record.update(info)
        _write_record(self.fd, self.record)

    def release(self) -> None:
        if self._released:
            return
        self._released = True
        try:
            if _same_file(self.path, self.fd):
                self.path.unlink()
        except OSError:
            pass
        finally:
            os.close(self.fd)
        if self.created is not None:   # a run that failed before writing anything leaves no empty folders
            folder = self.path.parent
            while True:
                try:
                    folder.rmdir()
                except OSError:
                    break
                if folder == self.created:
                    break
                folder = folder.parent


def _same_file(path: Path, fd: int) -> bool:
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return False
    own = os.fstat(fd)
    return (st.st_dev, st.st_ino) == (own.st_dev, own.st_ino)


def _read_record(fd: int) -> dict | None:
    os.lseek(fd, 0, os.SEEK_SET)
    raw = b""
    while chunk := os.read(fd, 65536):
        raw += chunk
    if not raw.strip():
        return None
    try:
        record = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError):
        return {"command": f"unreadable lock record {raw[:60]!r}"}
    return record if isinstance(record, dict) else None


def _write_record(fd: int, record: dict) -> None:
    data = json.dumps(record, indent=1, sort_keys=True).encode()
    os.lseek(fd, 0, os.SEEK_SET)
    os.ftruncate(fd, 0)
    os.write(fd, data)
    os.fsync(fd)


def _refusal(field_name: str, folder: Path, path: Path, holder: dict, certain: bool) -> ConfigError:
    action = (f"wait for it to finish (or stop it), or choose another {field_name}" if certain else
              f"if that process is gone, delete {path}; otherwise wait for it or choose another {field_name}")
    return ConfigError(f"{field_name}: {folder} is in use by {describe(holder)}; {action}")


def acquire(folder: Path, field_name: str, print_fn=print) -> RunLock:
    """Take the lock of `folder` (created if needed) or raise ConfigError naming its holder."""
    folder = Path(folder)
    created = None
    for candidate in (folder, *folder.parents):   # the topmost missing folder, removed again if left empty
        if candidate.exists():
            break
        created = candidate
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / LOCK_FILE
    record = {"pid": os.getpid(), "host": this_host(), "since": time.strftime("%Y-%m-%d %H:%M:%S %z"),
              "command": shlex.join(sys.argv) if sys.argv and sys.argv[0] else "python"}
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            uses_flock = True
        except BlockingIOError:
            holder = _read_record(fd) or {}
            os.close(fd)
            raise _refusal(field_name, folder, path, holder, certain=True) from None
        except OSError as e:
            if e.errno not in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL):
                os.close(fd)
                raise
            uses_flock = False
        if not _same_file(path, fd):   # the holder released (and removed) it meanwhile: open it afresh
            os.close(fd)
            continue
        break
    previous = _read_record(fd)
    if previous and not uses_flock and not _stale_without_flock(previous):
        os.close(fd)
        raise _refusal(field_name, folder, path, previous, certain=previous.get("host") == this_host())
    if previous:
        print_fn(f"[lock] note: {path} was left by {describe(previous)}, which is no longer running; taking it over")
    _write_record(fd, record)
    return RunLock(path, fd, record, previous, created, uses_flock)


def _stale_without_flock(previous: dict) -> bool:
    """Without flock: stale only if its holder ran on this host and its pid is gone."""
    return previous.get("host") == this_host() and isinstance(previous.get("pid"), int) \
        and not pid_alive(previous["pid"])


@contextmanager
def run_lock(folder: str | Path, field_name: str, print_fn=print) -> Iterator[RunLock]:
    """Hold the lock of `folder` for the block (see the module docstring); `field_name` is the config
    field the error names (run_name, output_dir, name)."""
    lock = acquire(Path(folder), field_name, print_fn)
    try:
        yield lock
    finally:
        lock.release()
