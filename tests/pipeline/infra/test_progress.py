"""pipeline/infra/progress.py: the heartbeat between shard lines and the actors' row counter."""

from __future__ import annotations

import threading
import time

from pipeline.core.durations import format_duration
from pipeline.infra.progress import Heartbeat, RowCounter, progress_line, ray_counter_reader


class Script:
    """read() returns the next scripted value (then keeps the last); `drained` is set once all were read."""

    def __init__(self, values):
        self.values, self.i, self.drained = list(values), 0, threading.Event()

    def __call__(self):
        value = self.values[min(self.i, len(self.values) - 1)]
        self.i += 1
        if self.i >= len(self.values):
            self.drained.set()
        if isinstance(value, Exception):
            raise value
        return value


def run_heartbeat(values, every_s=0.005):
    lines, read = [], Script(values)
    with Heartbeat(read, "[x] working", total=10, every_s=every_s, print_fn=lambda s, **k: lines.append(s)):
        assert read.drained.wait(5.0), "the heartbeat never polled"
        time.sleep(every_s * 4)
    return lines


def test_one_line_each_time_the_count_moves_and_none_while_it_stands():
    lines = run_heartbeat([0, 0, 2, 2, 2, 6, 6])
    assert [line.split(":")[1].split(" rows")[0].strip() for line in lines] == ["2/10", "6/10"]
    assert all("rows/s, ETA " in line for line in lines)


def test_a_failing_counter_ends_the_thread_quietly():
    lines, read = [], Script([3, RuntimeError("actor gone"), 9])
    with Heartbeat(read, "[x] working", total=10, every_s=0.005, print_fn=lambda s, **k: lines.append(s)) as beat:
        beat.thread.join(timeout=5.0)
        assert not beat.thread.is_alive(), "the heartbeat kept polling a failing counter"
    assert read.i == 2 and len(lines) == 1 and lines[0].startswith("[x] working: 3/10")


def test_zero_interval_starts_no_thread():
    beat = Heartbeat(lambda: 1 / 0, "[x]", total=1, every_s=0, print_fn=print)
    with beat:
        assert not beat.thread.is_alive()


def test_line_and_eta_format():
    assert format_duration(59.6) == "1m00s" and format_duration(3 * 3600 + 61) == "3h01m"
    assert format_duration(-5) == "0m00s"
    assert progress_line("[invert] inverting", 0, 200, 30.0).endswith("ETA unknown (no chunk finished yet)")
    line = progress_line("[invert] inverting", 50, 200, 100.0)
    assert line == "[invert] inverting: 50/200 rows in finished chunks, 0.50 rows/s, ETA 5m00s"


def test_row_counter_adds_from_fire_and_forget_calls(ray_local):
    counter = RowCounter.remote()
    for n in (2, 3, 5):
        counter.add.remote(n)
    assert ray_counter_reader(counter)() == 10      # calls from one caller run in order
    ray_local.kill(counter)
