"""`clsmon demo` as a person runs it: it names a busy port and how to choose another; it starts
the broker, worker, notifier and board, prints the board's address with a demo sign-in, prints a
summary when the cohort is done (alerts by phase, dead letters by reason) and how to stop, and
leaves no process and no temporary folder behind."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from board_support import ROOT

from streams.kafka.local import free_port


def _demo(tmp_path: Path, *extra: str) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "CLSMON_STATE_DIR": str(tmp_path / "state"),
           "TMPDIR": str(tmp_path / "tmp")}
    (tmp_path / "tmp").mkdir(exist_ok=True)
    return subprocess.Popen([sys.executable, "-m", "streams.cli", "demo", *extra], cwd=ROOT,
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, start_new_session=True)


def test_a_busy_port_is_named_with_the_flag_to_change_it(tmp_path: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        demo = _demo(tmp_path, "--board-port", str(port))
        out, _ = demo.communicate(timeout=60)
    assert demo.returncode == 2, out
    assert f"port {port} (ward board) is in use" in out and "--board-port" in out
    assert "Traceback" not in out


def test_the_demo_runs_summarises_and_leaves_nothing_behind(tmp_path: Path) -> None:
    ports = {flag: str(free_port()) for flag in ("--web-port", "--notify-port", "--board-port")}
    demo = _demo(tmp_path, "--patients", "4", "--hours", "48", "--speed", "40000",
                 *[x for kv in ports.items() for x in kv])
    lines: list[str] = []
    assert demo.stdout is not None
    try:
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            line = demo.stdout.readline()
            assert line, "\n".join(lines)
            lines.append(line.rstrip())
            if line.startswith("The board stays up"):
                break
        text = "\n".join(lines)
        assert f"board     http://127.0.0.1:{ports['--board-port']}/  sign in as demo / " \
               "clsmon-demo" in text
        assert "cohort done:" in text and "alerts by phase:" in text
        assert "dead letters by reason:" in text and "Ctrl-C stops the demo" in text
        with urllib.request.urlopen(f"http://127.0.0.1:{ports['--board-port']}/login",
                                    timeout=5) as r:
            assert r.status == 200
    finally:
        os.killpg(demo.pid, signal.SIGINT)
        rest, _ = demo.communicate(timeout=60)
    assert "demo stopped" in rest
    assert demo.returncode == 0
    assert list((tmp_path / "tmp").iterdir()) == []  # no temporary folder left
    assert (tmp_path / "state" / "demo" / "worker.log").exists()  # logs kept, outside the tree
    left = subprocess.run(["pgrep", "-f", f"--web-port {ports['--web-port']}"],
                          capture_output=True, text=True)
    assert left.stdout == ""
