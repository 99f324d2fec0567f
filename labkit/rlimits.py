"""The one process limit labkit raises: open files, so a thousand sockets fit in one process.

The services (each watcher is a socket), the bench (inherited by the stack it starts) and
the bench's receiver processes (a thousand watchers) all call :func:`raise_open_files_limit`.
"""

from __future__ import annotations

import resource

__all__ = ["raise_open_files_limit"]


def raise_open_files_limit() -> int:
    """Raise this process's soft limit on open files to its hard limit (the usual 1024 is too few); returns it."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return hard
