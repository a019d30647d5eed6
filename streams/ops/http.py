"""The small HTTP server of every long-running clsmon process: /metrics, /healthz, /readyz.

A plain threaded ``http.server``: it answers while the asyncio loop is busy, so a scrape or a
liveness probe never waits for a slow batch.
"""

from __future__ import annotations

import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest


class _Handler(BaseHTTPRequestHandler):
    server: _MetricsServer

    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        path = self.path.split("?", 1)[0]
        if path == "/metrics":
            self._reply(200, generate_latest(self.server.registry), CONTENT_TYPE_LATEST)
        elif path == "/healthz":
            self._reply(200, b"ok\n")
        elif path == "/readyz":
            if self.server.ready.is_set():
                self._reply(200, b"ready\n")
            else:
                self._reply(503, b"not ready: no partitions assigned yet\n")
        else:
            self._reply(404, b"not found: /metrics /healthz /readyz\n")

    def _reply(self, code: int, body: bytes, ctype: str = "text/plain; charset=utf-8") -> None:
        self.send_response(code)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002
        return  # scrapes every few seconds would flood the worker's log


class _MetricsServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address: tuple[str, int], registry: CollectorRegistry,
                 ready: threading.Event) -> None:
        super().__init__(address, _Handler)
        self.registry = registry
        self.ready = ready


def serve(registry: CollectorRegistry, ready: threading.Event, port: int,
          host: str = "0.0.0.0") -> ThreadingHTTPServer:  # noqa: S104 - scraped from outside
    """Start the HTTP server on a daemon thread; returns it (``shutdown()`` to stop).

    Args:
        registry: the metrics served on /metrics.
        ready: /readyz answers 200 once set, 503 before.
        port: TCP port (0: the OS picks one; read ``server.server_address``).
        host: address to bind.
    """
    server = _MetricsServer((host, port), registry, ready)
    threading.Thread(target=server.serve_forever, name="clsmon-metrics", daemon=True).start()
    return server
