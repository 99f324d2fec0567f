"""Finding the running lab from the library: its settings, and the lab's API key.

The CLI, the widgets, the notebooks and the client call these. They read what the
stack wrote (``<state_dir>/stack.json``, or ``compose.json`` in compose mode) and
``kong.yml``, and import nothing of the orchestration: the client stays a client.
"""

from __future__ import annotations

import json
from typing import Any

import psutil
import yaml

from labkit.settings import Settings

__all__ = ["running_settings", "lab_api_key", "STACK_RECORD", "COMPOSE_RECORD"]

STACK_RECORD = "stack.json"
COMPOSE_RECORD = "compose.json"


def _alive(saved: dict[str, Any]) -> bool:
    """Whether a recorded process still runs: same pid, same start time (a reused pid does not count)."""
    try:
        process = psutil.Process(saved["pid"])
        return abs(process.create_time() - saved["started_at"]) <= 0.01 and process.status() != psutil.STATUS_ZOMBIE
    except (psutil.Error, KeyError, TypeError):
        return False


def running_settings(settings: Settings | None = None) -> Settings:
    """The settings of the stack running from ``settings.state_dir``, else ``settings`` (or the defaults)."""
    given = settings or Settings()
    for name in (STACK_RECORD, COMPOSE_RECORD):
        try:
            record = json.loads((given.state_dir / name).read_text())
        except (OSError, ValueError):
            continue
        components = record.get("components")
        if components is None or (components and all(_alive(saved) for saved in components.values())):
            return Settings(**record["settings"])
    return given


def lab_api_key(settings: Settings) -> str | None:
    """settings.api_key, else the first key-auth credential in kong.yml (the lab key)."""
    if settings.api_key:
        return settings.api_key
    try:
        kong = yaml.safe_load(settings.kong_config.read_text(encoding="utf-8")) or {}
    except (OSError, yaml.YAMLError):
        return None
    for consumer in kong.get("consumers") or []:
        for credential in consumer.get("keyauth_credentials") or []:
            if credential.get("key"):
                return credential["key"]
    return None
