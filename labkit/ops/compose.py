"""Compose mode: the lab as containers (Apache Kafka, the services, Kong), run by Docker Compose.

:class:`ComposeStack` is a :class:`labkit.ops.base.LabStack` like :class:`labkit.ops.stack.Stack` (``up``, ``down``,
``restart``, ``status``, ``logs``) and does each step with one ``docker compose`` command
on ``compose/compose.yml``; :meth:`ComposeStack.commands` shows them, so they can be read,
tested and copied. The settings reach Compose as ``LABKIT_*`` variables, which the
Compose file reads for the published ports, the topic and its partitions.

A running compose stack is recorded in ``<state_dir>/compose.json`` (the settings it runs
with), the same way the embedded stack records itself in ``stack.json``.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import time
import urllib.request
from pathlib import Path
from typing import Any

from labkit import discovery
from labkit.errors import ComponentFailed, LabkitError
from labkit.ops.base import StackCommon, StepCallback
from labkit.ops.kafka.dist import kafka_version
from labkit.settings import REPO_ROOT, Settings

__all__ = ["ComposeStack", "DockerUnavailable", "docker_available", "parse_ps"]


PROJECT = "labkit"
COMPOSE_FILE = "compose/compose.yml"  # relative to REPO_ROOT, where the commands run
RECORD = discovery.COMPOSE_RECORD
KONG_ADMIN_PORT = 8001

#: labkit's component names and the Compose services that are them, in start order.
SERVICES = {"broker": "kafka", "producer": "producer", "consumer": "consumer", "gateway": "kong"}
#: Services that run once and exit (not components).
ONE_SHOT = ("kafka-init",)

NEEDS_DOCKER = (
    "compose mode needs Docker with Compose v2 (`docker compose version`); "
    "the embedded mode (`labkit up`, the default) needs neither"
)


class DockerUnavailable(LabkitError):
    """Docker, its Compose v2 plugin or its engine is missing; the message says which."""


def _first_line(text: str) -> str:
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    return lines[0] if lines else "no output"


def docker_available() -> str | None:
    """None when ``docker compose`` can run containers here; else what is missing, in one message."""
    docker = shutil.which("docker")
    if docker is None:
        return f"{NEEDS_DOCKER}. Here: there is no `docker` command on PATH."
    problems = []
    try:
        version = subprocess.run([docker, "compose", "version"], capture_output=True, text=True, timeout=15)
    except subprocess.TimeoutExpired:
        problems.append("`docker compose version` did not answer within 15 s")
    else:
        found = re.search(r"v?(\d+)\.\d+", version.stdout)
        if version.returncode != 0:
            problems.append("the Compose v2 plugin is missing (`docker compose version`: "
                            f"{_first_line(version.stderr)})")
        elif found is None or int(found.group(1)) < 2:
            problems.append(f"`docker compose version` reports {_first_line(version.stdout)!r}, not Compose v2 or "
                            "later")
    try:
        info = subprocess.run([docker, "info", "--format", "{{.ServerVersion}}"], capture_output=True, text=True,
                              timeout=15)
    except subprocess.TimeoutExpired:
        problems.append("the Docker engine did not answer `docker info` within 15 s")
    else:
        if info.returncode != 0 or not info.stdout.strip():
            detail = _first_line(info.stderr or info.stdout)
            problems.append(f"the docker client is installed but no Docker engine answers (`docker info`: {detail})")
    if problems:
        return f"{NEEDS_DOCKER}. Here: " + "; ".join(problems) + "."
    return None


def parse_ps(text: str) -> dict[str, dict[str, Any]]:
    """``docker compose ps --format json`` output, by service name.

    Compose 2.21 and later print one JSON object per line; earlier 2.x print one array.
    """
    text = text.strip()
    if not text:
        return {}
    if text.startswith("["):
        items = json.loads(text)
    else:
        items = [json.loads(line) for line in text.splitlines() if line.strip()]
    return {item["Service"]: item for item in items}


def _state(container: dict[str, Any] | None) -> str:
    """A container's state in labkit's words (those of the embedded stack's status table)."""
    if container is None or container.get("State") != "running":
        return "stopped"
    health = container.get("Health", "")
    if health in ("", "healthy"):
        return "running"
    return "starting" if health == "starting" else "not answering"


class ComposeStack(StackCommon):
    """The lab's containers: ``ComposeStack(settings).up()``, ``.down()``, or ``with ComposeStack() as stack:``.

    Mirrors :class:`labkit.ops.stack.Stack`; ``up()`` on a compose stack that already runs
    adopts it, and leaving a ``with`` block stops it only if this object started it.
    """

    def __init__(self, settings: Settings | None = None, **changes: Any) -> None:
        base = settings or Settings(mode="compose")
        changes.setdefault("mode", "compose")
        self.settings = base.replace(**changes)
        self.started_here = False
        self.broker_choice = f"Apache Kafka {kafka_version()} (the official image apache/kafka:{kafka_version()})"
        self.docker = "docker"
        self.admin_port = KONG_ADMIN_PORT
        self.actions: list[str] = []
        self.ready_ms: float | None = None
        self._docker_checked = False

    # -- layout ------------------------------------------------------------------

    RECORD = RECORD

    @property
    def log_path(self) -> Path:
        """Where the output of ``up``, ``down`` and ``restart`` goes."""
        return self.state_dir / "logs" / "compose.log"

    @property
    def admin_url(self) -> str:
        return f"http://{self.settings.host}:{self.admin_port}"

    # -- the commands --------------------------------------------------------------

    def _base(self) -> list[str]:
        return [self.docker, "compose", "-f", COMPOSE_FILE, "--project-name", PROJECT]

    def commands(self) -> dict[str, list[str]]:
        """The argv of each step; they run from the repository root with :meth:`environment` added."""
        base = self._base()
        return {
            "up": [*base, "up", "--build", "--wait", "--detach"],
            "down": [*base, "down"],
            "status": [*base, "ps", "--all", "--format", "json"],
            "restart": [*base, "restart"],
            "wait": [*base, "up", "--wait", "--detach"],
            "logs": self.logs_command(),
        }

    def logs_command(self, component: str | None = None, lines: int = 40) -> list[str]:
        command = [*self._base(), "logs", "--no-color", "--tail", str(lines)]
        return [*command, self.service_name(component)] if component else command

    def environment(self) -> dict[str, str]:
        """The LABKIT_* variables compose/compose.yml reads."""
        s = self.settings

        def host_ports(service: str) -> str:
            # The replicas' ports as a Compose range: each container takes one of them.
            ports = sorted(port for _, port in s.replicas(service))
            return str(ports[0]) if len(ports) == 1 else f"{ports[0]}-{ports[-1]}"

        return {
            "LABKIT_PRODUCERS": str(s.producers),
            "LABKIT_CONSUMERS": str(s.consumers),
            "LABKIT_PRODUCER_PORTS": host_ports("producer"),
            "LABKIT_CONSUMER_PORTS": host_ports("consumer"),
            "LABKIT_GATEWAY_PORT": str(s.gateway_port),
            "LABKIT_KAFKA_PORT": str(s.kafka_port),
            "LABKIT_KAFKA_VERSION": kafka_version(),  # the one pin: labkit/ops/kafka/pom.xml
            "LABKIT_TOPIC": s.topic,
            "LABKIT_PARTITIONS": str(s.partitions),
        }

    @staticmethod
    def service_name(component: str) -> str:
        """The Compose service of a component ("gateway" -> "kong"); service names pass through."""
        if component in SERVICES:
            return SERVICES[component]
        if component in SERVICES.values() or component in ONE_SHOT:
            return component
        names = ", ".join([*SERVICES, *ONE_SHOT])
        raise LabkitError(f"{component!r} is not a component of the compose stack; choose from {names}")

    def _check_docker(self) -> None:
        if not self._docker_checked:
            problem = docker_available()
            if problem is not None:
                raise DockerUnavailable(problem)
            self._docker_checked = True
        if not (REPO_ROOT / COMPOSE_FILE).is_file():
            raise LabkitError(
                f"compose mode runs from a checkout of labkit: {REPO_ROOT / COMPOSE_FILE} is missing"
            )
        if self.settings.kafka_bootstrap is not None:
            raise LabkitError(
                "compose mode runs its own Kafka; to use an existing cluster (--kafka / LABKIT_KAFKA_BOOTSTRAP) "
                "choose the external mode"
            )

    def _run(self, argv: list[str], capture: bool = True) -> subprocess.CompletedProcess[str]:
        """Run one command from the repository root; without capture its output goes to the log."""
        env = {**os.environ, **self.environment()}
        if capture:
            return subprocess.run(argv, cwd=REPO_ROOT, env=env, capture_output=True, text=True)
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("a") as log:
            log.write(f"\n--- {time.strftime('%Y-%m-%d %H:%M:%S')} {' '.join(argv)}\n")
            log.flush()
            return subprocess.run(argv, cwd=REPO_ROOT, env=env, stdin=subprocess.DEVNULL,
                                  stdout=log, stderr=subprocess.STDOUT, text=True)

    def _log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    # -- record ------------------------------------------------------------------

    def _write_record(self) -> None:
        self.state_dir.mkdir(parents=True, exist_ok=True)
        record = {"settings": self.settings.model_dump(mode="json"), "project": PROJECT}
        self.record_path.write_text(json.dumps(record, indent=2))

    def _containers(self) -> dict[str, dict[str, Any]]:
        result = self._run(self.commands()["status"])
        if result.returncode != 0:
            raise ComponentFailed("compose stack", f"could not be listed: {_first_line(result.stderr)}")
        return parse_ps(result.stdout)

    def _recorded_settings(self) -> Settings | None:
        try:
            return Settings(**json.loads(self.record_path.read_text())["settings"])
        except (OSError, ValueError, KeyError):
            return None  # started by hand with `docker compose`: these settings stand

    def is_running(self) -> bool:
        """True when every component's container runs; changes nothing (:meth:`adopt` takes the recorded settings)."""
        if not self._docker_checked and docker_available() is not None:
            return False
        try:
            containers = self._containers()
        except ComponentFailed:
            return False
        return all(_state(containers.get(service)) == "running" for service in SERVICES.values())

    def adopt(self) -> bool:
        """True when the compose stack runs; then this object takes the settings it was started with."""
        if not self.is_running():
            return False
        self.settings = self._recorded_settings() or self.settings
        return True

    def restart_warning(self) -> str | None:
        """None: the containers restart in place and Kafka's volume keeps the events."""
        return None

    def reload_gateway(self) -> None:
        raise LabkitError("in compose mode Kong reads kong.yml: `docker compose restart kong` applies an edit")

    # -- lifecycle -----------------------------------------------------------------

    def up(self, on_step: StepCallback | None = None) -> ComposeStack:
        """Build, start and wait until every container is healthy; adopt a compose stack that already runs."""
        steps = 3

        def report(text: str, step: int) -> None:
            if on_step is not None:
                on_step(text, step, steps)

        report("checking Docker and Compose", 1)
        self._check_docker()
        if self.adopt():
            return self
        report("building the service image; starting kafka, the topic, producer, consumer and kong", 2)
        result = self._run(self.commands()["up"], capture=False)
        if result.returncode != 0:
            raise ComponentFailed(
                "compose stack", "did not become healthy (`docker compose up --wait` failed); "
                "`labkit logs` shows each container's output", self._log_tail(), str(self.log_path),
            )
        self._write_record()
        self.started_here = True
        report("reading the routes from Kong's admin API", 3)
        self.routes()
        return self

    def down(self, on_step: StepCallback | None = None) -> list[str]:
        """Remove the containers (the Kafka volume stays, and with it the events); returns the components stopped."""
        self._check_docker()
        if on_step is not None:
            on_step("removing the containers", 1, 1)
        containers = self._containers()
        running = [name for name, service in SERVICES.items() if _state(containers.get(service)) != "stopped"]
        result = self._run(self.commands()["down"], capture=False)
        if result.returncode != 0:
            raise ComponentFailed("compose stack", "did not stop (`docker compose down` failed)",
                                  self._log_tail(), str(self.log_path))
        self.record_path.unlink(missing_ok=True)
        self.started_here = False
        return list(reversed(running))

    def restart(self, on_step: StepCallback | None = None) -> ComposeStack:
        """Restart the containers in place (same settings, same data) and wait until they are healthy."""
        self._check_docker()
        if on_step is not None:
            on_step("restarting the containers", 1, 2)
        for name in ("restart", "wait"):
            if self._run(self.commands()[name], capture=False).returncode != 0:
                raise ComponentFailed("compose stack", f"did not come back (`docker compose {name}` failed)",
                                      self._log_tail(), str(self.log_path))
        if on_step is not None:
            on_step("reading the routes from Kong's admin API", 2, 2)
        self.routes()
        return self

    # -- looking at it ---------------------------------------------------------------

    def urls(self, settings: Settings | None = None) -> dict[str, str]:
        s = settings or self.settings
        return {
            "broker": f"{s.host}:{s.kafka_port}",
            "producer": s.url(s.producer_port),
            "consumer": s.url(s.consumer_port),
            "gateway": f"{s.produce_url}  {s.consume_url}",
        }

    def status(self, cpu_sample_s: float = 0.0) -> list[dict[str, Any]]:
        """One row per component: component, state, pid (None: containers), url, and the Compose service.

        No CPU column (``cpu_sample_s`` is ignored): the containers' processes are not this machine's to sample.
        """
        self._check_docker()
        containers = self._containers()
        urls = self.urls(self._recorded_settings())  # the running stack's addresses, not taken
        return [
            {"component": name, "state": _state(containers.get(service)), "pid": None, "url": urls[name],
             "service": service}
            for name, service in SERVICES.items()
        ]

    def logs(self, component: str | None = None, lines: int = 40) -> str:
        """The last ``lines`` lines of one component's container output (all containers when None)."""
        self._check_docker()
        result = self._run(self.logs_command(component, lines))
        if result.returncode != 0:
            raise ComponentFailed("compose stack", f"logs could not be read: {_first_line(result.stderr)}")
        return result.stdout

    def _admin(self, path: str) -> list[dict[str, Any]]:
        """Every entity of one admin API collection, following Kong's pagination."""
        items: list[dict[str, Any]] = []
        url: str | None = self.admin_url + path
        while url:
            with urllib.request.urlopen(url, timeout=5) as response:
                page = json.loads(response.read())
            items += page.get("data", [])
            url = self.admin_url + page["next"] if page.get("next") else None
        return items

    def routes(self) -> list[dict[str, Any]]:
        """Kong's routes as it runs them, in the row shape of labkit.ops.gateway.routes_table."""
        try:
            services = {s["id"]: s for s in self._admin("/services")}
            routes = self._admin("/routes")
            plugins = [p for p in self._admin("/plugins") if p.get("enabled", True)]
        except (OSError, ValueError) as exc:
            raise ComponentFailed("gateway", f"admin API at {self.admin_url} did not answer: {exc}") from None
        from labkit.ops.gateway import PLUGIN_PRIORITY

        rows = []
        for route in routes:
            service = services.get((route.get("service") or {}).get("id"), {})
            scopes = {"global": None, "service": service.get("id"), "route": route["id"]}
            chosen: dict[str, str] = {}
            for scope in ("global", "service", "route"):  # the more specific scope wins, as in Kong
                for plugin in plugins:
                    if _plugin_scope(plugin) == (scope, scopes[scope]):
                        chosen[plugin["name"]] = scope
            port = service.get("port")
            rows.append({
                "route": route.get("name") or route["id"],
                "paths": list(route.get("paths") or []),
                "service": service.get("name"),
                "upstream": f"{service.get('protocol')}://{service.get('host')}:{port}{service.get('path') or ''}",
                "plugins": sorted(chosen, key=lambda name: -PLUGIN_PRIORITY.get(name, 0)),
            })
        return rows


def _plugin_scope(plugin: dict[str, Any]) -> tuple[str, str | None]:
    """Where an admin API plugin applies: ("route", id), ("service", id) or ("global", None)."""
    if plugin.get("route"):
        return "route", plugin["route"]["id"]
    if plugin.get("service"):
        return "service", plugin["service"]["id"]
    return "global", None
