"""The services' event loop (``Settings.event_loop``): uvloop where it imports, asyncio's own otherwise."""

from __future__ import annotations

import asyncio
import sys

import pytest

from labkit.errors import LabkitError
from labkit.services.serving import run_on_event_loop
from labkit.settings import Settings


def loop_module(choice: str) -> str:
    """The module of the loop a service's main coroutine runs on, for this choice."""
    seen: list[str] = []

    async def main() -> None:
        seen.append(type(asyncio.get_running_loop()).__module__)

    run_on_event_loop(main(), choice)
    return seen[0]


def test_auto_is_the_default_and_runs_on_uvloop_where_it_imports():
    assert Settings().event_loop == "auto"
    assert loop_module("auto") == "uvloop"
    assert loop_module("uvloop") == "uvloop"


def test_asyncio_runs_on_the_standard_loop():
    assert loop_module("asyncio").startswith("asyncio")


def test_without_uvloop_auto_falls_back_and_uvloop_says_what_to_do(monkeypatch):
    monkeypatch.setitem(sys.modules, "uvloop", None)  # import uvloop now raises ImportError
    assert loop_module("auto").startswith("asyncio")
    with pytest.raises(LabkitError, match="pip install uvloop"):
        loop_module("uvloop")


def test_the_setting_reads_the_environment(monkeypatch):
    monkeypatch.setenv("LABKIT_EVENT_LOOP", "asyncio")
    assert Settings().event_loop == "asyncio"
    monkeypatch.setenv("LABKIT_EVENT_LOOP", "libev")
    with pytest.raises(ValueError):
        Settings()
