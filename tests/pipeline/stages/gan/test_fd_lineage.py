"""tools/plot_fd_lineage.py: FD_face histories of chained gan exports put end to end."""

import importlib.util
import json
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[4] / "tools" / "plot_fd_lineage.py"


@pytest.fixture(scope="module")
def lineage():
    spec = importlib.util.spec_from_file_location("plot_fd_lineage", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def card(sha: str, kimg: float, history: list[tuple[float, float]], parent: str | None = None) -> dict:
    training = {"kimg": kimg, **({"init_from": {"weights_sha256": parent, "kimg": 0.0}} if parent else {})}
    return {"weights_sha256": sha, "training": training,
            "quality": {"fd_history": [{"kimg": k, "fd_face": f} for k, f in history],
                        "scale": {"n": 10, "noise_floor": 1e-4, "jpeg30": 0.02, "blur1": 0.01}}}


def test_a_later_run_is_shifted_by_the_kimg_before_it(lineage):
    first = card("aaa", 100.0, [(50.0, 0.09), (100.0, 0.05)])
    second = card("bbb", 80.0, [(40.0, 0.02), (80.0, 0.008)], parent="aaa")
    assert lineage.joined_history([first, second]) == [
        {"kimg": 50.0, "fd_face": 0.09}, {"kimg": 100.0, "fd_face": 0.05},
        {"kimg": 140.0, "fd_face": 0.02}, {"kimg": 180.0, "fd_face": 0.008}]


def test_runs_that_did_not_start_from_each_other_are_refused(lineage, tmp_path):
    first = card("aaa", 100.0, [(100.0, 0.05)])
    stranger = card("ccc", 80.0, [(80.0, 0.008)], parent="zzz")
    with pytest.raises(SystemExit, match="card 2 did not start from card 1's weights"):
        lineage.joined_history([first, stranger])
    paths = []
    for i, c in enumerate([first, card("bbb", 80.0, [(80.0, 0.008)], parent="aaa")]):
        paths.append(tmp_path / f"{i}.json")
        paths[-1].write_text(json.dumps(c))
    assert lineage.main([str(p) for p in paths] + ["-o", str(tmp_path / "curve.png")]) == 0
    assert (tmp_path / "curve.png").stat().st_size > 1000
