"""pipeline/core/signals.py: SIGTERM handled like Ctrl-C; critical sections finish first."""

from __future__ import annotations

import os
import signal

import pytest

from pipeline.core.signals import (interrupt_exit_status, interrupt_handlers, raise_if_interrupted, received_signal,
                                   signals_deferred)


def test_sigterm_raises_keyboard_interrupt_and_handlers_are_restored():
    before = signal.getsignal(signal.SIGTERM)
    with pytest.raises(KeyboardInterrupt, match="SIGTERM"):
        with interrupt_handlers():
            os.kill(os.getpid(), signal.SIGTERM)
            for _ in range(1000):   # the handler runs between bytecodes of the main thread
                pass
    assert received_signal() == signal.SIGTERM and interrupt_exit_status() == 143
    assert signal.getsignal(signal.SIGTERM) is before


def test_sigint_gives_status_130():
    with pytest.raises(KeyboardInterrupt):
        with interrupt_handlers():
            os.kill(os.getpid(), signal.SIGINT)
            for _ in range(1000):
                pass
    assert interrupt_exit_status() == 130


def test_a_signal_inside_a_deferred_block_is_raised_when_it_ends():
    steps = []
    with pytest.raises(KeyboardInterrupt):
        with interrupt_handlers():
            with signals_deferred():
                os.kill(os.getpid(), signal.SIGTERM)
                for _ in range(1000):
                    pass
                steps.append("finished the step")      # not cut short
            steps.append("after the step")             # never reached
    assert steps == ["finished the step"]


def test_deferring_does_nothing_without_the_handlers():
    with signals_deferred():
        pass   # no handlers installed: a plain block


def test_a_sigterm_whose_interrupt_a_callback_swallowed_is_raised_at_the_next_check():
    """Python prints and drops an exception raised inside a weakref callback ("Exception ignored in"):
    a SIGTERM handled there would be lost and the stage would run on. raise_if_interrupted brings it back."""
    import weakref

    class Thing:
        pass

    with interrupt_handlers():
        raise_if_interrupted()                         # nothing received yet: no exception
        thing = Thing()
        ref = weakref.ref(thing, lambda _: os.kill(os.getpid(), signal.SIGTERM) or [0 for _ in range(1000)])
        del thing                                      # the callback runs; its KeyboardInterrupt is dropped
        assert ref() is None
        assert received_signal() == signal.SIGTERM
        with pytest.raises(KeyboardInterrupt, match="SIGTERM"):
            raise_if_interrupted()
    raise_if_interrupted()                             # handlers gone: no exception
