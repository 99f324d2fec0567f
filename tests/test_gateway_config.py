"""kong/kong.yml and the embedded gateway's configuration, checked without running any service.

The gateway's live behaviour (401/429/403 answers, WebSocket traffic) is tested
against the real labkit services elsewhere; here: the file is valid Kong config,
it renders, nginx accepts what it renders, and what cannot be rendered is refused
with a message that names it.
"""

from __future__ import annotations

import copy
import json
import re
import subprocess
from pathlib import Path
from urllib.parse import urlsplit

import jsonschema
import pytest
import yaml

from labkit.ops import gateway
from labkit.ops.gateway import GatewayConfigError
from labkit.settings import REPO_ROOT, Settings

KONG_YML = REPO_ROOT / "kong" / "kong.yml"
KONG_SCHEMA = REPO_ROOT / "kong" / "schema" / "kong_json_schema.json"  # a copy of shared/schemas (see its SOURCES.md)


@pytest.fixture
def kong() -> dict:
    return gateway.load_kong_config(KONG_YML)


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings().with_free_ports(state_dir=tmp_path / "state")


def write_kong(tmp_path: Path, kong: dict) -> Path:
    path = tmp_path / "kong.yml"
    path.write_text(yaml.safe_dump(kong), encoding="utf-8")
    return path


def nginx_test(conf: Path, state_dir: Path) -> subprocess.CompletedProcess:
    return subprocess.run([*gateway.gateway_command(conf, state_dir), "-t"], capture_output=True, text=True, timeout=60)


def route_plugins(kong: dict, route: str) -> list[dict]:
    for service in kong["services"]:
        for candidate in service.get("routes", []):
            if candidate["name"] == route:
                return candidate.setdefault("plugins", [])
    raise KeyError(route)


def plugin(kong: dict, route: str, name: str) -> dict:
    return next(p for p in route_plugins(kong, route) if p["name"] == name)


# --------------------------------------------------------------------------- kong.yml itself


def test_kong_yml_validates_against_kongs_schema():
    schema = json.loads(KONG_SCHEMA.read_text(encoding="utf-8"))
    document = yaml.safe_load(KONG_YML.read_text(encoding="utf-8"))
    validator_class = jsonschema.validators.validator_for(schema)
    errors = [f"{list(e.absolute_path)}: {e.message}" for e in validator_class(schema).iter_errors(document)]
    assert errors == []


def test_kong_yml_describes_the_lab(kong):
    assert gateway.routes_table(kong) == [
        {
            "route": "produce-events",
            "paths": ["/produce-events"],
            "service": "producer",
            "upstream": "http://producer:6789",
            "plugins": ["cors", "key-auth", "rate-limiting"],
        },
        {
            "route": "consume-events",
            "paths": ["/consume-events"],
            "service": "consumer",
            "upstream": "http://consumer:6788",
            "plugins": ["cors"],
        },
    ]
    key_auth = plugin(kong, "produce-events", "key-auth")["config"]
    assert key_auth["key_names"] == ["apikey"] and key_auth["key_in_header"] and key_auth["key_in_query"]
    rate = plugin(kong, "produce-events", "rate-limiting")["config"]
    assert rate["minute"] == 600 and rate["policy"] == "local"
    assert kong["consumers"][0]["keyauth_credentials"][0]["key"] == "labkit-lab-key"
    assert "lab key, for local use only" in KONG_YML.read_text(encoding="utf-8")


def test_cors_origins_are_jupyterlab_and_loopback_only(kong):
    origins = kong["plugins"][0]["config"]["origins"]
    assert "http://localhost:8888" in origins and "http://127.0.0.1:8888" in origins
    assert "null" not in origins and "*" not in origins


# --------------------------------------------------------------------------- rendering


def test_rendered_conf_is_accepted_by_nginx(settings, tmp_path):
    conf = gateway.write_nginx_conf(settings, tmp_path / "state")
    assert conf == (tmp_path / "state" / "nginx.conf").resolve()
    result = nginx_test(conf, tmp_path / "state")
    assert result.returncode == 0, result.stderr


def test_rendered_conf_runs_unprivileged_with_everything_in_state_dir(kong, settings, tmp_path):
    state_dir = (tmp_path / "state").resolve()
    text = gateway.render_nginx_conf(kong, settings, state_dir)
    for directive in ("daemon off;", "master_process on;", "worker_processes 1;", "access_log /dev/stderr labkit;"):
        assert directive in text
    assert f"pid '{state_dir}/nginx.pid';" in text
    assert f"error_log '{state_dir}/nginx-error.log' warn;" in text
    for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"):
        assert f"{kind}_temp_path '{state_dir}/nginx-temp/{kind}';" in text
    assert f"listen {settings.host}:{settings.gateway_port};" in text


def upstream_servers(text: str, service: str) -> list[str]:
    """The server lines of one service's nginx upstream block."""
    block = text.split(f"upstream lk_service_{service} {{", 1)[1].split("}", 1)[0]
    return [line.strip() for line in block.splitlines() if line.strip().startswith("server ")]


def test_embedded_services_are_reached_on_the_settings_ports(kong, settings, tmp_path):
    text = gateway.render_nginx_conf(kong, settings, tmp_path)
    assert "proxy_pass http://lk_service_producer;" in text and "proxy_pass http://lk_service_consumer;" in text
    assert upstream_servers(text,
                            "producer") == [f"server {settings.host}:{settings.producer_port} weight=100 max_fails=1 "
                                            "fail_timeout=5s;"]
    assert upstream_servers(text,
                            "consumer") == [f"server {settings.host}:{settings.consumer_port} weight=100 max_fails=1 "
                                            "fail_timeout=5s;"]
    assert "producer:6789" not in text


def test_replicas_are_kongs_upstream_targets_rendered_as_nginx_upstreams(kong, tmp_path):
    # kong.yml names one target per service; in embedded mode it stands for every replica.
    settings = Settings(producers=2, consumers=3).with_free_ports(state_dir=tmp_path / "state")
    (upstream,) = [u for u in kong["upstreams"] if u["name"] == "consumer-replicas"]
    assert upstream["algorithm"] == "least-connections" and upstream["targets"] == [{"target": "consumer:6788"}]
    assert urlsplit(next(s["url"] for s in kong["services"] if s["name"] == "consumer")).hostname == "consumer-replicas"
    text = gateway.render_nginx_conf(kong, settings, tmp_path)
    ports = {service: [int(line.split()[1].rsplit(":", 1)[1]) for line in upstream_servers(text, service)]
             for service in ("producer", "consumer")}
    assert ports == {"producer": [settings.producer_port, settings.producer_port + 1],
                     "consumer": [settings.consumer_port, settings.consumer_port - 1, settings.consumer_port - 2]}
    assert all("max_fails=1 fail_timeout=5s" in line for line in upstream_servers(text, "consumer"))
    assert text.count("least_conn;") == 2
    # A dead replica refuses the upgrade: nginx tries the next one, up to Kong's retries (5) + 1 tries.
    assert text.count("proxy_next_upstream error timeout;") == 2 and "proxy_next_upstream_tries 6;" in text
    rows = {row["service"]: row["upstream"] for row in gateway.routes_table(kong, settings)}
    assert rows["consumer"] == ", ".join(f"http://{settings.host}:{port}" for port in ports["consumer"])
    conf = gateway.write_nginx_conf(settings, tmp_path / "state")
    result = nginx_test(conf, tmp_path / "state")
    assert result.returncode == 0, result.stderr


def test_rendered_conf_carries_kongs_answers(kong, settings, tmp_path):
    text = gateway.render_nginx_conf(kong, settings, tmp_path)
    for message in (
        "No API key found in request",
        "Unauthorized",
        "API rate limit exceeded",
        "no Route matched with those values",
        "Origin not allowed",
    ):
        assert f'"message":"{message}"' in text
    assert "limit_req zone=lk_rate_produce_events_minute burst=599 nodelay;" in text
    assert "rate=600r/m" in text
    assert "proxy_http_version 1.1;" in text and "proxy_set_header Connection $connection_upgrade;" in text


def test_api_keys_are_matched_exactly_with_case(kong, settings, tmp_path):
    # nginx compares plain map keys without case; the key must be a case-sensitive, anchored regex.
    text = gateway.render_nginx_conf(kong, settings, tmp_path)
    assert "'~^labkit-lab-key$' 'lab';" in text


def test_awkward_keys_and_messages_survive_nginx_quoting(kong, settings, tmp_path):
    kong["consumers"][0]["keyauth_credentials"][0]["key"] = "k'e\"y$x\\y{;}#"
    plugin(kong, "produce-events", "rate-limiting")["config"]["error_message"] = "slow down, $USER \\ 'now'"
    state_dir = tmp_path / "state"
    conf = gateway.write_nginx_conf(settings.replace(kong_config=write_kong(tmp_path, kong)), state_dir)
    assert nginx_test(conf, state_dir).returncode == 0


def test_route_plugin_overrides_global_plugin(kong):
    route_plugins(kong, "consume-events").append({"name": "cors", "config": {"origins": ["http://app.example"]}})
    rows = {row["route"]: row for row in gateway.routes_table(kong)}
    assert rows["consume-events"]["plugins"] == ["cors"]


def test_top_level_routes_and_scoped_plugins_are_read(kong):
    consume = kong["services"][1].pop("routes")[0]
    kong["routes"] = [{**consume, "service": {"name": "consumer"}}]
    kong["plugins"].append({"name": "rate-limiting", "service": "consumer", "config": {"second": 5}})
    kong["plugins"].append({"name": "key-auth", "route": "consume-events"})
    rows = {row["route"]: row for row in gateway.routes_table(kong)}
    assert rows["consume-events"]["plugins"] == ["cors", "key-auth", "rate-limiting"]
    assert rows["produce-events"]["plugins"] == ["cors", "key-auth", "rate-limiting"]
    kong["plugins"].append({"name": "cors", "route": "no-such-route"})
    with pytest.raises(GatewayConfigError, match="route 'no-such-route' is not defined"):
        gateway.routes_table(kong)


def test_disabled_plugin_is_skipped(kong):
    plugin(kong, "produce-events", "rate-limiting")["enabled"] = False
    rows = {row["route"]: row for row in gateway.routes_table(kong)}
    assert rows["produce-events"]["plugins"] == ["cors", "key-auth"]


def test_gateway_command_runs_nginx_with_the_state_dir_as_prefix(tmp_path):
    argv = gateway.gateway_command(tmp_path / "nginx.conf", tmp_path)
    assert Path(argv[0]).name == "nginx" and Path(argv[0]).exists()
    assert argv[1:] == ["-p", f"{tmp_path.resolve()}/", "-c", str((tmp_path / "nginx.conf").resolve())]


# --------------------------------------------------------------------------- refusals


@pytest.mark.parametrize("name", ["jwt", "acl", "basic-auth", "request-termination"])
def test_unsupported_plugin_is_refused_by_name(kong, name):
    route_plugins(kong, "produce-events").append({"name": name, "config": {}})
    with pytest.raises(GatewayConfigError, match=rf"plugin '{name}' \(route 'produce-events'\)"):
        gateway.routes_table(kong)


def test_unsupported_global_plugin_is_refused(kong):
    kong["plugins"].append({"name": "ip-restriction", "config": {"allow": ["127.0.0.1"]}})
    with pytest.raises(GatewayConfigError, match=r"plugin 'ip-restriction' \(global\)"):
        gateway.routes_table(kong)


@pytest.mark.parametrize(
    ("plugin_name", "change", "named"),
    [
        ("rate-limiting", {"hour": 10_000}, "'hour'"),
        ("rate-limiting", {"day": 100_000}, "'day'"),
        ("rate-limiting", {"policy": "redis"}, "policy 'redis'"),
        ("rate-limiting", {"policy": "cluster"}, "policy 'cluster'"),
        ("rate-limiting", {"limit_by": "path", "path": "/x"}, "limit_by 'path'"),
        ("rate-limiting", {"minute": 0.5}, "'minute'"),
        ("rate-limiting", {"no_such_field": 1}, "'no_such_field'"),
        ("key-auth", {"key_in_body": True}, "key_in_body"),
        ("key-auth", {"anonymous": "4e8c6e4f-27b6-4f2e-8f0a-2a0f0a0b0c0d"}, "anonymous"),
        ("key-auth", {"run_on_preflight": False}, None),  # supported: cors answers preflights first
    ],
)
def test_unsupported_plugin_field_is_refused_by_name(kong, settings, tmp_path, plugin_name, change, named):
    plugin(kong, "produce-events", plugin_name)["config"].update(change)
    if named is None:
        gateway.render_nginx_conf(kong, settings, tmp_path)
        return
    with pytest.raises(GatewayConfigError, match=f"plugin '{plugin_name}' \\(route 'produce-events'\\).*{named}"):
        gateway.render_nginx_conf(kong, settings, tmp_path)


def test_run_on_preflight_false_without_cors_is_refused(kong, settings, tmp_path):
    kong["plugins"] = []
    plugin(kong, "produce-events", "key-auth")["config"]["run_on_preflight"] = False
    with pytest.raises(GatewayConfigError, match="run_on_preflight"):
        gateway.render_nginx_conf(kong, settings, tmp_path)


def test_regex_path_is_refused(kong):
    kong["services"][0]["routes"][0]["paths"] = ["~/produce-events/(?<id>\\d+)$"]
    with pytest.raises(GatewayConfigError, match=r"route 'produce-events'.*regex path"):
        gateway.routes_table(kong)


@pytest.mark.parametrize("field", ["headers", "snis", "sources"])
def test_unsupported_route_field_is_refused(kong, field):
    kong["services"][0]["routes"][0][field] = {"x-a": ["b"]} if field == "headers" else ["example.com"]
    with pytest.raises(GatewayConfigError, match=f"route 'produce-events': field '{field}'"):
        gateway.routes_table(kong)


@pytest.mark.parametrize(
    ("change", "named"),
    [
        ({"algorithm": "consistent-hashing"}, "algorithm 'consistent-hashing' is not supported"),
        ({"hash_on": "ip"}, "field 'hash_on'"),
        ({"targets": []}, "no targets"),
        ({"targets": [{"target": "consumer:6788", "weight": 0}]}, "weight 0"),
        ({"healthchecks": {"passive": {"unhealthy": {"tcp_failures": 2}}}},
         "passive health checks without active ones"),
        ({"healthchecks": {"passive": {"unhealthy": {"http_failures": 2}}}}, "http_failures is not supported"),
    ],
)
def test_upstream_parts_the_gateway_cannot_honour_are_refused(kong, change, named):
    upstream = next(u for u in kong["upstreams"] if u["name"] == "consumer-replicas")
    upstream.update(change)
    with pytest.raises(GatewayConfigError, match=f"upstream 'consumer-replicas'.*{named}"):
        gateway.routes_table(kong)


def test_consumer_plugins_are_refused(kong):
    kong["consumers"][0]["plugins"] = [{"name": "rate-limiting", "config": {"minute": 5}}]
    with pytest.raises(GatewayConfigError, match="consumer 'lab': field 'plugins'"):
        gateway.routes_table(kong)


def test_regex_origin_without_scheme_is_refused(kong):
    kong["plugins"][0]["config"]["origins"].append(r"([a-z]+\.)?example\.com")
    with pytest.raises(GatewayConfigError, match=r"plugin 'cors' \(global\).*without ':'"):
        gateway.routes_table(kong)


def consumer_key(kong: dict) -> dict:
    return kong["consumers"][0]["keyauth_credentials"][0]


@pytest.mark.parametrize(
    ("change", "named", "path"),
    [
        (lambda kong: kong["services"][0]["routes"][0]["paths"].append("~/a/(\\d+)$"),
         r"route 'produce-events': path .* is a regex path", "services[0].routes[0].paths[1]"),
        (lambda kong: plugin(kong, "produce-events", "rate-limiting")["config"].update(minute=0.5),
         r"plugin 'rate-limiting' \(route 'produce-events'\): 'minute' is 0\.5: .*; correct it",
         "services[0].routes[0].plugins[1].config.minute"),
        (lambda kong: consumer_key(kong).pop("key"),
         "consumer 'lab': field 'key' is missing; add it", "consumers[0].keyauth_credentials[0].key"),
        (lambda kong: kong.update(certificates=[{"cert": "x"}]),
         "kong.yml top level: field 'certificates' is not supported", "certificates"),
        # Without a name or an id, rendering the service's nginx upstream raised TypeError.
        (lambda kong: kong["services"][0].pop("name"),
         "a service without a name: give the service a name", "services[0]"),
    ],
    ids=["regex-path", "fractional-limit", "missing-key", "top-level-field", "nameless-service"],
)
def test_refusals_name_the_entity_and_the_path_in_the_file(kong, change, named, path):
    change(kong)
    with pytest.raises(GatewayConfigError, match=rf"^{named}.* \(at {re.escape(path)} in kong\.yml\)\.$") as refused:
        gateway.routes_table(kong)
    # A sentence for people, not pydantic's report.
    assert "validation error" not in str(refused.value) and "pydantic" not in str(refused.value)


def test_every_refusal_in_the_file_is_reported_at_once(kong):
    kong["services"][0]["routes"][0]["snis"] = ["example.com"]
    plugin(kong, "produce-events", "rate-limiting")["config"]["day"] = 1000
    message = str(pytest.raises(GatewayConfigError, gateway.routes_table, kong).value)
    assert message.splitlines() == [
        "plugin 'rate-limiting' (route 'produce-events'): field 'day' is not supported: nginx's limit_req counts "
        "per second or per minute only. Use 'second' or 'minute', or the compose mode where Kong counts longer "
        "windows (at services[0].routes[0].plugins[1].config.day in kong.yml).",
        "route 'produce-events': field 'snis' is not supported by the embedded gateway; remove it, or run the "
        "compose mode where Kong itself reads kong.yml (at services[0].routes[0].snis in kong.yml).",
    ]


def test_empty_fields_ask_for_nothing_as_in_kongs_exports(kong):
    route = kong["services"][0]["routes"][0]
    route.update(snis=None, headers={}, sources=[], name="produce-events", tags=["lab"])
    plugin(kong, "produce-events", "key-auth")["config"]["realm"] = None
    assert [row["route"] for row in gateway.routes_table(kong)] == ["produce-events", "consume-events"]


def test_two_routes_on_one_path_are_refused(kong):
    kong["services"][1]["routes"][0]["paths"] = ["/produce-events"]
    with pytest.raises(GatewayConfigError, match="'produce-events' and 'consume-events' both use path"):
        gateway.routes_table(kong)


def test_nginx_refusal_is_reported_with_nginxs_message(kong, settings, tmp_path):
    bad = copy.deepcopy(kong)
    bad["services"].append(
        {"name": "elsewhere", "url": "http://127.0.0.1:0", "routes": [{"name": "x", "paths": ["/x"]}]}
    )
    with pytest.raises(GatewayConfigError, match=r"(?s)nginx refused.*\[emerg\].*port"):
        gateway.write_nginx_conf(settings.replace(kong_config=write_kong(tmp_path, bad)), tmp_path / "state")


# --------------------------------------------------------------------------- loading


def test_missing_file_is_a_clear_error(tmp_path):
    with pytest.raises(GatewayConfigError, match=r"Kong config not found: .*nope\.yml"):
        gateway.load_kong_config(tmp_path / "nope.yml")


def test_bad_yaml_is_a_clear_error(tmp_path):
    path = tmp_path / "kong.yml"
    path.write_text('_format_version: "3.0"\nservices: [\n  - name: x\n', encoding="utf-8")
    with pytest.raises(GatewayConfigError, match=r"kong\.yml is not valid YAML"):
        gateway.load_kong_config(path)


@pytest.mark.parametrize("text", ["_format_version: 3.0\n", "services: []\n", "- a list\n"])
def test_wrong_format_version_is_a_clear_error(tmp_path, text):
    path = tmp_path / "kong.yml"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(GatewayConfigError, match=r"_format_version|mapping"):
        gateway.load_kong_config(path)


def test_key_auth_disabled_with_rate_limiting_kept_renders_what_nginx_accepts(kong, settings, tmp_path):
    # Kong accepts this and counts each client address; nginx once refused it with `unknown "lk_consumer" variable`.
    for route in ("produce-events", "consume-events"):
        for found in route_plugins(kong, route):
            if found["name"] == "key-auth":
                found["enabled"] = False
    state_dir = tmp_path / "state"
    conf = gateway.write_nginx_conf(settings.replace(kong_config=write_kong(tmp_path, kong)), state_dir)
    result = nginx_test(conf, state_dir)
    assert result.returncode == 0, result.stderr
    assert "ip:$remote_addr" in conf.read_text()
