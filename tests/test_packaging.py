"""A non-editable install works without the source tree: the search spaces ship in the package."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tests.conftest import REPO

pytestmark = pytest.mark.timeout(300)

PROBE = """
import pipeline, tune_spaces
from pipeline.cli import main
from pipeline.stages.tune.space import resolve_space_path
assert pipeline.__file__.startswith({target!r}), pipeline.__file__
assert str(resolve_space_path("starter")).startswith({target!r}), resolve_space_path("starter")
raise SystemExit(main(["tune", "--print-config", "--space", "ffhq", "--preset", "ffhq256"]))
"""


def test_installed_copy_resolves_the_spaces_and_prints_the_tune_config(tmp_path):
    target = tmp_path / "site"
    build = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation",
                            "--target", str(target), str(REPO)], capture_output=True, text=True, timeout=240,
                           cwd=tmp_path)
    assert build.returncode == 0, build.stderr[-3000:]
    assert sorted(p.name for p in (target / "tune_spaces").glob("*.yaml")) == \
        sorted(p.name for p in (REPO / "tune_spaces").glob("*.yaml"))
    env = {**os.environ, "PYTHONPATH": str(target)}
    # Run outside the checkout, so only the installed copy can be imported.
    probe = subprocess.run([sys.executable, "-c", PROBE.format(target=str(target))], capture_output=True, text=True,
                           timeout=120, cwd=tmp_path, env=env)
    assert probe.returncode == 0, probe.stdout[-2000:] + probe.stderr[-3000:]
    assert "space: ffhq" in probe.stdout and "preset: ffhq256" in probe.stdout
