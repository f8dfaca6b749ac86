"""Progress between shard lines: a row counter the Ray Data actors bump after each chunk, and a driver
thread that prints it every few seconds.

Why: a shard is the unit of output and of resume, so the driver hears of a shard only when it is written.
On a CPU a 1,024-row invert shard takes hours (0.08 faces/s at 64 px on 2 cores), and `hfld invert-check`
sat silent for 43 min on its one 200-row shard. Chunks (batch_faces rows) finish every minute or so.

    counter = RowCounter.remote()                 # pass the handle to the actors
    counter.add.remote(len(rows))                 # in an actor, after a chunk (fire and forget)
    with Heartbeat(ray_counter_reader(counter), "[invert] inverting", total=rows_todo, every_s=30,
                   print_fn=print):
        ... iterate the dataset ...
"""

from __future__ import annotations

import threading
import time

import ray

from pipeline.core.durations import format_duration


@ray.remote(num_cpus=0)
class RowCounter:
    """Rows finished by all actors of one run (a plain total: adds commute, so no ordering matters)."""

    def __init__(self):
        self.rows = 0

    def add(self, rows: int) -> None:
        self.rows += int(rows)

    def total(self) -> int:
        return self.rows


def progress_line(label: str, done: int, total: int, elapsed: float) -> str:
    rate = done / max(elapsed, 1e-9)
    eta = f"ETA {format_duration((total - done) / rate)}" if done else "ETA unknown (no chunk finished yet)"
    return f"{label}: {done}/{total} rows in finished chunks, {rate:.2f} rows/s, {eta}"


class Heartbeat:
    """A daemon thread: every `every_s` seconds, one progress line when the counter moved since the last
    line (a stuck run then stays quiet rather than repeating itself; the elapsed time shows in the next
    line). `read` returns the rows done so far; every_s <= 0 turns it off."""

    def __init__(self, read, label: str, total: int, every_s: float, print_fn, t0: float | None = None):
        self.read, self.label, self.total, self.every_s, self.print_fn = read, label, total, every_s, print_fn
        self.t0 = time.perf_counter() if t0 is None else t0
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.loop, name="hfld-heartbeat", daemon=True)
        self.last = 0

    def loop(self) -> None:
        while not self.stop.wait(self.every_s):
            try:
                done = int(self.read())
            except Exception:            # the counter went away (shutdown, interruption): stop quietly
                return
            if done != self.last:
                self.last = done
                self.print_fn(progress_line(self.label, done, self.total, time.perf_counter() - self.t0),
                              flush=True)

    def __enter__(self) -> Heartbeat:
        if self.every_s > 0:
            self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        if self.thread.is_alive():
            self.thread.join(timeout=max(5.0, self.every_s))


def ray_counter_reader(counter, timeout_s: float = 10.0):
    """read() for Heartbeat from a RowCounter handle."""
    return lambda: ray.get(counter.total.remote(), timeout=timeout_s)
