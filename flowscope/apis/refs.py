"""Naming one object: kind, namespace (None when cluster-scoped) and name."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True, order=True)
class ObjectRef:
    kind: str  # the Kind's name: "Pod", "Service", ...
    namespace: str | None
    name: str

    @classmethod
    def of(cls, obj: dict[str, Any]) -> ObjectRef:
        meta = obj.get("metadata") or {}
        return cls(obj["kind"], meta.get("namespace") or None, meta["name"])

    def __str__(self) -> str:
        """kubectl's `pod/web`."""
        return f"{self.kind.lower()}/{self.name}"

    def display(self) -> str:
        """`Pod default/web` or `Namespace frontend`."""
        return (
            f"{self.kind} {self.namespace}/{self.name}"
            if self.namespace
            else f"{self.kind} {self.name}"
        )
