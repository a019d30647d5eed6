"""A real HTTP webhook receiver (http.server in a thread, 127.0.0.1) and notifier helpers."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from stream_support import ROOT, WorkerProcess, child_env

from detectors.alerts import alert_id


@dataclass
class Received:
    path: str
    key: str | None
    doc: dict[str, Any]
    at: float  # time.monotonic()
    status: int


@dataclass
class Receiver:
    """Records every POST; answers 500 to the first ``fail_first[key]`` attempts of a key;
    ``hold_at``: the Nth request (1-based) waits for ``release`` before answering."""

    fail_first: dict[str, int] = field(default_factory=dict)
    reject: set[str] = field(default_factory=set)  # keys answered 400
    hold_at: int | None = None
    release: threading.Event = field(default_factory=threading.Event)
    held: threading.Event = field(default_factory=threading.Event)
    requests: list[Received] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    server: ThreadingHTTPServer | None = None

    def start(self) -> Receiver:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                key = self.headers.get("Idempotency-Key")
                with receiver.lock:
                    n = len(receiver.requests) + 1
                    failures = sum(1 for r in receiver.requests if r.key == key)
                    status = 500 if failures < receiver.fail_first.get(key or "", 0) else 200
                    if key in receiver.reject:
                        status = 400
                    entry = Received(self.path, key, json.loads(body), time.monotonic(), 0)
                    receiver.requests.append(entry)
                if receiver.hold_at == n:
                    receiver.held.set()
                    receiver.release.wait(30)
                    return  # no answer: the sender never learns whether it arrived
                entry.status = status
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: object) -> None:  # noqa: A002
                return

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        self.release.set()
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()

    def url(self, path: str) -> str:
        assert self.server is not None
        return f"http://127.0.0.1:{self.server.server_address[1]}{path}"

    def delivered(self, path: str | None = None) -> list[Received]:
        """Requests answered 200 (to ``path`` if given)."""
        with self.lock:
            return [r for r in self.requests if r.status == 200
                    and (path is None or r.path == path)]

    def delivered_keys(self, path: str | None = None) -> Counter[str]:
        return Counter(r.key or "" for r in self.delivered(path))

    def wait(self, cond: Callable[[], bool], timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if cond():
                return
            time.sleep(0.05)
        seen = [(r.path, r.key, r.status) for r in self.requests]
        raise AssertionError(f"timed out; received {seen}")


def alert_doc(patient_id: str, episode: int = 1, phase: str = "leak",
              severity: str = "critical", **extra: Any) -> dict[str, Any]:
    """An alert in the contract's shape, with its deterministic id."""
    return {"alert_id": alert_id(patient_id, episode, phase, severity),
            "patient_id": patient_id, "phase": phase, "previous_phase": "none",
            "severity": severity, "raised_at": "2026-11-25T04:10:00Z", "episode": episode,
            "summary": f"{phase} phase for {patient_id}", "evidence": [],
            "emitted_at": "2026-11-25T04:10:01Z", **extra}


class NotifierProcess(WorkerProcess):
    """``python -m streams.cli notify`` in a child process (same helpers as the worker's)."""

    def __init__(self, bootstrap: str, prefix: str, data_dir: Path, config: Path,
                 *extra: str, env: dict[str, str] | None = None) -> None:  # noqa: D107
        from streams.kafka.local import free_port

        self.port = free_port()
        self.log_path = data_dir / f"notifier-{self.port}.log"
        cmd = [sys.executable, "-m", "streams.cli", "notify", "--broker", f"kafka://{bootstrap}",
               "--web-port", str(self.port), "--web-host", "127.0.0.1", "--topic-prefix", prefix,
               "--partitions", "3", "--data-dir", str(data_dir / f"notify-{self.port}"),
               "--config", str(config), "--fetch-wait-ms", "10", "--escalation-check", "0.1",
               *extra]
        self._log = open(self.log_path, "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(cmd, cwd=ROOT, env=child_env(env), stdout=self._log,
                                     stderr=subprocess.STDOUT, start_new_session=True)

    def kill(self) -> None:
        self.stop(signal.SIGKILL)


def run_cli(*args: str, timeout: float = 60.0, env: dict[str, str] | None = None
            ) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "streams.cli", *args], cwd=ROOT,
                          env=child_env(env), capture_output=True, text=True, timeout=timeout,
                          check=False)


@dataclass
class Hit:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes
    at: float  # time.monotonic()


class FaultyReceiver:
    """A webhook receiver that misbehaves the ways real ones do, chosen by path:

    ``/ok`` 200; ``/hook301``, ``/hook302``: redirect to ``/moved``; ``/hook307``,
    ``/hook308``: redirect to ``/moved`` on the same origin; ``/hook307-away``: 307 to
    another port; ``/slow-body``: 200 at once, then one body byte every ``trickle_s``;
    ``/slow-head``: the status line one byte every ``trickle_s``; any GET: 200 (as the
    case of issue 16: the body-less GET after a followed 302 looks like a delivery).
    """

    def __init__(self, trickle_s: float = 1.0) -> None:
        self.trickle_s = trickle_s
        self.hits: list[Hit] = []
        self.lock = threading.Lock()
        self.stopping = threading.Event()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def _record(self) -> bytes:
                n = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(n) if n else b""
                with receiver.lock:
                    receiver.hits.append(Hit(self.command, self.path, dict(self.headers.items()),
                                             body, time.monotonic()))
                return body

            def _send(self, status: int, location: str | None = None, body: bytes = b"") -> None:
                self.send_response(status)
                if location:
                    self.send_header("Location", location)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_GET(self) -> None:  # noqa: N802
                self._record()
                self._send(200, body=b"ok")

            def do_POST(self) -> None:  # noqa: N802
                self._record()
                path = self.path
                try:
                    if path in ("/hook301", "/hook302", "/hook307", "/hook308"):
                        self._send(int(path[-3:]), "/moved")
                    elif path == "/hook307-away":
                        self._send(307, f"http://127.0.0.1:{receiver.other_port}/moved")
                    elif path == "/slow-body":
                        self.send_response(200)
                        self.send_header("Content-Length", "30")
                        self.end_headers()
                        self._trickle(b"x" * 30)
                    elif path == "/slow-head":
                        self._trickle(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
                    else:
                        self._send(200, body=b"ok")
                except OSError:
                    pass  # the sender gave up: that is the point

            def _trickle(self, data: bytes) -> None:
                for i in range(len(data)):
                    if receiver.stopping.wait(receiver.trickle_s):
                        return
                    self.wfile.write(data[i:i + 1])
                    self.wfile.flush()

            def log_message(self, format: str, *args: object) -> None:  # noqa: A002
                return

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.other_port = self.server.server_address[1] + 1
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}{path}"

    def paths(self) -> list[tuple[str, str]]:
        with self.lock:
            return [(h.method, h.path) for h in self.hits]

    def stop(self) -> None:
        self.stopping.set()
        self.server.shutdown()
        self.server.server_close()


def refused_url() -> str:
    """A URL on 127.0.0.1 where nothing listens (connection refused)."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}/hook"
