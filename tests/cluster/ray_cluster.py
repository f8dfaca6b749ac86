"""Private multi-process Ray clusters (and an MLflow server) for tests, started and stopped here.

    with LocalCluster(tmp_path, worker_nodes=1) as cluster:      # `ray start --head` + one `ray start --address`
        job = cluster.submit(["hfld", "train", "--config", "train.yaml"], working_dir=job_dir, env_vars={...})
        assert job.status == "SUCCEEDED", job.output

Every node is a `ray start --block` subprocess in its own session, with its own short --temp-dir
under /tmp (unix socket paths must stay under 107 bytes), its own free ports (several nodes and the
test session's in-process Ray share this machine), a small logical CPU count, usage stats off and
token auth off (RAY_AUTH_MODE=disabled for the cluster *and* the `ray job` client: they must agree).

Stopping kills exactly what was started: each node's process tree and session (read from /proc; every
node leads its own session, which re-parented descendants keep), then any process whose command line
still names the node's temp dir; `leftovers()` says whether anything survived. Never `ray stop`: it
kills every Ray process on the machine, other people's included.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

VENV_BIN = Path(sys.executable).parent


# ---------------------------------------------------------------------------------------------
# Processes
# ---------------------------------------------------------------------------------------------

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def process_tree(root: int) -> list[int]:
    """root and all its descendants (from /proc), parents first."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            children.setdefault(int(stat.rsplit(")", 1)[1].split()[1]), []).append(int(entry))
    out, todo = [], [root]
    while todo:
        pid = todo.pop(0)
        out.append(pid)
        todo.extend(children.get(pid, []))
    return out


def session_members(sid: int) -> list[int]:
    """Live processes of session `sid` (a process started with start_new_session=True leads one; its
    descendants stay in it even when re-parented after their parent died)."""
    pids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                fields = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[3]) == sid and fields[0] != "Z":
                pids.append(int(entry))
    return pids


def processes_mentioning(text: str) -> list[int]:
    """Live processes (not this one) whose command line contains `text`, e.g. a private temp dir."""
    pids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit() and int(entry) != os.getpid():
            try:
                if text in Path(f"/proc/{entry}/cmdline").read_bytes().decode(errors="replace"):
                    pids.append(int(entry))
            except OSError:
                pass
    return pids


def alive(pid: int) -> bool:
    """Running (a zombie, dead but not yet reaped by its parent, counts as gone)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def stop_processes(pids: list[int], grace_s: float = 1.0) -> None:
    """SIGTERM these processes (ours only), then SIGKILL whatever is left after the grace period, and
    wait (briefly) until they are gone. The grace is short: a `ray start --block` node spends ~5 s
    winding its children down after SIGTERM, and nothing of a test's node needs to outlive it."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in pids:
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + grace_s
        while time.monotonic() < deadline and any(alive(p) for p in pids):
            time.sleep(0.1)


def cluster_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """This process's environment for a private cluster and its clients: no usage stats, no token auth,
    no inherited RAY_ADDRESS (which would point `ray job` somewhere else)."""
    env = {**os.environ, "RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0",
           # No idle workers prestarted per CPU: a job's runtime env needs fresh ones anyway, and on a
           # small machine they only slow the nodes' start.
           "RAY_enable_worker_prestart": "0", **(extra or {})}
    env.pop("RAY_ADDRESS", None)
    return env


class ManagedProcess:
    """A long-running server subprocess in its own session, its output in a log file."""

    def __init__(self, cmd: list[str], env: dict, log_path: Path):
        self.cmd = cmd
        self.log = open(log_path, "w")
        self.proc = subprocess.Popen(cmd, env=env, stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True)

    def log_text(self, tail: int = 3000) -> str:
        if not self.log.closed:
            self.log.flush()
        return Path(self.log.name).read_text(errors="replace")[-tail:]

    def check_running(self, what: str) -> None:
        if self.proc.poll() is not None:
            raise RuntimeError(f"{what} exited with status {self.proc.returncode}: {self.log_text()}")

    def stop(self, also_mentioning: str | None = None) -> None:
        """Kill this process's tree and session (children forked while we stop, or re-parented, stay in
        the session), then (optionally) whatever still names `also_mentioning`; a few rounds until none
        is left. Only processes this object started are touched."""
        self.stopped_pids: list[int] = []
        for _ in range(5):
            found = set(process_tree(self.proc.pid) if self.proc.poll() is None else [])
            found |= set(session_members(self.proc.pid))
            if also_mentioning:
                found |= set(processes_mentioning(also_mentioning))
            found = {p for p in found if alive(p)}
            if not found:
                break
            self.stopped_pids += sorted(found - set(self.stopped_pids))
            stop_processes(sorted(found))
        self.proc.wait(timeout=10)
        self.log.close()

    def leftovers(self) -> list[int]:
        """Processes this object stopped that are still running (should be none)."""
        return [p for p in getattr(self, "stopped_pids", []) if alive(p)]


def wait_tcp(port: int, proc: ManagedProcess, what: str, timeout_s: float) -> None:
    """Poll until 127.0.0.1:port accepts connections (failing early when the server process died)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        proc.check_running(what)
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return
        except OSError:
            time.sleep(0.2)
    raise TimeoutError(f"{what} did not listen on port {port} in {timeout_s:g} s: {proc.log_text()}")


def wait_http(url: str, proc: ManagedProcess, what: str, timeout_s: float) -> None:
    """Poll `url` until it answers 200 (failing early when the server process died)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        proc.check_running(what)
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.5)
    raise TimeoutError(f"{what} did not answer {url} in {timeout_s:g} s: {proc.log_text()}")


# ---------------------------------------------------------------------------------------------
# Ray nodes
# ---------------------------------------------------------------------------------------------

def node_ports() -> list[str]:
    """Flags giving a node free ports of its own (the defaults, e.g. the agent's 52365, would collide
    with the other nodes on this machine and with the test session's in-process Ray)."""
    return [f"--dashboard-agent-listen-port={free_port()}", f"--dashboard-agent-grpc-port={free_port()}",
            f"--runtime-env-agent-port={free_port()}", f"--metrics-export-port={free_port()}",
            f"--node-manager-port={free_port()}", f"--object-manager-port={free_port()}"]


def short_temp_dir(prefix: str) -> Path:
    """A private temp dir with a short path: Ray's unix sockets live below it (107-byte limit)."""
    return Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp"))


class LocalHead(ManagedProcess):
    """`ray start --head --block` with its own temp dir, ports and dashboard (the job server)."""

    def __init__(self, temp_dir: Path, env: dict, log_path: Path, num_cpus: float = 2,
                 object_store_bytes: int = 300 * 2**20):
        self.temp_dir, self.env = temp_dir, env
        self.dashboard_port, self.gcs_port = free_port(), free_port()
        super().__init__(
            [str(VENV_BIN / "ray"), "start", "--head", "--block", f"--num-cpus={num_cpus}",
             f"--object-store-memory={object_store_bytes}", f"--temp-dir={temp_dir}", "--disable-usage-stats",
             f"--port={self.gcs_port}", "--include-dashboard=true", "--dashboard-host=127.0.0.1",
             f"--dashboard-port={self.dashboard_port}", f"--ray-client-server-port={free_port()}",
             "--node-ip-address=127.0.0.1", *node_ports()],
            env, log_path)

    @property
    def address(self) -> str:
        """The dashboard / job server address (what `ray job submit --address` takes)."""
        return f"http://127.0.0.1:{self.dashboard_port}"

    @property
    def gcs_address(self) -> str:
        """What another node's `ray start --address` takes."""
        return f"127.0.0.1:{self.gcs_port}"

    def wait_ready(self, timeout_s: float = 60) -> None:
        wait_http(f"{self.address}/api/version", self, "the Ray head", timeout_s)

    def stop(self) -> None:  # anything that left the tree still names the temp dir
        super().stop(also_mentioning=str(self.temp_dir))


class LocalWorkerNode(ManagedProcess):
    """`ray start --address=<head> --block`: a second node on this machine, its own temp dir and ports."""

    def __init__(self, head: LocalHead, temp_dir: Path, env: dict, log_path: Path, num_cpus: float = 2,
                 object_store_bytes: int = 300 * 2**20):
        self.temp_dir = temp_dir
        super().__init__(
            [str(VENV_BIN / "ray"), "start", f"--address={head.gcs_address}", "--block", f"--num-cpus={num_cpus}",
             f"--object-store-memory={object_store_bytes}", f"--temp-dir={temp_dir}", "--disable-usage-stats",
             "--node-ip-address=127.0.0.1", *node_ports()],
            env, log_path)

    def stop(self) -> None:
        super().stop(also_mentioning=str(self.temp_dir))


@dataclass
class JobRun:
    """A finished (or timed-out) `ray job submit`: the job id, the state `ray job status` reports and the
    output (`ray job submit` tails the job's logs; after a timeout, `ray job logs`)."""
    job_id: str
    status: str
    output: str
    seconds: float


class LocalCluster:
    """A head plus `worker_nodes` worker nodes, as a context manager; stopped on exit, and checked:
    `leftovers()` lists any process still naming one of the cluster's temp dirs."""

    def __init__(self, log_dir: Path, worker_nodes: int = 1, head_cpus: float = 2, worker_cpus: float = 2,
                 env: dict[str, str] | None = None, worker_env: dict[str, str] | None = None):
        self.log_dir = Path(log_dir)
        self.env = cluster_env(env)
        self.worker_env = {**self.env, **(worker_env or {})}
        self.head_cpus, self.worker_cpus, self.n_workers = head_cpus, worker_cpus, worker_nodes
        self.head: LocalHead | None = None
        self.workers: list[LocalWorkerNode] = []
        self.temp_dirs: list[Path] = []
        self.stopped_nodes: list[ManagedProcess] = []

    # -- lifecycle -------------------------------------------------------------------------------
    def start(self, timeout_s: float = 90) -> LocalCluster:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        deadline = time.monotonic() + timeout_s
        self.temp_dirs.append(short_temp_dir("hch"))
        self.head = LocalHead(self.temp_dirs[-1], self.env, self.log_dir / "head.log", num_cpus=self.head_cpus)
        # Workers may join as soon as the GCS listens; the dashboard (job server) comes up meanwhile.
        wait_tcp(self.head.gcs_port, self.head, "the Ray head's GCS", timeout_s)
        for i in range(self.n_workers):
            self.temp_dirs.append(short_temp_dir("hcw"))
            self.workers.append(LocalWorkerNode(self.head, self.temp_dirs[-1], self.worker_env,
                                                self.log_dir / f"worker{i}.log", num_cpus=self.worker_cpus))
        self.head.wait_ready(max(5.0, deadline - time.monotonic()))
        self.wait_for_nodes(1 + self.n_workers, max(5.0, deadline - time.monotonic()))
        return self

    def stop(self) -> None:
        """Workers first, then the head; each node's process tree and strays naming its temp dir."""
        for node in [*self.workers, *([self.head] if self.head else [])]:
            node.stop()
            self.stopped_nodes.append(node)
        self.workers, self.head = [], None
        for d in self.temp_dirs:
            shutil.rmtree(d, ignore_errors=True)

    def leftovers(self) -> list[int]:
        """Processes of the stopped cluster still running: of the nodes' trees, or naming a temp dir."""
        named = {p for d in self.temp_dirs for p in processes_mentioning(str(d)) if alive(p)}
        return sorted(named | {p for node in self.stopped_nodes for p in node.leftovers()})

    def __enter__(self) -> LocalCluster:
        try:
            return self.start()
        except BaseException:
            self.stop()
            raise

    def __exit__(self, *exc) -> None:
        self.stop()

    # -- state -------------------------------------------------------------------------------
    def nodes(self) -> list[dict]:
        """The cluster's nodes from the dashboard's state API (alive and dead)."""
        with urllib.request.urlopen(f"{self.head.address}/api/v0/nodes?limit=100", timeout=10) as r:
            return json.loads(r.read())["data"]["result"]["result"]

    def alive_nodes(self) -> list[dict]:
        return [n for n in self.nodes() if n.get("state") == "ALIVE"]

    def actors(self) -> list[dict]:
        """Every actor the cluster has seen (finished ones included), from the state API."""
        url = f"{self.head.address}/api/v0/actors?limit=10000&detail=true"
        with urllib.request.urlopen(url, timeout=10) as r:
            return json.loads(r.read())["data"]["result"]["result"]

    def wait_for_nodes(self, n: int, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            self.head.check_running("the Ray head")
            for w in self.workers:
                w.check_running("a Ray worker node")
            try:
                if len(self.alive_nodes()) >= n:
                    return
            except (OSError, KeyError, ValueError):
                pass
            time.sleep(0.5)
        raise TimeoutError(f"the cluster did not reach {n} alive nodes in {timeout_s:g} s:\n"
                           + "\n".join(p.log_text(1500) for p in [self.head, *self.workers]))

    # -- jobs --------------------------------------------------------------------------------
    def ray_cli(self, *args: str, timeout_s: float = 60, cwd: Path | None = None) -> subprocess.CompletedProcess:
        return subprocess.run([str(VENV_BIN / "ray"), *args], env=self.env, cwd=cwd, capture_output=True,
                              text=True, timeout=timeout_s, check=False)

    def submit(self, entrypoint: list[str], *, working_dir: Path, env_vars: dict[str, str] | None = None,
               job_id: str | None = None, timeout_s: float = 150) -> JobRun:
        """`ray job submit --working-dir <dir> --runtime-env-json {"env_vars": ...} -- <entrypoint>`, run
        from another directory (nothing may depend on the client's CWD); waits for the job's end (a job
        still running after `timeout_s` is stopped) and then asks `ray job status`."""
        job_id = job_id or f"hfld-test-{int(time.time() * 1000)}"
        args = ["job", "submit", "--address", self.head.address, "--submission-id", job_id,
                "--working-dir", str(working_dir)]
        if env_vars:
            args += ["--runtime-env-json", json.dumps({"env_vars": env_vars})]
        t0 = time.monotonic()
        try:
            out = self.ray_cli(*args, "--", *entrypoint, timeout_s=timeout_s, cwd=Path(tempfile.gettempdir()))
            output = out.stdout + out.stderr
        except subprocess.TimeoutExpired:
            self.ray_cli("job", "stop", "--address", self.head.address, job_id, timeout_s=30)
            output = f"`ray job submit` timed out after {timeout_s} s; the job's logs:\n{self.job_logs(job_id)}"
        seconds = time.monotonic() - t0
        return JobRun(job_id, self.job_status(job_id), output, seconds)

    def job_status(self, job_id: str) -> str:
        """The state `ray job status <id>` reports, as a JobStatus word (SUCCEEDED, FAILED, STOPPED,
        RUNNING, ...): it prints "Job '<id>' succeeded" / "failed" / "was stopped", else "Status for
        job '<id>': <STATE>"."""
        out = self.ray_cli("job", "status", "--address", self.head.address, job_id)
        text = out.stdout + out.stderr
        final = re.search(rf"Job '{re.escape(job_id)}' (succeeded|failed|was stopped)", text)
        other = re.search(rf"Status for job '{re.escape(job_id)}': ([A-Z]+)", text)
        if final:
            return {"succeeded": "SUCCEEDED", "failed": "FAILED", "was stopped": "STOPPED"}[final.group(1)]
        return other.group(1) if other else f"UNKNOWN ({text.strip()[-500:]})"

    def job_logs(self, job_id: str) -> str:
        out = self.ray_cli("job", "logs", "--address", self.head.address, job_id)
        return out.stdout + out.stderr


# ---------------------------------------------------------------------------------------------
# MLflow tracking server
# ---------------------------------------------------------------------------------------------

class MlflowServer(ManagedProcess):
    """`mlflow server` on 127.0.0.1:<free port>: SQLite backend, artifacts proxied by the server into a
    local folder (clients on any node upload through HTTP: `mlflow-artifacts:/` URIs)."""

    def __init__(self, root: Path, log_path: Path):
        root.mkdir(parents=True, exist_ok=True)
        self.root, self.port = root, free_port()
        # No job-execution feature (hfld needs none): it starts 8 more processes and a folder in /dev/shm.
        env = {**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true", "DO_NOT_TRACK": "true",
               "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
        env.pop("MLFLOW_TRACKING_URI", None)
        super().__init__(
            [str(VENV_BIN / "mlflow"), "server", "--host", "127.0.0.1", "--port", str(self.port), "--workers", "1",
             "--backend-store-uri", f"sqlite:///{root / 'mlflow.db'}", "--artifacts-destination",
             str(root / "artifacts")],
            env, log_path)

    @property
    def uri(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def wait_ready(self, timeout_s: float = 120) -> None:
        wait_http(f"{self.uri}/health", self, "the MLflow server", timeout_s)
