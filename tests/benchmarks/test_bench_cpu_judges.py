"""benchmarks/bench_cpu_judges.py: both layouts of every starter judge and the T step are timed and
checked to compute the same outputs (needs the starter weights, like `make test`)."""

from __future__ import annotations

import pytest

from benchmarks import bench_cpu_judges


@pytest.mark.timeout(300)
def test_one_small_round_times_every_judge_and_the_t_step_in_both_layouts(starter_cache, capsys):
    assert bench_cpu_judges.main(["--rounds", "1", "--steps", "1", "--batch", "2", "--train-batch", "2",
                                  "--repeats", "1"]) == 0
    printed = capsys.readouterr().out
    assert "NCHW (fast_path off)" in printed and "NHWC (default)" in printed
    for row in ("attribute hse-faceres", "landmarks mediapipe-facemesh", "emotion training",
                "all judges (one evaluate edit)", "T step (demo recipe"):
        assert row in printed
