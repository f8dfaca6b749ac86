"""pipeline/cli/main.py: a native crash leaves a Python stack behind."""

import subprocess
import sys


def test_a_segmentation_fault_prints_the_python_stack():
    code = ("from pipeline.cli.main import enable_crash_traces\n"
            "enable_crash_traces()\n"
            "def crash_here():\n"
            "    import ctypes; ctypes.string_at(0)\n"
            "crash_here()\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                          env={"PATH": "/usr/bin:/bin", "PYTHONFAULTHANDLER": ""})
    assert done.returncode != 0
    assert "Segmentation fault" in done.stderr and "crash_here" in done.stderr, done.stderr[-2000:]
