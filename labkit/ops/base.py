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
    settings: Settings

    def up(self, on_step: StepCallback | None = None) -> LabStack: ...
    def down(self) -> list[str]: ...
    def restart(self, on_step: StepCallback | None = None) -> LabStack: ...
    def is_running(self) -> bool: ...
    def status(self) -> list[dict[str, Any]]: ...
    def logs(self, component: str | None = None, lines: int = 40) -> str: ...
    def routes(self) -> list[dict[str, Any]]: ...
    def health(self, component: str) -> dict[str, Any]: ...


class StackCommon:
    """The state folder, the record, the services' health and ``with`` blocks: the same for every kind."""

    RECORD: ClassVar[str]
    settings: Settings
    started_here: bool

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

    def __enter__(self) -> Any:
        return self.up()  # type: ignore[attr-defined]

    def __exit__(self, *exc: object) -> None:
        if self.started_here:
            self.down()  # type: ignore[attr-defined]
