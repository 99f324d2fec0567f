"""What every kind of stack offers (a Protocol), and the parts both kinds share.

``Stack`` runs the lab as local processes, ``ComposeStack`` under Docker Compose;
the CLI, the notebooks and the tests use either through :class:`LabStack`.
"""

from __future__ import annotations

import json
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar, Protocol

from labkit.settings import REPLICATED, Settings

__all__ = ["LabStack", "StackCommon", "StepCallback"]

#: Told of each start-up step: its text, its number, and how many there are.
StepCallback = Callable[[str, int, int], None]


class LabStack(Protocol):
    """Everything the CLI, the notebooks and the bench call on a stack, whichever kind it is.

    Reading (``is_running``, ``status``, ``routes``, ``health``, ``partitions``, ``logs``) never
    changes ``settings``; :meth:`adopt` is the one method that takes a running stack's settings.
    """

    settings: Settings
    broker_choice: str  # which broker runs and why, in words
    started_here: bool  # this object started the stack (a ``with`` block stops it then)
    actions: list[str]  # what the last ``up`` did, in words ("kept broker", "started consumer")
    ready_ms: float | None  # the last ``up``'s probe event, end to end; None where none was sent

    @property
    def state_dir(self) -> Path: ...
    def up(self, on_step: StepCallback | None = None) -> LabStack: ...
    def down(self, on_step: StepCallback | None = None) -> list[str]: ...
    def restart(self, on_step: StepCallback | None = None) -> LabStack: ...
    def adopt(self) -> bool: ...
    def is_running(self) -> bool: ...
    def restart_warning(self) -> str | None: ...
    def reload_gateway(self) -> None: ...
    def status(self, cpu_sample_s: float = 0.0) -> list[dict[str, Any]]: ...
    def logs(self, component: str | None = None, lines: int = 40) -> str: ...
    def routes(self) -> list[dict[str, Any]]: ...
    def health(self, component: str) -> dict[str, Any]: ...
    def partitions(self) -> list[dict[str, Any]]: ...


class StackCommon:
    """The state folder, the record, the services' health and ``with`` blocks: the same for every kind."""

    RECORD: ClassVar[str]
    settings: Settings
    started_here: bool
    # Each kind starts and stops in its own way; ``with`` blocks here call its methods.
    up: Callable[..., LabStack]
    down: Callable[..., list[str]]

    @property
    def state_dir(self) -> Path:
        return self.settings.state_dir

    @property
    def record_path(self) -> Path:
        return self.state_dir / self.RECORD

    def health(self, component: str) -> dict[str, Any]:
        """A service's own /healthz answer: a replica by name (``consumer-2``), or the first one (``consumer``)."""
        replicas = {name: port for service in REPLICATED for name, port in self.settings.replicas(service)}
        port = replicas.get(component) or self.settings.replicas(component)[0][1]
        with urllib.request.urlopen(self.settings.url(port, "/healthz", "http"), timeout=2) as response:
            return json.loads(response.read())

    def partitions(self) -> list[dict[str, Any]]:
        """One row per partition of the topic: leader, replicas, in-sync replicas, and whether it is under-replicated.

        Empty when no broker answers within a couple of seconds.
        """
        from confluent_kafka import KafkaException
        from confluent_kafka.admin import AdminClient

        from labkit.kafka import cluster_state

        try:
            admin = AdminClient(self.settings.kafka_config(log_level=0))  # a node down is the answer, not noise
            brokers, parts = cluster_state(admin, self.settings.topic, timeout=3.0)
        except KafkaException:
            return []
        return [{"partition": p.partition, "leader": p.leader, "replicas": p.replicas, "in_sync": p.isr,
                 "under_replicated": p.under_replicated, "brokers_up": brokers} for p in parts]

    def __enter__(self) -> Any:
        recorded_before = self.record_path.exists()  # anything of a stack there, even partly running
        try:
            return self.up()
        except BaseException:
            # `up` leaves what started running, for `status` and a second `up`; a with block that
            # never ran owns what it started, and nothing else will stop it.
            if not recorded_before:
                self.down()
            raise

    def __exit__(self, *exc: object) -> None:
        if self.started_here:
            self.down()
