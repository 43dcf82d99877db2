"""A field mask over a flow's JSON mapping: only the listed paths are kept, as GetFlows'
field_mask keeps them ("time", "verdict", "IP.source", "source.pod_name", "l4.TCP").
Paths are the Flow message's .proto field names, which are also its JSON keys."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from google.protobuf import field_mask_pb2

from flowscope.proto import flow_pb2


def check_paths(paths: Sequence[str]) -> list[str]:
    """The paths that are not Flow field paths (empty when all are)."""
    return [
        p
        for p in paths
        if not field_mask_pb2.FieldMask(paths=[p]).IsValidForDescriptor(flow_pb2.Flow.DESCRIPTOR)
    ]


def mask_tree(paths: Sequence[str]) -> dict[str, Any]:
    """The paths as a tree of keys: {"IP": {"source": None}, "verdict": None}; None keeps all
    below the key (a shorter path wins over a longer one under it)."""
    tree: dict[str, Any] = {}
    for path in paths:
        node: dict[str, Any] | None = tree
        *parents, leaf = path.split(".")
        for part in parents:
            if part in node and node[part] is None:
                node = None  # an enclosing path keeps it all already
                break
            node = node.setdefault(part, {})
        if node is not None:
            node[leaf] = None
    return tree


def apply_mask(value: dict[str, Any], tree: dict[str, Any]) -> dict[str, Any]:
    """What of `value` the tree keeps; an empty tree keeps everything."""
    if not tree:
        return value
    out: dict[str, Any] = {}
    for key, sub in tree.items():
        if key not in value:
            continue
        if sub is None or not isinstance(value[key], dict):
            out[key] = value[key]
        elif kept := apply_mask(value[key], sub):
            out[key] = kept
    return out
