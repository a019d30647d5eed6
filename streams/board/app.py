"""The board's web application (Starlette): sign-in, the live board (server-sent events), the
alert detail with its timeline, acknowledge and escalate now, the audit log.

Security model, enforced on the server (never only in the page):
- sessions: Starlette's signed cookie (itsdangerous), HttpOnly, SameSite=Strict, Secure unless
  ``secure_cookies=False`` (plain HTTP off loopback, development only), 12 h; the secret comes
  from ``CLSMON_BOARD_SECRET`` (random when unset: sessions end at a restart);
- CSRF: a synchronizer token in the session, a hidden field in every form, compared with
  ``secrets.compare_digest`` on every POST, plus an Origin check; SameSite=Strict is a second
  layer;
- roles (``users``): a viewer reads; a clinician and an admin acknowledge and escalate; an admin
  reads the audit log; the role is read from the users file on every request;
- sign-in: argon2 verify in a thread (4 at a time: 64 MiB each), the same cost for an unknown
  name, 5 failures lock a name for 60 s;
- headers: a CSP without inline script or style, no framing, no sniffing.

Every sign-in, failed sign-in, acknowledgement, escalation request and refusal is audited
(JSON lines, with the user name and role).
"""

from __future__ import annotations

import asyncio
import json
import logging
import multiprocessing
import secrets
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any, Protocol
from zoneinfo import ZoneInfo

from sse_starlette import EventSourceResponse
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.middleware import Middleware
from starlette.middleware.sessions import SessionMiddleware
from starlette.requests import Request
from starlette.responses import PlainTextResponse, RedirectResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.templating import Jinja2Templates
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from detectors.wording import criterion_words
from streams.board.metrics import BoardMetrics
from streams.board.state import BoardState, now_iso, parse_time
from streams.board.users import User, load_users, verify

HERE = Path(__file__).parent
log = logging.getLogger(__name__)
MAX_FAILURES, LOCK_S = 5, 60.0
PHASE_ICONS = {"leak": "▲", "prodromal": "◆", "recovery": "▼"}


class Publisher(Protocol):
    async def publish(self, patient_id: str, doc: dict[str, Any]) -> None:
        """Write an acknowledgement or escalation request to ``alert-acks`` (durably)."""
        ...


class LocalPublisher:
    """No broker: apply to the state directly (tests of the page alone)."""

    def __init__(self, state: BoardState) -> None:
        self.state = state
        self.sent: list[tuple[str, dict[str, Any]]] = []

    async def publish(self, patient_id: str, doc: dict[str, Any]) -> None:
        self.sent.append((patient_id, doc))


class SecurityHeaders:
    """CSP without 'unsafe-inline' (no inline script or style anywhere), no framing, no sniffing."""

    HEADERS = [(b"content-security-policy", b"default-src 'self'; img-src 'self' data:; "
                b"style-src 'self'; script-src 'self'; frame-ancestors 'none'; "
                b"form-action 'self'; base-uri 'none'"),
               (b"x-content-type-options", b"nosniff"), (b"referrer-policy", b"same-origin"),
               (b"x-frame-options", b"DENY")]

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        async def send_with(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = list(message.get("headers", [])) + self.HEADERS
            await send(message)
        await self.app(scope, receive, send_with if scope["type"] == "http" else send)


def _templates(display_tz: str) -> Jinja2Templates:
    templates = Jinja2Templates(directory=str(HERE / "templates"))
    tz = ZoneInfo(display_tz)  # the ward's clock; times on the wire are UTC

    def hhmm(s: Any) -> str:
        t = parse_time(s)
        return t.astimezone(tz).strftime("%d %b %H:%M") if t else "?"

    templates.env.filters["hhmm"] = hhmm
    templates.env.filters["criterion"] = criterion_words
    templates.env.globals.update(tz=display_tz, icons=PHASE_ICONS)
    return templates


def create_app(state: BoardState, publisher: Publisher, users_file: str | Path, secret: str,
               *, secure_cookies: bool = True, audit_path: str | Path | None = None,
               closing: asyncio.Event | None = None, ping_s: float = 15.0,
               display_tz: str = "UTC", silent_after_s: float = 900.0,
               metrics: BoardMetrics | None = None) -> Starlette:
    users: dict[str, User] = load_users(users_file)
    metrics = metrics or BoardMetrics()
    templates = _templates(display_tz)
    row_template = templates.env.get_template("_row.html")
    closing = closing or asyncio.Event()
    pool: list[ProcessPoolExecutor] = []

    def chart_pool() -> ProcessPoolExecutor:
        if not pool:  # spawn, not fork: the parent has threads and a running loop
            pool.append(ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn"),
                                            initializer=_warm_chart))
            pool[0].submit(int)  # start it (and import matplotlib) now, not on first use
        return pool[0]

    failures: dict[str, tuple[int, float]] = {}
    login_slots = asyncio.Semaphore(4)  # each argon2 verify takes 64 MiB: at most 4 at once

    def audit(event: dict[str, Any]) -> None:
        line = json.dumps({"at": now_iso(), **event}, separators=(",", ":"))
        if audit_path:
            Path(audit_path).parent.mkdir(parents=True, exist_ok=True)
            with open(audit_path, "a", encoding="utf-8") as f:
                f.write(line + "\n")

    def csrf_token(request: Request) -> str:
        tok = request.session.get("csrf")
        if not tok:
            tok = request.session["csrf"] = secrets.token_urlsafe(32)
        return str(tok)

    def current_user(request: Request) -> User | None:
        name = request.session.get("user")
        return users.get(name) if isinstance(name, str) else None  # role read fresh each time

    async def check_post(request: Request) -> Any:
        """CSRF: Origin (when sent) must be ours; the form's token must equal the session's."""
        origin = request.headers.get("origin")
        if origin and origin.split("://", 1)[-1] != request.headers.get("host"):
            return None
        form = await request.form()
        sent, expected = form.get("csrf"), request.session.get("csrf")
        if not (isinstance(sent, str) and expected and secrets.compare_digest(sent, expected)):
            return None
        return form

    def page(request: Request, name: str, ctx: dict[str, Any], status: int = 200) -> Response:
        ctx = {"user": current_user(request), "csrf": csrf_token(request), **ctx}
        return templates.TemplateResponse(request, name, ctx, status_code=status)

    Endpoint = Callable[..., Awaitable[Response]]

    def require(role_ok: Callable[[User], bool] = lambda u: True
                ) -> Callable[[Endpoint], Endpoint]:
        def wrap(fn: Endpoint) -> Endpoint:
            async def endpoint(request: Request) -> Response:
                user = current_user(request)
                if user is None:
                    if request.method == "GET" and "text/html" in request.headers.get("accept", ""):
                        return RedirectResponse("/login", 303)
                    # a person with curl, or a script: say where a browser signs in
                    return PlainTextResponse(
                        f"sign in first: open {request.url_for('login_form')} in a browser\n",
                        401)
                if not role_ok(user):
                    metrics.actions.labels("forbidden").inc()
                    audit({"event": "forbidden", "user": user.name, "role": user.role,
                           "path": request.url.path})
                    return PlainTextResponse("your role may not do this", 403)
                return await fn(request, user)
            return endpoint
        return wrap

    # --- sign-in --------------------------------------------------------------------------
    async def login_form(request: Request) -> Response:
        return page(request, "login.html", {"error": None})

    async def login(request: Request) -> Response:
        form = await check_post(request)
        if form is None:
            return PlainTextResponse("CSRF check failed: reload the page", 403)
        name = str(form.get("username", "")).strip().lower()
        pw = str(form.get("password", ""))
        n, until = failures.get(name, (0, 0.0))
        if n >= MAX_FAILURES and time.monotonic() < until:
            metrics.sign_ins.labels("locked").inc()
            return page(request, "login.html", {"error": "Too many attempts: wait a minute."}, 429)
        async with login_slots:  # ~0.2-0.5 s of CPU each: in a thread, not on the loop
            user = await run_in_threadpool(verify, users, name, pw)
        if user is None:
            failures[name] = (n + 1, time.monotonic() + LOCK_S)
            metrics.sign_ins.labels("refused").inc()
            audit({"event": "login_failed", "user": name,
                   "client": request.client.host if request.client else None})
            return page(request, "login.html", {"error": "Wrong user name or password."}, 401)
        failures.pop(name, None)
        metrics.sign_ins.labels("ok").inc()
        request.session.clear()  # a new session (and CSRF token) at sign-in
        request.session.update({"user": user.name, "csrf": secrets.token_urlsafe(32),
                                "since": now_iso()})
        audit({"event": "login", "user": user.name, "role": user.role})
        return RedirectResponse("/", 303)

    async def logout(request: Request) -> Response:
        if await check_post(request) is None:
            return PlainTextResponse("CSRF check failed", 403)
        request.session.clear()
        return RedirectResponse("/login", 303)

    # --- the board ------------------------------------------------------------------------
    def rows(ward: str | None) -> list[dict[str, Any]]:
        return state.rows(ward, time.time(), silent_after_s)

    @require()
    async def board(request: Request, user: User) -> Response:
        ward = request.query_params.get("ward") or None
        silent = [b for b in state.silent_beds(time.time(), silent_after_s)
                  if not ward or b.ward == ward]
        return page(request, "board.html", {
            "rows": rows(ward), "ward": ward, "wards": state.wards(), "state": state,
            "silent": silent, "silent_after_min": int(silent_after_s // 60), "now": time.time()})

    @require()
    async def events(request: Request, user: User) -> Response:
        ward = request.query_params.get("ward") or None
        q = state.subscribe()

        async def stream() -> Any:
            stop = asyncio.ensure_future(closing.wait())
            get: asyncio.Future[tuple[int, str]] | None = None
            metrics.streams.inc()
            try:
                html = "".join(row_template.render(r=r, tz=display_tz, icons=PHASE_ICONS)
                               for r in rows(ward))
                yield {"event": "snapshot", "id": str(state.version), "retry": 1000,
                       "data": json.dumps({"html": html, "caught_up": state.caught_up})}
                while True:
                    get = asyncio.ensure_future(q.get())
                    await asyncio.wait({get, stop}, return_when=asyncio.FIRST_COMPLETED)
                    if not get.done():
                        break  # the board is closing: end the stream so uvicorn can stop
                    version, pid = get.result()
                    bed = state.beds.get(pid)
                    if bed is None:
                        yield {"event": "gone", "id": str(version),
                               "data": json.dumps({"id": f"bed-{pid}"})}
                        continue
                    if ward and bed.ward != ward:
                        continue
                    r = state.row(pid, time.time(), silent_after_s)
                    yield {"event": "bed", "id": str(version),
                           "data": json.dumps({"id": f"bed-{pid}", "sort": r["sort"],
                                               "html": row_template.render(
                                                   r=r, tz=display_tz, icons=PHASE_ICONS)})}
            finally:  # also on a client disconnect (the generator is cancelled)
                metrics.streams.dec()
                for f in (get, stop):
                    if f is not None and not f.done():
                        f.cancel()
                state.unsubscribe(q)

        # "retry: 1000" in the first event: the browser reconnects 1 s after a dropped stream
        return EventSourceResponse(stream(), ping=ping_s, headers={"Cache-Control": "no-store"})

    @require()
    async def detail(request: Request, user: User) -> Response:
        aid = request.path_params["aid"]
        alert = state.alerts.get(aid)
        if alert is None:
            return PlainTextResponse("no such alert", 404)
        bed = state.beds.get(alert["patient_id"])
        return page(request, "detail.html", {
            "a": alert, "acks": state.acks.get(aid, []),
            "requests": state.escalation_requests.get(aid, []),
            "outcomes": state.outcomes.get(aid, []),
            "others": [state.alerts[x] for x in (bed.alert_ids if bed else [])],
            "ward": bed.ward if bed else None})

    @require()
    async def timeline(request: Request, user: User) -> Response:
        pid = request.path_params["pid"]
        bed = state.beds.get(pid)
        if bed is None:
            return PlainTextResponse("no such patient", 404)
        alerts = [state.alerts[a] for a in bed.alert_ids]
        title = f"{pid}{f' ({bed.bed})' if bed.bed else ''}: vitals, labs and alerts"
        # matplotlib in a thread holds the GIL long enough to stall every live stream for
        # 1-4 s (measured); a one-process pool keeps the event loop free.
        svg = await asyncio.get_running_loop().run_in_executor(
            chart_pool(), _render_timeline, title, state.chart_points(pid), alerts, display_tz)
        return Response(svg, media_type="image/svg+xml", headers={"Cache-Control": "no-store"})

    async def _action(request: Request, user: User, action: str) -> Response:
        aid = request.path_params["aid"]
        form = await check_post(request)
        if form is None:
            metrics.actions.labels("csrf").inc()
            return PlainTextResponse("CSRF check failed: reload the page", 403)
        alert = state.alerts.get(aid)
        if alert is None:
            return PlainTextResponse("no such alert", 404)
        doc: dict[str, Any] = {"alert_id": aid, "by": user.display, "at": now_iso(),
                               "action": action, "user": user.name}
        note = str(form.get("note", "")).strip()[:500]
        if note:
            doc["note"] = note
        # written (acks=all) first, then applied here too, so the redirect shows it at once;
        # reading it back from the topic later is a no-op (same by and at)
        await publisher.publish(alert["patient_id"], doc)
        state.apply_ack(doc, alert["patient_id"])
        metrics.actions.labels(action).inc()
        audit({"event": action, "patient_id": alert["patient_id"], "role": user.role, **doc})
        return RedirectResponse(f"/alerts/{aid}", 303)

    @require(lambda u: u.can_ack)
    async def ack(request: Request, user: User) -> Response:
        return await _action(request, user, "ack")

    @require(lambda u: u.can_ack)
    async def escalate(request: Request, user: User) -> Response:
        return await _action(request, user, "escalate")

    @require(lambda u: u.role == "admin")
    async def audit_view(request: Request, user: User) -> Response:
        text = Path(audit_path).read_text() if audit_path and Path(audit_path).exists() else ""
        return PlainTextResponse(text)

    async def healthz(request: Request) -> Response:
        return PlainTextResponse("ok" if state.caught_up else "reading history",
                                 200 if state.caught_up else 503)

    routes = [
        Route("/login", login_form, methods=["GET"]), Route("/login", login, methods=["POST"]),
        Route("/logout", logout, methods=["POST"]),
        Route("/", board), Route("/events", events),
        Route("/alerts/{aid}", detail), Route("/alerts/{aid}/ack", ack, methods=["POST"]),
        Route("/alerts/{aid}/escalate", escalate, methods=["POST"]),
        Route("/patients/{pid}/timeline.svg", timeline), Route("/audit", audit_view),
        Route("/healthz", healthz),
        Mount("/static", StaticFiles(directory=str(HERE / "static")), name="static"),
    ]
    middleware = [
        Middleware(SecurityHeaders),
        Middleware(SessionMiddleware, secret_key=secret, session_cookie="clsmon_board",
                   max_age=12 * 3600, same_site="strict", https_only=secure_cookies),
    ]
    app = Starlette(routes=routes, middleware=middleware)
    app.state.board = state
    def close() -> None:
        for p in pool:
            p.shutdown(cancel_futures=True)

    app.state.close = close
    chart_pool()
    return app


def _warm_chart() -> None:
    import streams.board.chart  # noqa: F401  (matplotlib: ~1 s to import)


def _render_timeline(title: str, points: dict[str, list[tuple[int, float]]],
                     alerts: list[Any], tz_name: str) -> bytes:
    from streams.board import chart

    return chart.timeline_svg(title, points, alerts, ZoneInfo(tz_name))
