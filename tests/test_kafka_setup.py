"""Getting Apache Kafka to run, and every way it can fail to: Java, the jars, the download, ports, data, the JVM.

Each failure must be a clear error naming the fix, with nothing half-started and no
JVM left running. The download path is served by a local HTTP server with a tarball
built from the jars Maven cached, laid out as Apache's download site lays it out.
"""

from __future__ import annotations

import functools
import hashlib
import http.server
import os
import re
import socket
import subprocess
import sys
import tarfile
import threading
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest
import yaml

from labkit import Settings, Stack
from labkit.errors import ComponentFailed, PortInUse
from labkit.ops.brokers import choose_broker
from labkit.ops.kafka import find_jars, kafka_dir, nodes
from labkit.ops.kafka.dist import KafkaJarsMissing, kafka_version, scala_version
from labkit.ops.kafka.java import JavaMissing, find_java
from labkit.ops.kafka.node import DataFromAnotherCluster, cluster_id
from labkit.settings import REPO_ROOT

DIST = f"kafka_{scala_version()}-{kafka_version()}"


def jvms_under(folder: Path) -> list[psutil.Process]:
    """Java processes whose command line names a path under ``folder`` (a broker this test started)."""
    found = []
    for proc in psutil.process_iter(["name", "cmdline"]):
        cmdline = proc.info["cmdline"] or []
        if cmdline and os.path.basename(cmdline[0]) == "java" and any(str(folder) in arg for arg in cmdline):
            found.append(proc)
    return found


def no_maven(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """An empty cache, and a PATH without mvn."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    (tmp_path / "empty-bin").mkdir()
    monkeypatch.setenv("PATH", str(tmp_path / "empty-bin"))


def nothing_left(settings: Settings) -> None:
    assert not jvms_under(settings.state_dir), "a JVM was left running"
    assert not (settings.state_dir / "stack.json").exists(), "a stack record was left behind"


def fake_java(folder: Path, version: str) -> Path:
    """A JAVA_HOME whose java says it is ``version``."""
    java = folder / "bin" / "java"
    java.parent.mkdir(parents=True)
    java.write_text(f"#!/bin/sh\necho 'openjdk version \"{version}\" 2021-07-20' >&2\n")
    java.chmod(0o755)
    return folder


def test_the_version_is_pinned_once_and_compose_agrees():
    compose = yaml.safe_load((REPO_ROOT / "compose" / "compose.yml").read_text())
    images = {name: svc["image"] for name, svc in compose["services"].items() if "apache/kafka" in svc.get("image", "")}
    assert images, "compose mode runs no apache/kafka image"
    for name, image in images.items():
        assert image == f"apache/kafka:${{LABKIT_KAFKA_VERSION:-{kafka_version()}}}", (name, image)


@pytest.mark.parametrize("version", ["16.0.2", "1.8.0_412"])
def test_java_older_than_17_is_a_clear_error_and_auto_falls_back_to_noida(tmp_path, monkeypatch, version):
    monkeypatch.setenv("JAVA_HOME", str(fake_java(tmp_path / "jdk", version)))
    monkeypatch.setenv("PATH", str(tmp_path / "jdk" / "bin"))
    with pytest.raises(JavaMissing, match=r"needs Java 17 or newer.*openjdk-17-jre-headless"):
        find_java()
    settings, why = choose_broker(Settings(broker="auto", state_dir=tmp_path))
    assert settings.broker == "noida" and "no Java 17+" in why


def test_no_java_at_all_stops_labkit_up_with_what_to_install(tmp_path):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    env = {**os.environ, "PATH": str(bin_dir), "LABKIT_STATE_DIR": str(tmp_path / "state")}
    env.pop("JAVA_HOME", None)
    settings = Settings(broker="kafka").with_free_ports(state_dir=tmp_path / "state")
    done = subprocess.run([sys.executable, "-m", "labkit", "up", "--broker", "kafka", "--kafka-port",
                           str(settings.kafka_port),
                           "--gateway-port", str(settings.gateway_port), "--producer-port", str(settings.producer_port),
                           "--consumer-port", str(settings.consumer_port),
                           "--kafka-controller-port", str(settings.kafka_controller_port)], env=env,
                           capture_output=True, text=True, timeout=120)
    assert done.returncode != 0
    said = " ".join(done.stderr.split())  # rich wraps long lines
    assert "Java 17 or newer" in said and "apt-get install openjdk-17-jre-headless" in said, said
    nothing_left(settings)


def test_kafka_home_that_is_not_a_distribution_is_refused(tmp_path):
    settings = Settings(broker="kafka", kafka_home=tmp_path / "not-kafka").with_free_ports(state_dir=tmp_path / "state")
    (tmp_path / "not-kafka" / "libs").mkdir(parents=True)
    with pytest.raises(KafkaJarsMissing, match=r"is not an Apache Kafka distribution.*unset it"):
        Stack(settings).up()
    nothing_left(settings)


def test_a_data_folder_of_another_cluster_is_refused_and_named(tmp_path):
    settings = Settings(broker="kafka").with_free_ports(state_dir=tmp_path)
    cluster_id(kafka_dir(settings))  # this stack's id
    data = nodes(settings)[0].data
    data.mkdir(parents=True)
    (data / "meta.properties").write_text("version=1\ncluster.id=SomeOtherClusterIdAaa\nnode.id=1\n")
    with pytest.raises(DataFromAnotherCluster, match=re.escape(str(data)) + r".*SomeOtherClusterIdAaa"):
        Stack(settings).up()
    nothing_left(settings)


def test_the_controller_port_in_use_is_named_with_its_setting(tmp_path):
    settings = Settings(broker="kafka").with_free_ports(state_dir=tmp_path)
    with socket.socket() as taken:
        taken.bind((settings.host, settings.kafka_controller_port))
        taken.listen()
        with pytest.raises(PortInUse, match=rf"port {settings.kafka_controller_port} .*LABKIT_KAFKA_CONTROLLER_PORT"):
            Stack(settings).up()
    nothing_left(settings)


def test_a_jvm_dying_during_start_shows_the_end_of_its_log(tmp_path):
    settings = Settings(broker="kafka").with_free_ports(state_dir=tmp_path)
    data = nodes(settings)[0].data
    data.mkdir(parents=True)
    # Formatted for this cluster, but as another node: Kafka stops at start and says why.
    (data / "meta.properties").write_text(f"version=1\ncluster.id={cluster_id(kafka_dir(settings))}\nnode.id=7\n"
                                          "directory.id=AAAAAAAAAAAAAAAAAAAAAA\n")
    with pytest.raises(ComponentFailed, match=r"broker exited during start-up(.|\n)*last lines of") as failed:
        Stack(settings).up()
    assert "Stored node id 7 doesn't match previous node id 1" in str(failed.value)
    nothing_left(settings)


# -- the download path ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def mirror(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    """A local HTTP server laid out as Apache's: <version>/<dist>.tgz and .sha512, built from the cached jars."""
    jars = find_jars(None, "unused")  # the Maven cache (filled by Maven if empty)
    root = tmp_path_factory.mktemp("mirror")
    (root / kafka_version()).mkdir()
    archive = root / kafka_version() / f"{DIST}.tgz"
    with tarfile.open(archive, "w:gz", compresslevel=1) as tar:
        tar.add(jars.libs, arcname=f"{DIST}/libs")
    digest = hashlib.sha512(archive.read_bytes()).hexdigest().upper()
    groups = " ".join(digest[i:i + 8] for i in range(0, 128, 8))  # as gpg --print-md writes it, like Apache
    (root / kafka_version() / f"{DIST}.tgz.sha512").write_text(f"{DIST}.tgz: {groups}\n")
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(root))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", root
    finally:
        server.shutdown()


def test_without_maven_the_checked_apache_download_serves_the_broker(mirror, tmp_path, monkeypatch):
    url, _ = mirror
    java = find_java()
    no_maven(tmp_path, monkeypatch)
    said: list[str] = []
    jars = find_jars(None, url, said.append)
    assert jars.source == "Apache download" and any("SHA-512" in line for line in said), said
    # The jars run: StorageTool answers with a cluster id.
    made = subprocess.run([str(java.path), "-cp", jars.classpath, "kafka.tools.StorageTool", "random-uuid"],
                          capture_output=True, text=True, timeout=60)
    assert re.fullmatch(r"[A-Za-z0-9_-]{22}", made.stdout.strip()), made


def test_a_tampered_download_is_refused_and_nothing_is_unpacked(mirror, tmp_path, monkeypatch):
    _, root = mirror
    tampered = tmp_path / "tampered"
    (tampered / kafka_version()).mkdir(parents=True)
    archive = (root / kafka_version() / f"{DIST}.tgz").read_bytes()
    (tampered / kafka_version() / f"{DIST}.tgz").write_bytes(archive[:-1] + bytes([archive[-1] ^ 1]))
    checksum = (root / kafka_version() / f"{DIST}.tgz.sha512").read_text()
    (tampered / kafka_version() / f"{DIST}.tgz.sha512").write_text(checksum)
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(tampered))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    no_maven(tmp_path, monkeypatch)
    try:
        with pytest.raises(KafkaJarsMissing, match=r"does not match its published SHA-512.*nothing was unpacked"):
            find_jars(None, f"http://127.0.0.1:{server.server_address[1]}")
    finally:
        server.shutdown()
    assert not list((tmp_path / "cache").rglob("*.jar")), "jars from an unverified download were kept"


def test_no_maven_and_no_network_is_a_clear_error(tmp_path, monkeypatch):
    no_maven(tmp_path, monkeypatch)
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
    with pytest.raises(KafkaJarsMissing, match=r"no Maven on PATH.*could not be downloaded.*apt-get install maven"):
        find_jars(None, f"http://127.0.0.1:{port}")


@pytest.mark.parametrize(("flags", "said"), [
    (["--broker", "kafka", "--nodes", "2"], "2 Kafka nodes cannot keep min.insync.replicas=2"),
    (["--broker", "kafka", "--nodes", "0"], "kafka_nodes"),
    (["--broker", "noida", "--nodes", "3"], "use --broker kafka, or drop --nodes"),
])
def test_node_counts_that_cannot_work_are_usage_errors(tmp_path, flags, said):
    done = subprocess.run([sys.executable, "-m", "labkit", "up", "--state-dir", str(tmp_path), *flags],
                          capture_output=True, text=True, timeout=60, env={**os.environ, "COLUMNS": "200"})
    assert done.returncode == 2, done.stdout + done.stderr
    assert said in " ".join(done.stderr.split()), done.stderr
    assert not (tmp_path / "stack.json").exists()
