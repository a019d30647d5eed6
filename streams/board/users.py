"""The board's users file: TOML, one table per user, passwords as argon2id hashes (argon2-cffi,
RFC 9106's low-memory profile: t=3, m=64 MiB, p=4).

    [users.alice]
    role = "clinician"            # viewer | clinician | admin
    display = "Dr Alice Grey"     # written into acknowledgements as `by`
    hash = "$argon2id$v=19$m=65536,t=3,p=4$..."

Create or change a user without echoing the password:

    clsmon users add alice --role clinician --display "Dr Alice Grey" [--file users.toml]

(``--password-stdin`` reads one line from stdin instead, for scripts and tests). Roles: a
``viewer`` reads; a ``clinician`` may also acknowledge and escalate; an ``admin`` may also read
the board's audit log. The default file is ``board-users.toml`` in the state directory.
"""

from __future__ import annotations

import functools
import getpass
import json
import os
import re
import sys
import tempfile
import tomllib
from dataclasses import dataclass
from pathlib import Path

import argon2

from streams.ops.paths import state_dir

ROLES = ("viewer", "clinician", "admin")
CAN_ACK = frozenset({"clinician", "admin"})
NAME_RE = re.compile(r"^[a-z0-9][a-z0-9._-]{0,63}$")
_hasher = argon2.PasswordHasher()  # RFC 9106 low-memory profile: t=3, m=64 MiB, p=4


@functools.cache
def _dummy_hash() -> str:
    """Verified against for unknown names, so "no such user" costs as long as "wrong
    password" (made on first use: hashing costs 0.5 s and 64 MiB)."""
    return _hasher.hash("no-such-user-dummy-password")


class UsersFileError(ValueError):
    """A users file or a user that cannot be used (the message says why)."""


@dataclass(frozen=True, slots=True)
class User:
    name: str
    role: str
    display: str
    hash: str = ""

    @property
    def can_ack(self) -> bool:
        return self.role in CAN_ACK


def default_users_file() -> Path:
    return state_dir() / "board-users.toml"


def load_users(path: str | Path) -> dict[str, User]:
    """Every user of the file; ``UsersFileError`` for a missing or bad file."""
    try:
        with open(path, "rb") as f:
            doc = tomllib.load(f)
    except FileNotFoundError as exc:
        raise UsersFileError(f"users file {path} not found: create it with "
                             f"clsmon users add NAME --role clinician --file {path}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise UsersFileError(f"users file {path} is not valid TOML: {exc}") from exc
    users: dict[str, User] = {}
    for name, entry in (doc.get("users") or {}).items():
        if not NAME_RE.match(name):
            raise UsersFileError(f"bad user name {name!r}")
        role = entry.get("role")
        if role not in ROLES:
            raise UsersFileError(f"user {name}: role must be one of {ROLES}, not {role!r}")
        h = entry.get("hash", "")
        if not isinstance(h, str) or not h.startswith("$argon2"):
            raise UsersFileError(f"user {name}: hash must be an argon2 hash")
        users[name] = User(name, role, str(entry.get("display") or name), h)
    return users


def verify(users: dict[str, User], name: str, password: str) -> User | None:
    """Blocking (~0.25-0.5 s, 64 MiB): call it in a thread, never on the event loop."""
    user = users.get(name)
    try:
        _hasher.verify(user.hash if user else _dummy_hash(), password)
    except (argon2.exceptions.VerificationError, argon2.exceptions.InvalidHashError):
        return None
    return user


def _toml_str(s: str) -> str:
    return json.dumps(s, ensure_ascii=True)  # a JSON string with \uXXXX escapes is a TOML string


def write_users(path: str | Path, users: dict[str, User]) -> None:
    lines = ["# clsmon board users: role = viewer | clinician | admin; hash = argon2id", ""]
    for u in sorted(users.values(), key=lambda u: u.name):
        lines += [f"[users.{u.name}]", f"role = {_toml_str(u.role)}",
                  f"display = {_toml_str(u.display)}", f"hash = {_toml_str(u.hash)}", ""]
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".users-")
    with os.fdopen(fd, "w") as f:  # mkstemp: mode 0600
        f.write("\n".join(lines))
    os.replace(tmp, path)


def add_user(path: str | Path, name: str, role: str, password: str,
             display: str | None = None) -> User:
    if not NAME_RE.match(name):
        raise UsersFileError(f"bad user name {name!r} (a-z, 0-9, . _ -)")
    if role not in ROLES:
        raise UsersFileError(f"role must be one of {ROLES}")
    if len(password) < 10:
        raise UsersFileError("password: at least 10 characters")
    users = load_users(path) if Path(path).exists() else {}
    user = User(name, role, display or name, _hasher.hash(password))
    users[name] = user
    write_users(path, users)
    return user


def add_command(name: str, role: str, path: str | Path, display: str | None,
                password_stdin: bool) -> int:
    """``clsmon users add``: ask for the password twice (no echo) or read it from stdin."""
    if password_stdin:
        pw = sys.stdin.readline().rstrip("\n")
    else:
        pw = getpass.getpass(f"password for {name}: ")
        if getpass.getpass("again: ") != pw:
            print("clsmon users: the passwords differ; nothing written", file=sys.stderr)
            return 2
    add_user(path, name, role, pw, display)
    print(f"{name} ({role}) written to {path}")
    return 0
