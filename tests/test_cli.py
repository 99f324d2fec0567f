"""The labkit command against a running stack, and its answers to bad flags."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time

import pytest

from labkit import Settings, Stack


def labkit(stack: Stack | None, *args: str, stdin: str | None = None,
           timeout: float = 60) -> subprocess.CompletedProcess:
    env = {**os.environ, "COLUMNS": "200"}
    if stack is not None:
        env["LABKIT_STATE_DIR"] = str(stack.state_dir)
    return subprocess.run(
        [sys.executable, "-m", "labkit", *args], input=stdin, capture_output=True, text=True, env=env, timeout=timeout
    )


def test_send_is_seen_by_watch(stack: Stack, event_type: str):
    watcher = subprocess.Popen(
        [sys.executable, "-m", "labkit", "watch", "--types", event_type, "--count", "1"],
        stdout=subprocess.PIPE, text=True, env={**os.environ, "LABKIT_STATE_DIR": str(stack.state_dir)},
    )
    try:
        # The watcher may still be connecting: send until it has seen one.
        for _ in range(50):
            sent = labkit(stack, "send", "--type", event_type, "--value", "1", "--data", '{"page": "home"}')
            assert sent.returncode == 0, sent.stderr
            try:
                watcher.wait(timeout=0.2)
                break
            except subprocess.TimeoutExpired:
                continue
        out, _ = watcher.communicate(timeout=10)
    finally:
        watcher.kill()
    ack = json.loads(sent.stdout)
    assert set(ack) == {"ack", "partition", "offset"}
    event = json.loads(out.splitlines()[0])
    assert event["type"] == event_type and event["value"] == 1 and event["data"] == {"page": "home"}


def test_send_json_lines_from_stdin_and_generated(stack: Stack, event_type: str):
    lines = "\n".join(json.dumps({"type": event_type, "value": i}) for i in range(3))
    piped = labkit(stack, "send", stdin=lines)
    assert piped.returncode == 0, piped.stderr
    assert len([json.loads(line)["ack"] for line in piped.stdout.splitlines()]) == 3
    generated = labkit(stack, "send", "--type", event_type, "--count", "50", "--rate", "500", "--quiet")
    assert generated.returncode == 0, generated.stderr
    assert "50 acknowledged, 0 refused" in generated.stderr


def test_replay_through_watch(stack: Stack, event_type: str):
    assert labkit(stack, "send", "--type", event_type, "--value", "7").returncode == 0
    watched = labkit(stack, "watch", "--types", event_type, "--replay", "1", "--count", "1", timeout=20)
    assert json.loads(watched.stdout)["value"] == 7


def test_status_and_logs(stack: Stack):
    status = labkit(stack, "status")
    assert status.returncode == 0
    assert status.stdout.count("running") == 4 and '"broker": "up"' in status.stdout
    logs = labkit(stack, "logs", "producer", "-n", "5")
    assert logs.returncode == 0 and "producer" in logs.stdout
    # A component that colours its output (Tansu does): the codes are gone, the words stay.
    with stack.log_path("broker").open("a") as log:
        log.write("\x1b[1;31mcoloured\x1b[0m line\n")
    broker = labkit(stack, "logs", "broker", "-n", "5")
    assert broker.returncode == 0 and "coloured line" in broker.stdout and "\x1b[" not in broker.stdout


@pytest.mark.parametrize(
    "args, complaint",
    [
        (["send", "--type", "click"], "--value"),
        (["send", "--type", "click", "--value", "abc"], "--value"),
        (["send", "--type", "click", "--value", "1", "--data", "[1]"], "JSON object"),
        (["send", "--type", "click", "--value", "1", "--data", "{oops"], "not valid JSON"),
        (["send", "--count", "0"], "--count"),
        (["send", "--type", "", "--value", "1"], "$.type"),
        (["send", "--type", "click", "--value", "nan"], "finite number"),
        (["send", "--type", "click", "--value", "1e400"], "finite number"),
        (["send", "--type", "x" * 300, "--value", "1"], "$.type"),
        (["up", "--broker", "kafka9"], "broker"),
        (["watch", "--replay", "-1"], "--replay"),
        (["up", "--gateway-port", "70000"], "--gateway-port"),
        (["up", "--mode", "cloud"], "mode"),
        (["up", "--topic", "no spaces"], "topic"),
        (["logs", "nonsense"], "nonsense"),
        (["frobnicate"], "frobnicate"),
    ],
)
def test_bad_flags_give_a_usage_error_not_a_traceback(tmp_path, args, complaint):
    result = labkit(None, *args, "--state-dir", str(tmp_path)) if args[0] in {"up", "logs", "watch"} else labkit(None,
                                                                                                                 *args)
    assert result.returncode == 2, (result.stdout, result.stderr)
    assert "Traceback" not in result.stderr
    assert complaint in result.stderr


def test_empty_stdin_is_a_usage_error(stack: Stack):
    result = labkit(stack, "send", stdin="\n")
    assert result.returncode == 2 and "no event" in result.stderr and "Traceback" not in result.stderr


def test_bad_stdin_line_is_named(stack: Stack):
    result = labkit(stack, "send", stdin='{"type": "a", "value": 1}\n{"type": "a"}\n')
    assert result.returncode == 2 and "line 2" in result.stderr and "Traceback" not in result.stderr


def test_nothing_running_is_a_clear_error(tmp_path):
    result = labkit(None, "send", "--type", "a", "--value", "1", "--state-dir", str(tmp_path))
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert "labkit up" in result.stderr


def test_port_in_use_is_named(stack: Stack, tmp_path):
    result = labkit(None, "up", "--state-dir", str(tmp_path), "--gateway-port", str(stack.settings.gateway_port),
                    "--producer-port", "0", "--consumer-port", "0", "--kafka-port", "0")
    assert result.returncode == 1
    assert f"port {stack.settings.gateway_port} (gateway) is in use" in result.stderr


def test_bench_soak_command_reports_losses_and_memory(stack: Stack, tmp_path):
    result = labkit(stack, "bench", "soak", "--use-running", "--minutes", "0.05", "--rate", "50",
                    "--sample-every", "1", "--out-dir", str(tmp_path))
    assert result.returncode == 0, result.stderr
    assert "lost per watcher [0, 0]" in result.stdout and "producer MB" in result.stdout
    assert len(list(tmp_path.glob("soak-*.json"))) == 1


def test_kafka_properties_from_the_environment_in_both_forms():
    from labkit import Settings

    for text in ("linger.ms=3,client.rack=lab", '{"linger.ms": "3", "client.rack": "lab"}'):
        os.environ["LABKIT_KAFKA_PROPERTIES"] = text
        try:
            assert Settings().kafka_properties == {"linger.ms": "3", "client.rack": "lab"}
        finally:
            del os.environ["LABKIT_KAFKA_PROPERTIES"]


async def test_the_gateway_logs_each_request_with_its_status_and_without_the_key(stack: Stack):
    """A learner sees their own 401 in `labkit logs gateway`; a key in the query string is not written down."""
    import urllib.error
    import urllib.request

    from waiting import wait_until

    secret = "not-the-key-9f3c"
    for url in (stack.settings.url(stack.settings.gateway_port, "/produce-events", "http"),
                stack.settings.url(stack.settings.gateway_port, f"/produce-events?apikey={secret}", "http")):
        with pytest.raises(urllib.error.HTTPError) as refused:
            await asyncio.to_thread(urllib.request.urlopen, url, timeout=5)
        assert refused.value.code == 401

    def logged() -> bool:
        return stack.log_tail("gateway", 200).count('"GET /produce-events" 401') >= 2

    await wait_until(logged, 10, lambda: f"no access lines for the two 401s:\n{stack.log_tail('gateway', 20)}")
    shown = labkit(stack, "logs", "gateway", "-n", "200")
    assert '"GET /produce-events" 401' in shown.stdout and secret not in shown.stdout


HOLDER = """
import asyncio, sys
from labkit import Sender, Settings, watch

async def main():
    settings = Settings.model_validate_json(sys.argv[1])
    direct = (settings.url(settings.consumer_port), settings.url(settings.producer_port))
    through = (settings.consume_url, settings.produce_url)
    holds = []
    for consume, produce in (through, direct):
        opened = asyncio.Event()
        holds.append(asyncio.ensure_future(aiter(watch(consume, settings=settings, opened=opened)).__anext__()))
        await asyncio.wait_for(opened.wait(), 10)
        sender = await Sender(produce, settings=settings).__aenter__()
        await sender.send({"type": "held", "value": 1})
        holds.append(sender)
    print("holding", flush=True)
    await asyncio.Event().wait()

asyncio.run(main())
"""


def hold_connections(settings) -> subprocess.Popen:
    """A process holding a watcher and a sender open, through the gateway and straight to the services,
    then stopped (SIGSTOP): like a busy kernel, it answers no close frame."""
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, settings.model_dump_json()], stdout=subprocess.PIPE,
                              text=True)
    assert holder.stdout is not None and holder.stdout.readline().strip() == "holding"
    holder.send_signal(signal.SIGSTOP)
    return holder


def test_restart_and_down_show_progress_and_do_not_wait_on_connected_clients(tmp_path):
    began = time.monotonic()
    stack = Stack(Settings().with_free_ports(state_dir=tmp_path / "held")).up()
    # A restart starts the stack again (a JVM takes seconds on a busy machine): that part is not waiting.
    starting = {"restart": time.monotonic() - began, "down": 0.0}
    holders = []
    try:
        for command in ("restart", "down"):
            holders.append(hold_connections(stack.settings))
            began = time.monotonic()
            done = labkit(stack, command)
            took = time.monotonic() - began
            assert done.returncode == 0, done.stderr
            # Waiting on each held client's close frame cost 10 s a component (four: 40 s and more).
            assert took < 15 + starting[command], f"labkit {command} took {took:.1f} s with clients connected"
            for name in ("gateway", "consumer", "producer", "broker"):
                assert f"stopping {name}" in done.stderr, done.stderr  # progress, one line per step
        assert "Stopped: gateway, consumer, producer, broker in" in done.stdout and not stack.is_running()
    finally:
        for holder in holders:
            holder.kill()
            holder.send_signal(signal.SIGCONT)
            holder.wait()
        stack.down()
