"""Run CNI plugins the way containerd (libcni) does: what the lab's pod runtime calls.

For each plugin of a conflist the plugin's config is derived as SPEC.md section 3 says (name and
cniVersion injected, `capabilities` dropped, prevResult for chained ADD and for CHECK/DEL,
cni.dev/valid-attachments for GC), the executable is found on CNI_PATH and run in the node's
network namespace through `nsenter --net=...` (not `ip netns exec`, which remounts /sys and hides
/sys/fs/bpf), with the CNI_* environment and the config on stdin.
"""

from __future__ import annotations

import asyncio
import json
import os
from pathlib import Path
from typing import Any

from dataplane.cni.conf import load_conflist, select_version, validate_conflist
from dataplane.cni.protocol import (
    INTERNAL,
    INVALID_NETWORK_CONFIG,
    TRY_AGAIN_LATER,
    CNIError,
    version_tuple,
)
from dataplane.endpoint.netns import netns_path

__all__ = ["CNIError", "cni_args_env", "find_plugin", "invoke_plugin"]

PLUGIN_TIMEOUT = 60.0  # seconds; a plugin still running then is killed


def find_plugin(kind: str, cni_path: list[str]) -> str:
    for directory in cni_path:
        candidate = Path(directory) / kind
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return str(candidate)
    raise CNIError(
        INVALID_NETWORK_CONFIG,
        f"failed to find plugin {kind!r} in path {cni_path}",
        "install it or add its directory to CNI_PATH",
    )


def cni_args_env(args: dict[str, str]) -> str:
    """CNI_ARGS as containerd writes it: IgnoreUnknown=1 first (plugins built on the reference
    skel reject arguments they do not know otherwise), then K=V pairs joined by ';'."""
    pairs = {"IgnoreUnknown": "1", **args} if args else {}
    return ";".join(f"{k}={v}" for k, v in pairs.items())


def _plugin_config(
    network: dict[str, Any], plugin: dict[str, Any], version: str, extra: dict[str, Any]
) -> dict[str, Any]:
    conf = {k: v for k, v in plugin.items() if k != "capabilities" and not k.startswith("cni.dev/")}
    conf["name"] = network["name"]
    conf["cniVersion"] = version
    conf.update(extra)
    return conf


async def _exec(
    binary: str,
    env: dict[str, str],
    stdin: bytes,
    run_in_netns: str | None,
    timeout: float,
) -> tuple[int, bytes, bytes]:
    argv = [binary]
    if run_in_netns:
        argv = ["nsenter", f"--net={netns_path(run_in_netns)}", "--", binary]
    proc = await asyncio.create_subprocess_exec(
        *argv,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=env,
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(stdin), timeout)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise CNIError(
            TRY_AGAIN_LATER, f"plugin {binary} did not finish within {timeout:g}s"
        ) from None
    return proc.returncode or 0, out, err


def _result_or_error(kind: str, rc: int, out: bytes, err: bytes) -> dict[str, Any]:
    text = out.strip()
    if rc == 0:
        if not text:
            return {}
        try:
            doc = json.loads(text)
        except ValueError as e:
            raise CNIError(
                INTERNAL, f"plugin {kind} printed a result that is not JSON: {e}"
            ) from None
        if not isinstance(doc, dict):
            raise CNIError(INTERNAL, f"plugin {kind} printed a result that is not an object")
        return doc
    try:
        doc = json.loads(text)
    except ValueError:
        doc = None
    if isinstance(doc, dict) and isinstance(doc.get("code"), int):
        raise CNIError.from_json(doc)
    detail = (err or out).decode(errors="replace").strip()[-2000:]
    raise CNIError(INTERNAL, f"plugin {kind} failed with exit code {rc}", detail)


async def invoke_plugin(
    command: str,
    conflist_path: str | os.PathLike[str] | dict[str, Any],
    container_id: str = "",
    netns_path: str = "",
    ifname: str = "",
    cni_args: dict[str, str] | None = None,
    cni_path: list[str] | None = None,
    run_in_netns: str | None = None,
    prev_result: dict[str, Any] | None = None,
    valid_attachments: list[dict[str, str]] | None = None,
    timeout: float = PLUGIN_TIMEOUT,
) -> dict[str, Any]:
    """Run `command` over the network of `conflist_path` (a path, or the parsed conflist).

    Returns the final result for ADD, {} for the others; raises CNIError with the failing
    plugin's code, msg and details. GC runs every plugin and reports all errors together.
    `run_in_netns` is the node's namespace (name or path) the plugins run in.
    """
    if isinstance(conflist_path, dict):
        network = validate_conflist(conflist_path)
    else:
        network = load_conflist(conflist_path)
    version = select_version(network)
    cni_path = list(cni_path or [])
    if command == "CHECK" and network.get("disableCheck"):
        return {}
    if command == "GC" and network.get("disableGC"):
        return {}
    if command in ("GC", "STATUS") and version_tuple(version) < (1, 1, 0):
        return {}  # libcni: a network below 1.1.0 has neither
    env = {k: v for k, v in os.environ.items() if not k.startswith("CNI_")}
    env.update(
        CNI_COMMAND=command,
        CNI_PATH=os.pathsep.join(cni_path),
    )
    if command in ("ADD", "DEL", "CHECK"):
        env.update(
            CNI_CONTAINERID=container_id,
            CNI_NETNS=netns_path,
            CNI_IFNAME=ifname,
            CNI_ARGS=cni_args_env(cni_args or {}),
        )
    plugins = list(network["plugins"])
    if command == "DEL":
        plugins.reverse()
    result: dict[str, Any] | None = None
    gc_errors: list[CNIError] = []
    for plugin in plugins:
        extra: dict[str, Any] = {}
        if command == "ADD" and result is not None:
            extra["prevResult"] = result
        elif command in ("DEL", "CHECK") and prev_result is not None:
            extra["prevResult"] = prev_result
        elif command == "GC":
            extra["cni.dev/valid-attachments"] = list(valid_attachments or [])
        conf = _plugin_config(network, plugin, version, extra)
        binary = find_plugin(plugin["type"], cni_path)
        rc, out, err = await _exec(binary, env, json.dumps(conf).encode(), run_in_netns, timeout)
        try:
            doc = _result_or_error(plugin["type"], rc, out, err)
        except CNIError as e:
            if command != "GC":
                raise
            gc_errors.append(e)
            continue
        if command == "ADD":
            result = doc
    if gc_errors:
        first = gc_errors[0]
        raise CNIError(first.code, first.msg, "; ".join(str(e) for e in gc_errors))
    return result if command == "ADD" and result is not None else {}
