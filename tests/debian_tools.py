"""Debian-packaged tools some tests need (promtool, prometheus, docker-compose).

A test that needs one calls ``require(binary, package)``: the binary on PATH is used; otherwise,
where we are root and apt-get exists (CI and the developers' machines), the package is installed;
elsewhere only that test is skipped, saying how to install the tool.
"""

from __future__ import annotations

import os
import shutil
import subprocess

import pytest

_updated = False


def require(binary: str, package: str) -> str:
    global _updated
    found = shutil.which(binary)
    if found:
        return found
    apt = shutil.which("apt-get")
    if apt is None or os.geteuid() != 0:
        pytest.skip(f"{binary} not found and apt-get unavailable (not root): "
                    f"install the Debian package '{package}' to run this test")
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    if not _updated:
        subprocess.run([apt, "update", "-qq"], check=False, env=env, capture_output=True,
                       timeout=300)
        _updated = True
    done = subprocess.run([apt, "install", "-y", "-qq", "--no-install-recommends", package],
                          env=env, capture_output=True, text=True, timeout=600)
    found = shutil.which(binary)
    if found is None:
        pytest.fail(f"apt-get install {package} did not provide {binary}: "
                    f"{done.stderr[-2000:]}")
    return found


def chromium() -> str:
    """Debian's Chromium for the browser tests (installed with apt when missing). The browser
    binary itself, not /usr/bin/chromium: that is a shell wrapper adding flags from
    /etc/chromium.d (and printing a harmless shell error on machines where /dev/shm is mounted
    twice)."""
    wrapper = require("chromium", "chromium")
    real = "/usr/lib/chromium/chromium"
    return real if os.access(real, os.X_OK) else wrapper
