"""nginx text: quoting, blocks and comments, and Kong's error answers as nginx strings."""

from __future__ import annotations

import json

# Kong 3.x answers its own errors with this JSON template (kong/tools/http.lua);
# nginx's $request_id stands in for Kong's request id.
KONG_ERROR_TEMPLATE = '{\n  "message":"%s",\n  "request_id":"$request_id"\n}'

# Exact response messages of Kong 3.x (kong/plugins/key-auth/handler.lua,
# kong/error_handlers.lua, the router's miss).
NO_ROUTE = "no Route matched with those values"
NO_API_KEY = "No API key found in request"
INVALID_API_KEY = "Unauthorized"
DUPLICATE_API_KEY = "Duplicate API key found"
BAD_GATEWAY = "An invalid response was received from the upstream server"
GATEWAY_TIMEOUT = "The upstream server is timing out"
# labkit's own rule (not Kong's), see the package docstring (labkit/ops/gateway/__init__.py).
ORIGIN_NOT_ALLOWED = "Origin not allowed"

CORS_DEFAULT_METHODS = "GET,HEAD,PUT,PATCH,POST,DELETE,OPTIONS,TRACE,CONNECT"


def quote(text: str) -> str:
    """An nginx single-quoted string that nginx reads back as ``text``.

    nginx turns backslash + one of \\ ' " t r n into one character and keeps other
    backslashes, so only those are doubled and regexes stay readable.
    """
    out = []
    for index, char in enumerate(text):
        if char == "\\" and text[index + 1 : index + 2] in ("", "\\", "'", '"', "t", "r", "n"):
            out.append("\\\\")
        else:
            out.append({"'": "\\'", "\n": "\\n"}.get(char, char))
    return "'" + "".join(out) + "'"


def regex_literal(text: str) -> str:
    """``text`` as a PCRE pattern matching exactly itself."""
    return "".join("\\" + c if c in "\\^$.|?*+()[]{}" else c for c in text)


def error_body(message: str) -> str:
    """Kong's JSON error body as an nginx string ("$" escaped so that nginx does not read a variable)."""
    return quote(KONG_ERROR_TEMPLATE % json.dumps(message)[1:-1].replace("$", "\\u0024"))


def host_port(host: str, port: int) -> str:
    """``host:port`` as nginx reads an address, an IPv6 host in brackets."""
    return f"[{host}]:{port}" if ":" in host and not host.startswith("[") else f"{host}:{port}"


def block(head: str, body: list[str], indent: str = "    ") -> list[str]:
    """An nginx block: ``head {``, the body indented, ``}``."""
    return [f"{head} {{", *[indent + line if line else "" for line in body], "}"]


def comment(text: str) -> list[str]:
    """``text`` as nginx comment lines, one ``#`` line per line of text."""
    return [f"# {line}" if line else "#" for line in text.strip().splitlines()]
