"""Small HTML tables for notebooks: acks, health answers, status rows, latencies.

Results read better as a few aligned cells than as reprs (``Ack(ack=..., id=None)``,
dicts with 15-digit floats). :func:`html_table` takes rows (mappings, msgspec
structs or dataclasses), left-aligns text, right-aligns numbers and rounds floats to
what a person reads; :func:`show` displays one or more results at once::

    from labkit.lab.tables import show
    show(ack)                                        # one row: ack, partition, offset
    show({"producer": stack.health("producer"), "consumer": stack.health("consumer")}, vertical=True)
    show(stack.status())
    health_table({"producer": stack.health("producer"), "consumer": stack.health("consumer")})

Raw field names (``in_flight``, ``replay_buffer``) go through :data:`HEALTH_FIELDS`, which
gives each a name in plain words and what it means, so a notebook never shows one unexplained.
"""

from __future__ import annotations

import dataclasses
import html
import math
from collections.abc import Callable, Iterable, Mapping
from numbers import Number
from typing import Any

import msgspec
from IPython.display import HTML, display

__all__ = ["html_table", "Styled", "show", "rows_of", "format_cell", "HEALTH_FIELDS", "health_table", "health_summary"]

_CELL = "padding:2px 10px;text-align:{align};vertical-align:top"


def format_cell(value: Any) -> str:
    """A cell's text: floats rounded to what a person reads (1,302 · 40.7 · 2.35 · 0.042), lists joined."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        if not math.isfinite(value):
            return str(value)
        if abs(value) >= 100 or value.is_integer():
            return f"{value:,.0f}"
        return f"{value:.3g}"  # three significant digits: 40.7, 2.35, 0.042
    if isinstance(value, (list, tuple, set)):
        return ", ".join(format_cell(item) for item in value)
    if isinstance(value, Mapping):
        return ", ".join(f"{key}: {format_cell(item)}" for key, item in value.items())
    return str(value)


def _is_number(value: Any) -> bool:
    return isinstance(value, Number) and not isinstance(value, bool)


def _as_row(item: Any) -> dict[str, Any]:
    if isinstance(item, Mapping):
        return dict(item)
    if isinstance(item, msgspec.Struct):
        return msgspec.to_builtins(item)  # structs that omit defaults (Ack) drop their empty fields
    if dataclasses.is_dataclass(item) and not isinstance(item, type):
        return dataclasses.asdict(item)
    return {"value": item}


def rows_of(result: Any) -> list[dict[str, Any]]:
    """Rows from a result: a list of rows, one row (an Ack, a dataclass), or a mapping of name -> row.

    A mapping whose values are all mappings or structs (``{"producer": health, ...}``) becomes
    one row per entry, named in a first column; any other mapping is one row.
    """
    if isinstance(result, Mapping):
        values = list(result.values())
        if values and all(isinstance(v, Mapping | msgspec.Struct) for v in values):
            return [{"name": name, **_as_row(row)} for name, row in result.items()]
        return [dict(result)]
    if isinstance(result, Iterable) and not isinstance(result, str | bytes | msgspec.Struct):
        return [_as_row(item) for item in result]
    return [_as_row(result)]


def _transposed(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per field, one column per row (named by its "name", else its number)."""
    titles = [str(row.get("name", index)) for index, row in enumerate(rows, 1)]
    fields = dict.fromkeys(key for row in rows for key in row if key != "name")
    return [{"": field, **{title: row.get(field) for title, row in zip(titles, rows, strict=True)}} for field in fields]


@dataclasses.dataclass(frozen=True)
class Styled:
    """A cell with CSS of its own (a colour, a background), in bold, spanning ``span`` columns from its own."""

    value: Any
    style: str = ""
    span: int = 1
    bold: bool = False


def _plain(value: Any) -> Any:
    return value.value if isinstance(value, Styled) else value


def html_table(
    rows: Any, columns: Iterable[str] | None = None, *, caption: str | None = None, vertical: bool = False,
    empty: str = "nothing to show", row_style: Callable[[dict[str, Any]], str] | None = None,
    head_style: Mapping[str, str] | None = None, style: str = "",
) -> HTML:
    """An HTML table, one column per key met in any row (or ``columns``): text left, numbers right.

    ``vertical`` turns it: one row per field, one column per item (health answers side by side).
    A cell may be :class:`Styled`; ``row_style`` gives a row's CSS (a row in red), ``head_style`` a column
    title's, ``style`` the table's; ``empty`` is said when there is no row. Every ``<table>`` labkit shows is made here.
    """
    rows = rows_of(rows)
    if not rows:
        return HTML(f"<i>{html.escape(empty)}</i>")
    if vertical:
        rows = _transposed(rows)
    names: list[str] = list(columns) if columns is not None else list(dict.fromkeys(k for row in rows for k in row))
    numeric = {name: all(_is_number(_plain(row.get(name))) for row in rows if _plain(row.get(name)) is not None)
               for name in names}

    def cell(tag: str, text: str, number: bool, extra: str = "", span: int = 1, bold: bool = False) -> str:
        css = _CELL.format(align="right" if number else "left") + (f";{extra}" if extra else "")
        shown = f"<b>{html.escape(text)}</b>" if bold else html.escape(text)
        return f"<{tag}{f' colspan={span}' if span > 1 else ''} style='{css}'>{shown}</{tag}>"

    def line(row: dict[str, Any]) -> str:
        cells, skip = [], 0
        for name in names:
            if skip:
                skip -= 1
                continue
            value = row.get(name)
            extra, span, bold = (value.style, value.span, value.bold) if isinstance(value, Styled) else ("", 1, False)
            skip = span - 1
            cells.append(cell("td", format_cell(_plain(value)), _is_number(_plain(value)), extra, span, bold))
        css = row_style(row) if row_style is not None else ""
        return (f"<tr style='{css}'>" if css else "<tr>") + "".join(cells) + "</tr>"

    head = "".join(cell("th", name, numeric[name], (head_style or {}).get(name, "")) for name in names)
    body = "".join(line(row) for row in rows)
    title = f"<caption style='text-align:left;font-weight:bold'>{html.escape(caption)}</caption>" if caption else ""
    css = f" style='{style}'" if style else ""
    return HTML(f"<table class='labkit-table'{css}>{title}<thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>")


def show(*results: Any, caption: str | None = None, vertical: bool = False) -> None:
    """Display each result as a small table (see :func:`rows_of` for the shapes it takes)."""
    for result in results:
        display(html_table(result, caption=caption, vertical=vertical))


#: The services' ``/healthz`` fields a learner meets, in plain words and with what each means.
#: Fields not listed here (the epoch, the reader's idle cycles) are for tests and tools; a
#: notebook shows them only when it explains them.
HEALTH_FIELDS: dict[str, tuple[str, str]] = {
    "status": ("status", "ok: it can do its job now; degraded: it runs but cannot store or read events"),
    "broker": ("broker", "up when the service's Kafka client reaches the broker"),
    "topic": ("topic", "the Kafka topic events are written to and read from"),
    "senders": ("senders connected", "WebSocket connections sending events to the producer"),
    "in_flight": ("waiting for Kafka", "events the producer has sent to Kafka and not yet had acknowledged"),
    "partitions": ("partitions read", "the consumer reads every partition of the topic itself (no consumer group)"),
    "positions": ("next offset, per partition",
                  "where the consumer reads next in each partition: everything before it was read"),
    "watchers": ("watchers connected", "WebSocket connections the consumer pushes events to"),
    "replay_buffer": ("events kept for replay", "the most recent events held in memory for ?replay=N"),
    "resuming": ("watchers catching up", "watchers reading back what they missed after a reconnect"),
}


def health_table(health: Mapping[str, Mapping[str, Any]]) -> HTML:
    """The services' health answers side by side, one row per field in plain words with what it means."""
    rows = []
    for field, (name, meaning) in HEALTH_FIELDS.items():
        values = {service: answer.get(field) for service, answer in health.items()}
        if any(field in answer for answer in health.values()):
            rows.append({"": name, **{service: "" if value is None else value for service, value in values.items()},
                         "what it means": meaning})
    return html_table(rows)


def health_summary(health: Mapping[str, Mapping[str, Any]]) -> str:
    """One sentence in plain words: can events be sent and received now?"""
    producer, consumer = health.get("producer", {}), health.get("consumer", {})
    parts = []
    if producer:
        parts.append("the producer "
                     f"{'can store events' if producer.get('status') == 'ok' else 'cannot store events now'}"
                     f" (broker {producer.get('broker')}, {producer.get('senders', 0)} sender(s) connected)")
    if consumer:
        parts.append(f"the consumer {'reads' if consumer.get('status') == 'ok' else 'cannot read'}"
                     f" {len(consumer.get('partitions') or [])} partition(s) and feeds {consumer.get('watchers', 0)} "
                     "watcher(s)")
    return "; ".join(parts).capitalize() + "." if parts else "No health answer."
