"""The board without a browser: the users file and `clsmon users add` (no echo, argon2id, mode
0600), the state's ordering and bounds, and the worker's side of it (the patient-phase record,
silent beds counted by ward without patient identifiers)."""

from __future__ import annotations

import os
import pty
import select
import subprocess
import sys
import time
import tomllib
from pathlib import Path

import pytest
from board_support import ROOT, make_alert

from streams.board.state import BoardState, Series
from streams.board.users import UsersFileError, add_user, load_users, verify


def _read_until(fd: int, text: bytes, timeout: float = 30.0) -> bytes:
    out = b""
    end = time.monotonic() + timeout
    while text not in out and time.monotonic() < end:
        if select.select([fd], [], [], 0.2)[0]:
            try:
                out += os.read(fd, 4096)
            except OSError:
                break
    return out


def test_users_add_asks_twice_on_a_terminal_and_never_echoes(tmp_path: Path) -> None:
    path = tmp_path / "users.toml"
    master, slave = pty.openpty()
    proc = subprocess.Popen([sys.executable, "-m", "streams.cli", "users", "add", "bob",
                             "--role", "clinician", "--display", "Dr Bob Ó Briain",
                             "--file", str(path)], cwd=ROOT, stdin=slave, stdout=slave,
                            stderr=slave, env={**os.environ, "PYTHONPATH": str(ROOT)})
    os.close(slave)
    seen = _read_until(master, b"password for bob: ")
    os.write(master, b"s3cret-horse-battery\n")
    seen += _read_until(master, b"again: ")
    os.write(master, b"s3cret-horse-battery\n")
    seen += _read_until(master, b"written to")
    assert proc.wait(60) == 0, seen
    os.close(master)
    assert b"s3cret" not in seen, seen  # getpass turned echo off
    doc = tomllib.loads(path.read_text())
    assert doc["users"]["bob"]["hash"].startswith("$argon2id$v=19$m=65536,t=3,p=4$")
    assert oct(path.stat().st_mode & 0o777) == "0o600"
    users = load_users(path)
    assert users["bob"].display == "Dr Bob Ó Briain" and users["bob"].can_ack
    assert verify(users, "bob", "s3cret-horse-battery") is not None
    assert verify(users, "bob", "wrong") is None
    assert verify(users, "nobody", "s3cret-horse-battery") is None


def test_the_users_file_is_checked_and_errors_are_one_line(tmp_path: Path) -> None:
    path = tmp_path / "u.toml"
    with pytest.raises(UsersFileError):
        add_user(path, "eve", "superuser", "long-enough-password")
    with pytest.raises(UsersFileError):
        add_user(path, "Eve Smith", "viewer", "long-enough-password")
    with pytest.raises(UsersFileError, match="10 characters"):
        add_user(path, "eve", "viewer", "short")
    path.write_text('[users.eve]\nrole = "viewer"\nhash = "plaintext"\n')
    with pytest.raises(UsersFileError):
        load_users(path)
    done = subprocess.run([sys.executable, "-m", "streams.cli", "board", "--users",
                           str(tmp_path / "missing.toml")], cwd=ROOT, capture_output=True,
                          text=True, env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=60)
    assert done.returncode == 2 and "clsmon users add" in done.stderr
    assert "Traceback" not in done.stderr


def test_a_busy_port_is_named_with_how_to_choose_another(tmp_path: Path) -> None:
    import socket

    users = tmp_path / "users.toml"
    add_user(users, "amy", "viewer", "long-enough-password")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        done = subprocess.run([sys.executable, "-m", "streams.cli", "board", "--users",
                               str(users), "--port", str(port), "--metrics-port", "0"],
                              cwd=ROOT, capture_output=True,
                              text=True, env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=60)
    assert done.returncode == 2
    assert f"port {port}" in done.stderr and "--port" in done.stderr


def test_beds_sort_unacknowledged_worst_first_and_superseded_alerts_wait_for_nobody() -> None:
    state = BoardState()
    high = make_alert("icu3-bed01", severity="high", minutes_ago=30)
    state.apply_alert(high)
    state.apply_alert(make_alert("icu3-bed02", "prodromal", "warning", minutes_ago=60))
    state.apply_alert(make_alert("icu3-bed03", "recovery", "high", minutes_ago=10))
    acked = make_alert("icu3-bed04", severity="critical", minutes_ago=5)
    state.apply_alert(acked)
    state.apply_ack({"alert_id": acked["alert_id"], "by": "dr a", "at": "x"})
    rows = state.rows(None, time.time(), 900)
    assert [r["bed"].patient_id for r in rows] == [
        "icu3-bed01", "icu3-bed03", "icu3-bed02", "icu3-bed04"]
    state.apply_outcome({"alert_id": high["alert_id"], "patient_id": "icu3-bed01",
                         "outcome": "superseded", "sink": "-", "kind": "alert"})
    assert state.row("icu3-bed01", time.time(), 900)["unacked"] == []
    # an escalation request is not an acknowledgement
    state.apply_ack({"alert_id": high["alert_id"], "by": "dr b", "at": "y",
                     "action": "escalate"})
    assert not state.acks.get(high["alert_id"])
    assert state.escalation_requests[high["alert_id"]][0]["by"] == "dr b"
    # a discharge (tombstone on patient-phase) removes the bed
    state.apply_phase("icu3-bed02", None)
    assert "icu3-bed02" not in state.beds


def test_a_series_keeps_the_last_hours_and_at_most_max_points() -> None:
    s = Series()
    for i in range(100):
        s.add(i * 60_000, float(i), max_points=50, keep_ms=3_600_000)
    assert len(s.times) == 50 and s.times[-1] == 99 * 60_000
    s.add(98 * 60_000 + 1, -1.0, max_points=50, keep_ms=3_600_000)  # late: kept in order
    assert list(s.times) == sorted(s.times)
    s.add(10 * 3_600_000, 1.0, max_points=50, keep_ms=3_600_000)
    assert len(s.times) == 1  # everything older than an hour before the newest is gone


def test_the_worker_counts_silent_beds_by_ward_and_forgets_them() -> None:
    from streams.worker.beds import MAX_WARDS, SilentBeds

    beds = SilentBeds()
    beds.seen("p1", "icu3", 0.0)
    beds.seen("p2", "icu3", 1000.0)
    beds.seen("p3", None, 0.0)
    monitored, silent = beds.counts(1000.0, 900.0, 86_400.0)
    assert monitored == {"icu3": 2, "unknown": 1} and silent == {"icu3": 1, "unknown": 1}
    beds.forget("p3")  # discharged
    monitored, silent = beds.counts(87_000.0, 900.0, 86_400.0)
    assert monitored == {"icu3": 1} and silent == {"icu3": 1}  # p1 expired after a day
    for i in range(MAX_WARDS + 5):
        beds.seen(f"q{i}", f"ward{i}", 100_000.0)
    monitored, _ = beds.counts(100_000.0, 900.0, 86_400.0)
    assert len(monitored) <= MAX_WARDS + 1 and monitored["other"] >= 5


def test_the_patient_phase_record_says_where_and_why_in_clinical_words() -> None:
    from detectors.alerts import Evidence
    from detectors.alerts import make_alert as engine_alert
    from detectors.state import PatientState
    from streams.worker.outputs import phase_record

    st = PatientState("icu3-bed07", phase="leak", severity="critical", episode=2,
                      phase_since=1_790_000_000_000)
    alert = engine_alert("icu3-bed07", 2, "leak", "prodromal", "critical", 1_790_000_000_000,
                         [Evidence("hypotension", 78, "mmHg", "SBP <= 90 mmHg", 1_790_000_000_000,
                                   121.0)])
    doc = phase_record(st, alert)
    assert doc["phase"] == "leak" and doc["severity"] == "critical" and doc["episode"] == 2
    assert doc["since"].startswith("2026-09-21") and doc["alert_id"] == alert.alert_id
    assert doc["last_evidence"].startswith("Low blood pressure: 78 mmHg (limit SBP <= 90 mmHg")
    assert "ward" not in doc  # only when the ADT feed gave one
    assert phase_record(st, None).get("last_evidence") is None
    st.ward, st.bed = "icu3", "07"
    assert {k: phase_record(st, None)[k] for k in ("ward", "bed")} == {"ward": "icu3", "bed": "07"}
