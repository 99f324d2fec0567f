"""Compose mode, checked statically: no Docker engine runs where these tests run.

The Compose file is validated against the Compose specification and read as data: its
images, start-up order, health checks and ports are compared with kong/kong.yml, the
Settings defaults, the Dockerfile and the README. ComposeStack's command lines are
compared without running them, and its refusal without Docker is run for real: on a
PATH with no docker, and with this machine's docker client, which has no engine.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml

from labkit.errors import LabkitError
from labkit.ops import compose
from labkit.ops.compose import ComposeStack, DockerUnavailable, docker_available, parse_ps
from labkit.ops.kafka.dist import kafka_version
from labkit.settings import REPO_ROOT, Settings, free_port

COMPOSE_DIR = REPO_ROOT / "compose"
COMPOSE_FILE = COMPOSE_DIR / "compose.yml"
DOCKERFILE = REPO_ROOT / "Dockerfile"
KONG_FILE = REPO_ROOT / "kong" / "kong.yml"
NEEDS = "compose mode needs Docker with Compose v2 (`docker compose version`)"

_VARIABLE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::?-([^}]*))?\}")


def interpolate(value: object) -> str:
    """A Compose value with every ${VAR:-default} replaced by its default (the environment is not read)."""
    return _VARIABLE.sub(lambda match: match.group(2) or "", str(value))


@pytest.fixture(scope="module")
def spec() -> dict:
    return yaml.safe_load(COMPOSE_FILE.read_text())


@pytest.fixture(scope="module")
def services(spec: dict) -> dict:
    return spec["services"]


@pytest.fixture(scope="module")
def kong() -> dict:
    return yaml.safe_load(KONG_FILE.read_text())


def published(service: dict) -> list[tuple[str, int, int]]:
    """(host address, default host port, container port) of each published port."""
    rows = []
    for entry in service.get("ports", []):
        host_ip, host_port, target = interpolate(entry).split(":")
        rows.append((host_ip, int(host_port), int(target)))
    return rows


def listening_ports(service: dict) -> set[int]:
    """The ports a service listens on inside the Compose network."""
    return {target for _, _, target in published(service)} | {int(port) for port in service.get("expose", [])}


def long_running(services: dict) -> list[str]:
    return [name for name, service in services.items() if service.get("restart") != "no"]


def dockerfile_lines() -> list[str]:
    """Dockerfile instructions, one per entry, continuation lines joined."""
    text = re.sub(r"\\\n\s*", " ", DOCKERFILE.read_text())
    return [line.strip() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]


# -- the Compose file ----------------------------------------------------------------


def test_compose_files_follow_the_compose_specification() -> None:
    files = sorted(str(path) for path in COMPOSE_DIR.glob("*.yml"))
    assert files, "no Compose file in compose/"
    result = subprocess.run(
        [sys.executable, "-m", "check_jsonschema", "--builtin-schema", "vendor.compose-spec", *files],
        capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_image_is_pinned_to_a_version(services: dict) -> None:
    version = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]["version"]
    for name, service in services.items():
        image = service.get("image")
        assert image, f"{name}: no image name (a built image would be tagged latest)"
        # Kafka's tag is the one pin in labkit/ops/kafka/pom.xml, passed as a variable with that default.
        image = re.sub(r"\$\{LABKIT_KAFKA_VERSION:-([^}]+)\}", r"\1", image)
        repository, _, tag = image.rpartition(":")
        assert repository and "/" not in tag, f"{name}: {image} has no tag"
        assert tag != "latest" and re.fullmatch(r"\d+(\.\d+)+", tag), f"{name}: {image} is not pinned to a version"
        if "build" in service:
            assert tag == version, f"{name}: built image {image} should carry labkit's version {version}"
            assert service.get("pull_policy") == "build", f"{name}: a built image must never be pulled"
    base = next(line for line in dockerfile_lines() if line.startswith("FROM "))
    assert re.fullmatch(r"FROM python:3\.11\.\d+-slim(-\w+)?", base), base


def test_start_up_order_lets_up_wait_return(services: dict) -> None:
    def condition(service: str, dependency: str) -> str:
        return services[service]["depends_on"][dependency]["condition"]

    assert set(services) == {"kafka", "kafka-init", "producer", "consumer", "kong"}
    assert condition("kafka-init", "kafka") == "service_healthy"
    for name in ("producer", "consumer"):
        assert condition(name, "kafka") == "service_healthy"
        # `up --wait` accepts a one-shot's exit only when a running service waits for it.
        assert condition(name, "kafka-init") == "service_completed_successfully"
        assert condition("kong", name) == "service_healthy"
    assert long_running(services) == ["kafka", "producer", "consumer", "kong"]
    dockerfile_health = any(line.startswith("HEALTHCHECK ") for line in dockerfile_lines())
    for name in long_running(services):
        service = services[name]
        assert "healthcheck" in service or ("build" in service and dockerfile_health), f"{name}: no health check"


def test_ports_are_published_on_loopback_only(services: dict) -> None:
    for name, service in services.items():
        for host_ip, _, _ in published(service):
            assert host_ip == "127.0.0.1", f"{name} publishes on {host_ip}"
    assert ("127.0.0.1", 8001, 8001) in published(services["kong"])


def test_kafka_is_one_kraft_node_with_a_volume(spec: dict, services: dict) -> None:
    kafka = services["kafka"]
    env = {key: interpolate(value) for key, value in kafka["environment"].items()}
    assert env["KAFKA_PROCESS_ROLES"] == "broker,controller"
    assert env["KAFKA_CONTROLLER_QUORUM_VOTERS"] == f"{env['KAFKA_NODE_ID']}@kafka:29093"
    assert not any("ZOOKEEPER" in key for key in env)
    listeners = dict(item.split("://") for item in env["KAFKA_ADVERTISED_LISTENERS"].split(","))
    assert listeners == {"PLAINTEXT": "kafka:19092", "PLAINTEXT_HOST": "127.0.0.1:9092"}
    assert ("127.0.0.1", 9092, 9092) in published(kafka)
    volume, _, target = kafka["volumes"][0].partition(":")
    assert volume in spec["volumes"] and target == env["KAFKA_LOG_DIRS"] == "/var/lib/kafka/data"
    assert env["KAFKA_OFFSETS_TOPIC_REPLICATION_FACTOR"] == "1"
    assert "--bootstrap-server kafka:19092" in " ".join(kafka["healthcheck"]["test"])
    for name in ("producer", "consumer"):
        assert services[name]["environment"]["LABKIT_KAFKA_BOOTSTRAP"] == "kafka:19092"

    init = services["kafka-init"]
    assert init["image"] == kafka["image"]
    command = init["command"]
    assert "--if-not-exists" in command and command[command.index("--bootstrap-server") + 1] == "kafka:19092"
    assert command[command.index("--topic") + 1] == "${LABKIT_TOPIC:-events}"
    assert command[command.index("--partitions") + 1] == "${LABKIT_PARTITIONS:-3}"


def test_kong_runs_db_less_from_kong_yml(services: dict) -> None:
    kong = services["kong"]
    env = kong["environment"]
    assert env["KONG_DATABASE"] == "off"
    assert env["KONG_ADMIN_LISTEN"] == "0.0.0.0:8001"
    (mount,) = kong["volumes"]
    assert (COMPOSE_DIR / mount["source"]).resolve() == KONG_FILE.parent and mount["read_only"] is True
    assert env["KONG_DECLARATIVE_CONFIG"] == f"{mount['target']}/{KONG_FILE.name}"
    assert kong["healthcheck"]["test"] == ["CMD", "kong", "health"]


def kong_targets(kong: dict, kong_service: dict) -> list[tuple[str, int]]:
    """(host, port) a Kong service sends to: its upstream's targets when its host names one, else its url."""
    url = urlsplit(kong_service["url"])
    upstream = next((u for u in kong.get("upstreams", []) if u["name"] == url.hostname), None)
    if upstream is None:
        return [(url.hostname, url.port)]
    return [(host, int(port)) for host, _, port in (t["target"].rpartition(":") for t in upstream["targets"])]


def test_kong_services_name_compose_services_and_their_ports(services: dict, kong: dict) -> None:
    assert kong["services"], "kong/kong.yml has no services"
    for kong_service in kong["services"]:
        for host, port in kong_targets(kong, kong_service):
            assert host in services, f"{kong_service['name']}: no Compose service {host!r}"
            assert port in listening_ports(services[host]), (
                f"{kong_service['name']}: {host} listens on {sorted(listening_ports(services[host]))}"
            )


def test_services_scale_with_the_settings_behind_kongs_upstreams(services: dict, kong: dict) -> None:
    # Compose runs LABKIT_CONSUMERS containers; Kong adds each address "consumer" resolves to as a target.
    for name in ("producer", "consumer"):
        assert services[name]["deploy"]["replicas"] == f"${{LABKIT_{name.upper()}S:-1}}"
        assert "container_name" not in services[name]  # a fixed name cannot be scaled
        (kong_service,) = [s for s in kong["services"] if s["name"] == name]
        assert kong_targets(kong, kong_service) == [(name, Settings.model_fields[f"{name}_port"].default)]
    settings = Settings(producers=2, consumers=3, producer_port=16789, consumer_port=16788)
    environment = ComposeStack(settings).environment()
    assert (environment["LABKIT_PRODUCERS"], environment["LABKIT_PRODUCER_PORTS"]) == ("2", "16789-16790")
    assert (environment["LABKIT_CONSUMERS"], environment["LABKIT_CONSUMER_PORTS"]) == ("3", "16786-16788")


def test_ports_agree_across_settings_compose_kong_and_readme(services: dict, kong: dict) -> None:
    defaults = {name: field.default for name, field in Settings.model_fields.items() if name.endswith("_port")}
    compose_ports = {
        "producer_port": published(services["producer"]),
        "consumer_port": published(services["consumer"]),
        "gateway_port": [row for row in published(services["kong"]) if row[2] == 8000],
        "kafka_port": published(services["kafka"]),
    }
    for setting, rows in compose_ports.items():
        ((_, host_port, _),) = rows
        assert host_port == defaults[setting], \
            f"{setting}: Compose publishes {host_port}, Settings says {defaults[setting]}"
    for name in ("producer", "consumer"):
        ((_, _, target),) = published(services[name])
        assert target == defaults[f"{name}_port"] == int(services[name]["environment"][f"LABKIT_{name.upper()}_PORT"])
        health = urlsplit(services[name]["environment"]["HEALTH_URL"])
        assert health.port == target and health.path == "/healthz"
        (kong_service,) = [s for s in kong["services"] if s["name"] == name]
        assert kong_targets(kong, kong_service) == [(name, defaults[f"{name}_port"])]

    readme = {}
    for line in (REPO_ROOT / "README.md").read_text().splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if line.lstrip().startswith("|") and len(cells) >= 2 and (match := re.match(r"\d+", cells[1])):
            readme[cells[0].lower()] = int(match.group())
    expected = {
        "producer websocket": defaults["producer_port"],
        "consumer websocket": defaults["consumer_port"],
        "gateway proxy": defaults["gateway_port"],
        "kafka": defaults["kafka_port"],
    }
    for name, port in expected.items():
        assert readme.get(name) == port, f"README.md needs the row | {name} | {port} | in its ports table"
    admin = [port for name, port in readme.items() if "kong admin" in name]
    assert admin == [compose.KONG_ADMIN_PORT], "README.md needs the row | Kong admin API (compose only) | 8001 |"


def test_every_compose_variable_comes_from_the_settings(spec: dict) -> None:
    used = {match.group(1): match.group(2) for match in _VARIABLE.finditer(COMPOSE_FILE.read_text())}
    environment = ComposeStack(Settings()).environment()
    assert set(used) == set(environment)
    for name, default in used.items():
        assert default == environment[name], f"${{{name}:-{default}}} but Settings' default is {environment[name]}"


# -- the image -------------------------------------------------------------------------


def test_dockerfile_installs_from_pyproject_and_runs_as_a_user() -> None:
    lines = dockerfile_lines()
    copies = [line for line in lines if line.startswith("COPY ")]
    assert copies[0].split()[1:] == ["pyproject.toml", "README.md", "./"]
    installs = [line for line in lines if "pip install" in line]
    assert installs and all(re.search(r"pip install (--[\w-]+ )*\.( |$)", line) for line in installs), installs
    assert not any("requirements" in line for line in lines)
    user = next(line for line in reversed(lines) if line.startswith("USER "))
    assert user.split()[1] not in ("root", "0")
    health = next(line for line in lines if line.startswith("HEALTHCHECK "))
    assert "urllib.request" in health and "HEALTH_URL" in health
    assert "HEALTH_URL=http://127.0.0.1:6789/healthz" in " ".join(lines)
    assert lines[-1] == 'CMD ["labkit", "serve", "producer"]'

    ignore = [line.strip() for line in (REPO_ROOT / ".dockerignore").read_text().splitlines()
              if line.strip() and not line.startswith("#")]
    assert ignore[:4] == ["*", "!pyproject.toml", "!README.md", "!labkit"]


# -- ComposeStack ------------------------------------------------------------------------


def test_compose_stack_command_lines() -> None:
    base = ["docker", "compose", "-f", "compose/compose.yml", "--project-name", "labkit"]
    stack = ComposeStack(Settings())
    assert stack.commands() == {
        "up": [*base, "up", "--build", "--wait", "--detach"],
        "down": [*base, "down"],
        "status": [*base, "ps", "--all", "--format", "json"],
        "restart": [*base, "restart"],
        "wait": [*base, "up", "--wait", "--detach"],
        "logs": [*base, "logs", "--no-color", "--tail", "40"],
    }
    assert stack.logs_command("gateway", 5) == [*base, "logs", "--no-color", "--tail", "5", "kong"]
    assert stack.logs_command("producer", 5)[-1] == "producer"
    assert stack.logs_command("kafka-init", 5)[-1] == "kafka-init"
    with pytest.raises(LabkitError, match="not a component"):
        stack.logs_command("zookeeper")
    assert (REPO_ROOT / base[3]).is_file()


def test_compose_stack_passes_the_settings_as_environment(tmp_path: Path) -> None:
    settings = Settings(producer_port=16789, consumer_port=16788, gateway_port=18000, kafka_port=19093,
                        topic="clicks", partitions=6, state_dir=tmp_path)
    stack = ComposeStack(settings)
    assert stack.settings.mode == "compose"
    assert stack.environment() == {
        "LABKIT_PRODUCERS": "1", "LABKIT_CONSUMERS": "1",
        "LABKIT_PRODUCER_PORTS": "16789", "LABKIT_CONSUMER_PORTS": "16788", "LABKIT_GATEWAY_PORT": "18000",
        "LABKIT_KAFKA_PORT": "19093", "LABKIT_TOPIC": "clicks", "LABKIT_PARTITIONS": "6",
        "LABKIT_KAFKA_VERSION": kafka_version(),
    }
    assert stack.urls()["producer"] == "ws://127.0.0.1:16789/"


def test_parse_ps_reads_both_json_formats() -> None:
    rows: list[dict[str, Any]] = [
        {"Service": "kafka", "State": "running", "Health": "healthy"},
        {"Service": "kafka-init", "State": "exited", "Health": "", "ExitCode": 0},
        {"Service": "producer", "State": "running", "Health": "starting"},
        {"Service": "consumer", "State": "running", "Health": "unhealthy"},
    ]
    lines = "\n".join(json.dumps(row) for row in rows) + "\n"
    assert parse_ps(lines) == parse_ps(json.dumps(rows)) == {row["Service"]: row for row in rows}
    assert parse_ps("") == {}
    states = {name: compose._state(row) for name, row in parse_ps(lines).items()}
    assert states == {"kafka": "running", "kafka-init": "stopped", "producer": "starting", "consumer": "not answering"}
    assert compose._state(None) == "stopped"


def test_up_without_a_docker_command(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(DockerUnavailable) as caught:
        ComposeStack(Settings(state_dir=tmp_path)).up()
    message = str(caught.value)
    assert message.startswith(NEEDS) and "embedded mode (`labkit up`, the default) needs neither" in message
    assert "no `docker` command" in message
    assert not (tmp_path / compose.RECORD).exists()


def test_this_machines_docker_is_detected(tmp_path: Path) -> None:
    """Run for real: where no engine answers (the development and CI machines), up() says so."""
    problem = docker_available()
    engine = shutil.which("docker") and subprocess.run(["docker", "info"], capture_output=True).returncode == 0
    compose_v2 = shutil.which("docker") and subprocess.run(["docker", "compose", "version"],
                                                           capture_output=True).returncode == 0
    assert (problem is None) == bool(engine and compose_v2)
    if problem is not None:
        with pytest.raises(DockerUnavailable, match=re.escape(NEEDS)):
            ComposeStack(Settings(state_dir=tmp_path)).up()


def test_cli_up_in_compose_mode_without_docker(tmp_path: Path) -> None:
    state = tmp_path / "state"
    ports = {f"LABKIT_{name.upper()}": str(free_port()) for name in ("producer_port", "consumer_port", "gateway_port",
                                                                     "kafka_port")}
    env = {**os.environ, **ports, "PATH": str(tmp_path)}  # a machine without docker
    try:
        result = subprocess.run(
            [sys.executable, "-m", "labkit", "up", "--mode", "compose", "--state-dir", str(state)],
            capture_output=True, text=True, env=env, timeout=120,
        )
    finally:  # should the command ever start something, stop it
        subprocess.run([sys.executable, "-m", "labkit", "down", "--state-dir", str(state)],
                       capture_output=True, env=env, timeout=60)
    assert result.returncode != 0
    last_lines = "\n".join(result.stderr.splitlines()[-6:])
    assert "Docker" in result.stderr, f"not the clear Docker message; the command ended with:\n{last_lines}"
    assert "Traceback" not in result.stderr

