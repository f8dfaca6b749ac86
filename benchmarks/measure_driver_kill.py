#!/usr/bin/env python3
"""What is left of a stage's Ray after its driver is killed: SIGKILL (or SIGTERM) `hfld generate` on the
tiny preset while it writes shards, then list which of its descendant processes are still alive, and
for how long.

    python benchmarks/measure_driver_kill.py                 # SIGKILL, checks at 2, 10, 30, 60, 90, 120 s
    python benchmarks/measure_driver_kill.py --signal TERM

The driver starts a private local Ray instance (ray.init(address="local")): GCS, raylet, dashboard,
log monitor, the dashboard and runtime-env agents, the Ray Data actors. Ray renames its worker
processes (ray::IDLE, ray::MapWorker...), so their command lines do not name the session: the
script follows the process tree from the driver's pid instead. Prints one line per check with the
number of descendants alive and their names, plus the versions of Python, torch and Ray. CPU only.
"""

from __future__ import annotations

import argparse
import os
import platform
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def tree(root: int) -> dict[int, str]:
    rows = subprocess.run(["ps", "-eo", "pid=,ppid=,args="], capture_output=True, text=True).stdout.splitlines()
    children: dict[int, list[tuple[int, str]]] = {}
    for row in rows:
        parts = row.split(None, 2)
        if len(parts) >= 2:
            children.setdefault(int(parts[1]), []).append((int(parts[0]), parts[2] if len(parts) > 2 else ""))
    found, todo = {}, [root]
    while todo:
        for pid, args in children.get(todo.pop(), []):
            found[pid] = args
            todo.append(pid)
    return found


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--signal", default="KILL", choices=["KILL", "TERM", "INT"])
    ap.add_argument("--checks", type=float, nargs="+", default=[2, 10, 30, 60, 90, 120])
    args = ap.parse_args()
    import ray
    import torch
    print(f"python {platform.python_version()}, torch {torch.__version__}, ray {ray.__version__}, "
          f"{platform.machine()} with {os.cpu_count()} cores")

    work = Path(tempfile.mkdtemp(prefix="hfld-kill-"))
    env = {**os.environ, "PYTHONPATH": str(REPO), "HFLD_WORK_DIR": str(work), "RAY_USAGE_STATS_ENABLED": "0",
           "RAY_AUTH_MODE": "disabled", "PYTHONUNBUFFERED": "1"}
    env.pop("RAY_ADDRESS", None)
    hfld = [sys.executable, "-m", "pipeline.cli.main"]
    subprocess.run([*hfld, "train", "--preset", "tiny", "--set", "iterations=1", "--set", "batch_size=1",
                    "--set", "device=cpu", "--set", "tracking.enabled=false", "--set", "run_name=T"],
                   env=env, check=True, capture_output=True)
    p = subprocess.Popen([*hfld, "generate", "--preset", "tiny", "-T", str(work / "T" / "directions.safetensors"),
                          "--set", "n_sources=400", "--set", "shard_sources=4", "--set", "device=cpu",
                          "--set", "tracking.enabled=false", "--set", "run_name=g"],
                         env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    while not list((work / "g").glob("*.parquet")):
        if p.poll() is not None:
            print("generate ended before writing a shard")
            return 1
        time.sleep(0.5)
    procs = tree(p.pid)
    print(f"driver pid {p.pid}: {len(procs)} descendant processes while writing shards")
    p.send_signal(getattr(signal, f"SIG{args.signal}"))
    p.wait()
    t0 = time.monotonic()
    print(f"SIG{args.signal} -> exit status {p.returncode}")
    for check in args.checks:
        time.sleep(max(0.0, check - (time.monotonic() - t0)))
        left = {pid: a for pid, a in procs.items() if alive(pid)}
        names = sorted({a.split()[0].rsplit("/", 1)[-1] for a in left.values()})
        print(f"{check:5.0f} s after: {len(left):2d} alive {names}")
        if not left:
            break
    return 0


if __name__ == "__main__":
    sys.exit(main())
