"""Ctrl-C during the stream benchmark stops every process it started (issue 14, item 6).

The benchmark's own clean-up (``interruptible`` and ``spawn`` in bench/stream_bench.py) runs in
a child Python with a long-lived child of its own standing in for a worker; no broker is needed.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

_DRIVER = """
import sys, time
sys.path.insert(0, {bench!r})
import stream_bench as sb

def body():
    child = sb.spawn("worker", [sys.executable, "-c", "import time; time.sleep(600)"])
    print(child.pid, flush=True)
    time.sleep(600)
    return 0

sys.exit(sb.interruptible(body))
"""


def _gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_a_signal_stops_the_benchmarks_children_and_exits_with_one_line(sig: int) -> None:
    driver = subprocess.Popen(
        [sys.executable, "-c", _DRIVER.format(bench=str(ROOT / "bench"))], cwd=ROOT,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert driver.stdout is not None
        line = driver.stdout.readline()
        assert line.strip().isdigit(), driver.stderr.read() if driver.stderr else line
        child = int(line)
        assert not _gone(child)
        driver.send_signal(sig)
        _, err = driver.communicate(timeout=60)
    finally:
        if driver.poll() is None:
            driver.kill()
            driver.wait()
    assert driver.returncode == 130
    assert err.strip().splitlines() == [
        "stream benchmark interrupted: its workers and brokers are stopped; no results written"]
    assert _gone(child), "the benchmark's child outlived it"
