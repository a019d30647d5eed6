"""Apache Kafka's jars from Maven Central, fetched once by Maven and cached outside the repository.

``deploy/kafka/pom.xml`` lists the broker (``org.apache.kafka:kafka_2.13``) and a logging
backend; :func:`ensure_kafka_jars` runs ``mvn dependency:copy-dependencies`` on it into
``~/.cache/clsmon/kafka-<version>/lib`` (``$CLSMON_CACHE`` moves the root) and prints its progress.
Nothing is downloaded by hand and nothing is built. A second call finds the cache and returns at
once; Maven's own cache (``~/.m2``) makes a fetch after a cache wipe network-free.

Example:
    >>> lib = ensure_kafka_jars()                         # doctest: +SKIP
    >>> sorted(p.name for p in lib.glob("kafka_2.13-*.jar"))
    ['kafka_2.13-4.3.1.jar']
"""

from __future__ import annotations

import fcntl
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import TextIO

from streams.kafka.connection import BrokerError

#: the Apache Kafka release the project runs (listed on Maven Central; CLSMON_KAFKA_VERSION)
KAFKA_VERSION = "4.3.1"
#: Kafka 4.x brokers need Java 17 (KIP-1013)
MIN_JAVA = 17
_ROOT = Path(__file__).resolve().parents[2]


class KafkaJarsError(BrokerError):
    """Java or Maven is missing, or Maven could not fetch the jars."""


def kafka_version() -> str:
    return os.environ.get("CLSMON_KAFKA_VERSION", KAFKA_VERSION)


def cache_root() -> Path:
    """``$CLSMON_CACHE``, else ``~/.cache/clsmon``."""
    return Path(os.environ.get("CLSMON_CACHE") or Path.home() / ".cache" / "clsmon")


def pom_path() -> Path:
    """``deploy/kafka/pom.xml`` of this source tree (``$CLSMON_KAFKA_POM`` overrides)."""
    return Path(os.environ.get("CLSMON_KAFKA_POM") or _ROOT / "deploy" / "kafka" / "pom.xml")


def java_major(java: str = "java") -> int | None:
    """The major version of ``java`` on PATH (17 for "17.0.15"), None when there is none."""
    exe = shutil.which(java)
    if exe is None:
        return None
    try:
        out = subprocess.run([exe, "-version"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return None
    found = re.search(r'version "(\d+)(?:\.(\d+))?', out.stderr + out.stdout)
    if found is None:
        return None
    major = int(found.group(1))
    return int(found.group(2) or 0) if major == 1 else major  # "1.8.0" is Java 8


def cached_jars(version: str | None = None) -> Path | None:
    """The jar directory when a complete fetch is cached, else None."""
    home = cache_root() / f"kafka-{version or kafka_version()}"
    return home / "lib" if (home / "lib.complete").exists() else None


def kafka_runnable() -> str | None:
    """None when Apache Kafka can run here (Java 17+, and the jars cached or Maven present),
    else the reason it cannot, in one line."""
    major = java_major()
    if major is None:
        return "no Java (Apache Kafka 4 needs Java 17+)"
    if major < MIN_JAVA:
        return f"Java {major} found; Apache Kafka 4 needs Java {MIN_JAVA}+"
    if cached_jars() is None and shutil.which("mvn") is None:
        return "Maven (mvn) is needed once to fetch Apache Kafka's jars"
    return None


def ensure_kafka_jars(version: str | None = None, out: TextIO | None = sys.stderr) -> Path:
    """The directory of Kafka's jars, fetched with Maven on first use.

    Safe for concurrent callers (a file lock: parallel test sessions wait for one fetch); an
    interrupted fetch leaves no half directory. Progress goes to ``out`` (None: silent).

    Raises:
        KafkaJarsError: Java < 17 or missing, no Maven, no pom, or Maven failed (its last
            lines in the message).
    """
    version = version or kafka_version()
    found = cached_jars(version)
    if found is not None:
        return found
    reason = kafka_runnable()
    if reason is not None:
        raise KafkaJarsError(f"cannot run Apache Kafka: {reason}")
    home = cache_root() / f"kafka-{version}"
    home.mkdir(parents=True, exist_ok=True)
    with open(home / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        found = cached_jars(version)
        if found is not None:
            return found
        return _fetch(version, home, out)


def _fetch(version: str, home: Path, out: TextIO | None) -> Path:
    pom = pom_path()
    if not pom.exists():
        raise KafkaJarsError(f"{pom} not found: run from a clsmon source tree or set "
                             "CLSMON_KAFKA_POM")
    mvn = shutil.which("mvn")
    assert mvn is not None  # kafka_runnable() checked
    tmp = home / f"lib.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    cmd = [mvn, "-B", "-Dstyle.color=never", "-f", str(pom), "dependency:copy-dependencies",
           f"-Dkafka.version={version}", "-DincludeScope=runtime", f"-DoutputDirectory={tmp}"]
    say = (lambda text: print(text, file=out, flush=True)) if out is not None else None
    if say:
        say(f"clsmon: fetching Apache Kafka {version} with Maven (first use only; cached in "
            f"{home})")
    started = time.monotonic()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            stdin=subprocess.DEVNULL)
    assert proc.stdout is not None
    last_lines: list[str] = []
    files, kbytes, shown = 0, 0.0, 0.0
    for line in proc.stdout:
        last_lines = [*last_lines[-30:], line.rstrip()]
        done = re.search(r"Downloaded from \S+: \S+ \(([\d.]+) (kB|MB|B)", line)
        if done:
            files += 1
            size = float(done.group(1))
            kbytes += {"B": size / 1000, "kB": size, "MB": size * 1000}[done.group(2)]
        if say and time.monotonic() - shown >= 1.0 and files:
            shown = time.monotonic()
            say(f"clsmon: fetching Apache Kafka {version}: {files} files, "
                f"{kbytes / 1000:.1f} MB, {shown - started:.0f} s")
    code = proc.wait()
    if code != 0 or not any(tmp.glob(f"kafka_2.13-{version}.jar")):
        shutil.rmtree(tmp, ignore_errors=True)
        errors = [ln for ln in last_lines if "ERROR" in ln] or last_lines[-3:]
        tail = " | ".join(errors)[-1500:]
        raise KafkaJarsError(f"Maven could not fetch Apache Kafka {version} (exit {code}): "
                             f"{tail}")
    lib = home / "lib"
    shutil.rmtree(lib, ignore_errors=True)
    tmp.rename(lib)
    jars = sorted(p.name for p in lib.iterdir())
    (home / "lib.complete").write_text("\n".join(jars) + "\n")
    if say:
        say(f"clsmon: Apache Kafka {version} ready: {len(jars)} jars in {lib} "
            f"({time.monotonic() - started:.0f} s)")
    return lib
