"""The ward board in a real browser: Playwright (Python) driving Debian's Chromium headless
against the board served in this process (its state fed directly). Sign-in, live updates,
ordering and ageing, the detail page with its timeline, acknowledging, roles, CSRF, cookies.
The screenshots are taken here: into a scratch folder on every run, into docs/board/ (the
README's pictures) with `make screenshots`."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from board_support import (
    SHOTS,
    LiveBoard,
    ack_latency_ms,
    csrf_of,
    launch_browser,
    make_alert,
    make_users,
    record,
    sample_vitals,
    serve_in_thread,
    sign_in,
    wait_chart,
)


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    yield from launch_browser()


@pytest.fixture(scope="module")
def users_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_users(tmp_path_factory.mktemp("users") / "users.toml")


@pytest.fixture
def board(users_file: Path, tmp_path: Path) -> Iterator[LiveBoard]:
    yield from serve_in_thread(users_file, tmp_path / "audit.jsonl")


def test_a_wrong_password_is_refused(browser: Any, board: LiveBoard) -> None:
    page = sign_in(browser, board.url, "alice", "not-her-password")
    assert page.url.endswith("/login")
    assert "Wrong user name or password" in page.locator("p.error").inner_text()
    page.goto(board.url + "/")
    assert page.url.endswith("/login")  # still closed to this browser
    unknown = sign_in(browser, board.url, "mallory", "whatever-password")
    assert "Wrong user name or password" in unknown.locator("p.error").inner_text()
    unknown.screenshot(path=str(SHOTS / "login-refused.png"))
    lines = [json.loads(x) for x in board.audit.read_text().splitlines()]
    assert [x["event"] for x in lines] == ["login_failed", "login_failed"]


def test_an_alert_appears_live_first_and_is_acknowledged(browser: Any, board: LiveBoard) -> None:
    SHOTS.mkdir(parents=True, exist_ok=True)
    # the ward before: an acknowledged prodrome, a recovery, an older unacknowledged leak,
    # a bed whose notification failed, a silent bed, and one on another ward
    old = make_alert("icu3-bed02", "prodromal", "warning", minutes_ago=180)
    board.call(board.state.apply_alert, old)
    board.call(board.state.apply_ack, {"alert_id": old["alert_id"], "by": "Dr Ng",
                                       "at": old["raised_at"], "note": "weighed again"})
    board.call(board.state.apply_alert, make_alert("icu3-bed11", "recovery", "high",
                                                   minutes_ago=40))
    leak = make_alert("icu3-bed04", "leak", "high", minutes_ago=22)
    board.call(board.state.apply_alert, leak)
    board.call(board.state.apply_outcome, {
        "alert_id": leak["alert_id"], "patient_id": "icu3-bed04", "kind": "alert",
        "sink": "icu3-pager", "outcome": "failed", "attempts": 1,
        "detail": "HTTP 302 redirect to /login (redirects are not followed)",
        "at": leak["raised_at"]})
    board.call(board.state.apply_phase, "icu3-bed09", {"phase": "none", "severity": "none"})
    board.call(board.state.apply_observation, "icu3-bed09", "sbp", 0, 120.0,
               time.time() - 25 * 60)
    board.call(board.state.apply_alert, make_alert("icu5-bed01", "prodromal", "warning",
                                                   minutes_ago=7))
    board.call(board.state.apply_phase, "icu3-bed07", {"phase": "none", "severity": "none"})
    board.observe(sample_vitals("icu3-bed07"))

    page = sign_in(browser, board.url, "alice")
    viewer = sign_in(browser, board.url, "victor")
    for p in (page, viewer):
        p.wait_for_selector("#live.on", timeout=5000)
        assert p.locator("#bed-icu3-bed04").is_visible()

    alert = make_alert("icu3-bed07", "leak", "critical")
    t0 = time.monotonic()
    board.call(board.state.apply_alert, alert)
    page.wait_for_selector("#bed-icu3-bed07.unacked", timeout=2000)
    record("board_alert_pushed_to_visible_s", round(time.monotonic() - t0, 3))
    viewer.wait_for_selector("#bed-icu3-bed07.unacked", timeout=2000)
    row = page.locator("#bed-icu3-bed07").inner_text()
    assert "NOT ACKNOWLEDGED" in row and "Low blood pressure: 78 mmHg" in row
    # unacknowledged first, the critical one at the top; the acknowledged prodrome last
    order = page.locator("#beds > li").evaluate_all("els => els.map(e => e.id)")
    assert order[0] == "bed-icu3-bed07", order
    assert order.index("bed-icu3-bed02") > order.index("bed-icu3-bed04"), order
    assert "NOTIFICATION FAILED: icu3-pager" in page.locator("#bed-icu3-bed04").inner_text()
    assert "NO DATA for 25 min" in page.locator("#bed-icu3-bed09").inner_text()
    assert "icu3-bed09" in page.locator(".silent-list").inner_text()
    page.screenshot(path=str(SHOTS / "board-tablet.png"))

    page.click("#bed-icu3-bed07 a.open-detail")
    wait_chart(page)
    assert page.locator("table.evidence tbody tr").count() == 3
    page.fill("#note", "fluids and noradrenaline started")
    page.screenshot(path=str(SHOTS / "detail-tablet.png"), full_page=True)
    ms = ack_latency_ms(page, viewer, "bed-icu3-bed07", "form.ack button[type=submit]")
    record("board_ack_click_to_other_board_ms", ms)
    page.wait_for_load_state()
    assert "Dr Alice Grey" in page.locator("table.acks").inner_text()
    assert "Acknowledged by Dr Alice Grey" in viewer.locator("#bed-icu3-bed07").inner_text()
    [(pid, sent)] = board.publisher.sent  # what goes to alert-acks
    assert pid == "icu3-bed07" and sent["action"] == "ack" and sent["user"] == "alice"
    assert sent["by"] == "Dr Alice Grey" and sent["note"] == "fluids and noradrenaline started"
    audit = [json.loads(x) for x in board.audit.read_text().splitlines()]
    acks = [x for x in audit if x["event"] == "ack"]
    assert acks and acks[0]["user"] == "alice" and acks[0]["role"] == "clinician"

    # escalate now: written with action "escalate", shown on the detail page
    page.goto(f"{board.url}/alerts/{leak['alert_id']}")
    assert "FAILED" in page.locator("table.outcomes").inner_text()
    page.click("form.escalate button")
    assert page.locator("text=Escalation requested").is_visible()
    assert board.publisher.sent[-1][1]["action"] == "escalate"

    # ward filter: icu5 only
    viewer.goto(board.url + "/?ward=icu5")
    viewer.wait_for_selector("#live.on")
    ids = viewer.locator("#beds > li").evaluate_all("els => els.map(e => e.id)")
    assert ids == ["bed-icu5-bed01"]
    # a portrait tablet, read-only
    viewer.set_viewport_size({"width": 768, "height": 1024})
    viewer.goto(board.url + "/?ward=icu3")
    viewer.wait_for_selector("#live.on")
    viewer.screenshot(path=str(SHOTS / "board-portrait-viewer.png"))


def test_a_viewer_cannot_acknowledge(browser: Any, board: LiveBoard) -> None:
    alert = make_alert("icu3-bed09", "leak", "critical")
    board.call(board.state.apply_alert, alert)
    page = sign_in(browser, board.url, "victor")
    page.goto(f"{board.url}/alerts/{alert['alert_id']}")
    assert page.locator("form.ack").count() == 0
    assert page.locator("text=can view but not acknowledge").is_visible()
    # the server refuses it too, even with a valid CSRF token (the role check)
    r = page.request.post(f"{board.url}/alerts/{alert['alert_id']}/ack",
                          form={"csrf": csrf_of(page), "note": "sneaky"},
                          headers={"Origin": board.url})
    assert r.status == 403 and "role" in r.text()
    r = page.request.post(f"{board.url}/alerts/{alert['alert_id']}/escalate",
                          form={"csrf": csrf_of(page)})
    assert r.status == 403
    assert board.publisher.sent == [] and not board.state.acks.get(alert["alert_id"])


@pytest.mark.parametrize("form", [{}, {"csrf": "forged"}])
def test_a_post_without_the_csrf_token_is_refused(browser: Any, board: LiveBoard,
                                                  form: dict[str, str]) -> None:
    alert = make_alert("icu3-bed10", "leak", "critical")
    board.call(board.state.apply_alert, alert)
    page = sign_in(browser, board.url, "alice")
    r = page.request.post(f"{board.url}/alerts/{alert['alert_id']}/ack",
                          form={**form, "note": "x"})
    assert r.status == 403 and "CSRF" in r.text()
    r = page.request.post(f"{board.url}/alerts/{alert['alert_id']}/ack",
                          form={"csrf": csrf_of(page)}, headers={"Origin": "https://evil.example"})
    assert r.status == 403
    assert board.publisher.sent == []


def test_the_session_cookie_is_secure_httponly_strict(browser: Any, board: LiveBoard) -> None:
    page = sign_in(browser, board.url, "alice")
    (cookie,) = [c for c in page.context.cookies() if c["name"] == "clsmon_board"]
    assert cookie["httpOnly"] and cookie["secure"] and cookie["sameSite"] == "Strict"
    assert page.evaluate("document.cookie") == ""  # HttpOnly: not readable by scripts
