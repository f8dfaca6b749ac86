"""Stopping cleanly: SIGTERM is handled like Ctrl-C, in one place.

`timeout`, `ray job stop`, Slurm and Kubernetes stop a process with SIGTERM (then SIGKILL after a
grace period). `interrupt_handlers()` (around every `hfld` command) makes SIGTERM and SIGINT
raise KeyboardInterrupt in the main thread, so every stage's existing clean-up runs for both:
the in-process trainer writes a checkpoint at the step it reached, MLflow runs end KILLED (the
tracker's context manager), locks are released, and a Ray instance the stage started is shut down
(`ray_session`'s finally). The exit status says which signal it was: 128 + signal number (SIGINT
130, SIGTERM 143), as a shell reports a process that signal killed.

A second SIGTERM while that clean-up runs ends the process at once (status 143): the clean-up is
bounded by the sender's grace period anyway, and a stuck clean-up must not make the process unkillable
by the signal its supervisor sends. A second Ctrl-C raises KeyboardInterrupt again (Python's own rule).

`signals_deferred()` protects a short critical section (an optimisation step: T and Adam's moments
must change together; an MLflow write, which an interrupt inside SQLAlchemy can leave holding the SQLite
store's lock): a signal arriving inside is raised when the block ends. It only defers what
these handlers receive; without them (library use, default Python handlers) it does nothing.

Ray's `ray.init` replaces the SIGTERM handler of the process with its own (`sys.exit`), so
`ray_session` puts ours back afterwards (`keep_handlers`).
"""

from __future__ import annotations

import os
import signal
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager

_HANDLED = (signal.SIGINT, signal.SIGTERM)
_state = {"installed": False, "received": None, "pending": None, "depth": 0}


def _handler(signum, frame):
    first_term = signum == signal.SIGTERM and _state["received"] != signal.SIGTERM
    if signum == signal.SIGTERM and not first_term:
        print("[hfld] second SIGTERM: exiting now", file=sys.stderr, flush=True)
        os._exit(128 + signal.SIGTERM)
    _state["received"] = signum
    if _state["depth"] > 0:
        _state["pending"] = signum
        return
    raise KeyboardInterrupt(signal.Signals(signum).name)


@contextmanager
def interrupt_handlers() -> Iterator[None]:
    """Inside the block, SIGINT and SIGTERM raise KeyboardInterrupt in the main thread; the previous
    handlers come back afterwards (so `hfld`'s main() called from Python leaves the caller's alone).
    Does nothing outside the main thread, where Python allows no signal handlers."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    saved = {s: signal.getsignal(s) for s in _HANDLED}
    for signum in _HANDLED:
        signal.signal(signum, _handler)
    _state.update(installed=True, received=None, pending=None, depth=0)
    try:
        yield
    finally:
        for s, h in saved.items():
            signal.signal(s, h if h is not None else signal.SIG_DFL)
        _state["installed"] = False


def ours_installed() -> bool:
    return _state["installed"] and signal.getsignal(signal.SIGTERM) is _handler


def received_signal() -> int | None:
    """The last SIGINT/SIGTERM the handlers received (None: none, or handlers not installed)."""
    return _state["received"]


def interrupt_exit_status() -> int:
    """128 + the signal that interrupted the process (130 for Ctrl-C, 143 for SIGTERM)."""
    return 128 + int(_state["received"] or signal.SIGINT)


def raise_if_interrupted() -> None:
    """Raise KeyboardInterrupt if our handlers received SIGINT/SIGTERM. The handler's own raise can be
    lost: when the signal lands while Python runs a callback whose exceptions it only prints
    ("Exception ignored in ...", e.g. importlib's module-lock weakref callback during an import), the
    process would run on as if nothing had happened. Long loops call this between units of work
    (seen: generate stopped by SIGTERM during its imports wrote all its shards and exited 0)."""
    if ours_installed() and _state["received"] is not None and _state["depth"] == 0:
        raise KeyboardInterrupt(signal.Signals(_state["received"]).name)


@contextmanager
def signals_deferred() -> Iterator[None]:
    """A signal received inside the block raises KeyboardInterrupt when it ends (see the docstring)."""
    if not ours_installed() or threading.current_thread() is not threading.main_thread():
        yield
        return
    _state["depth"] += 1
    try:
        yield
    finally:
        _state["depth"] -= 1
        pending, _state["pending"] = _state["pending"], None
        if pending is not None and _state["depth"] == 0:
            raise KeyboardInterrupt(signal.Signals(pending).name)


@contextmanager
def keep_handlers() -> Iterator[None]:
    """Restore the SIGTERM/SIGINT handlers the block replaced (ray.init installs its own)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    saved = {s: signal.getsignal(s) for s in _HANDLED}
    try:
        yield
    finally:
        for s, h in saved.items():
            if h is not None and signal.getsignal(s) is not h:
                signal.signal(s, h)
