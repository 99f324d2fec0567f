"""The lab's architecture drawn from the running stack: its real addresses, routes and states, as SVG.

Nothing here is fixed: each box shows the address from ``stack.status()`` and is
green when its process runs and answers; each arrow through the gateway is labelled
with a route from ``stack.routes()`` (its path, plugins and the real upstream)::

    from labkit.lab.architecture import architecture
    architecture(stack)          # an SVG the notebook draws
"""

from __future__ import annotations

import html
from collections.abc import Mapping, Sequence
from typing import Any
from urllib.parse import urlsplit

from IPython.display import SVG

from labkit.lab.palette import INK, STATE_FILL, STATE_LINE

__all__ = ["architecture", "architecture_svg"]



def _address(url: str) -> str:
    """host:port from a component's url (the gateway's holds two urls; the broker's has no scheme)."""
    first = url.split()[0] if url else ""
    return urlsplit(first).netloc if "://" in first else first


def _box(x: int, y: int, width: int, height: int, title: str, lines: Sequence[str], state: str | None) -> str:
    known = (state if state in STATE_FILL else "not answering") if state else None
    fill, line = STATE_FILL[known], STATE_LINE[known]
    texts = [f"<text x='{x + width / 2}' y='{y + 20}' font-weight='bold'>{html.escape(title)}</text>"]
    texts += [f"<text x='{x + width / 2}' y='{y + 38 + 15 * i}' font-size='11'>{html.escape(text)}</text>"
              for i, text in enumerate(lines)]
    return (f"<g text-anchor='middle'><rect x='{x}' y='{y}' width='{width}' height='{height}' rx='8' "
            f"fill='{fill}' stroke='{line}' stroke-width='2'/>{''.join(texts)}</g>")


def _arrow(x1: int, y1: int, x2: int, y2: int, labels: Sequence[str]) -> str:
    mid_x, mid_y = (x1 + x2) / 2, min(y1, y2) - 6
    texts = "".join(
        f"<text x='{mid_x}' y='{mid_y - 13 * (len(labels) - 1 - i)}' font-size='11' "
        f"fill='#37474f'>{html.escape(t)}</text>"
        for i, t in enumerate(labels)
    )
    return (f"<line x1='{x1}' y1='{y1}' x2='{x2}' y2='{y2}' stroke='{INK}' stroke-width='1.6' "
            f"marker-end='url(#labkit-arrow)'/><g text-anchor='middle'>{texts}</g>")


def _route_labels(route: Mapping[str, Any] | None) -> list[str]:
    if route is None:
        return ["(no route)"]
    plugins = ", ".join(route.get("plugins") or []) or "no plugins"
    return [", ".join(route.get("paths") or []), f"[{plugins}]"]


def architecture_svg(
    status: Sequence[Mapping[str, Any]], routes: Sequence[Mapping[str, Any]], *, topic: str = "",
    partitions: int | None = None
) -> str:
    """The SVG text for status rows (``stack.status()``) and route rows (``stack.routes()``)."""
    parts = {row["component"]: row for row in status}
    by_service = {route.get("service"): route for route in routes}

    def part(name: str) -> tuple[str, str | None]:
        row = parts.get(name) or parts.get(f"{name}-1")  # with replicas, the box shows the first
        return (_address(row.get("url", "")), row.get("state")) if row else ("not in this stack", None)

    gateway, producer, consumer, broker = part("gateway"), part("producer"), part("consumer"), part("broker")
    produce, consume = by_service.get("producer"), by_service.get("consumer")
    kafka_lines = [broker[0]] if "broker" in parts else ["external cluster"]
    if topic:
        kafka_lines.append(f"topic {topic}" + (f", {partitions} partitions" if partitions else ""))
    pieces = [
        _box(10, 50, 150, 66, "senders", ["form, CLI, browser"], None),
        _box(10, 200, 150, 66, "watchers", ["chart, CLI, browser"], None),
        _box(300, 30, 170, 250, "gateway", [gateway[0], gateway[1] or ""], gateway[1]),
        _box(620, 50, 170, 66, "producer", [producer[0], producer[1] or ""], producer[1]),
        _box(620, 200, 170, 66, "consumer", [consumer[0], consumer[1] or ""], consumer[1]),
        _box(880, 100, 190, 110, "broker (Kafka)", [*kafka_lines, broker[1] or ""], broker[1] or "running"),
        _arrow(160, 80, 298, 80, ["ws " + (_route_labels(produce)[0])]),
        _arrow(470, 80, 618, 80, [*_route_labels(produce)[1:], f"-> {(produce or {}).get('upstream', '?')}"]),
        _arrow(790, 80, 878, 130, ["produce"]),
        _arrow(878, 180, 792, 230, ["fetch"]),
        _arrow(618, 230, 472, 230, [*_route_labels(consume)[1:], f"<- {(consume or {}).get('upstream', '?')}"]),
        _arrow(298, 230, 162, 230, ["ws " + (_route_labels(consume)[0])]),
    ]
    return (
        "<svg xmlns='http://www.w3.org/2000/svg' width='1080' height='300' viewBox='0 0 1080 300' "
        "font-family='sans-serif' font-size='13' class='labkit-architecture'>"
        "<defs><marker id='labkit-arrow' viewBox='0 0 10 10' refX='9' refY='5' markerWidth='7' markerHeight='7' "
        f"orient='auto-start-reverse'><path d='M0,0 L10,5 L0,10 z' fill='{INK}'/></marker></defs>"
        + "".join(pieces) + "</svg>"
    )


def architecture(stack: Any) -> SVG:
    """The running stack drawn: each component's real address and state, each route's path, plugins, upstream."""
    settings = stack.settings
    return SVG(architecture_svg(stack.status(), stack.routes(), topic=settings.topic, partitions=settings.partitions))
