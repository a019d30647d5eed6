"""The layout holds: each room imports only what its docstring allows, and every document a
user is pointed to exists in a fresh clone."""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

#: package -> module prefixes it must never import (the rules in each package's docstring)
_IO = ("streams", "faust", "mode", "aiokafka", "kafka", "asyncio", "socket", "http", "urllib",
       "subprocess", "threading", "prometheus_client", "pandas", "matplotlib")
RULES: dict[str, tuple[str, ...]] = {
    "detectors": _IO,
    "streams/kafka": ("streams.worker", "streams.notify", "streams.offline", "streams.board"),
    "streams/worker": ("streams.notify", "streams.offline", "streams.board"),
    "streams/notify": ("streams.worker", "streams.offline", "streams.board"),
    # the board talks to the worker and the notifier through topics only, and runs no Faust
    "streams/board": ("streams.worker", "streams.notify", "streams.offline", "faust", "mode",
                      "streams.kafka.consumer", "streams.kafka.faust_app"),
    "streams/offline": ("faust", "mode", "aiokafka", "streams.worker", "streams.notify",
                        "streams.ops", "streams.kafka.consumer", "streams.kafka.faust_app"),
    "streams/ops": ("streams.kafka", "streams.worker", "streams.notify", "streams.offline",
                    "faust"),
    "streams/interfaces": ("streams.worker", "streams.notify", "streams.board", "faust", "mode",
                           "streams.kafka.consumer", "streams.kafka.faust_app",
                           "streams.offline.replay", "streams.offline.evaluate"),
}


def imported_modules(source: str, module: str) -> list[tuple[int, str]]:
    """Every module ``source`` imports, absolute, with its line (relative imports resolved
    against ``module``, the dotted name of the file)."""
    found: list[tuple[int, str]] = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found.extend((node.lineno, alias.name) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = module.split(".")[:-node.level]
                base = ".".join([*parent, base] if base else parent)
            found.append((node.lineno, base))
            # "from streams import worker" imports streams.worker
            found.extend((node.lineno, f"{base}.{alias.name}") for alias in node.names)
    return found


def forbidden_imports(path: Path, forbidden: tuple[str, ...]) -> list[str]:
    module = ".".join(path.relative_to(ROOT).with_suffix("").parts)
    bad = []
    for line, name in imported_modules(path.read_text(encoding="utf-8"), module):
        for prefix in forbidden:
            if name == prefix or name.startswith(prefix + "."):
                bad.append(f"{path.relative_to(ROOT)}:{line} imports {name}")
    return bad


def test_the_import_checker_catches_a_forbidden_import() -> None:
    source = "from streams.kafka import codec\nimport faust.types\nfrom streams import worker\n"
    names = [name for _, name in imported_modules(source, "streams.offline.x")]
    assert "faust.types" in names and "streams.worker" in names and "streams.kafka.codec" in names


@pytest.mark.parametrize("package", sorted(RULES))
def test_each_package_imports_only_what_its_docstring_allows(package: str) -> None:
    files = sorted((ROOT / package).rglob("*.py"))
    assert files, f"{package} has no modules"
    violations = [v for f in files for v in forbidden_imports(f, RULES[package])]
    assert violations == []


@pytest.mark.parametrize("package", ["streams", *sorted(p for p in RULES if "/" in p)])
def test_each_package_says_what_lives_there_and_what_it_may_import(package: str) -> None:
    doc = ast.get_docstring(ast.parse((ROOT / package / "__init__.py").read_text()))
    assert doc, f"{package}/__init__.py has no docstring"
    if package != "streams":
        assert "May import" in doc


def test_the_offline_tools_load_without_faust() -> None:
    code = ("import sys, streams.offline.replay, streams.offline.evaluate, "
            "streams.offline.plots, streams.offline.publish, streams.offline.simulator, "
            "detectors.phases; "
            "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('faust', 'mode', "
            "'aiokafka')); print(bad); sys.exit(1 if bad else 0)")
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr


def test_the_readme_layout_table_matches_the_tree() -> None:
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## Layout", 1)[1].split("\n## ", 1)[0]
    listed = re.findall(r"^\| `([^`]+)` \|", section, flags=re.M)
    assert listed, "no layout table in the README"
    missing = [p for p in listed if not (ROOT / p.rstrip("/")).exists()]
    assert missing == []
    packages = sorted(f"streams/{p.parent.name}/" for p in (ROOT / "streams").glob("*/__init__.py"))
    assert [p for p in packages if p not in listed] == []


_LINK = re.compile(r"\]\(([^)#\s]+)(?:#[^)]*)?\)")
_PATH = re.compile(r"(?<![\w./-])((?:docs|deploy|bench|detectors|streams|tests)/[\w./-]*\w)")


@pytest.mark.parametrize("doc", ["README.md", "docs/contract.md", "docs/clinical-criteria.md"])
def test_every_relative_link_in_the_documents_resolves(doc: str) -> None:
    path = ROOT / doc
    links = [link for link in _LINK.findall(path.read_text())
             if "://" not in link and not link.startswith("mailto:")]
    broken = [link for link in links if not (path.parent / link).resolve().exists()]
    assert broken == []
    assert not any(link.startswith("../") and not (path.parent / link).resolve().is_relative_to(
        ROOT) for link in links), "a link leaves the repository"


def test_every_project_file_the_code_names_exists() -> None:
    """Paths such as docs/clinical-criteria.md or deploy/notify.example.toml in code, messages
    and docs must exist in a fresh clone (not only in a developer's checkout)."""
    sources = [*ROOT.glob("detectors/**/*.py"), *ROOT.glob("streams/**/*.py"),
               *ROOT.glob("docs/*.md"), ROOT / "README.md", ROOT / "Makefile",
               *ROOT.glob("deploy/**/*.toml"), *ROOT.glob("deploy/**/*.yml")]
    missing = set()
    for src in sources:
        for ref in _PATH.findall(src.read_text(encoding="utf-8")):
            if "*" in ref or ref.endswith((".", "/")) or "{" in ref:
                continue
            target = ref.rstrip(".,:;)")
            if "." in Path(target).name and not (ROOT / target).exists():
                missing.add(f"{src.relative_to(ROOT)}: {target}")
    assert sorted(missing) == []


def test_make_help_lists_every_target() -> None:
    makefile = (ROOT / "Makefile").read_text()
    phony = re.search(r"^\.PHONY:(.*)$", makefile, flags=re.M)
    assert phony is not None
    targets = phony.group(1).split()
    shown = subprocess.run(["make", "-s", "help"], cwd=ROOT, capture_output=True, text=True,
                           timeout=60).stdout
    listed = re.findall(r"^\s+make (\S+)", shown, flags=re.M)
    assert sorted(listed) == sorted(targets)


def test_clsmon_version_prints_the_installed_version() -> None:
    from importlib.metadata import version

    done = subprocess.run([sys.executable, "-m", "streams.cli", "--version"], cwd=ROOT,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0
    assert done.stdout.strip() == f"clsmon {version('clsmon')}"


def test_a_worker_log_that_is_not_a_terminal_gets_no_spinner_codes() -> None:
    """Faust's progress spinner writes cursor hide/show codes even into a log file."""
    import faust

    from streams.kafka.faust_app import faust_worker

    app = faust.App("layout-test", broker="kafka://127.0.0.1:1")
    assert not sys.stdout.isatty()  # pytest captures stdout
    assert faust_worker(app, "WARNING", stop_timeout_s=20.0).spinner is None
