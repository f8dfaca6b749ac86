"""Session-wide test setup: isolated home-like dirs, fixture paths, tiny presets."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

# Keep every tool's state out of the user's home and the CWD, for the whole session.
_SESSION_TMP = Path(tempfile.mkdtemp(prefix="hfld-tests-"))
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ["DEEPFACE_HOME"] = str(_SESSION_TMP / "deepface")
os.environ["HFLD_WORK_DIR"] = str(_SESSION_TMP / "work")
os.environ.setdefault("MPLBACKEND", "Agg")
# Ray Train's controller polls its workers every 2 s by default: a fit of a few steps then spends ~5 s
# after its last report before it returns. The suite runs ~25 such fits (also in subprocesses and
# `ray job submit`, which inherit this); measured on the 2-core machine: a trivial fit 16-18 s -> 10-12 s.
os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.2")
# Every Ray Train run also starts a PreemptionWatcher actor (a process polling Ray's node-drain state,
# ~1.5 CPU-s to start here); nothing here is preempted, and the suite starts ~15 runs.
os.environ.setdefault("RAY_TRAIN_ENABLE_PREEMPTION_WATCHER", "0")

import torch  # noqa: E402

# Two cores are shared by pytest, Ray workers and helper processes: one intra-op thread avoids the
# oversubscription that made tiny CPU models ~30x slower under contention.
SUITE_THREADS = 1
torch.set_num_threads(SUITE_THREADS)


@pytest.fixture(autouse=True)
def suite_thread_count():
    """Every test starts with the suite's thread count. Some tests call benchmark `main()`s in process, and
    those set their own (`--threads`); left behind, a 2-thread in-process run no longer matches a 1-CPU Ray
    worker bit for bit (CI failure of the GAN stage's Ray-vs-in-process test, 2026-12-03)."""
    torch.set_num_threads(SUITE_THREADS)
    yield
    torch.set_num_threads(SUITE_THREADS)


FIXTURES = REPO / "tests" / "fixtures"


@pytest.fixture(scope="session")
def stylegan2_fixtures() -> Path:
    """tests/fixtures/stylegan2: small reference weights and outputs (see its README for provenance).

    They live in the repository so that a bare clone passes its own tests; nothing outside the
    checkout is read.
    """
    d = FIXTURES / "stylegan2"
    if not (d / "rosinality_small64.pt").is_file():
        pytest.fail(f"StyleGAN2 reference fixtures not found in {d}: the checkout is incomplete")
    return d


@pytest.fixture(scope="session")
def starter_cache() -> Path:
    """The zoo cache holding the fetched starter weights (`hfld zoo fetch starter` runs before tests)."""
    cache = Path(os.environ.get("HFLD_CACHE", Path.home() / ".cache" / "hfld")).expanduser()
    if not (cache / "starter").is_dir():
        pytest.fail(f"starter weights not in {cache}/starter: run `hfld zoo fetch starter` (the Makefile's "
                    "test target does) or set HFLD_CACHE")
    return cache / "starter"


@pytest.fixture
def tiny_bundle():
    from pipeline.presets import ModelConfig, build_bundle
    return build_bundle(ModelConfig(preset="tiny"), "cpu")


def pytest_collection_modifyitems(config, items):
    import torch
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU; this machine has none (run on the GPU machine)")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
