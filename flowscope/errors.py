"""Errors a user sees. Each says what went wrong, where, and what to do next."""

from __future__ import annotations


class FlowscopeError(Exception):
    """An error meant for the user: printed without a traceback, exit code `exit_code`."""

    exit_code = 1

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        self.hint = hint

    def __str__(self) -> str:
        msg = super().__str__()
        return f"{msg}\n  hint: {self.hint}" if self.hint else msg


class UsageError(FlowscopeError):
    exit_code = 2


class NotFound(FlowscopeError):
    pass


class ClusterNotUp(FlowscopeError):
    def __init__(self, cluster: str) -> None:
        super().__init__(
            f"no lab cluster {cluster!r} is up",
            hint=f"run `flowscope lab up --name {cluster}` first",
        )
