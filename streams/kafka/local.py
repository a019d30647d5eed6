"""Helpers for brokers run as child processes on this machine: free ports, log tails, and
tying a child's life to its parent's.
"""

from __future__ import annotations

import signal
import socket
from pathlib import Path

LOOPBACK = "127.0.0.1"


def free_port(host: str = LOOPBACK) -> int:
    """Return a TCP port that is free on ``host`` right now (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def port_in_use(port: int, host: str = LOOPBACK) -> bool:
    """True when ``port`` on ``host`` cannot be bound now (another process listens there)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return True
    return False


def tail(path: Path, max_bytes: int = 4000) -> str:
    try:
        data = path.read_bytes()
    except OSError:
        return ""
    return data[-max_bytes:].decode("utf-8", errors="replace").strip()


def die_with_parent() -> None:
    """In the broker's child process before exec: on Linux, have the kernel send it SIGTERM
    when the process that started it dies, even by SIGKILL, so that no orphaned broker keeps
    its port and memory (seen after killed test runs). Tied to the starting thread: start the
    broker from a thread that lives as long as it should (the main thread does)."""
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):  # not Linux: the broker outlives a killed parent
        pass
