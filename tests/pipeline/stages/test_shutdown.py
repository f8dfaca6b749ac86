"""Stopping a stage from outside: SIGTERM (what `timeout`, `ray job stop`, Slurm and Kubernetes send)
and SIGKILL, on real `hfld` processes.

- SIGTERM is handled like Ctrl-C: in-process training writes a checkpoint at the step it reached,
  the MLflow run ends KILLED (not RUNNING forever, not FAILED), the run folder's lock is released,
  the process exits with 143 (128 + SIGTERM), and `resume=auto` continues the same MLflow run.
- generate stops its Ray instance (no process of it is left), ends its MLflow run KILLED, and the
  same command finishes the dataset afterwards (also after SIGKILL).
- After SIGKILL nothing in the process runs: its lock file and RUNNING MLflow run stay behind; the next
  invocation on the same folder takes the lock over and marks that run KILLED.
"""

from __future__ import annotations

import codecs
import os
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pipeline.core.config import from_dict
from pipeline.core.directions import load_directions
from pipeline.core.locks import LOCK_FILE
from pipeline.stages.generate.ray_data import FAULT_ENV
from tests.conftest import REPO

pytestmark = [pytest.mark.slow, pytest.mark.timeout(400)]


def hfld(*args: str, work: Path, **extra_env: str) -> subprocess.Popen:
    env = {**os.environ, **extra_env, "PYTHONPATH": str(REPO), "HFLD_WORK_DIR": str(work), "RAY_USAGE_STATS_ENABLED": "0",
           "RAY_AUTH_MODE": "disabled", "PYTHONUNBUFFERED": "1"}
    env.pop("RAY_ADDRESS", None)
    return subprocess.Popen([sys.executable, "-m", "pipeline.cli.main", *args], env=env, cwd=work,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)


def wait_for_line(p: subprocess.Popen, needle: str, timeout: float = 180) -> str:
    """The output up to (and maybe a little past) the first line containing needle. Reads the pipe's file
    descriptor directly: select() cannot see lines already pulled into p.stdout's buffer by a readline, so
    a burst of lines followed by silence (a process that holds) would hide the last of them."""
    fd, decoder = p.stdout.fileno(), codecs.getincrementaldecoder("utf-8")(errors="replace")
    text, deadline = "", time.monotonic() + timeout
    while time.monotonic() < deadline:
        ready, _, _ = select.select([fd], [], [], 1.0)
        if ready:
            chunk = os.read(fd, 1 << 16)
            if not chunk:
                break
            text += decoder.decode(chunk)
            if needle in text:
                return text
    p.kill()
    raise AssertionError(f"no line with {needle!r} within {timeout}s:\n{text[-3000:]}")


def descendants(pid: int) -> set[int]:
    rows = subprocess.run(["ps", "-eo", "pid=,ppid="], capture_output=True, text=True).stdout.split("\n")
    children: dict[int, list[int]] = {}
    for row in rows:
        if row.strip():
            child, parent = map(int, row.split())
            children.setdefault(parent, []).append(child)
    found, todo = set(), [pid]
    while todo:
        for c in children.get(todo.pop(), []):
            found.add(c)
            todo.append(c)
    return found


def alive(pids: set[int]) -> set[int]:
    def running(pid):
        try:
            with open(f"/proc/{pid}/stat") as f:
                return f.read().rsplit(")", 1)[1].split()[0] != "Z"
        except OSError:
            return False
    return {p for p in pids if running(p)}


def runs_of(work: Path, experiment: str):
    from mlflow import MlflowClient
    client = MlflowClient(f"sqlite:///{work}/mlflow.db")
    exp = client.get_experiment_by_name(experiment)
    return client.search_runs([exp.experiment_id], order_by=["attributes.start_time ASC"])


# ---------------------------------------------------------------------------------------------
# train, in process
# ---------------------------------------------------------------------------------------------

TRAIN_ARGS = ["train", "--preset", "tiny", "--set", "run_name=t", "--set", "batch_size=1", "--set", "log_every=1",
              "--set", "checkpoint_every=100000", "--set", "device=cpu", "--set", "scaling.num_workers=0",
              "--set", "tracking.experiment=shutdown", "--set", "tracking.register_model=false",
              "--set", "losses.landmark=10"]


def test_sigterm_checkpoints_in_process_training_and_resume_continues_its_mlflow_run(tmp_path):
    from pipeline.stages.train import TrainConfig, run_train
    work = tmp_path / "work"
    work.mkdir()
    p = hfld(*TRAIN_ARGS, "--set", "iterations=100000", "--set", f"work_dir={work}", work=work)
    wait_for_line(p, "[train] step 3/")
    p.send_signal(signal.SIGTERM)
    out, _ = p.communicate(timeout=120)
    assert p.returncode == 143, out[-3000:]
    assert "interrupted at step" in out and "interrupted (SIGTERM)" in out
    run_dir = work / "t"
    step = load_directions(run_dir / "checkpoint.safetensors").meta["step"]
    assert step >= 3                      # the step reached, although no periodic checkpoint was due
    assert not (run_dir / LOCK_FILE).exists()
    (run,) = runs_of(work, "shutdown")
    assert run.info.status == "KILLED"

    cfg = from_dict(TrainConfig, {"model": {"preset": "tiny"}, "run_name": "t", "work_dir": str(work),
                                  "batch_size": 1, "log_every": 1, "checkpoint_every": 100000, "device": "cpu",
                                  "losses": {"landmark": 10.0}, "iterations": step + 2, "resume": "auto",
                                  "tracking": {"experiment": "shutdown", "register_model": False}})
    result = run_train(cfg, print_fn=lambda *a, **k: None)
    assert result.steps == step + 2
    (again,) = runs_of(work, "shutdown")
    assert again.info.run_id == run.info.run_id and again.info.status == "FINISHED"


def test_after_sigkill_the_next_start_takes_the_lock_over_and_continues_the_run(tmp_path):
    from pipeline.stages.train import TrainConfig, run_train
    work = tmp_path / "work"
    work.mkdir()
    p = hfld(*TRAIN_ARGS, "--set", "iterations=100000", "--set", f"work_dir={work}", "--set", "checkpoint_every=2",
             work=work)
    wait_for_line(p, "[train] step 5/")
    p.kill()
    p.communicate(timeout=60)
    run_dir = work / "t"
    assert (run_dir / LOCK_FILE).is_file()                      # SIGKILL: nothing could clean up
    (run,) = runs_of(work, "shutdown")
    assert run.info.status == "RUNNING"
    step = load_directions(run_dir / "checkpoint.safetensors").meta["step"]
    cfg = from_dict(TrainConfig, {"model": {"preset": "tiny"}, "run_name": "t", "work_dir": str(work),
                                  "batch_size": 1, "log_every": 1, "checkpoint_every": 2, "device": "cpu",
                                  "losses": {"landmark": 10.0}, "iterations": step + 1, "resume": "auto",
                                  "tracking": {"experiment": "shutdown", "register_model": False}})
    lines = []
    run_train(cfg, print_fn=lambda *a, **k: lines.append(" ".join(map(str, a))))
    assert any("[lock] note:" in line and f"pid {p.pid}" in line for line in lines)
    (again,) = runs_of(work, "shutdown")
    assert again.info.run_id == run.info.run_id and again.info.status == "FINISHED"
    assert not (run_dir / LOCK_FILE).exists()


# ---------------------------------------------------------------------------------------------
# generate (Ray Data)
# ---------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def tiny_T(tmp_path_factory) -> Path:
    from pipeline.stages.train import TrainConfig, run_train
    work = tmp_path_factory.mktemp("T")
    cfg = from_dict(TrainConfig, {"model": {"preset": "tiny"}, "iterations": 1, "batch_size": 1, "device": "cpu",
                                  "work_dir": str(work), "run_name": "T", "tracking": {"enabled": False}})
    return run_train(cfg, print_fn=lambda *a, **k: None).directions_path


# Scoring fused into the generator actor: one actor process fewer to start in each of the two invocations
# that start Ray (what is stopped and resumed does not depend on the topology).
GENERATE_ARGS = ["generate", "--preset", "tiny", "--set", "n_sources=40", "--set", "variants=2",
                 "--set", "shard_sources=2", "--set", "batch_sources=2", "--set", "device=cpu", "--set", "run_name=g",
                 "--set", "tracking.experiment=gen-shutdown", "--set", "resources.fuse_scoring=true"]
N_SHARDS = 20                                                          # of 4 rows


def test_generate_stopped_from_outside_leaves_no_ray_process_and_resumes(tmp_path, tiny_T):
    """One dataset, three invocations of the same command (each starts Ray: ~20 s here):
    1. SIGTERM while Ray Data starts its actors: exit 143, MLflow run KILLED, lock released, and no
       process of its Ray instance left;
    2. SIGKILL once every shard is written (before the manifest and the end of its MLflow run): the lock
       file and a RUNNING MLflow run stay behind;
    3. the dataset is finished: the lock is taken over, the SIGKILLed run marked KILLED, the written
       shards reused. (Resuming half-written datasets: tests/pipeline/stages/generate/test_generate.py.)"""
    work = tmp_path / "work"
    work.mkdir()
    out = work / "g"
    command = [*GENERATE_ARGS, "-T", str(tiny_T), "--set", f"work_dir={work}"]

    # 1. SIGTERM. "[generate] T: ..." is printed inside the stage's Ray session and MLflow run, just
    # before the Ray Data pipeline starts its actors (the next ~10 s here).
    p = hfld(*command, work=work)
    wait_for_line(p, "[generate] T: ")
    started = descendants(p.pid)
    assert started, "the Ray instance of generate should run as child processes"
    p.send_signal(signal.SIGTERM)
    output, _ = p.communicate(timeout=120)
    assert p.returncode == 143, output[-3000:]
    (terminated,) = runs_of(work, "gen-shutdown")
    assert terminated.info.status == "KILLED" and not (out / LOCK_FILE).exists()
    # ray.shutdown stopped its processes before the driver exited; allow a few seconds for the last of
    # them to be reaped. (After SIGKILL, Ray's agents take about a minute to notice: measured by
    # benchmarks/measure_driver_kill.py, not waited for here.)
    deadline = time.monotonic() + 30
    while alive(started) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not alive(started), f"Ray processes left after SIGTERM: {sorted(alive(started))}"

    # 2. SIGKILL right after the last shard is written, before the manifest: nothing in the process
    # runs any more (the last invocation then has no shard to write and starts no Ray: ~20 s saved).
    # The test hook holds the driver there: without it, the manifest and the end of the MLflow run can
    # come before the kill (it happened on CI).
    p = hfld(*command, work=work, **{FAULT_ENV: f"{N_SHARDS}:hold"})
    wait_for_line(p, "holding until killed")
    orphans = descendants(p.pid)
    p.kill()
    p.communicate(timeout=60)
    assert p.returncode == -signal.SIGKILL
    _, killed = runs_of(work, "gen-shutdown")
    assert killed.info.status == "RUNNING" and (out / LOCK_FILE).is_file()
    # Its Ray processes would take about a minute to notice and keep the 2 cores busy meanwhile: the
    # test stops the ones it started (by pid). What the next invocation finds on disk is unchanged.
    for pid in alive(orphans):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass

    # 3. The same command finishes the dataset.
    done = hfld(*command, work=work)
    text, _ = done.communicate(timeout=300)
    assert done.returncode == 0, text[-3000:]
    assert "resuming:" in text and "80 rows" in text
    assert "[lock] note:" in text and "marked MLflow run(s)" in text
    first, second, third = runs_of(work, "gen-shutdown")
    assert [r.info.run_id for r in (first, second)] == [terminated.info.run_id, killed.info.run_id]
    assert first.info.status == "KILLED" and second.info.status == "KILLED"    # SIGKILL: marked now
    assert third.info.status == "FINISHED"
