"""Helpers for brokers run as child processes on this machine: free ports, log tails, and
tying a child's life to its parent's.
"""

from __future__ import annotations

import signal
import socket
import threading
from collections.abc import Callable
from pathlib import Path
from types import FrameType
from typing import Protocol, Self

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


def port_open(host: str, port: int, timeout_s: float = 0.5) -> bool:
    """True when something accepts TCP connections on ``host:port``."""
    try:
        with socket.create_connection((host, port), timeout=timeout_s):
            return True
    except OSError:
        return False


class LocalBroker(Protocol):
    """What ``run_in_foreground`` needs of a broker (Tansu's ``EmbeddedBroker``, Apache
    Kafka's ``KafkaCluster``)."""

    @property
    def bootstrap(self) -> str: ...
    @property
    def url(self) -> str: ...
    def start(self) -> Self: ...
    def stop(self) -> None: ...
    def is_running(self) -> bool: ...
    def output_tail(self) -> str: ...


def run_in_foreground(broker: LocalBroker, name: str, ready: Callable[[], str]) -> int:
    """Start ``broker``, print ``ready()`` (its addresses) and run until SIGTERM or SIGINT
    (``clsmon broker``); returns the exit code: 0 after a signal, 1 if it died by itself.

    A broker that cannot start raises (``BrokerError``) before anything is printed.
    """
    stop = threading.Event()

    def _on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    previous = {sig: signal.signal(sig, _on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        broker.start()
        try:
            print(ready(), flush=True)
            print("stop with Ctrl-C or SIGTERM", flush=True)
            while not stop.wait(0.5):
                if not broker.is_running():
                    print(f"{name} exited unexpectedly:\n{broker.output_tail()}", flush=True)
                    return 1
        finally:
            broker.stop()
        print(f"{name} stopped", flush=True)
        return 0
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
