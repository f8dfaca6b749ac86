"""benchmarks/probe_attribute_judges.py report: spans and strengths of hand-made scores."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "probe_attribute_judges.py"


def test_report_computes_natural_spans_and_strengths(tmp_path):
    # 8 unedited faces whose R(Male) is 0..0.7; a judge that reads R exactly and one that reads nothing.
    r_male = [i / 10 for i in range(8)]
    index = [{"tag": "orig", "face": i, "R": [m, 0.5], "faceres": [m, 0.5]} for i, m in enumerate(r_male)]
    for arm in ("baseline", "hfld"):
        for a in ("Male", "Young"):
            index += [{"tag": f"{arm}-{a}-low", "face": 0, "R": [0.1, 0.1], "faceres": [0.2, 0.5]},
                      {"tag": f"{arm}-{a}-high", "face": 0, "R": [0.9, 0.9], "faceres": [0.8, 0.5]}]
    n = len(index)
    judged = {"oarriaga_male": [0.5] * n, "ssrnet_gender": [e["R"][0] for e in index], "ssrnet_age": [30.0] * n}
    (tmp_path / "index.json").write_text(json.dumps(index))
    (tmp_path / "judges.json").write_text(json.dumps(judged))
    proc = subprocess.run([sys.executable, str(SCRIPT), "report", "--dir", str(tmp_path)], capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    lines, section = {}, ""
    for line in proc.stdout.splitlines():
        if line.startswith("== "):
            section = line[3:]
        elif " n " in line and section == "Male":
            lines[line.split(" n ")[0].strip()] = line
    # top quarter of R (0.6, 0.7) minus bottom quarter (0.0, 0.1) = 0.6
    assert "natural span +0.600" in lines["faceres"] and "baseline strength +0.600" in lines["faceres"]
    assert "natural span +0.000" in lines["oarriaga gender"] and "hfld strength +0.000" in lines["oarriaga gender"]
    assert "natural span +0.600" in lines["SSR-Net gender"] and "hfld strength +0.800" in lines["SSR-Net gender"]
