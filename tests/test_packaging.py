"""`make install` is quiet: the editable install of this tree builds without a setuptools
warning, and the installed copy imports the code in this tree.

The install is real (pip, with build isolation, as the Makefile runs it) into a throwaway
environment, so the project's own .venv is never touched."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_editable_install_prints_no_setuptools_warning(tmp_path: Path) -> None:
    env_dir = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(env_dir)], check=True)
    python = env_dir / "bin" / "python"
    install = subprocess.run(
        [sys.executable, "-m", "pip", "--python", str(python), "install", "--quiet",
         "--no-deps", "--no-input", "-e", str(ROOT)],
        capture_output=True, text=True, timeout=300,
    )
    output = install.stdout + install.stderr
    assert install.returncode == 0, output
    assert "warning" not in output.lower(), output

    # the installed copy is this tree (run from elsewhere, so the working folder plays no part)
    where = subprocess.run(
        [str(python), "-c", "import streams.cli, detectors; print(streams.cli.__file__)"],
        capture_output=True, text=True, cwd=tmp_path, check=True,
    )
    assert Path(where.stdout.strip()) == ROOT / "streams" / "cli.py"
