"""`flowscope-cni`: the CNI plugin executable (spec 0.3.0 to 1.1.0).

It validates what the runtime handed it (environment and the network config on stdin) the way
the reference plugins' skel does, answers VERSION itself, and forwards ADD/DEL/CHECK/STATUS/GC to
the node agent named by the config's "agentSocket", which does the IPAM and netlink work with its
sockets already open. Standard library only: importing pyroute2 alone would cost ~0.4 s a call.

Deliberate choices (each tested in tests/cni):
- CNI_PATH is required only for GC, as the spec says; the reference skel also demands it for
  ADD/CHECK/DEL/STATUS, but this plugin delegates to no other plugin.
- Run with no CNI_COMMAND at all, the reference plugins print an "about" text and exit 0; this
  one reports error 4 naming CNI_COMMAND and exits 1, as for any other missing variable.
- Agent unreachable: error 11 "try again later" for ADD, CHECK, DEL and GC (nothing was changed,
  the runtime retries; for DEL a success would leak the pod's IP and veth until the next GC), and
  error 50 "plugin not available" for STATUS, as the spec defines for it.
"""

from __future__ import annotations

import os
import sys

from dataplane.cni.protocol import (
    CURRENT_VERSION,
    DECODING_FAILURE,
    DEFAULT_TIMEOUT,
    INCOMPATIBLE_VERSION,
    INTERNAL,
    INVALID_ENVIRONMENT,
    INVALID_NETWORK_CONFIG,
    IO_FAILURE,
    NOT_AVAILABLE,
    SUPPORTED_VERSIONS,
    TRY_AGAIN_LATER,
    CNIError,
    Request,
    call_agent,
    convert_result,
    dumps,
    loads,
    version_tuple,
)

TYPE_CHECKING = False  # typing and collections.abc cost ms at every start; annotations only
if TYPE_CHECKING:
    from collections.abc import Mapping
    from typing import Any

# Which variables each command needs (SPEC.md section 2, "Parameters" of each operation).
_REQUIRED = {
    "ADD": ("CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME"),
    "CHECK": ("CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME"),
    "DEL": ("CNI_CONTAINERID", "CNI_IFNAME"),
    "GC": ("CNI_PATH",),
    "STATUS": (),
    "VERSION": (),
}
# The minimum config version that has each command.
_SINCE = {"CHECK": (0, 4, 0), "GC": (1, 1, 0), "STATUS": (1, 1, 0)}
_ALNUM = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789")
_NAME_CHARS = _ALNUM | frozenset("_.-")


def valid_name(name: str) -> bool:
    """The spec's rule for container IDs and network names: [a-zA-Z0-9][a-zA-Z0-9_.-]*."""
    return bool(name) and name[0] in _ALNUM and all(c in _NAME_CHARS for c in name)


_IFNAME_MAX = 15  # IFNAMSIZ - 1


def validate_ifname(ifname: str) -> None:
    """The kernel's rules for an interface name (net/core/dev.c dev_valid_name)."""
    if not ifname:
        raise CNIError(INVALID_ENVIRONMENT, "CNI_IFNAME: interface name is empty")
    if len(ifname.encode()) > _IFNAME_MAX:
        raise CNIError(
            INVALID_ENVIRONMENT,
            f"CNI_IFNAME: interface name {ifname!r} is too long",
            f"interface name should be at most {_IFNAME_MAX} bytes",
        )
    if ifname in (".", ".."):
        raise CNIError(INVALID_ENVIRONMENT, f"CNI_IFNAME: interface name {ifname!r} is . or ..")
    if any(c == "/" or c == ":" or c.isspace() for c in ifname):
        raise CNIError(
            INVALID_ENVIRONMENT,
            f"CNI_IFNAME: interface name {ifname!r} contains / or : or whitespace characters",
        )


def parse_cni_args(text: str) -> dict[str, str]:
    """CNI_ARGS "K1=V1;K2=V2" as a dict; raises error 4 on a pair without '='."""
    args: dict[str, str] = {}
    for pair in text.split(";"):
        if not pair:
            continue
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise CNIError(INVALID_ENVIRONMENT, f"CNI_ARGS: invalid pair {pair!r}, want KEY=VALUE")
        args[key] = value
    return args


def _environment(env: Mapping[str, str]) -> tuple[str, dict[str, str]]:
    command = env.get("CNI_COMMAND", "")
    if not command:
        raise CNIError(INVALID_ENVIRONMENT, "required env variables [CNI_COMMAND] missing")
    if command not in _REQUIRED:
        raise CNIError(INVALID_ENVIRONMENT, f"unknown CNI_COMMAND: {command}")
    missing = [name for name in _REQUIRED[command] if not env.get(name)]
    if missing:
        raise CNIError(INVALID_ENVIRONMENT, f"required env variables [{','.join(missing)}] missing")
    values = {
        name: env.get(name, "")
        for name in ("CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME", "CNI_ARGS", "CNI_PATH")
    }
    if command in ("ADD", "CHECK", "DEL"):
        if not valid_name(values["CNI_CONTAINERID"]):
            raise CNIError(
                INVALID_ENVIRONMENT,
                "CNI_CONTAINERID: invalid characters in containerID",
                values["CNI_CONTAINERID"],
            )
        validate_ifname(values["CNI_IFNAME"])
    return command, values


def _network_config(stdin: bytes, command: str) -> tuple[dict[str, Any], str]:
    try:
        config = loads(stdin)
    except ValueError as e:
        raise CNIError(DECODING_FAILURE, f"error decoding network config from stdin: {e}") from None
    if not isinstance(config, dict):
        raise CNIError(DECODING_FAILURE, "network config on stdin is not a JSON object")
    name = config.get("name")
    if not name or not isinstance(name, str):
        raise CNIError(INVALID_NETWORK_CONFIG, "missing network name", "field: name")
    if not valid_name(name):
        raise CNIError(INVALID_NETWORK_CONFIG, "invalid characters found in network name", name)
    # The reference library reads a missing cniVersion as "0.1.0".
    version = config.get("cniVersion") or "0.1.0"
    if not isinstance(version, str):
        raise CNIError(DECODING_FAILURE, f"cniVersion must be a string, not {version!r}")
    if version not in SUPPORTED_VERSIONS:
        raise CNIError(
            INCOMPATIBLE_VERSION,
            "incompatible CNI versions",
            f'config is "{version}", plugin supports {list(SUPPORTED_VERSIONS)}',
        )
    since = _SINCE.get(command)
    if since and version_tuple(version) < since:
        raise CNIError(
            INCOMPATIBLE_VERSION,
            f"config version does not allow {command}",
            f"{command} needs cniVersion {'.'.join(map(str, since))} or later, config is {version}",
        )
    socket_path = config.get("agentSocket")
    if not isinstance(socket_path, str) or not socket_path.startswith("/"):
        raise CNIError(
            INVALID_NETWORK_CONFIG,
            "agentSocket: missing or not an absolute path in the network config",
            f"got {socket_path!r}; write the conflist with dataplane.cni.conf.write_conflist",
        )
    timeout = config.get("agentTimeout", DEFAULT_TIMEOUT)
    if isinstance(timeout, bool) or not isinstance(timeout, int | float) or timeout <= 0:
        raise CNIError(
            INVALID_NETWORK_CONFIG, f"agentTimeout: want a positive number of seconds: {timeout!r}"
        )
    mtu = config.get("mtu", 1500)
    if isinstance(mtu, bool) or not isinstance(mtu, int) or not 68 <= mtu <= 65535:
        raise CNIError(INVALID_NETWORK_CONFIG, f"mtu: want an integer 68..65535, got {mtu!r}")
    return config, version


def _check_netns(path: str) -> None:
    try:
        target = os.stat(path)
    except OSError as e:
        raise CNIError(
            INVALID_ENVIRONMENT, f"CNI_NETNS: cannot open {path}: {e.strerror}"
        ) from None
    own = os.stat("/proc/self/ns/net")
    if (target.st_dev, target.st_ino) == (own.st_dev, own.st_ino):
        raise CNIError(
            INVALID_ENVIRONMENT,
            "CNI_NETNS: plugin's netns and netns from CNI_NETNS should not be the same",
            path,
        )


def run(env: Mapping[str, str], read_stdin: Any) -> dict[str, Any] | None:
    """Do one invocation; returns what to print on stdout (None: nothing) or raises CNIError."""
    command, values = _environment(env)
    if command == "VERSION":
        # The spec echoes the input's cniVersion; the reference ignores stdin here, so be lenient.
        version = CURRENT_VERSION
        try:
            doc = loads(read_stdin() or b"{}")
            if isinstance(doc, dict) and isinstance(doc.get("cniVersion"), str):
                version = doc["cniVersion"]
        except (ValueError, OSError):
            pass
        return {"cniVersion": version, "supportedVersions": list(SUPPORTED_VERSIONS)}
    try:
        stdin = read_stdin()
    except OSError as e:
        raise CNIError(IO_FAILURE, f"error reading from stdin: {e}") from None
    config, version = _network_config(stdin, command)
    args = parse_cni_args(values["CNI_ARGS"])
    if command == "ADD":
        _check_netns(values["CNI_NETNS"])
    request = Request(
        command=command,
        container_id=values["CNI_CONTAINERID"],
        netns=values["CNI_NETNS"],
        ifname=values["CNI_IFNAME"],
        args=args,
        config=config,
    )
    try:
        result = call_agent(config["agentSocket"], request, float(config.get("agentTimeout", 20)))
    except CNIError as e:
        if command == "STATUS" and e.code == TRY_AGAIN_LATER:
            raise CNIError(NOT_AVAILABLE, e.msg, e.details) from None
        raise
    if command == "ADD":
        return convert_result(result, version)
    return None


def _read_stdin() -> bytes:
    if sys.stdin is None or sys.stdin.isatty():
        return b""
    return sys.stdin.buffer.read()


def main() -> int:
    stdin_cache: list[bytes] = []

    def read_stdin() -> bytes:
        if not stdin_cache:
            stdin_cache.append(_read_stdin())
        return stdin_cache[0]

    try:
        out = run(os.environ, read_stdin)
    except CNIError as e:
        version = CURRENT_VERSION
        if stdin_cache:
            try:
                doc = loads(stdin_cache[0])
                if isinstance(doc, dict) and doc.get("cniVersion") in SUPPORTED_VERSIONS:
                    version = doc["cniVersion"]
            except ValueError:
                pass
        sys.stdout.write(dumps(e.to_json(version)) + "\n")
        sys.stdout.flush()
        return 1
    except Exception as e:  # never a traceback instead of a CNI error result
        err = CNIError(INTERNAL, f"internal error in flowscope-cni: {type(e).__name__}: {e}")
        sys.stdout.write(dumps(err.to_json()) + "\n")
        return 1
    if out is not None:
        sys.stdout.write(dumps(out) + "\n")
        sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
