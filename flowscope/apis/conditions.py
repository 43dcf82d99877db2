"""Status conditions of Kubernetes objects (Pod, Node): finding one, and the Ready question."""

from __future__ import annotations

from typing import Any


def condition(obj: dict[str, Any], type_: str) -> dict[str, Any] | None:
    for c in (obj.get("status") or {}).get("conditions") or ():
        if c.get("type") == type_:
            return c
    return None


def condition_status(obj: dict[str, Any], type_: str) -> str | None:
    """ "True", "False", "Unknown", or None when the object has no such condition."""
    c = condition(obj, type_)
    return c.get("status") if c is not None else None


def is_ready(obj: dict[str, Any]) -> bool:
    return condition_status(obj, "Ready") == "True"
