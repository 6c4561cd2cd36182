"""SIGTERM stops a command as Ctrl-C does: one line, exit 143 (``da.run``'s subprocess case is in test_cache.py,
where it arrives during a decode)."""

from __future__ import annotations

import os
import signal

import pytest


class _DefaultAction(Exception):
    """What SIGTERM did in this process had the command not handled it (its default action ends the test run)."""


@pytest.mark.skipif(not hasattr(signal, "SIGTERM"), reason="POSIX signals")
def test_tta_stops_on_sigterm_with_one_line(monkeypatch, capsys):
    import da.tta.run
    from da.tta.__main__ import main

    def unhandled(signum, frame):
        raise _DefaultAction

    def stream(args):
        os.kill(os.getpid(), signal.SIGTERM)  # a scheduler's stop, mid-stream
        raise AssertionError("SIGTERM did not stop the stream")

    previous = signal.signal(signal.SIGTERM, unhandled)
    try:
        monkeypatch.setattr(da.tta.run, "fit_stream", stream)
        assert main(["method=tent"]) == 143
        assert capsys.readouterr().err.strip().splitlines() == ["terminated"]
        assert signal.getsignal(signal.SIGTERM) is unhandled  # the caller's handler is back
    finally:
        signal.signal(signal.SIGTERM, previous)
