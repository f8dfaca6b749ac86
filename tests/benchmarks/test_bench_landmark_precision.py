"""benchmarks/bench_landmark_precision.py on the starter's landmark nets (needs the starter weights, like
`make test`): on the CPU the shipped (float32-pinned) forward under bf16 autocast is the float32 reference
exactly, and the unpinned bf16 forward is not."""

from __future__ import annotations

import pytest

from benchmarks import bench_landmark_precision


@pytest.mark.timeout(300)
def test_shipped_rows_equal_the_reference_and_bf16_rows_do_not(starter_cache, capsys):
    assert bench_landmark_precision.main(["--faces", "2", "--cache-dir", str(starter_cache.parent)]) == 0
    rows = [line.split() for line in capsys.readouterr().out.splitlines() if "|" in line and "eps" not in line]
    shipped = [r for r in rows if r[3] == "shipped"]
    bf16 = [r for r in rows if r[3] == "bf16"]
    assert len(shipped) == len(bf16) == 2 * len(bench_landmark_precision.EPSILONS)  # HFLD net + face mesh
    for r in shipped:
        # (zero differences: the reference has a few too, e.g. 0.1% of the face mesh's at 2 faces)
        assert [r[4], r[6], r[7]] == ["0.0%", "100.0%", "1.000"], r
    assert any(float(r[5].rstrip("%")) > 10 for r in bf16), "bf16 rows should show rounded-away differences"
