"""The detection engine a process runs: ``detectors/`` compiled with mypyc, or the source itself.

mypyc (mypy's compiler, pinned in the dev extras) turns the typed ``detectors`` package into C
extensions: the same code, ~1.4x the observations per CPU second of the interpreted one
(``bench/chunked_replay_bench.py``). The compiled copy lives outside the source tree, in
``<venv>/clsmon-engine/`` (``ENGINE_DIR``), so a fresh venv or ``make clean`` removes it and the
source tree stays what the tests import and monkeypatch:

- ``build()`` (``python -m streams.ops.engine build``; ``make install`` / ``make engine`` run
  ``ensure``, which builds unless an intact, up-to-date build is there) copies ``detectors/``
  there, compiles every module but ``units.py`` (the bulk gate calls its converters on whole
  numpy arrays, which a compiled ``float`` parameter refuses) and writes a stamp: the SHA-256 of
  every ``detectors/**/*.py`` source, the Python it was built for, and the size and SHA-256 of
  every file the build wrote (``inventory``). A failed build leaves no engine and one line
  saying why; it never fails the install. Either way it records its outcome beside the folder
  (``last_build_path``).
- ``select()``, called by ``clsmon`` before anything imports ``detectors``, reads
  ``CLSMON_ENGINE`` (``auto``, the default; ``compiled``; ``interpreted``): ``auto`` puts
  ``ENGINE_DIR`` first on ``sys.path`` only when its stamp matches the current sources and
  Python and its files are the ones the build wrote; a stale build (``detectors/`` edited since)
  or a damaged one (a file cut short, e.g. by a full disk while the venv was copied, changed or
  deleted since the build) is never used, and ``auto`` says so in one line on stderr;
  ``compiled`` refuses to start. The files are checked before the import because a damaged
  extension need not raise ImportError: a library cut short kills the process with SIGBUS when
  it is mapped, one with changed bytes loads and runs them. The check reads the ~3 MB build at
  every start: ~5 ms on these machines, on top of the sources' hash (~1.5 ms), against ~270 ms
  for ``clsmon --version``. The import is then checked: any exception (not only ImportError)
  falls back to the source tree in one line, and the loaded ``detectors.phases`` must be the
  extension module.
- No build at all, in ``auto``: the user already sees the engine named in the worker banner and
  the replay summary, so a line on stderr is kept for when it tells something (``absent_note``):
  none where the last build failed (``make install`` said it could not compile, once), one where
  a build was made and is gone, and one where none was ever made in a checkout that has a C
  compiler (``make install`` was skipped); an installed package without a build stays quiet.
  At most one such line per process, whatever calls ``select`` again.

May import: the standard library only (it runs before ``detectors`` is imported).
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.machinery
import json
import os
import platform
import shutil
import subprocess
import sys
import sysconfig
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path

ENV_VAR = "CLSMON_ENGINE"
MODES = ("auto", "compiled", "interpreted")
#: the compiled engine's folder: inside the venv (``sys.prefix``), never inside the source tree
ENGINE_DIR = Path(sys.prefix) / "clsmon-engine"
STAMP_NAME = "clsmon-engine.json"
#: the sources (the ``detectors`` package installed beside ``streams``; the project folder in an
#: editable install)
SOURCE_DIR = Path(__file__).resolve().parents[2] / "detectors"
#: modules left interpreted in the compiled engine (see the module docstring)
INTERPRETED = ("units.py",)
#: the module whose file tells which engine was imported
PROBE = "detectors.phases"
COMPILED_LABEL = "compiled (mypyc)"
INTERPRETED_LABEL = "interpreted"
REBUILD_HINT = "make engine"


class EngineError(Exception):
    """``CLSMON_ENGINE`` names no engine, or asks for a compiled engine that cannot be used."""


#: a built file as the build left it: (size in bytes, SHA-256 hex)
FileCheck = tuple[int, str]


@dataclass(frozen=True)
class Stamp:
    """What a build was made from: ``sources`` (SHA-256 hex over every source's relative path
    and bytes) and ``python`` (version and extension suffix: an extension built for another
    Python does not load); and what it made: ``files``, every file of the build (path relative
    to the engine folder, ``/``-separated) with its ``FileCheck`` (empty in ``current()``, and in
    a stamp written before the files were recorded)."""

    sources: str
    python: str
    files: Mapping[str, FileCheck] = field(default_factory=dict)

    @classmethod
    def current(cls, source_dir: Path = SOURCE_DIR) -> Stamp:
        """The stamp a build of ``source_dir`` made now would carry (reads ~15 small files:
        about a millisecond)."""
        digest = hashlib.sha256()
        for path in sorted(source_dir.rglob("*.py")):
            if "__pycache__" in path.parts:
                continue
            digest.update(path.relative_to(source_dir).as_posix().encode() + b"\0")
            digest.update(path.read_bytes() + b"\0")
        return cls(digest.hexdigest(), python_tag())

    @classmethod
    def read(cls, engine_dir: Path) -> Stamp | None:
        """The stamp of the build in ``engine_dir``; None when there is none (or it is torn)."""
        try:
            data = json.loads((engine_dir / STAMP_NAME).read_text(encoding="utf-8"))
            files = {str(name): (int(size), str(digest))
                     for name, (size, digest) in data.get("files", {}).items()}
            return cls(str(data["sources"]), str(data["python"]), files)
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            return None

    def write(self, engine_dir: Path) -> None:
        (engine_dir / STAMP_NAME).write_text(
            json.dumps({"sources": self.sources, "python": self.python,
                        "files": {name: list(check) for name, check in self.files.items()}})
            + "\n", encoding="utf-8")


def python_tag() -> str:
    """e.g. ``3.11.2 .cpython-311-x86_64-linux-gnu.so``: the Python a build is for."""
    return f"{platform.python_version()} {sysconfig.get_config_var('EXT_SUFFIX')}"


def inventory(engine_dir: Path) -> dict[str, FileCheck]:
    """Every file of the build in ``engine_dir`` but its stamp and Python's bytecode caches
    (``__pycache__``, written at run time beside ``units.py``): relative path -> ``FileCheck``."""
    files: dict[str, FileCheck] = {}
    for path in sorted(engine_dir.rglob("*")):
        name = path.relative_to(engine_dir)
        if name.as_posix() != STAMP_NAME and "__pycache__" not in name.parts and path.is_file():
            data = path.read_bytes()
            files[name.as_posix()] = (len(data), hashlib.sha256(data).hexdigest())
    return files


def damage(engine_dir: Path, files: Mapping[str, FileCheck]) -> str | None:
    """None when every file in ``files`` is in ``engine_dir`` with its recorded size and
    SHA-256, else the first that is not, in words. Each file is read once (~3 MB in all: the
    size comparison costs nothing more, and a separate ``stat`` pass cost more than it saved)."""
    for name, (size, digest) in files.items():
        try:
            data = (engine_dir / name).read_bytes()
        except FileNotFoundError:
            return f"{name} is missing"
        except OSError as exc:
            return f"{name} cannot be read ({exc.strerror or exc})"
        if len(data) != size:
            return f"{name} is {len(data):,} bytes, {size:,} when built"
        if hashlib.sha256(data).hexdigest() != digest:
            return f"{name} is not the file built (its SHA-256 differs)"
    return None


def build_status(engine_dir: Path | None = None, source_dir: Path | None = None) -> str | None:
    """None when ``engine_dir`` (default ``ENGINE_DIR``) holds an intact build of the current
    sources (default ``SOURCE_DIR``) for this Python, else why not, in words (``no compiled
    engine in ...``, ``... is stale: ...``, ``... is damaged: ...``). Anything but None makes
    ``auto`` run interpreted, ``compiled`` refuse to start and ``ensure`` rebuild."""
    engine_dir, source_dir = engine_dir or ENGINE_DIR, source_dir or SOURCE_DIR
    if not engine_dir.exists():
        return f"no compiled engine in {engine_dir}"
    built = Stamp.read(engine_dir)
    if built is None:  # build() moves a folder in only with its stamp written
        return (f"the compiled engine in {engine_dir} is damaged: its stamp {STAMP_NAME} is "
                "missing or unreadable")
    now = Stamp.current(source_dir)
    if built.python != now.python:
        return (f"the compiled engine in {engine_dir} is stale: built for Python "
                f"{built.python.split()[0]}, this is {now.python.split()[0]}")
    if built.sources != now.sources:
        return (f"the compiled engine in {engine_dir} is stale: {source_dir} changed since "
                "it was built")
    if not built.files:
        return (f"the compiled engine in {engine_dir} is stale: built by a clsmon that did not "
                "record its files")
    hurt = damage(engine_dir, built.files)
    return None if hurt is None else f"the compiled engine in {engine_dir} is damaged: {hurt}"


def build(engine_dir: Path | None = None, source_dir: Path | None = None) -> str | None:
    """Compile ``source_dir`` with mypyc into ``engine_dir`` (replacing what is there only once
    the new build is complete). Returns None on success, else one line saying why it failed (no
    C compiler, no Python headers, mypyc missing, a full disk): the old build, if any, is
    removed then, so that nothing stale stays behind. Either way the outcome is recorded beside
    ``engine_dir`` (``last_build_path``), for ``select`` to tell a build that could not be made
    from one that was made and is gone."""
    engine_dir, source_dir = engine_dir or ENGINE_DIR, source_dir or SOURCE_DIR
    try:
        failed = _compile(engine_dir, source_dir)
    except OSError as exc:  # a full disk, a read-only venv: still no reason to stop
        failed = str(exc)
    try:
        last_build_path(engine_dir).write_text(
            json.dumps({"built": failed is None, "why": failed}) + "\n", encoding="utf-8")
    except OSError:  # no record: a later start without a build may name it once, no harm
        pass
    return failed


def _compile(engine_dir: Path, source_dir: Path) -> str | None:
    """``build``'s work: None on success, else the last line mypyc printed."""
    engine_dir.parent.mkdir(parents=True, exist_ok=True)
    stamp = Stamp.current(source_dir)
    with tempfile.TemporaryDirectory(prefix="clsmon-engine.", dir=engine_dir.parent) as tmp:
        work = Path(tmp) / "engine"
        shutil.copytree(source_dir, work / "detectors",
                        ignore=shutil.ignore_patterns("__pycache__"))
        modules = sorted(p.relative_to(work).as_posix() for p in (work / "detectors").rglob("*.py")
                         if p.name not in INTERPRETED)
        done = subprocess.run([sys.executable, "-m", "mypyc", *modules], cwd=work,
                              capture_output=True, text=True)
        if done.returncode:
            shutil.rmtree(engine_dir, ignore_errors=True)
            lines = [line for line in (done.stdout + done.stderr).splitlines() if line.strip()]
            return lines[-1].strip() if lines else f"mypyc exited with {done.returncode}"
        for leftover in ("build", ".mypy_cache"):
            shutil.rmtree(work / leftover, ignore_errors=True)
        replace(stamp, files=inventory(work)).write(work)
        old = Path(tmp) / "old"
        if engine_dir.exists():
            engine_dir.rename(old)
        work.rename(engine_dir)
    return None


def last_build_path(engine_dir: Path) -> Path:
    """Where ``build`` records its outcome: beside ``engine_dir`` (``clsmon-engine.last-build``
    in the venv), so that the record outlives a deleted build; ``make clean`` removes both."""
    return engine_dir.with_name(engine_dir.name + ".last-build")


def last_build_failed(engine_dir: Path) -> bool | None:
    """Whether the last ``build`` into ``engine_dir`` failed (True) or succeeded (False); None
    when no build recorded its outcome (none ran, or one older than the record)."""
    try:
        data = json.loads(last_build_path(engine_dir).read_text(encoding="utf-8"))
        return not bool(data["built"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def compiler_missing() -> str | None:
    """Why mypyc cannot build here (no C compiler, honouring ``CC`` as the build does; no
    Python headers), or None."""
    cc = (os.environ.get("CC") or sysconfig.get_config_var("CC") or "cc").split()[0]
    if shutil.which(cc) is None:
        return f"no C compiler ({cc!r} is not on PATH)"
    headers = Path(sysconfig.get_paths()["include"]) / "Python.h"
    if not headers.exists():
        return f"no Python headers ({headers} is missing)"
    return None


def absent_note(engine_dir: Path, source_dir: Path) -> str | None:
    """What ``auto`` says when ``engine_dir`` holds no build, or None to say nothing.

    - The last build failed: ``make install`` already said in one line that it could not
      compile (no C compiler) and that clsmon runs interpreted; repeating it on every start
      would be noise: None.
    - A build was made and is gone (the folder deleted): one line, how to rebuild.
    - No build ever recorded: one line only in a checkout (a ``Makefile`` beside
      ``source_dir``, where ``make engine`` means something) that can compile
      (``compiler_missing``), i.e. ``make install`` was skipped; an installed package, or a
      machine without a compiler, stays quiet.
    """
    failed = last_build_failed(engine_dir)
    if failed:
        return None
    if failed is False:
        return (f"clsmon: the compiled engine built in {engine_dir} is gone; using the "
                f"interpreted engine (rebuild it with `{REBUILD_HINT}`)")
    if (source_dir.parent / "Makefile").is_file() and compiler_missing() is None:
        return (f"clsmon: no compiled engine in {engine_dir}; using the interpreted engine "
                f"(build it with `{REBUILD_HINT}`)")
    return None


def _note(line: str) -> None:
    """Prints ``line`` on stderr unless this process printed one already: whatever calls
    ``select`` again, a user reads about the engine once."""
    global _noted
    if not _noted:
        _noted = True
        print(line, file=sys.stderr)


_noted = False


def one_line(exc: BaseException, limit: int = 300) -> str:
    """``Type: message`` on one line (whitespace collapsed, cut at ``limit`` characters): an
    exception raised by a damaged build, fit for the single stderr line ``select`` prints."""
    text = " ".join(f"{type(exc).__name__}: {exc}".split())
    return text if len(text) <= limit else text[:limit - 1] + "…"


def is_compiled(module: object) -> bool:
    """Whether ``module`` was loaded from a C extension (a mypyc build), not from source."""
    origin = str(getattr(module, "__file__", "") or "")
    return origin.endswith(tuple(importlib.machinery.EXTENSION_SUFFIXES))


def label() -> str:
    """The engine this process has imported: ``compiled (mypyc)`` or ``interpreted``
    (``interpreted`` too when ``detectors`` is not imported yet)."""
    probe = sys.modules.get(PROBE)
    return COMPILED_LABEL if probe is not None and is_compiled(probe) else INTERPRETED_LABEL


def select(environ: Mapping[str, str] = os.environ, engine_dir: Path | None = None,
           source_dir: Path | None = None) -> str:
    """Choose the engine for this process and import it; returns its ``label()``.

    Must run before anything imports ``detectors``; once it is imported (a test calling
    ``clsmon``'s ``main`` in its own process), nothing changes and the loaded engine is named.

    Raises:
        EngineError: ``CLSMON_ENGINE`` is not one of ``MODES``, or is ``compiled`` and no
            up-to-date build exists (or it does not load).
    """
    engine_dir, source_dir = engine_dir or ENGINE_DIR, source_dir or SOURCE_DIR
    mode = environ.get(ENV_VAR, "auto").strip().lower() or "auto"
    if mode not in MODES:
        raise EngineError(f"{ENV_VAR}={environ.get(ENV_VAR)!r}: use one of {', '.join(MODES)}")
    if "detectors" in sys.modules or mode == "interpreted":
        return label()
    why_not = build_status(engine_dir, source_dir)
    if why_not is not None:
        if mode == "compiled":
            raise EngineError(f"{ENV_VAR}=compiled: {why_not} (build it with "
                              f"`{REBUILD_HINT}`, or use {ENV_VAR}=interpreted)")
        note = (absent_note(engine_dir, source_dir) if not engine_dir.exists() else
                f"clsmon: {why_not}; using the interpreted engine (rebuild with "
                f"`{REBUILD_HINT}`)")  # built, but stale or damaged
        if note is not None:
            _note(note)
        return label()
    sys.path.insert(0, str(engine_dir))
    try:
        probe = importlib.import_module(PROBE)
        failure = "" if is_compiled(probe) else f"{PROBE} came from {probe.__file__}"
    except Exception as exc:  # whatever a damaged build raises, the source tree runs
        failure = one_line(exc)
    if failure:  # back to the source tree: forget what was imported from the build
        sys.path.remove(str(engine_dir))
        for name in [n for n in sys.modules if n == "detectors" or n.startswith("detectors.")]:
            del sys.modules[name]
        why_not = f"the compiled engine in {engine_dir} did not load ({failure})"
        if mode == "compiled":
            raise EngineError(f"{ENV_VAR}=compiled: {why_not} (rebuild it with "
                              f"`{REBUILD_HINT}`)")
        _note(f"clsmon: {why_not}; using the interpreted engine (rebuild with "
              f"`{REBUILD_HINT}`)")
    return label()


def main(argv: list[str] | None = None) -> int:
    """``python -m streams.ops.engine build|ensure|status``: build prints one line and exits 0
    even when the build fails (the interpreted engine is used then); ensure builds only when no
    intact, up-to-date build exists (a build deleted, damaged, or stale for another reason than
    an edited source, which Make cannot see); status exits 1 when none exists."""
    args = sys.argv[1:] if argv is None else argv
    if args == ["build"]:
        print(f"compiling detectors/ with mypyc into {ENGINE_DIR} (~1.5 min)", flush=True)
        failed = build()
        print(f"compiled engine ready: {ENGINE_DIR}" if failed is None else
              f"compiled engine not built ({failed}); clsmon will use the interpreted engine")
        return 0
    if args == ["ensure"]:  # `make engine`: build unless an up-to-date build is there
        why_not = build_status()
        if why_not is None:
            print(f"compiled engine up to date: {ENGINE_DIR}")
            return 0
        print(why_not)
        return main(["build"])
    if args == ["status"]:
        why_not = build_status()
        print(f"compiled engine up to date: {ENGINE_DIR}" if why_not is None else why_not)
        return 0 if why_not is None else 1
    print("usage: python -m streams.ops.engine build|ensure|status", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
