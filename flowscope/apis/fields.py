"""Field errors as the apiserver words them: `spec.ports[0].port: Invalid value: 0: must be ...`."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

_NO_VALUE = object()


def show(value: Any) -> str:
    """A value the way the apiserver prints it: strings quoted, numbers bare, objects as JSON."""
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "null"
    if isinstance(value, int | float):
        return str(value)
    return json.dumps(value, sort_keys=True, separators=(",", ":"))


@dataclass(frozen=True)
class FieldError:
    path: str  # e.g. spec.containers[0].ports[1].containerPort
    type: str  # Invalid value | Required value | Unsupported value | Duplicate value | ...
    value: Any = _NO_VALUE
    detail: str = ""

    def __str__(self) -> str:
        if self.type == "Unknown field":
            # kubectl apply --validate=strict says: unknown field "spec.containers[0].prots"
            return f"{self.path}: unknown field {json.dumps(self.path.rpartition('.')[2])}"
        parts = [f"{self.path}: {self.type}" if self.path else self.type]
        if self.value is not _NO_VALUE:
            parts.append(show(self.value))
        if self.detail:
            parts.append(self.detail)
        return ": ".join(parts)


def child(path: str, name: str) -> str:
    return f"{path}.{name}" if path else name


def index(path: str, i: int | str) -> str:
    return f"{path}[{i}]"


def invalid(path: str, value: Any, detail: str) -> FieldError:
    return FieldError(path, "Invalid value", value, detail)


def required(path: str, detail: str = "") -> FieldError:
    return FieldError(path, "Required value", detail=detail)


def unsupported(path: str, value: Any, supported: tuple[str, ...]) -> FieldError:
    return FieldError(
        path,
        "Unsupported value",
        value,
        "supported values: " + ", ".join(json.dumps(s) for s in supported),
    )


def duplicate(path: str, value: Any) -> FieldError:
    return FieldError(path, "Duplicate value", value)


def forbidden(path: str, detail: str) -> FieldError:
    return FieldError(path, "Forbidden", detail=detail)


def too_long(path: str, value: Any, limit: int) -> FieldError:
    return FieldError(path, "Too long", value, f"may not be more than {limit} bytes")


def unknown_field(path: str) -> FieldError:
    return FieldError(path, "Unknown field")
