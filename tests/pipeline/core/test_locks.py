"""pipeline/core/locks.py: one process per run folder; dead holders are taken over, live ones named."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import textwrap
import time

import pytest

from pipeline.core.config import ConfigError
from pipeline.core.locks import LOCK_FILE, run_lock

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))


def holder_process(folder, then: str) -> subprocess.Popen:
    """A python process that takes the lock of `folder`, records an MLflow run id, says "held", then
    `then` ("exit": os._exit without releasing; "sleep": waits to be killed)."""
    code = textwrap.dedent(f"""
        import os, sys, time
        from pipeline.core.locks import acquire
        lock = acquire({str(folder)!r}, "run_name")
        lock.update(mlflow={{"run_id": "abc123", "tracking_uri": "sqlite:////x.db"}})
        print("held", flush=True)
        if {then!r} == "exit":
            os._exit(9)
        time.sleep(120)
    """)
    p = subprocess.Popen([sys.executable, "-c", code], env={**os.environ, "PYTHONPATH": REPO},
                         stdout=subprocess.PIPE, text=True)
    assert p.stdout.readline().strip() == "held"
    return p


def test_a_second_holder_gets_an_error_naming_the_first(tmp_path):
    folder = tmp_path / "run"
    with run_lock(folder, "run_name") as lock:
        record = json.loads((folder / LOCK_FILE).read_text())
        assert record["pid"] == os.getpid() and record["host"] == socket.gethostname() and record["since"]
        assert record["command"] and lock.previous is None
        with pytest.raises(ConfigError) as e:
            with run_lock(folder, "run_name"):
                pass
    msg = str(e.value)
    assert msg.startswith(f"run_name: {folder} is in use by pid {os.getpid()} on {socket.gethostname()} since ")
    assert "wait for it to finish" in msg and "choose another run_name" in msg
    assert not (folder / LOCK_FILE).exists()      # released: the file is gone
    with run_lock(folder, "run_name"):             # and the lock can be taken again
        pass


def test_the_lock_is_released_on_an_exception(tmp_path):
    with pytest.raises(RuntimeError):
        with run_lock(tmp_path / "run", "name"):
            raise RuntimeError("boom")
    assert not (tmp_path / "run").exists()         # it created the folder and left nothing: removed
    (tmp_path / "kept").mkdir()
    with pytest.raises(KeyboardInterrupt):
        with run_lock(tmp_path / "kept", "name"):
            raise KeyboardInterrupt
    assert (tmp_path / "kept").is_dir() and not (tmp_path / "kept" / LOCK_FILE).exists()


def test_a_live_holder_in_another_process_blocks_and_a_dead_one_is_taken_over(tmp_path):
    folder = tmp_path / "run"
    holder = holder_process(folder, "sleep")
    try:
        with pytest.raises(ConfigError, match=rf"in use by pid {holder.pid} on {socket.gethostname()}"):
            with run_lock(folder, "run_name"):
                pass
    finally:
        holder.kill()
        holder.wait()
    notes = []
    with run_lock(folder, "run_name", print_fn=notes.append) as lock:
        assert lock.previous["pid"] == holder.pid
        assert lock.previous["mlflow"] == {"run_id": "abc123", "tracking_uri": "sqlite:////x.db"}
        assert json.loads((folder / LOCK_FILE).read_text())["pid"] == os.getpid()
    assert len(notes) == 1 and f"pid {holder.pid}" in notes[0] and "no longer running" in notes[0]


def test_a_lock_left_by_an_abrupt_exit_is_taken_over(tmp_path):
    folder = tmp_path / "run"
    holder = holder_process(folder, "exit")
    holder.wait(timeout=30)
    assert (folder / LOCK_FILE).is_file()          # os._exit left the file behind...
    start = time.monotonic()
    with run_lock(folder, "run_name", print_fn=lambda *a: None) as lock:   # ...but not the lock
        assert lock.previous["pid"] == holder.pid
    assert time.monotonic() - start < 5
