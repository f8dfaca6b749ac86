"""The one way every stage connects to Ray.

    with ray_session(address="", dashboard=True):
        ...  # Ray Train / Tune / Data work

Order: the Ray this process is already connected to (left running afterwards); else `address`; else
the cluster in $RAY_ADDRESS (set by `ray job submit`); else a new private local instance, started and
stopped here (address="local": never a stray cluster some other program left behind in /tmp/ray).

`dashboard`: start the dashboard with a local instance. Ray Train's controller polls the state API
it serves (among other things to release the workers and placement group of a trial Tune stopped
early); without it every Train run waits on state-API timeouts. Ray Data alone does not need it.
`worker_logs`: show the workers' log lines on this console (Train's progress lines come that way).

Stopping: the `finally` shuts Ray down (disconnects, and stops a local instance started here) on every
exit, including KeyboardInterrupt (Ctrl-C, and SIGTERM through pipeline.core.signals), so the workers,
actors and placement groups of the stage end with it. ray.init's own SIGTERM handler (sys.exit) is
replaced by the one that was there before. After SIGKILL of this process nothing here runs; what Ray
does by itself then (measured by benchmarks/measure_driver_kill.py): a local instance's GCS and
raylet die with the driver, its workers within seconds, its dashboard and runtime-env agents after
about a minute (they first try to report the raylet's death to the dead GCS, with a fixed 60 s
timeout). Nothing started by this process survives longer than that.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager

import ray

from pipeline.core.signals import keep_handlers

# Kept off on every GPU host this project runs on: NVLink multicast can take shared GPUs down.
GPU_SAFETY_ENV = {"NCCL_NVLS_ENABLE": "0", "TORCH_SYMM_MEM_DISABLE_MULTICAST": "1", "NVSHMEM_DISABLE_NVLS": "1"}


@contextmanager
def ray_session(address: str = "", *, dashboard: bool = True, worker_logs: bool = True) -> Iterator[None]:
    if ray.is_initialized():
        yield
        return
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")  # never phone home
    address = address or os.environ.get("RAY_ADDRESS", "")
    with keep_handlers():  # ray.init makes SIGTERM a sys.exit; ours (SIGTERM = Ctrl-C) must stay
        if address:
            ray.init(address=address, log_to_driver=worker_logs)
        else:
            ray.init(address="local", log_to_driver=worker_logs, include_dashboard=dashboard)
    try:
        yield
    finally:
        ray.shutdown()


def quiet_ray_data() -> None:
    """Ray Data without progress bars, start-up banners, stats logs or per-actor memory advice: the
    stages print their own progress lines."""
    from ray.data import DataContext
    ctx = DataContext.get_current()
    ctx.enable_progress_bars = False
    ctx.print_on_execution_start = False
    ctx.verbose_stats_logs = False
    logging.getLogger("ray.data").setLevel(logging.WARNING)
    try:  # the per-actor memory advice is printed every 30 s on stdout; our actors hold models on purpose
        ctx.issue_detectors_config.high_memory_detector_config.detection_time_interval_s = -1
    except AttributeError:
        pass
