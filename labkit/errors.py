"""labkit's exceptions: each message says what happened and what to do next."""

from __future__ import annotations

__all__ = ["LabkitError", "PortInUse", "ComponentFailed", "StackIncomplete", "BrokerUnavailable", "NotRunning"]


class LabkitError(Exception):
    """Base of every error labkit raises on purpose."""


class PortInUse(LabkitError):
    def __init__(self, component: str, host: str, port: int, setting: str, note: str = "") -> None:
        super().__init__(
            f"port {port} ({component}) is in use on {host}: stop what uses it, "
            f"or choose another port with LABKIT_{setting.upper()} or --{setting.replace('_', '-')}{note}"
        )
        self.port = port


class ComponentFailed(LabkitError):
    """A component exited or did not answer in time; carries the end of its log."""

    def __init__(self, component: str, problem: str, log_tail: str = "", log_path: str = "") -> None:
        message = f"{component} {problem}"
        if log_tail:
            message += f"\n--- last lines of {log_path} ---\n{log_tail}"
        super().__init__(message)


class StackIncomplete(LabkitError):
    """``up`` failed part way; what started is left running, so the stack is as ``status`` shows it."""

    def __init__(self, cause: LabkitError, running: list[str], not_running: list[str]) -> None:
        self.cause, self.running, self.not_running = cause, running, not_running
        left = f"left running: {', '.join(running)}" if running else "nothing is running"
        todo = (f"`labkit logs {not_running[0]}` says why; " if not_running else "`labkit logs` says why; ")
        super().__init__(
            f"{cause}\n{left}; not running: {', '.join(not_running) or 'none'}. `labkit status` shows the stack; "
            f"{todo}fix that and run `labkit up` again (it starts only what is missing), or `labkit down` to stop it."
        )


class BrokerUnavailable(LabkitError):
    pass


class NotRunning(LabkitError):
    pass
