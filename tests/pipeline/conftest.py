"""Fixtures for pipeline stage tests: one local Ray instance shared by the whole pytest session."""

from __future__ import annotations

import os
import shutil
import tempfile

import pytest

RAY_TEST_CPUS = 2
RAY_TEST_OBJECT_STORE = 512 * 2**20


@pytest.fixture(scope="session")
def ray_local():
    """`ray` connected to a private local instance (2 CPUs), started once, shut down at session end.

    Its temp dir is short (unix socket paths must stay under 107 bytes) and private, and
    address="local" never joins a cluster another program runs. Tests that need Ray (train, tune,
    generate) take this fixture instead of calling ray.init themselves. The dashboard runs: Ray
    Train's controller uses its state API to release the workers and placement groups of trials Tune
    stopped early (without it they keep their CPUs and a later 2-worker run waits forever).
    """
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")  # a private local instance: no token in ~/.ray
    import ray

    if ray.is_initialized():  # someone else's session: use it, do not shut it down
        yield ray
        return
    temp_dir = tempfile.mkdtemp(prefix="hr", dir="/tmp")
    ray.init(address="local", num_cpus=RAY_TEST_CPUS, object_store_memory=RAY_TEST_OBJECT_STORE,
             _temp_dir=temp_dir, log_to_driver=False, include_dashboard=True)
    try:
        yield ray
    finally:
        ray.shutdown()
        shutil.rmtree(temp_dir, ignore_errors=True)
