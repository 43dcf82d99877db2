"""The node's CNI network configuration list (what containerd reads from /etc/cni/net.d)."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

from dataplane.cni.protocol import (
    CURRENT_VERSION,
    DECODING_FAILURE,
    INVALID_NETWORK_CONFIG,
    IO_FAILURE,
    CNIError,
    version_tuple,
)

CONFLIST_NAME = "10-flowscope.conflist"
NETWORK_NAME = "flowscope"
PLUGIN_TYPE = "flowscope-cni"
_NAME = re.compile(r"^[a-zA-Z0-9][a-zA-Z0-9_.\-]*$")


def flowscope_conflist(
    cluster: str, node: str, agent_socket: str | os.PathLike[str], mtu: int = 1500
) -> dict[str, Any]:
    return {
        "cniVersion": CURRENT_VERSION,
        "cniVersions": ["1.0.0", CURRENT_VERSION],
        "name": NETWORK_NAME,
        "plugins": [
            {
                "type": PLUGIN_TYPE,
                "cluster": cluster,
                "node": node,
                "agentSocket": str(agent_socket),
                "mtu": mtu,
            }
        ],
    }


def write_conflist(
    dir: Path, cluster: str, node: str, agent_socket: str | os.PathLike[str], mtu: int = 1500
) -> Path:
    """Write `dir`/10-flowscope.conflist atomically (a runtime never reads half a file)."""
    dir = Path(dir)
    dir.mkdir(parents=True, exist_ok=True)
    path = dir / CONFLIST_NAME
    tmp = path.with_suffix(".tmp")
    tmp.write_text(
        json.dumps(flowscope_conflist(cluster, node, agent_socket, mtu), indent=2) + "\n"
    )
    os.replace(tmp, path)
    return path


def validate_conflist(conf: Any, source: str = "conflist") -> dict[str, Any]:
    """Check the parts of a conflist a runtime relies on; errors name the field."""
    if not isinstance(conf, dict):
        raise CNIError(DECODING_FAILURE, f"{source}: not a JSON object")
    name = conf.get("name")
    if not isinstance(name, str) or not _NAME.match(name):
        raise CNIError(INVALID_NETWORK_CONFIG, f"{source}: name: missing or invalid: {name!r}")
    version = conf.get("cniVersion")
    try:
        version_tuple(version if isinstance(version, str) else "")
    except ValueError:
        raise CNIError(
            INVALID_NETWORK_CONFIG, f"{source}: cniVersion: not a version: {version!r}"
        ) from None
    plugins = conf.get("plugins")
    if not isinstance(plugins, list) or not plugins:
        raise CNIError(INVALID_NETWORK_CONFIG, f"{source}: plugins: missing or empty")
    for i, plugin in enumerate(plugins):
        kind = plugin.get("type") if isinstance(plugin, dict) else None
        if not isinstance(kind, str) or not kind or "/" in kind or "\\" in kind:
            raise CNIError(
                INVALID_NETWORK_CONFIG, f"{source}: plugins[{i}].type: missing or invalid: {kind!r}"
            )
    return conf


def select_version(conf: dict[str, Any]) -> str:
    """The highest of cniVersion and cniVersions, as the spec tells runtimes to pick."""
    versions = [conf["cniVersion"], *[v for v in conf.get("cniVersions", []) if isinstance(v, str)]]
    valid = []
    for v in versions:
        try:
            valid.append((version_tuple(v), v))
        except ValueError:
            continue
    return max(valid)[1]


def load_conflist(path: str | os.PathLike[str]) -> dict[str, Any]:
    try:
        text = Path(path).read_text()
    except OSError as e:
        raise CNIError(IO_FAILURE, f"cannot read CNI config {path}: {e.strerror}") from None
    try:
        conf = json.loads(text)
    except ValueError as e:
        raise CNIError(DECODING_FAILURE, f"{path}: not valid JSON: {e}") from None
    return validate_conflist(conf, str(path))
