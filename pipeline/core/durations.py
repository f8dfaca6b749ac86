"""Durations as people read them in progress lines: "4m07s", "1h03m" (seconds dropped past an hour)."""

from __future__ import annotations


def format_duration(seconds: float) -> str:
    seconds = max(0, int(round(seconds)))
    h, rest = divmod(seconds, 3600)
    return f"{h}h{rest // 60:02d}m" if h else f"{rest // 60}m{rest % 60:02d}s"
