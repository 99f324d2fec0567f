"""Where the Apache Kafka broker's jars come from, in order, and the one pin of its version.

1. ``LABKIT_KAFKA_HOME``: an unpacked Apache Kafka distribution (its ``libs/``).
2. A cache in the user's cache folder (``$XDG_CACHE_HOME/labkit`` or ``~/.cache/labkit``),
   filled by Maven from ``pom.xml`` beside this file, where every version is pinned.
3. Without Maven: Apache's official binary distribution (``kafka_2.13-<version>.tgz``),
   checked against its published SHA-512 before anything in it is unpacked or run.

A cache is used only once complete: each fill writes into a temporary folder and
renames it into place, so an interrupted fetch leaves nothing half-usable.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import tarfile
import tempfile
import urllib.request
import xml.etree.ElementTree as ElementTree
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from labkit.errors import LabkitError

__all__ = ["KafkaJars", "KafkaJarsMissing", "POM", "kafka_version", "scala_version", "find_jars", "cache_root",
           "verify_sha512", "parse_sha512"]

POM = Path(__file__).with_name("pom.xml")
_NS = {"m": "http://maven.apache.org/POM/4.0.0"}
MAVEN_TIMEOUT_S = 600
DOWNLOAD_TIMEOUT_S = 60

#: Told of progress while jars are fetched: one line of text.
Report = Callable[[str], None]


class KafkaJarsMissing(LabkitError):
    """The broker's jars could not be found or fetched."""


@dataclass(frozen=True)
class KafkaJars:
    libs: Path  # the folder of jars: the JVM's classpath is libs/*
    version: str
    source: str  # LABKIT_KAFKA_HOME, Maven cache, or Apache download

    @property
    def classpath(self) -> str:
        return f"{self.libs}/*"


@lru_cache(maxsize=1)
def _pom_properties() -> dict[str, str]:
    props = ElementTree.parse(POM).getroot().find("m:properties", _NS)
    assert props is not None, f"{POM} has no <properties>"
    return {child.tag.split("}", 1)[1]: (child.text or "").strip() for child in props}


def kafka_version() -> str:
    """The pinned Apache Kafka version (``kafka.version`` in pom.xml)."""
    return _pom_properties()["kafka.version"]


def scala_version() -> str:
    return _pom_properties()["scala.binary.version"]


def cache_root() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "labkit"


def _broker_jar(libs: Path) -> Path | None:
    """The jar holding kafka.Kafka and StorageTool, if ``libs`` has one."""
    found = sorted(libs.glob(f"kafka_{scala_version()}-*.jar"))
    found = [jar for jar in found if not jar.name.endswith(("-sources.jar", "-javadoc.jar", "-test.jar"))]
    return found[0] if found else None


def _from_home(home: Path) -> KafkaJars:
    libs = home / "libs"
    jar = _broker_jar(libs) if libs.is_dir() else None
    if jar is None:
        raise KafkaJarsMissing(
            f"LABKIT_KAFKA_HOME={home} is not an Apache Kafka distribution (no libs/kafka_{scala_version()}-*.jar "
            "in it): "
            f"point it at an unpacked kafka_{scala_version()}-<version>.tgz, or unset it to let labkit fetch "
            f"Kafka {kafka_version()} itself"
        )
    version = jar.stem.split("-", 1)[1]
    return KafkaJars(libs, version, "LABKIT_KAFKA_HOME")


def _complete(folder: Path) -> bool:
    return (folder / ".complete").exists() and _broker_jar(folder / "libs") is not None


def _fill_atomically(target: Path, fill: Callable[[Path], None]) -> None:
    """Fill a temporary sibling of ``target`` and rename it into place once complete."""
    target.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    try:
        fill(work)
        (work / ".complete").write_text("")
        if target.exists():
            shutil.rmtree(target)
        work.rename(target)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _maven_fill(mvn: str, report: Report) -> Callable[[Path], None]:
    def fill(work: Path) -> None:
        report(f"fetching Apache Kafka {kafka_version()}'s jars with Maven (once; about 45 MB)")
        command = [mvn, "--batch-mode", "--quiet", "-f", str(POM), "dependency:copy-dependencies",
                   "-DincludeScope=runtime", f"-DoutputDirectory={work / 'libs'}"]
        try:
            done = subprocess.run(command, capture_output=True, text=True, timeout=MAVEN_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            raise KafkaJarsMissing(f"Maven did not fetch Kafka's jars within {MAVEN_TIMEOUT_S} s: check the "
                                   "network") from None
        if done.returncode != 0:
            tail = "\n".join((done.stdout + done.stderr).strip().splitlines()[-8:])
            raise KafkaJarsMissing(
                f"Maven could not fetch Kafka's jars (exit {done.returncode}); it needs Maven Central, or a filled "
                f"~/.m2: check the network, or set LABKIT_KAFKA_HOME to an unpacked Kafka distribution, "
                f"or choose --broker noida.\n--- {' '.join(command[:5])} ---\n{tail}"
            )
    return fill


def parse_sha512(text: str) -> str:
    """The digest from a ``.sha512`` file: Apache's ``name: 1A2B 3C4D ...`` (gpg --print-md) or ``hex  name``."""
    stripped = text.strip()
    first_line = stripped.split("\n", 1)[0]
    body = stripped.split(":", 1)[1] if ":" in first_line else (stripped.split() or [""])[0]
    digest = "".join(body.split()).lower()
    if len(digest) != 128 or any(c not in "0123456789abcdef" for c in digest):
        raise KafkaJarsMissing(f"the published checksum is not a SHA-512 digest: {text[:80]!r}")
    return digest


def verify_sha512(path: Path, published: str) -> None:
    """Raise unless the file's SHA-512 is the published one."""
    digest = hashlib.sha512()
    with path.open("rb") as data:
        for chunk in iter(lambda: data.read(1 << 20), b""):
            digest.update(chunk)
    if digest.hexdigest() != published:
        raise KafkaJarsMissing(
            f"{path.name} does not match its published SHA-512 (got {digest.hexdigest()[:16]}…, "
            f"published {published[:16]}…): the download is corrupt or was tampered with; nothing was unpacked. "
            "Try again, or use another mirror (LABKIT_KAFKA_MIRROR)"
        )


def _fetch(url: str, target: Path, report: Report) -> None:
    with urllib.request.urlopen(url, timeout=DOWNLOAD_TIMEOUT_S) as response, target.open("wb") as out:
        total = int(response.headers.get("Content-Length") or 0)
        done = 0
        for chunk in iter(lambda: response.read(1 << 20), b""):
            out.write(chunk)
            done += len(chunk)
            if total:
                report(f"downloading {target.name}: {done / 1e6:.0f} of {total / 1e6:.0f} MB")


def _download_fill(mirror: str, report: Report) -> Callable[[Path], None]:
    name = f"kafka_{scala_version()}-{kafka_version()}"
    url = f"{mirror.rstrip('/')}/{kafka_version()}/{name}.tgz"

    def fill(work: Path) -> None:
        archive = work / f"{name}.tgz"
        try:
            report(f"downloading {url}.sha512")
            with urllib.request.urlopen(f"{url}.sha512", timeout=DOWNLOAD_TIMEOUT_S) as response:
                published = parse_sha512(response.read().decode("ascii", "replace"))
            _fetch(url, archive, report)
        except OSError as exc:
            raise KafkaJarsMissing(
                f"no Maven on PATH, and Apache's distribution could not be downloaded from {url} ({exc}): "
                "install Maven (apt-get install maven), set LABKIT_KAFKA_HOME to an unpacked Kafka distribution, "
                "or choose --broker noida"
            ) from None
        report(f"checking {archive.name} against its published SHA-512")
        verify_sha512(archive, published)
        with tarfile.open(archive) as tar:
            tar.extractall(work / "unpacked", filter="data")
        archive.unlink()
        libs = next((work / "unpacked").glob("*/libs"), None)
        if libs is None or _broker_jar(libs) is None:
            raise KafkaJarsMissing(f"{url} is not an Apache Kafka distribution (no libs/kafka_*.jar in it)")
        libs.rename(work / "libs")
        shutil.rmtree(work / "unpacked")
        (work / "from-download").write_text(url)
    return fill


def find_jars(kafka_home: Path | None, mirror: str, report: Report | None = None) -> KafkaJars:
    """The broker's jars: from ``kafka_home``, the cache, Maven, or a verified Apache download (in that order)."""
    say = report or (lambda text: None)
    if kafka_home is not None:
        return _from_home(kafka_home)
    cached = cache_root() / f"kafka-{kafka_version()}"
    if not _complete(cached):
        mvn = shutil.which("mvn")
        _fill_atomically(cached, _maven_fill(mvn, say) if mvn else _download_fill(mirror, say))
    source = "Maven cache" if not (cached / "from-download").exists() else "Apache download"
    return KafkaJars(cached / "libs", kafka_version(), source)
