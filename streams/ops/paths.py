"""Where a clsmon process keeps its files (audit logs, Faust data, the board's users): a state
directory outside any source tree, so patients' data never lands in a checkout.

``$CLSMON_STATE_DIR`` if set, else ``$XDG_STATE_HOME/clsmon``, else ``~/.local/state/clsmon``
(the XDG Base Directory specification's place for "state data that should persist between
restarts": logs, history). The container image sets ``CLSMON_STATE_DIR=/var/lib/clsmon``.
"""

from __future__ import annotations

import os
from pathlib import Path


def state_dir() -> Path:
    """The state directory (not created here: writers create what they need)."""
    explicit = os.environ.get("CLSMON_STATE_DIR")
    if explicit:
        return Path(explicit).expanduser()
    xdg = os.environ.get("XDG_STATE_HOME")
    base = Path(xdg).expanduser() if xdg and Path(xdg).is_absolute() else \
        Path.home() / ".local" / "state"
    return base / "clsmon"
