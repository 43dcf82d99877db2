"""Strict OpenAPI schema validation (as `kubectl apply --validate=strict`): kubernetes-validate.

kubernetes-validate rebuilds its schema registry on every call (~12 ms); an apply of 1,000 objects
must not pay that each time, so the validators are built once per kind from the same schema files.
"""

from __future__ import annotations

import functools
import importlib.resources
import json
from typing import Any

import jsonschema
from referencing import Registry, Resource

from flowscope.apis import fields
from flowscope.apis.fields import FieldError

# The Kubernetes version whose schemas we validate against: the newest kubernetes-validate ships.
KUBERNETES_VERSION = "1.37.0"
_DIR = f"kubernetes-json-schema/v{KUBERNETES_VERSION}-local-strict"
_MAX_ERRORS = 20  # per object; past that, more lines only bury the first


def _load(name: str) -> Any:
    ref = importlib.resources.files("kubernetes_validate").joinpath(f"{_DIR}/{name}.json")
    return json.loads(ref.read_text())


@functools.cache
def _registry() -> Registry:
    return Resource.from_contents(_load("_definitions")) @ Registry()


@functools.cache
def validator(schema_name: str) -> jsonschema.protocols.Validator:
    schema = _load(schema_name)
    registry = Resource.from_contents(schema) @ _registry()
    return jsonschema.validators.Draft202012Validator(schema, registry=registry)


def _path(parts: Any) -> str:
    out = ""
    for p in parts:
        out = fields.index(out, p) if isinstance(p, int) else fields.child(out, str(p))
    return out


def _convert(err: jsonschema.ValidationError) -> list[FieldError]:
    path = _path(err.absolute_path)
    if err.validator == "additionalProperties":
        extra = sorted(set(err.instance) - set(err.schema.get("properties", {})))
        return [fields.unknown_field(fields.child(path, name)) for name in extra]
    if err.validator == "required":
        missing = [r for r in err.validator_value if r not in err.instance]
        return [fields.required(fields.child(path, name)) for name in missing]
    if err.validator == "type":
        types = (
            [t for t in err.validator_value if t != "null"]
            if isinstance(err.validator_value, list)
            else [err.validator_value]
        )
        return [fields.invalid(path, err.instance, f"must be of type {' or '.join(types)}")]
    if err.validator == "enum":
        return [fields.unsupported(path, err.instance, tuple(str(v) for v in err.validator_value))]
    if (
        err.validator == "oneOf"
        and err.schema.get("oneOf")
        and all("type" in s for s in err.schema["oneOf"])
    ):
        # IntOrString
        return [fields.invalid(path, err.instance, "must be an integer or a string")]
    return [fields.invalid(path, err.instance, err.message)]


def errors(obj: dict, schema_name: str) -> list[FieldError]:
    """The object's schema violations, sorted by field path; [] when it conforms."""
    found: list[FieldError] = []
    for err in validator(schema_name).iter_errors(obj):
        found.extend(_convert(err))
        if len(found) >= _MAX_ERRORS:
            break
    unique = {str(e): e for e in found}
    return sorted(unique.values(), key=lambda e: e.path)
