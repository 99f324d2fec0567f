"""The lab's colours, in one place: what is wrong is red, what works is green, news is blue.

Every widget, table and drawing takes its colours from here, so a state looks the same
in the form, the fault drill, the topic viewer, the group view, the chart and the
architecture drawing.
"""

from __future__ import annotations

__all__ = ["RED", "GREEN", "BLUE", "AMBER", "GREY", "INK", "SERIES", "STATE_FILL", "STATE_LINE"]

RED = "#c62828"  # an error, a loss, a stopped part
GREEN = "#2e7d32"  # running, nothing lost
BLUE = "#1565c0"  # news: a watcher resumed
AMBER = "#f9a825"  # not answering yet
GREY = "#9e9e9e"  # unknown, nobody
INK = "#455a64"  # lines and arrows of a drawing
#: One colour per member of a series (consumer group members, in the order they joined).
SERIES = ["#1e88e5", "#e53935", "#43a047", "#fb8c00", "#8e24aa", "#00897b"]
#: A component's box in the architecture drawing, by its state.
STATE_FILL = {"running": "#e8f5e9", "stopped": "#ffebee", "not answering": "#fff8e1", None: "#f5f5f5"}
STATE_LINE = {"running": GREEN, "stopped": RED, "not answering": AMBER, None: GREY}
