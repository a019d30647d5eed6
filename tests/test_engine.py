"""The compiled engine (``streams.ops.engine``): ``clsmon`` runs ``detectors/`` compiled by mypyc
when an up-to-date build exists, with the alerts and rejects of the interpreted engine, byte for
byte; a stale or damaged build is never used, and a missing one is named only where that tells
the user something; the test process itself runs the source tree.

The build is made by ``make install`` / ``make engine`` (``make test`` depends on it). Where no C
compiler or no Python headers exist, the tests that need it skip saying so; where they exist, a
missing or stale build fails them (``make engine`` rebuilds it)."""

from __future__ import annotations

import csv
import os
import shutil
import subprocess
import sys
from datetime import datetime, timedelta
from pathlib import Path

import pytest
from realdata import need

import detectors.phases
from streams.ops import engine

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def compiled_build() -> Path:
    """The venv's compiled engine; skips (saying why) only where it cannot be built at all."""
    missing = engine.compiler_missing()
    if missing:
        pytest.skip(f"compiled engine not tested: {missing}; clsmon runs interpreted here")
    why_not = engine.build_status()
    assert why_not is None, f"{why_not}: run `make engine` (make test does)"
    return engine.ENGINE_DIR


def _replay(args: list[str], tmp: Path, mode: str) -> tuple[bytes, bytes, str]:
    """``clsmon replay ARGS`` in a child with ``CLSMON_ENGINE=mode``: (alerts, rejects, stdout)."""
    out, rejects = tmp / f"alerts-{mode}.jsonl", tmp / f"rejects-{mode}.jsonl"
    done = subprocess.run(
        [sys.executable, "-m", "streams.cli", "replay", *args, "--out", str(out),
         "--rejects", str(rejects)], cwd=ROOT, capture_output=True, text=True, timeout=600,
        env={**os.environ, engine.ENV_VAR: mode})
    assert done.returncode == 0, done.stderr
    assert done.stderr == "", done.stderr  # no stale warning, no traceback
    return out.read_bytes(), rejects.read_bytes(), done.stdout


def _both_engines_agree(args: list[str], tmp: Path) -> int:
    """Replays with each engine; asserts identical alerts and rejects and the named engine;
    returns the number of alerts."""
    alerts_c, rejects_c, shown_c = _replay(args, tmp, "compiled")
    alerts_i, rejects_i, shown_i = _replay(args, tmp, "interpreted")
    assert f"engine: {engine.COMPILED_LABEL}\n" in shown_c
    assert f"engine: {engine.INTERPRETED_LABEL}\n" in shown_i
    assert alerts_c == alerts_i
    assert rejects_c == rejects_i
    return alerts_c.count(b"\n")


def test_the_test_process_runs_the_source_tree() -> None:
    """Tests monkeypatch detectors' functions (compiled ones refuse it): this process imports
    the source tree, and ``clsmon``'s ``main`` called in it (as many tests do) cannot switch
    to the compiled engine, whatever ``CLSMON_ENGINE`` says."""
    assert Path(detectors.phases.__file__).resolve() == ROOT / "detectors" / "phases.py"
    path_before = list(sys.path)
    assert engine.select({engine.ENV_VAR: "compiled"}) == engine.INTERPRETED_LABEL
    assert sys.path == path_before and engine.label() == engine.INTERPRETED_LABEL


def _simulated_cohort(tmp: Path) -> list[str]:
    """A simulated cohort (hourly vitals, gaps, integer-valued vitals as monitors chart them)
    with its contexts and interventions (fluids, albumin, red cells, a vasopressor)."""
    obs = tmp / "cohort.csv"
    subprocess.run([sys.executable, "-m", "streams.cli", "simulate", "--patients", "60",
                    "--hours", "96", "--seed", "5", "--vitals-every-min", "60", "--missing",
                    "0.1", "--to", str(obs), "--quiet"], cwd=ROOT, check=True, timeout=300,
                   env={**os.environ, engine.ENV_VAR: "interpreted"})
    with obs.open(newline="") as f:
        rows = list(csv.DictReader(f))
    first: dict[str, str] = {}
    for row in rows:
        if row["kind"] in ("sbp", "map", "heart_rate"):  # monitors chart whole numbers
            row["value"] = str(round(float(row["value"])))
        first.setdefault(row["patient_id"], row["observed_at"])
    with obs.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    given = tmp / "interventions.csv"
    with given.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["patient_id", "kind", "agent", "started_at", "ended_at", "amount",
                         "amount_unit", "id"])
        for n, (pid, start) in enumerate(sorted(first.items())):  # a day into the stay
            at = (datetime.fromisoformat(start) + timedelta(hours=24 + n % 7)).isoformat()
            kind, agent, amount, unit = [
                ("crystalloid", "NaCl 0.9%", "1000", "mL"), ("albumin", "albumin 20%", "100",
                                                              "mL"),
                ("red_cells", "packed red cells", "300", "mL"),
                ("vasopressor", "norepinephrine", "4", "mg")][n % 4]
            writer.writerow([pid, kind, agent, at, "", amount, unit, f"iv-{n}"])
    return [str(obs), "--patients", str(tmp / "cohort.patients.csv"),
            "--interventions", str(given)]


@pytest.fixture(scope="module")
def cohort(tmp_path_factory: pytest.TempPathFactory) -> list[str]:
    """``clsmon replay``'s arguments for ``_simulated_cohort``."""
    return _simulated_cohort(tmp_path_factory.mktemp("cohort"))


def test_both_engines_give_the_same_alerts_and_rejects_on_a_simulated_cohort(
        compiled_build: Path, cohort: list[str], tmp_path: Path) -> None:
    alerts = _both_engines_agree(cohort, tmp_path)
    assert alerts > 0  # a cohort a third CLS raises alerts: an empty file would prove nothing


#: a child that replays ARGV[2:] (observations, patients, interventions) on the engine
#: ``CLSMON_ENGINE`` names and prints every live patient's serialised state (the changelog's
#: JSON), after checking that it reads back to the same bytes
_STATES = """
import sys
from streams.ops.engine import select
print(select(), file=sys.stderr)
from detectors.state import PatientState
from streams.offline.replay import replay_chunks
from streams.offline.sources import iter_observations, read_contexts, read_interventions
obs, patients, given = sys.argv[1:]
result = replay_chunks(iter_observations(obs), read_contexts(patients),
                       interventions=read_interventions(given))
for pid in sorted(result.states):
    data = result.states[pid].to_json()
    assert PatientState.from_json(data).to_json() == data, pid
    print(data.decode())
"""


def _states(cohort: list[str], mode: str) -> tuple[str, str]:
    done = subprocess.run([sys.executable, "-c", _STATES, cohort[0], cohort[2], cohort[4]],
                          cwd=ROOT, capture_output=True, text=True, timeout=600,
                          env={**os.environ, engine.ENV_VAR: mode})
    assert done.returncode == 0, done.stderr
    return done.stdout, done.stderr.strip()


def test_both_engines_serialise_the_same_patient_state(compiled_build: Path,
                                                        cohort: list[str]) -> None:
    """The changelog's JSON of every patient: a compiled ``float`` turns an int into a float
    (a time of 1790306000000 written 1790306000000.0), which no alert may show but a state
    read back by the other engine would."""
    compiled, shown_c = _states(cohort, "compiled")
    interpreted, shown_i = _states(cohort, "interpreted")
    assert (shown_c, shown_i) == (engine.COMPILED_LABEL, engine.INTERPRETED_LABEL)
    assert compiled.count("\n") == 60 and '"hypo"' in compiled  # every patient, low runs too
    assert compiled == interpreted


def test_both_engines_give_the_same_alerts_and_rejects_on_the_mimic3_demo(
        compiled_build: Path, tmp_path: Path) -> None:
    demo = need("mimic3-demo")
    files = tmp_path / "mimic3"
    subprocess.run([sys.executable, "-m", "streams.cli", "import", "mimic3", str(demo), "--out",
                    str(files), "--quiet"], cwd=ROOT, check=True, timeout=300)
    alerts = _both_engines_agree(
        [str(files / "observations.csv"), "--patients", str(files / "patients.csv"),
         "--interventions", str(files / "interventions.csv")], tmp_path)
    assert alerts > 0


def _copy_of_the_build(build: Path, tmp: Path) -> tuple[Path, Path]:
    """A copy of the build and of the sources it was built from (the real ones stay as they
    are): (engine folder, sources folder)."""
    sources = tmp / "src" / "detectors"
    shutil.copytree(ROOT / "detectors", sources, ignore=shutil.ignore_patterns("__pycache__"))
    copy = tmp / "engine"
    shutil.copytree(build, copy)
    return copy, sources


def _select_in_child(copy: Path, sources: Path, mode: str) -> subprocess.CompletedProcess[str]:
    code = ("import sys; from pathlib import Path; from streams.ops import engine; "
            f"print(engine.select({{'CLSMON_ENGINE': {mode!r}}}, Path({str(copy)!r}), "
            f"Path({str(sources)!r}))); import detectors.phases; print(detectors.phases.__file__)")
    return subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                          text=True, timeout=120)


def test_a_build_of_the_current_sources_is_used(compiled_build: Path, tmp_path: Path) -> None:
    copy, sources = _copy_of_the_build(compiled_build, tmp_path)
    done = _select_in_child(copy, sources, "auto")
    assert done.returncode == 0, done.stderr
    shown, origin = done.stdout.splitlines()
    assert shown == engine.COMPILED_LABEL and origin.startswith(str(copy / "detectors"))
    assert done.stderr == ""


def test_a_stale_build_is_never_used(compiled_build: Path, tmp_path: Path) -> None:
    """A developer edits detectors/ and forgets to rebuild: the interpreted engine runs, and
    one line says why and how to rebuild; asking for the compiled engine is a one-line error."""
    copy, sources = _copy_of_the_build(compiled_build, tmp_path)
    phases = sources / "phases.py"
    phases.write_text(phases.read_text() + "\n# an edit after the build\n")
    done = _select_in_child(copy, sources, "auto")
    assert done.returncode == 0, done.stderr
    shown, origin = done.stdout.splitlines()
    assert shown == engine.INTERPRETED_LABEL and origin == str(ROOT / "detectors" / "phases.py")
    assert done.stderr.count("\n") == 1 and "stale" in done.stderr
    assert "make engine" in done.stderr
    refused = _select_in_child(copy, sources, "compiled")
    assert refused.returncode == 1 and "EngineError" in refused.stderr and "stale" in \
        refused.stderr


def test_a_build_for_another_python_is_stale(compiled_build: Path, tmp_path: Path) -> None:
    copy, sources = _copy_of_the_build(compiled_build, tmp_path)
    built = engine.Stamp.read(copy)
    assert built is not None
    engine.Stamp(built.sources, "3.10.0 .cpython-310-x86_64-linux-gnu.so").write(copy)
    why_not = engine.build_status(copy, sources)
    assert why_not is not None and "Python 3.10.0" in why_not


def _clsmon_in_child(copy: Path, sources: Path, mode: str) -> subprocess.CompletedProcess[str]:
    """``clsmon --version`` in a child whose engine folder is ``copy`` (sources ``sources``),
    with ``CLSMON_ENGINE=mode``; then, when it ran, the engine it imported and where
    ``detectors.phases`` came from, on stdout's last line."""
    code = ("import sys; from pathlib import Path; from streams.ops import engine; "
            "engine.ENGINE_DIR, engine.SOURCE_DIR = Path(sys.argv[1]), Path(sys.argv[2]); "
            "from streams.cli import main\n"
            "try:\n    code = main(['--version'])\nexcept SystemExit as done:\n"
            "    code = done.code\n"
            "if code == 0:\n    import detectors.phases\n"
            "    print(engine.label(), detectors.phases.__file__)\n"
            "sys.exit(code)")
    return subprocess.run([sys.executable, "-c", code, str(copy), str(sources)], cwd=ROOT,
                          capture_output=True, text=True, timeout=120,
                          env={**os.environ, engine.ENV_VAR: mode})


def _damage(copy: Path, how: str) -> str:
    """Damages the build copied in ``copy`` as a full disk, a copy cut short or a bad sector
    would; returns the damaged file's path relative to ``copy``."""
    shared = next(copy.glob("*__mypyc*"))  # the one library holding every compiled module
    if how == "shared library cut short":
        data = shared.read_bytes()
        shared.write_bytes(data[:len(data) // 2])
        return shared.name
    if how == "shared library bytes changed in place":
        data = bytearray(shared.read_bytes())
        middle = len(data) // 2
        data[middle:middle + 4096] = bytes(b ^ 0xFF for b in data[middle:middle + 4096])
        shared.write_bytes(bytes(data))
        return shared.name
    if how == "interpreted module cut short":  # units.py runs from the build as source
        units = copy / "detectors" / "units.py"
        text = units.read_text()
        units.write_text(text[:len(text) // 2])
        return "detectors/units.py"
    assert how == "compiled module deleted"
    phases = next((copy / "detectors").glob("phases.*.so"))
    phases.unlink()
    return phases.relative_to(copy).as_posix()


@pytest.mark.parametrize("how", ["shared library cut short",
                                 "shared library bytes changed in place",
                                 "interpreted module cut short", "compiled module deleted"])
def test_a_damaged_build_is_treated_like_a_stale_one(compiled_build: Path, tmp_path: Path,
                                                     how: str) -> None:
    """The stamp covers the build's own files (size and SHA-256 of each, recorded when the
    build finished): a damaged build is never imported (a damaged extension can crash the
    process rather than raise ImportError). ``auto`` runs interpreted and says so in one line;
    ``compiled`` is a one-line error, exit 2; ``make engine`` (``ensure``) rebuilds it, as it
    rebuilds whatever ``build_status`` refuses."""
    copy, _ = _copy_of_the_build(compiled_build, tmp_path)
    damaged = _damage(copy, how)
    why_not = engine.build_status(copy, ROOT / "detectors")
    assert why_not is not None and "damaged" in why_not and damaged in why_not
    done = _clsmon_in_child(copy, ROOT / "detectors", "auto")
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[-1] == (f"{engine.INTERPRETED_LABEL} "
                                            f"{ROOT / 'detectors' / 'phases.py'}")
    assert done.stderr.count("\n") == 1 and "damaged" in done.stderr, done.stderr
    assert "make engine" in done.stderr and "using the interpreted engine" in done.stderr
    refused = _clsmon_in_child(copy, ROOT / "detectors", "compiled")
    assert refused.returncode == 2, refused.stderr
    assert refused.stderr.count("\n") == 1 and "damaged" in refused.stderr, refused.stderr
    assert refused.stderr.startswith("clsmon: error: CLSMON_ENGINE=compiled: ")


def test_any_exception_importing_the_build_falls_back_in_one_line(compiled_build: Path,
                                                                   tmp_path: Path) -> None:
    """A build whose files are the ones recorded but whose import raises something other than
    ImportError (here a module of the build raising RuntimeError, re-stamped so that the file
    check passes): ``auto`` falls back to the source tree in one line, no traceback;
    ``compiled`` is a one-line error, exit 2."""
    copy, _ = _copy_of_the_build(compiled_build, tmp_path)
    units = copy / "detectors" / "units.py"
    units.write_text('raise RuntimeError("a module that fails\\nat import")\n')
    built = engine.Stamp.read(copy)
    assert built is not None
    engine.Stamp(built.sources, built.python, engine.inventory(copy)).write(copy)
    assert engine.build_status(copy, ROOT / "detectors") is None
    done = _clsmon_in_child(copy, ROOT / "detectors", "auto")
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[-1] == (f"{engine.INTERPRETED_LABEL} "
                                            f"{ROOT / 'detectors' / 'phases.py'}")
    assert done.stderr.count("\n") == 1, done.stderr
    assert "did not load (RuntimeError: a module that fails at import)" in done.stderr
    assert "Traceback" not in done.stderr
    refused = _clsmon_in_child(copy, ROOT / "detectors", "compiled")
    assert refused.returncode == 2, refused.stderr
    assert refused.stderr.count("\n") == 1 and "RuntimeError" in refused.stderr


#: a child that chooses its engine twice (as a process calling ``select`` again before
#: importing ``detectors`` would): ARGV engine folder, sources folder
_SELECT_TWICE = """
import sys
from pathlib import Path
from streams.ops import engine
built, sources = Path(sys.argv[1]), Path(sys.argv[2])
print(engine.select({}, built, sources), engine.select({}, built, sources))
"""


def _auto_twice(built: Path, sources: Path) -> subprocess.CompletedProcess[str]:
    done = subprocess.run([sys.executable, "-c", _SELECT_TWICE, str(built), str(sources)],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout == f"{engine.INTERPRETED_LABEL} {engine.INTERPRETED_LABEL}\n"
    return done


def test_a_build_deleted_after_it_was_made_is_named_once(compiled_build: Path,
                                                          tmp_path: Path) -> None:
    """``rm -r .venv/clsmon-engine`` after ``make install`` built it: ``auto`` runs interpreted
    and says so in one line on stderr (not one per ``select``), with how to rebuild. The build
    left its record beside the engine folder, and that record outlives the folder."""
    record = engine.last_build_path(compiled_build)
    assert record.is_file(), f"{record}: the build made no record; run `make engine`"
    copy = tmp_path / "engine"
    shutil.copy2(record, engine.last_build_path(copy))  # the folder itself is gone
    done = _auto_twice(copy, ROOT / "detectors")
    assert done.stderr.count("\n") == 1, done.stderr
    assert done.stderr.startswith(f"clsmon: the compiled engine built in {copy} is gone; "
                                  "using the interpreted engine")
    assert "`make engine`" in done.stderr


def test_no_build_where_make_install_could_not_compile_stays_quiet(tmp_path: Path) -> None:
    """A machine without a C compiler (here: ``CC`` names none, for the build only): the build
    fails, says so in its one line, and records it; ``clsmon`` then runs interpreted without a
    word on every start, even in a checkout whose ``make engine`` it would otherwise suggest."""
    checkout = tmp_path / "checkout"
    (checkout / "detectors").mkdir(parents=True)
    (checkout / "detectors" / "__init__.py").write_text("def twice(x: int) -> int:\n"
                                                          "    return 2 * x\n")
    (checkout / "Makefile").write_text("engine:\n")
    built = tmp_path / "venv" / "clsmon-engine"
    code = ("import sys; from pathlib import Path; from streams.ops import engine; "
            "print(engine.build(Path(sys.argv[1]), Path(sys.argv[2])))")
    failed = subprocess.run([sys.executable, "-c", code, str(built), str(checkout / "detectors")],
                            cwd=ROOT, capture_output=True, text=True, timeout=300,
                            env={**os.environ, "CC": str(tmp_path / "no-such-cc")})
    assert failed.returncode == 0, failed.stderr
    assert "no-such-cc" in failed.stdout and not built.exists(), failed.stdout
    assert engine.last_build_path(built).is_file()
    done = _auto_twice(built, checkout / "detectors")
    assert done.stderr == ""


def test_no_build_ever_made_is_named_only_in_a_checkout_that_can_compile(
        tmp_path: Path) -> None:
    """No build and no record of one: in a checkout (a Makefile beside ``detectors/``) with a C
    compiler and the Python headers, ``make install`` was skipped, and one line says how to
    build; an installed package (no Makefile: ``make engine`` means nothing there) stays quiet,
    as does a checkout where nothing can compile."""
    none = tmp_path / "venv" / "clsmon-engine"
    in_checkout = _auto_twice(none, ROOT / "detectors")
    if engine.compiler_missing() is None:
        assert in_checkout.stderr == (f"clsmon: no compiled engine in {none}; using the "
                                      "interpreted engine (build it with `make engine`)\n")
    else:
        assert in_checkout.stderr == ""
    installed = tmp_path / "site-packages" / "detectors"
    shutil.copytree(ROOT / "detectors", installed, ignore=shutil.ignore_patterns("__pycache__"))
    assert _auto_twice(none, installed).stderr == ""


def test_clsmon_compiled_without_a_build_is_a_one_line_error(tmp_path: Path) -> None:
    """``CLSMON_ENGINE=compiled`` where no build exists (here: a Python whose prefix has none)."""
    done = subprocess.run(
        [sys.executable, "-c", "import sys; from pathlib import Path; from streams.ops import "
         "engine; engine.ENGINE_DIR = Path(sys.argv[1]); from streams.cli import main; "
         "sys.exit(main(['--version']))", str(tmp_path / "none")],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
        env={**os.environ, engine.ENV_VAR: "compiled"})
    assert done.returncode == 2
    assert done.stderr.count("\n") == 1 and "no compiled engine" in done.stderr


def test_an_unknown_engine_is_a_one_line_error() -> None:
    done = subprocess.run([sys.executable, "-m", "streams.cli", "--version"], cwd=ROOT,
                          capture_output=True, text=True, timeout=120,
                          env={**os.environ, engine.ENV_VAR: "fast"})
    assert done.returncode == 2
    assert done.stderr == ("clsmon: error: CLSMON_ENGINE='fast': use one of auto, compiled, "
                           "interpreted\n")



def test_make_engine_checks_the_build_itself_not_only_the_sources_dates(
        compiled_build: Path) -> None:
    """A deleted (or truncated-stamp) build with unchanged sources: `make engine`, which every
    message about a missing build suggests, must still look at the build (it once answered
    "Nothing to be done"). With an up-to-date build, `ensure` builds nothing."""
    planned = subprocess.run(["make", "-n", "engine"], cwd=ROOT, capture_output=True,
                             text=True, timeout=60)
    assert planned.returncode == 0 and "-m streams.ops.engine ensure" in planned.stdout
    before = sorted((p.name, p.stat().st_mtime_ns) for p in compiled_build.iterdir())
    done = subprocess.run([sys.executable, "-m", "streams.ops.engine", "ensure"], cwd=ROOT,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and done.stdout.startswith("compiled engine up to date"), done
    assert sorted((p.name, p.stat().st_mtime_ns) for p in compiled_build.iterdir()) == before
