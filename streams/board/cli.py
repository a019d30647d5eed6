"""``clsmon board`` and ``clsmon users``: parse, check what a user can get wrong (the users
file, a busy port) before anything starts, then run."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import secrets
from typing import Any

from streams.board.users import ROLES, UsersFileError, add_command, default_users_file, load_users
from streams.kafka.local import port_in_use
from streams.ops.paths import state_dir


class BoardError(ValueError):
    """Something the user can fix (a busy port, a bad users file)."""


def add_parsers(sub: Any, env: Any, default_broker: str) -> None:
    p = sub.add_parser("board", help="the clinicians' ward board (web): beds, alerts, acks",
                       description="Serve the ward board: every bed's phase and severity, "
                                   "unacknowledged alerts first, live updates, the alert detail "
                                   "with its evidence and timeline, acknowledge and escalate "
                                   "now. Sign-in with the users file (clsmon users add).")
    p.add_argument("--port", type=int, default=int(env("CLSMON_BOARD_PORT", "8080")),
                   help="HTTP port (env CLSMON_BOARD_PORT, default 8080)")
    p.add_argument("--host", default=env("CLSMON_BOARD_HOST", "127.0.0.1"),
                   help="address to bind (env CLSMON_BOARD_HOST, default 127.0.0.1; 0.0.0.0 "
                        "only behind a TLS reverse proxy)")
    p.add_argument("--users", default=env("CLSMON_BOARD_USERS", str(default_users_file())),
                   metavar="FILE", help="users file (env CLSMON_BOARD_USERS, default "
                                        "board-users.toml in the state directory)")
    p.add_argument("--audit", default=env("CLSMON_BOARD_AUDIT",
                                          str(state_dir() / "board-audit.jsonl")),
                   metavar="FILE", help="JSON-lines audit of sign-ins and actions (env "
                                        "CLSMON_BOARD_AUDIT, default in the state directory)")
    p.add_argument("--timezone", default=env("CLSMON_BOARD_TZ", "UTC"),
                   help="the ward's time zone for displayed times (env CLSMON_BOARD_TZ, "
                        "default UTC)")
    p.add_argument("--keep-hours", type=float, default=72.0,
                   help="hours of vitals and labs read for the timelines (default 72)")
    p.add_argument("--silent-after-min", type=float,
                   default=float(env("CLSMON_SILENT_AFTER_MIN", "15")),
                   help="a bed without data this long is listed as silent (default 15)")
    p.add_argument("--metrics-port", type=int, default=int(env("CLSMON_BOARD_METRICS_PORT",
                                                               "6068")),
                   help="port of /metrics, /healthz, /readyz; 0 = none (env "
                        "CLSMON_BOARD_METRICS_PORT, default 6068)")
    p.add_argument("--metrics-host", default=env("CLSMON_METRICS_HOST", "127.0.0.1"),
                   help="address /metrics binds to (env CLSMON_METRICS_HOST, default 127.0.0.1)")
    p.add_argument("--insecure-cookies", action="store_true",
                   help="drop the cookie's Secure flag (plain HTTP off loopback; development)")
    p.add_argument("--topic-prefix", default=env("CLSMON_TOPIC_PREFIX", "clsmon."),
                   help="prefix of every topic name (env CLSMON_TOPIC_PREFIX)")
    p.set_defaults(func=board_command)

    p = sub.add_parser("users", help="manage the board's users (add or replace one)",
                       description="Add or replace a board user; the password is asked twice "
                                   "and never echoed, and stored as an argon2id hash.")
    users = p.add_subparsers(dest="users_command", required=True, metavar="ACTION")
    a = users.add_parser("add", help="add or replace a user")
    a.add_argument("name")
    a.add_argument("--role", choices=ROLES, required=True,
                   help="viewer reads; clinician acknowledges and escalates; admin also reads "
                        "the audit log")
    a.add_argument("--display", help="the name shown and written into acknowledgements")
    a.add_argument("--file", default=env("CLSMON_BOARD_USERS", str(default_users_file())),
                   help="users file (env CLSMON_BOARD_USERS, default in the state directory)")
    a.add_argument("--password-stdin", action="store_true",
                   help="read the password from one line of stdin (scripts)")
    a.set_defaults(func=users_command)


def users_command(args: argparse.Namespace) -> int:
    try:
        return add_command(args.name, args.role, args.file, args.display, args.password_stdin)
    except UsersFileError as exc:
        raise BoardError(str(exc)) from exc


def board_command(args: argparse.Namespace) -> int:
    from streams.board.kafka_io import BoardConfig, run_board
    from streams.cli import kafka_connection

    try:
        users = load_users(args.users)
    except UsersFileError as exc:
        raise BoardError(str(exc)) from exc
    if not users:
        raise BoardError(f"{args.users} has no users: clsmon users add NAME --role clinician")
    if port_in_use(args.port, args.host):
        raise BoardError(f"port {args.port} on {args.host} is in use: choose another with "
                         "--port N (or CLSMON_BOARD_PORT)")
    if args.metrics_port and port_in_use(args.metrics_port, args.metrics_host):
        raise BoardError(f"metrics port {args.metrics_port} on {args.metrics_host} is in use: "
                         "choose another with --metrics-port N, or 0 for none")
    connection = kafka_connection(args)
    connection.check()  # an unreachable broker: one line before the board starts
    secret = os.environ.get("CLSMON_BOARD_SECRET")
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s %(message)s")
    if not secret:
        secret = secrets.token_urlsafe(32)
        logging.getLogger(__name__).warning(
            "CLSMON_BOARD_SECRET not set: a random secret, sessions end at restart")
    print(f"clsmon board: http://{args.host}:{args.port}/ (users {args.users}, broker "
          f"{connection.describe()})", flush=True)
    return asyncio.run(run_board(BoardConfig(
        bootstrap=connection, users_file=args.users, secret=secret,
        port=args.port, host=args.host, topic_prefix=args.topic_prefix, audit_path=args.audit,
        secure_cookies=not args.insecure_cookies, display_tz=args.timezone,
        keep_hours=args.keep_hours, silent_after_s=args.silent_after_min * 60,
        metrics_port=args.metrics_port, metrics_host=args.metrics_host)))
