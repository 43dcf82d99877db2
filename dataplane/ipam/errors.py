"""What IPAM tells its callers when it cannot do what they asked."""

from __future__ import annotations

from flowscope.errors import FlowscopeError, UsageError


class IPAMConfigError(UsageError):
    """The IPAM configuration (or a name handed to IPAM) is invalid; the message names the field."""


class IPAMExhausted(FlowscopeError):
    """A pool has no free address, block or node CIDR left. Raised at once, never retried."""

    def __init__(self, message: str, *, pool: str, hint: str | None = None) -> None:
        super().__init__(message, hint=hint)
        self.pool = pool  # the full pool, e.g. "10.244.1.0/24" or "10.225.0.0/16"


class IPAMConflict(FlowscopeError):
    """The store kept changing under a claim for longer than the bounded number of retries."""
