"""The board under test: Debian's Chromium driven by Playwright (Python, no `playwright
install`: the browser comes from apt), a users file, the board served by uvicorn in a thread
(state fed through its own loop) or as a `clsmon board` process, and alerts in the contract's
shape."""

from __future__ import annotations

import asyncio
import hashlib
import json
import math
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from debian_tools import chromium

ROOT = Path(__file__).resolve().parents[1]
#: where the browser tests write their screenshots: a scratch folder by default, because a test
#: run must leave the source tree as it found it; `make screenshots` points it at docs/board/
#: (the README's pictures) and the pictures are then checked by eye before they are committed
SHOTS = Path(os.environ.get("CLSMON_SCREENSHOTS")
             or Path(tempfile.gettempdir()) / "clsmon-screenshots")
PASSWORDS = {"alice": "alice-password-1", "victor": "victor-password-1", "ada": "ada-password-1"}
TABLET = {"width": 1024, "height": 768}
TIMINGS: dict[str, Any] = {}


def record(name: str, value: Any) -> None:
    """A timing worth reporting (printed at the end of the session by conftest)."""
    TIMINGS[name] = value


def make_users(path: Path) -> Path:
    from streams.board.users import add_user

    add_user(path, "alice", "clinician", PASSWORDS["alice"], "Dr Alice Grey")
    add_user(path, "victor", "viewer", PASSWORDS["victor"], "Victor (ward clerk)")
    add_user(path, "ada", "admin", PASSWORDS["ada"], "Ada Admin")
    return path


def launch_browser() -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    exe = chromium()
    with sync_playwright() as p:
        # Playwright adds --headless, --no-sandbox (its default chromium_sandbox=False: needed
        # as root), --disable-background-networking, --no-first-run, a fresh user-data-dir
        browser = p.chromium.launch(executable_path=exe, args=["--disable-gpu"])
        record("chromium", browser.version)
        yield browser
        browser.close()


def iso(minutes_ago: float = 0.0) -> str:
    at = datetime.now(UTC) - timedelta(minutes=minutes_ago)
    return at.isoformat(timespec="seconds").replace("+00:00", "Z")


def make_alert(pid: str, phase: str = "leak", severity: str = "critical", episode: int = 1,
               minutes_ago: float = 0.0, **extra: Any) -> dict[str, Any]:
    when = iso(minutes_ago)
    evidence = {
        "leak": [{"criterion": "hypotension", "value": 78, "unit": "mmHg",
                  "threshold": "SBP <= 90 mmHg or a fall >= 40 mmHg, or MAP < 65, held >= 10 min",
                  "observed_at": when, "baseline": 121.0},
                 {"criterion": "hemoconcentration", "value": 58, "unit": "%",
                  "threshold": "Hct > 50 % (M) or +15 % over baseline", "baseline": 41,
                  "observed_at": when},
                 {"criterion": "hypoalbuminemia", "value": 2.1, "unit": "g/dL",
                  "threshold": "< 3.0 g/dL or a fall >= 0.5 g/dL", "observed_at": when}],
        "prodromal": [{"criterion": "rapid_weight_gain", "value": 3.4, "unit": "kg",
                       "threshold": ">= 3 % or 2 kg in 48 h", "baseline": 71.0,
                       "observed_at": when}],
        "recovery": [{"criterion": "polyuria", "value": 2.6, "unit": "mL/kg/h",
                      "threshold": "> 2.1 mL/kg/h for 3 h", "observed_at": when}]}[phase]
    aid = hashlib.sha256(f"{pid}|{episode}|{phase}|{severity}".encode()).hexdigest()[:16]
    previous = {"leak": "prodromal", "prodromal": "none", "recovery": "leak"}[phase]
    return {"alert_id": aid, "patient_id": pid, "phase": phase, "previous_phase": previous,
            "severity": severity, "raised_at": when, "emitted_at": when, "episode": episode,
            "summary": f"{phase.capitalize()} phase: " + "; ".join(
                f"{e['criterion']} {e['value']} {e['unit']}" for e in evidence),
            "evidence": evidence, **extra}


def sample_vitals(pid: str, hours: int = 12) -> list[dict[str, Any]]:
    """Observations in the contract's shape: SBP and MAP every 5 min falling in the last
    quarter, hematocrit rising every 6 h, albumin falling."""
    now = datetime.now(UTC)
    out = []
    for m in range(0, hours * 60, 5):
        t = (now - timedelta(minutes=hours * 60 - m)).isoformat()
        drop = max(0.0, (m - hours * 45) / 6)
        out.append({"patient_id": pid, "kind": "sbp", "value": round(
            118 + 6 * math.sin(m / 40) - drop, 1), "unit": "mmHg", "observed_at": t})
        out.append({"patient_id": pid, "kind": "map", "value": round(
            84 + 4 * math.sin(m / 40) - drop * 0.7, 1), "unit": "mmHg", "observed_at": t})
        if m % 180 == 0:
            frac = m / (hours * 60)
            out.append({"patient_id": pid, "kind": "hematocrit", "value": round(41 + 17 * frac, 1),
                        "unit": "%", "observed_at": t})
            out.append({"patient_id": pid, "kind": "albumin", "value": round(3.9 - 1.8 * frac, 2),
                        "unit": "g/dL", "observed_at": t})
    return out


@dataclass
class LiveBoard:
    url: str
    state: Any
    loop: asyncio.AbstractEventLoop
    audit: Path
    publisher: Any

    def call(self, fn: Callable[..., Any], *args: Any) -> None:
        """Run fn(*args) on the server's loop (the board's state is loop-confined)."""
        self.loop.call_soon_threadsafe(fn, *args)

    def observe(self, docs: list[dict[str, Any]]) -> None:
        from detectors.observation import normalise

        for doc in docs:
            obs = normalise(doc)
            self.call(self.state.apply_observation, obs.patient_id, obs.kind,
                      obs.observed_at_ms, obs.value, time.time())


def serve_in_thread(users_file: Path, audit: Path) -> Iterator[LiveBoard]:
    import uvicorn

    from streams.board.app import LocalPublisher, create_app
    from streams.board.kafka_io import BoardServer
    from streams.board.state import BoardState
    from streams.kafka.local import free_port

    port = free_port()
    ready = threading.Event()
    box: dict[str, Any] = {}

    def run() -> None:
        async def main() -> None:
            state = BoardState()
            state.caught_up = True
            closing = asyncio.Event()
            publisher = LocalPublisher(state)
            # Secure cookies on http://127.0.0.1: Chromium treats loopback as a secure context
            app = create_app(state, publisher, users_file, "test-secret-" + "x" * 20,
                             audit_path=audit, closing=closing)
            server = BoardServer(uvicorn.Config(app, host="127.0.0.1", port=port,
                                                lifespan="off", log_level="warning",
                                                timeout_graceful_shutdown=3))
            box.update(state=state, loop=asyncio.get_running_loop(), server=server,
                       closing=closing, app=app, publisher=publisher)
            task = asyncio.create_task(server.serve())
            while not server.started:
                await asyncio.sleep(0.01)
            ready.set()
            await task

        asyncio.run(main())

    th = threading.Thread(target=run, daemon=True)
    th.start()
    assert ready.wait(20), "board did not start"
    yield LiveBoard(f"http://127.0.0.1:{port}", box["state"], box["loop"], audit,
                    box["publisher"])
    box["loop"].call_soon_threadsafe(box["closing"].set)
    box["server"].should_exit = True
    th.join(10)
    box["app"].state.close()


def sign_in(browser: Any, url: str, name: str, password: str | None = None,
            viewport: dict[str, int] | None = None) -> Any:
    ctx = browser.new_context(viewport=viewport or TABLET, color_scheme="dark")
    page = ctx.new_page()
    page.goto(url + "/login")
    page.fill("#username", name)
    page.fill("#password", password or PASSWORDS[name])
    t = time.monotonic()
    page.click("button[type=submit]")
    page.wait_for_load_state()
    record(f"sign_in_{name}_s", round(time.monotonic() - t, 2))
    return page


WATCH_ACK = """sel => { window.__ackSeenAt = null;
  new MutationObserver(() => { const li = document.querySelector(sel);
    if (li && !li.classList.contains("unacked") && window.__ackSeenAt === null)
      window.__ackSeenAt = Date.now(); }).observe(document.getElementById("beds"),
    {childList: true, subtree: true, attributes: true}); }"""


def ack_latency_ms(clicker: Any, watcher: Any, bed: str, click: str) -> int:
    """Browser-clock time from the click on one page to the row changing on another (both
    pages in one browser, one clock); Playwright's own waiting is not counted."""
    watcher.evaluate(WATCH_ACK, f"#{bed}")
    t_click = clicker.evaluate("() => Date.now()")
    clicker.click(click)
    watcher.wait_for_selector(f"#{bed}:not(.unacked)", timeout=2000)
    return int(watcher.evaluate("() => window.__ackSeenAt") - t_click)


def csrf_of(page: Any) -> str:
    return str(page.locator("input[name=csrf]").first.get_attribute("value"))


def wait_chart(page: Any, timeout: float = 15.0) -> None:
    # (not wait_for_function: its string predicate is eval'd, which the page's CSP forbids)
    deadline = time.monotonic() + timeout
    while page.locator("img.chart").evaluate("img => img.naturalWidth") == 0:
        assert time.monotonic() < deadline, "timeline chart did not load"
        time.sleep(0.05)


class BoardProcess:
    """``clsmon board`` as a child process."""

    def __init__(self, bootstrap: str, prefix: str, users: Path, audit: Path, log: Path) -> None:
        from streams.kafka.local import free_port

        self.port = free_port()
        self.metrics_port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.args = [sys.executable, "-m", "streams.cli", "board", "--broker", bootstrap,
                     "--port", str(self.port), "--users", str(users), "--audit", str(audit),
                     "--topic-prefix", prefix, "--metrics-port", str(self.metrics_port)]
        self.log = log
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> float:
        env = {**os.environ, "PYTHONPATH": str(ROOT),
               "CLSMON_BOARD_SECRET": "e2e-secret-" + "y" * 24}
        t = time.monotonic()
        self.proc = subprocess.Popen(self.args, cwd=ROOT, env=env, stdout=self.log.open("ab"),
                                     stderr=subprocess.STDOUT, start_new_session=True)
        while True:
            assert self.proc.poll() is None, self.log.read_text()[-3000:]
            try:
                with urllib.request.urlopen(self.url + "/healthz", timeout=1) as r:
                    if r.status == 200:
                        return time.monotonic() - t
            except OSError:
                pass
            assert time.monotonic() - t < 60, "board not ready in 60 s"
            time.sleep(0.1)

    def stop(self) -> tuple[int, float]:
        assert self.proc is not None
        t = time.monotonic()
        self.proc.send_signal(signal.SIGTERM)
        try:
            code = self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            code = self.proc.wait()
        return code, time.monotonic() - t


def dumps(doc: dict[str, Any]) -> bytes:
    return json.dumps(doc).encode()
