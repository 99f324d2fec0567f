"""Stack orchestration: start broker, services and gateway in order, and stop exactly them.

A running stack is recorded in ``<state_dir>/stack.json`` (the settings it runs
with, and each component's pid and start time), next to one log file per
component under ``<state_dir>/logs``. Any later ``labkit`` command, notebook or
test reads that record, so a second ``up`` finds the running stack and leaves it
alone, and ``down`` stops only processes it started (a pid reused by another
program does not match the recorded start time).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil

from labkit import discovery
from labkit.errors import ComponentFailed, LabkitError, NotRunning, PortInUse, StackIncomplete
from labkit.ops import kafka
from labkit.ops.base import LabStack, StackCommon, StepCallback
from labkit.ops.brokers import Say, broker_kind, choose_broker, ensure_topic
from labkit.ops.gateway import gateway_command, load_kong_config, reload, routes_table, write_nginx_conf
from labkit.ops.readiness import probe_round_trip
from labkit.procstats import cpu_cores
from labkit.settings import REPLICATED, Settings

__all__ = ["Stack", "Component", "open_stack"]


RECORD = discovery.STACK_RECORD
_ANSI_ESCAPE = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")
READY_TIMEOUT_S = 30.0


@dataclass
class Component:
    """One process of the stack and how to tell it is ready."""

    name: str
    port: int
    port_setting: str
    url: str
    command: list[str]
    health_url: str | None = None
    env: dict[str, str] = field(default_factory=dict)
    detail: str = ""
    #: What to tell when it had stopped in a recorded stack and was started again.
    restarted_note: str = ""
    #: Other ports it listens on, with the setting that moves each (a Kafka node's controller port).
    more_ports: list[tuple[int, str]] = field(default_factory=list)
    #: How long it may take to answer after it starts (a JVM takes seconds on a busy machine).
    ready_timeout_s: float = 30.0
    #: Started and stopped together with its neighbours of the same group (a cluster's nodes: a node
    #: neither finishes starting nor stops cleanly while the others are not there).
    group: str = ""
    # Called before the process starts (may set the command; says what a long step is doing), and once it answers.
    prepare: Callable[[Component, Say], None] | None = None
    after_ready: Callable[[Component], None] | None = None
    # Called before the process is sent SIGTERM, to let it finish cleanly.
    before_stop: Callable[[Component], None] | None = None
    pid: int | None = None
    started_at: float | None = None

    def process(self) -> psutil.Process | None:
        """The recorded process, if it still runs (same pid and same start time)."""
        if self.pid is None:
            return None
        try:
            proc = psutil.Process(self.pid)
            if self.started_at is not None and abs(proc.create_time() - self.started_at) > 0.01:
                return None
            return proc if proc.status() != psutil.STATUS_ZOMBIE else None
        except psutil.NoSuchProcess:
            return None

    def answers(self, host: str) -> bool:
        if self.health_url is not None:
            try:
                with urllib.request.urlopen(self.health_url, timeout=1) as response:
                    return response.status == 200
            except OSError:
                return False
        try:
            with socket.create_connection((host, self.port), timeout=1):
                return True
        except OSError:
            return False


def _listening(pid: int) -> bool:
    """Whether a process still holds a listening socket (an old nginx worker still taking new clients)."""
    try:
        return any(c.status == psutil.CONN_LISTEN for c in psutil.Process(pid).net_connections("tcp"))
    except psutil.NoSuchProcess:
        return False


def _exited(proc: psutil.Process) -> bool:
    try:
        return proc.status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def _wait_exited(procs: list[psutil.Process], timeout: float) -> list[psutil.Process]:
    """Wait until each process has exited; return those still running.

    A zombie has exited: its parent (the kernel or test that started the stack) has not reaped it
    yet, and psutil.wait_procs would wait the whole timeout for it. labkit down and restart from
    another process took 15 s a component that way (61 s for a restart with a notebook's stack).
    """
    deadline = time.monotonic() + timeout
    while True:
        _, alive = psutil.wait_procs(procs, timeout=0.05)  # reaps the ones that are our own children
        procs = [proc for proc in alive if not _exited(proc)]
        if not procs or time.monotonic() >= deadline:
            return procs


def _batches(parts: list[Component]) -> list[list[Component]]:
    """Neighbours of the same group together, every other component alone, in order."""
    batches: list[list[Component]] = []
    for part in parts:
        if batches and part.group and batches[-1][0].group == part.group:
            batches[-1].append(part)
        else:
            batches.append([part])
    return batches


def _port_free(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def _replica_note(part: Component, settings: Settings) -> str:
    """For a replica: how its port follows from the setting (a range can run into another stack's ports)."""
    service = part.name.rpartition("-")[0]
    if service not in REPLICATED or getattr(settings, REPLICATED[service][0]) == 1:
        return ""
    ports = [port for _, port in settings.replicas(service)]
    return f" ({service} replicas use ports {ports[0]} to {ports[-1]}, counting from {part.port_setting})"


class Stack(StackCommon):
    """The lab's processes: ``Stack(settings).up()``, ``.down()``, or ``with Stack() as stack:``.

    ``up()`` on a state folder whose stack already runs adopts it; leaving a ``with``
    block stops the stack only if this object started it.
    """

    def __init__(self, settings: Settings | None = None, **changes: Any) -> None:
        base = settings or Settings()
        #: Which broker runs and why ("auto" resolved: Apache Kafka where Java 17+ is, else noida-db).
        self.settings, self.broker_choice = choose_broker(base.replace(**changes) if changes else base)
        self.started_here = False
        self.actions: list[str] = []
        self.ready_ms: float | None = None

    # -- layout ------------------------------------------------------------------

    RECORD = RECORD

    def log_path(self, name: str) -> Path:
        return self.state_dir / "logs" / f"{name}.log"

    def components(self, settings: Settings | None = None) -> list[Component]:
        s = settings or self.settings
        # Each service runs its own module: lighter than the CLI, which loads the benchmark and plots.
        serve = [sys.executable, "-m"]
        broker = broker_kind(s)
        parts: list[Component] = []

        def topic(_: Component, say: Say | None = None) -> None:
            ensure_topic(s)  # an in-memory broker that restarted comes back without it

        def broker_command(part: Component, say: Say) -> None:
            part.command = broker.command(s, say)

        def gateway_conf(part: Component, say: Say) -> None:
            part.command = gateway_command(write_nginx_conf(s, self.state_dir), self.state_dir)

        def service(name: str, prepare: Callable[[Component, Say], None] | None = None) -> list[Component]:
            # One component per replica, each on its own port (Settings.replicas); the gateway balances them.
            port_setting = REPLICATED[name][1]
            return [
                Component(part, port, port_setting, s.url(port), [*serve, f"labkit.services.{name}"],
                          s.url(port, "/healthz", "http"), s.replace(**s.replica_env(name, port)).as_env(),
                          prepare=prepare)
                for part, port in s.replicas(name)
            ]

        if broker.name == "kafka" and s.kafka_nodes > 1:
            parts += self._kafka_nodes(s, topic)
            parts += service("producer")
        elif broker.argv is not None:
            # The broker we start makes the topic once it answers; an external one, before the producer starts.
            jvm = broker.name == "kafka"
            parts.append(Component("broker", s.kafka_port, "kafka_port", s.bootstrap_servers, [],
                                   detail=broker.describe(s), prepare=broker_command, after_ready=topic,
                                   more_ports=[(s.kafka_controller_port, "kafka_controller_port")] if jvm else [],
                                   ready_timeout_s=90.0 if jvm else READY_TIMEOUT_S,
                                   before_stop=lambda part: broker.stop_cleanly(s),
                                   restarted_note=f"the broker had stopped and was started again ({broker.keeps}): "
                                                  "watchers that resume are told if events were lost"))
            parts += service("producer")
        else:
            parts += service("producer", prepare=topic)
        parts += service("consumer")
        gateway_url = f"{s.produce_url}  {s.consume_url}"
        parts.append(Component("gateway", s.gateway_port, "gateway_port", gateway_url, [], prepare=gateway_conf))
        return parts

    @staticmethod
    def _kafka_nodes(s: Settings, topic: Callable[[Component], None]) -> list[Component]:
        """A cluster's nodes, ``broker-<node.id>``, started together: a node opens its client port only once the
        controller quorum has a leader, which needs a majority of the nodes running. The last makes the topic."""
        nodes = kafka.nodes(s)
        parts = []
        for node in nodes:
            def command(part: Component, say: Say, node_id: int = node.node_id) -> None:
                part.command = kafka.prepare_node(s, node_id, say)[0]

            parts.append(Component(
                f"broker-{node.node_id}", node.port, "kafka_port", f"{s.host}:{node.port}", [],
                detail=f"{kafka.describe(s)}, node {node.node_id} of {len(nodes)} (replication 3, min in-sync 2)",
                prepare=command, after_ready=topic if node is nodes[-1] else None,
                more_ports=[(node.controller_port, "kafka_controller_port")],
                ready_timeout_s=90.0, group="kafka",
                restarted_note=f"broker-{node.node_id} had stopped and was started again: it catches up from the "
                               "other nodes and rejoins the in-sync replicas",
            ))
        return parts

    # -- record ------------------------------------------------------------------

    def _load_record(self) -> dict[str, Any] | None:
        try:
            return json.loads(self.record_path.read_text())
        except (OSError, ValueError):
            return None

    def _write_record(self, parts: list[Component]) -> None:
        record = {
            "settings": self.settings.model_dump(mode="json"),
            "broker_choice": self.broker_choice,
            # The detail as it was at the start (the Java a JVM runs on), for status to show while it runs.
            "components": {p.name: {"pid": p.pid, "started_at": p.started_at, "port": p.port, "detail": p.detail}
                           for p in parts},
        }
        # The settings may hold Kafka credentials (kafka_properties): readable by this user only.
        self.record_path.touch(mode=0o600)
        self.record_path.write_text(json.dumps(record, indent=2))

    def _recorded_components(self) -> tuple[Settings, list[Component]]:
        record = self._load_record()
        if record is None:
            return self.settings, []
        settings = Settings(**record["settings"])
        parts = self.components(settings)
        for part in parts:
            saved = record["components"].get(part.name, {})
            part.pid, part.started_at = saved.get("pid"), saved.get("started_at")
            part.detail = saved.get("detail", part.detail)
        return settings, [p for p in parts if p.pid is not None]

    def _running(self) -> Settings | None:
        """The recorded stack's settings when every one of its components still runs; else None."""
        settings, parts = self._recorded_components()
        if parts and len(parts) == len(self.components(settings)) and all(p.process() for p in parts):
            return settings
        return None

    def adopt(self) -> bool:
        """True when every recorded component still runs; then this object takes the running stack's settings."""
        settings = self._running()
        if settings is None:
            return False
        self.settings = settings
        self.broker_choice = self._recorded_choice()
        return True

    def _recorded_choice(self) -> str:
        record = self._load_record() or {}
        return str(record.get("broker_choice") or self.broker_choice)

    def is_running(self) -> bool:
        """True when every recorded component still runs; changes nothing (:meth:`adopt` takes its settings)."""
        return self._running() is not None

    def restart_warning(self) -> str | None:
        """What a restart loses, in words: the events of a broker that keeps them in memory; None if nothing."""
        settings = self._running() or self.settings
        if settings.broker == "external" or broker_kind(settings).keeps_data:
            return None
        return f"Restarting the broker loses the events it holds ({broker_kind(settings).describe(settings)})."

    # -- lifecycle -----------------------------------------------------------------

    def up(self, on_step: StepCallback | None = None) -> Stack:
        """Start what is not running, wait until an event goes through end to end; adopt a running stack.

        On a partly running stack only the missing components start (a running broker is
        never restarted: an in-memory broker would lose its events). ``self.actions`` says
        what was done.
        """
        if self.settings.mode == "compose":
            raise LabkitError("compose mode runs under Docker Compose: use labkit.ops.compose.ComposeStack (or "
                              "open_stack)")
        recorded_settings, recorded = self._recorded_components()
        alive = {p.name: p for p in recorded if p.process() is not None}
        if alive:
            self.settings = recorded_settings  # the stack keeps the settings it was started with
            self.broker_choice = self._recorded_choice()
        parts = self.components()
        missing = [p for p in parts if p.name not in alive]
        self.actions = [f"kept {name} (running, pid {part.pid})" for name, part in alive.items()]
        if not missing:
            return self
        for part in missing:
            for port, setting in [(part.port, part.port_setting), *part.more_ports]:
                if not _port_free(self.settings.host, port):
                    note = _replica_note(part, self.settings) if port == part.port else ""
                    raise PortInUse(part.name, self.settings.host, port, setting, note)
        (self.state_dir / "logs").mkdir(parents=True, exist_ok=True)
        if any(p.name == "gateway" for p in missing):
            # A kong.yml the gateway cannot honour is refused before anything starts, not after the broker did.
            write_nginx_conf(self.settings, self.state_dir)
        steps = len(missing) + 1
        step = 0

        def report(text: str) -> None:
            nonlocal step
            step += 1
            say(text)

        def say(text: str) -> None:  # within the current step
            if on_step is not None:
                on_step(text, step, steps)

        running = [alive.get(p.name, p) for p in parts]
        started: list[Component] = []
        try:
            for batch in _batches(missing):
                for part in batch:  # a group's members all start before any is waited for
                    report(f"starting {part.name}")
                    self._start(part, say)
                    started.append(part)
                    self._write_record([p for p in running if p.pid is not None])
                for part in batch:
                    say(f"waiting for {part.name} to answer")
                    self._wait_ready(part)
                    self.actions.append(f"started {part.name}")
            report("checking that an event goes through the gateway, producer, broker and consumer")
            self.ready_ms = probe_round_trip(self.settings)
        except BaseException as exc:
            # Nothing that started is stopped: a broker that came back after a crash holds what it kept,
            # and stopping it because a later step failed left senders with errors and no broker (2026-12-03).
            # The record says what runs, so `status` explains the stack and a second `up` starts only the rest.
            left = [p for p in running if p.pid is not None and p.process() is not None]
            if left:
                self._write_record(left)
            else:
                self.record_path.unlink(missing_ok=True)
            if isinstance(exc, LabkitError) and left:  # with nothing left running, the cause says it all
                raise StackIncomplete(exc, [p.name for p in left], [p.name for p in parts if p not in left]) from exc
            raise
        if recorded:
            self.actions += [part.restarted_note for part in missing if part.restarted_note]
        self.started_here = self.started_here or not alive  # a later up() that restarts a part keeps ownership
        return self

    def _start(self, part: Component, say: Say | None = None) -> None:
        if part.prepare is not None:
            part.prepare(part, say or (lambda text: None))
        log = self.log_path(part.name)
        with log.open("ab") as out:
            out.write(f"\n--- {time.strftime('%Y-%m-%d %H:%M:%S')} starting {part.name}\n".encode())
            out.flush()
            proc = subprocess.Popen(
                part.command,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                env={**os.environ, **part.env},
                cwd=self.state_dir,
                start_new_session=True,  # the stack outlives the terminal or kernel that started it
            )
        part.pid = proc.pid
        part.started_at = psutil.Process(proc.pid).create_time()

    def _wait_ready(self, part: Component) -> None:
        deadline = time.monotonic() + part.ready_timeout_s
        while time.monotonic() < deadline:
            proc = part.process()
            if proc is None:
                raise ComponentFailed(part.name, "exited during start-up", self.log_tail(part.name),
                                      str(self.log_path(part.name)))
            if part.answers(self.settings.host):
                if part.after_ready is not None:
                    part.after_ready(part)
                return
            time.sleep(0.05)
        raise ComponentFailed(
            part.name, f"did not answer on port {part.port} within {part.ready_timeout_s:.0f} s",
            self.log_tail(part.name), str(self.log_path(part.name)),
        )

    def down(self, on_step: StepCallback | None = None) -> list[str]:
        """Stop the recorded components (gateway first, broker last); returns their names."""
        _, parts = self._recorded_components()
        stopped = self._stop(parts, on_step)
        self.record_path.unlink(missing_ok=True)
        self.started_here = False
        return stopped

    @staticmethod
    def _stop(parts: list[Component], on_step: StepCallback | None = None) -> list[str]:
        """Stop in reverse order of start; a stop group (a cluster's nodes) is sent SIGTERM at once, then waited for."""
        stopped = []
        order = list(reversed(parts))
        step = 0
        for batch in _batches(order):
            family: list[psutil.Process] = []
            for part in batch:
                step += 1
                if on_step is not None:
                    on_step(f"stopping {part.name}", step, len(order))
                proc = part.process()
                if proc is None:
                    continue
                if part.before_stop is not None:
                    part.before_stop(part)
                members = [proc, *proc.children(recursive=True)]
                for member in members:
                    with contextlib.suppress(psutil.NoSuchProcess):
                        member.terminate()
                family += members
                stopped.append(part.name)
            alive = _wait_exited(family, timeout=10 if len(batch) == 1 else 20)
            for member in alive:
                member.kill()
            _wait_exited(alive, timeout=5)
        return stopped

    def restart(self, on_step: StepCallback | None = None) -> Stack:
        self.down(on_step)
        return self.up(on_step)

    def reload_gateway(self) -> None:
        """Apply an edited kong.yml to the running gateway; established connections stay open.

        A file the gateway cannot honour raises GatewayConfigError and the old
        configuration keeps running.
        """
        if not self.adopt():
            raise NotRunning(f"no stack runs from {self.state_dir}: start it with `labkit up`")
        master = next(p for p in self._recorded_components()[1] if p.name == "gateway").process()
        assert master is not None
        before = {child.pid for child in master.children()}
        reload(self.settings, self.state_dir)
        # nginx answers the signal at once but starts new workers a moment later; old workers
        # stay only for the connections they hold.
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and not (
            {c.pid for c in master.children()} - before and not any(_listening(pid) for pid in before)
        ):
            time.sleep(0.02)

    def stop_component(self, name: str) -> None:
        """Stop one component of the running stack (the others keep running), e.g. to see a fault."""
        self.adopt()
        _, parts = self._recorded_components()
        self._stop([p for p in parts if p.name == name])

    def kill_component(self, name: str) -> None:
        """Kill one component of the running stack with SIGKILL, as a crash would: no clean shutdown, no flush."""
        self.adopt()
        part = next((p for p in self._recorded_components()[1] if p.name == name), None)
        proc = part.process() if part is not None else None
        if proc is None:
            raise NotRunning(f"{name} is not running in the stack at {self.state_dir}")
        proc.kill()
        _wait_exited([proc], timeout=10)

    def start_component(self, name: str) -> None:
        """Start one stopped component again with the stack's settings, and wait until it answers."""
        _, parts = self._recorded_components()
        fresh = next(p for p in self.components() if p.name == name)
        self._start(fresh)
        self._write_record([fresh if p.name == name else p for p in parts])
        self._wait_ready(fresh)

    # -- looking at it ---------------------------------------------------------------

    def status(self, cpu_sample_s: float = 0.0) -> list[dict[str, Any]]:
        """One row per component: name, state, pid, url, detail.

        With ``cpu_sample_s``, also the cores each used over that long.
        """
        # Reading changes nothing: the running stack's settings are used here, not taken.
        # A partly running stack (a component stopped or failed to start) keeps its recorded settings too.
        recorded_settings, recorded_parts = self._recorded_components()
        settings = recorded_settings if recorded_parts else self.settings
        recorded = {p.name: p for p in recorded_parts}
        rows: list[dict[str, Any]] = []
        for part in self.components(settings):
            seen = recorded.get(part.name)
            proc = seen.process() if seen else None
            state = "stopped" if proc is None else "running" if part.answers(settings.host) else "not answering"
            rows.append({"component": part.name, "state": state, "pid": proc.pid if proc else None, "url": part.url,
                         "detail": seen.detail if proc and seen else part.detail})
        if cpu_sample_s > 0:
            cores = cpu_cores({r["component"]: r["pid"] for r in rows if r["pid"]}, cpu_sample_s)
            for row in rows:
                row["cpu"] = cores.get(row["component"])
        return rows

    def routes(self) -> list[dict[str, Any]]:
        return routes_table(load_kong_config(self.settings.kong_config), self.settings)  # the real upstream addresses

    def logs(self, component: str | None = None, lines: int = 40) -> str:
        """The end of one component's log, or of each in turn, under a header naming its file."""
        names = [part.name for part in self.components()]
        if component is not None and component not in names:
            raise LabkitError(f"{component!r} is not a component; choose from {', '.join(names)}")
        return "\n".join(
            f"--- {name} ({self.log_path(name)})\n{self.log_tail(name, lines) or '(no log yet)'}"
            for name in ([component] if component else names)
        )

    def log_tail(self, name: str, lines: int = 20) -> str:
        """The last lines of a component's log, without terminal colour codes (the broker writes them)."""
        try:
            text = self.log_path(name).read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(_ANSI_ESCAPE.sub("", text).splitlines()[-lines:])


def open_stack(settings: Settings | None = None) -> LabStack:
    """The stack for these settings: a ComposeStack in compose mode (or where one runs), else a Stack."""
    from labkit.ops.compose import RECORD as COMPOSE_RECORD
    from labkit.ops.compose import ComposeStack

    resolved = settings or Settings()
    if resolved.mode == "compose" or (resolved.state_dir / COMPOSE_RECORD).exists():
        return ComposeStack(resolved)
    return Stack(resolved)
