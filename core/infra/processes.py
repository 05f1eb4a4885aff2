"""Stopping the subprocesses the embedded servers run in."""

from __future__ import annotations

import signal
import subprocess


def stop_process(proc: subprocess.Popen | None, timeout_s: float = 5.0) -> None:
    """SIGTERM ``proc`` if it still runs, SIGKILL it if it has not exited within ``timeout_s``,
    and reap it."""
    if proc is None or proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout_s)
