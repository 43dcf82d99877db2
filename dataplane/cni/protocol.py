"""What `flowscope-cni` and the node agent say to each other, and the CNI spec's error and result
types.

Standard library only: the plugin process imports this module and must start in a few ms.

Wire format between plugin and agent: a SOCK_STREAM Unix socket, one request per connection. The
plugin sends one JSON object on one line (UTF-8, terminated by b"\\n"; `json.dumps` never emits a
raw newline), the agent answers with one JSON object on one line and closes the connection.

Request:  {"command": "ADD"|"DEL"|"CHECK"|"STATUS"|"GC", "containerID": str, "netns": str,
           "ifname": str, "args": {str: str}, "config": {the plugin's network config object}}
Response: {"result": {...}} on success (a CNI 1.1.0 result for ADD, {} otherwise), or
          {"error": {"code": int, "msg": str, "details": str}}.

An agent that is unreachable (no socket, refused, no answer within the timeout) is error 11 "try
again later" for every command but STATUS, which answers 50 "plugin not available" as the spec
asks. Error codes: the spec's well-known codes (below), and flowscope's own from 100 on:
  100 IP pool exhausted          (IPAM has no free address for this node)
  102 endpoint already exists    (ADD twice for one (containerID, ifname) without DEL)
  103 endpoint check failed      (CHECK found an interface, address, route or lease missing)
  104 agent protocol error       (the agent's answer could not be understood)
  999 internal error             (an unexpected failure inside the agent; as the reference skel)
"""

from __future__ import annotations

import _socket  # socket.py builds enums at import (~3 ms); the C module is all this needs

TYPE_CHECKING = False  # typing costs ~3 ms to import; annotations are strings anyway
if TYPE_CHECKING:
    from typing import Any

# The spec's well-known error codes (SPEC.md, "Error").
INCOMPATIBLE_VERSION = 1
UNSUPPORTED_FIELD = 2
UNKNOWN_CONTAINER = 3
INVALID_ENVIRONMENT = 4
IO_FAILURE = 5
DECODING_FAILURE = 6
INVALID_NETWORK_CONFIG = 7
TRY_AGAIN_LATER = 11
NOT_AVAILABLE = 50
LIMITED_CONNECTIVITY = 51
# flowscope's own codes (see the module docstring).
POOL_EXHAUSTED = 100
ENDPOINT_EXISTS = 102
CHECK_FAILED = 103
PROTOCOL_ERROR = 104
INTERNAL = 999

CURRENT_VERSION = "1.1.0"
# 0.1.0/0.2.0 had a different result type (no interfaces list); nobody runs them any more.
SUPPORTED_VERSIONS = ("0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0")
COMMANDS = ("ADD", "DEL", "CHECK", "STATUS", "GC", "VERSION")
AGENT_COMMANDS = ("ADD", "DEL", "CHECK", "STATUS", "GC")
DEFAULT_TIMEOUT = 20.0  # seconds the plugin waits for the agent's answer (config: agentTimeout)
MAX_MESSAGE = 4 << 20


# --- JSON, fast to import ------------------------------------------------------------------------
# `import json` pulls in re and enum: ~12 ms of the plugin's ~25 ms start on this machine. The C
# scanner and encoder json itself uses are importable alone; json is the fallback without them.
def _not_serializable(value: object) -> object:
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


class _ScanContext:
    strict = True
    object_hook = None
    object_pairs_hook = None
    parse_float = float
    parse_int = int
    memo: dict = {}  # read by the C scanner, which keeps its own

    @staticmethod
    def parse_constant(name: str) -> float:
        return {"NaN": float("nan"), "Infinity": float("inf"), "-Infinity": float("-inf")}[name]


try:
    import _json

    _scan = _json.make_scanner(_ScanContext())
    _encode = _json.make_encoder(
        None, _not_serializable, _json.encode_basestring_ascii, None, ":", ",", False, False, True
    )
except (ImportError, AttributeError, TypeError):  # another Python: use the json module
    _json = None  # type: ignore[assignment]

_WS = " \t\n\r"


def loads(data: bytes | str) -> Any:
    """json.loads for documents (raises ValueError on anything that is not exactly one)."""
    text = data.decode() if isinstance(data, bytes | bytearray) else data
    if _json is None:
        import json

        return json.loads(text)
    start = len(text) - len(text.lstrip(_WS))
    try:
        value, end = _scan(text, start)
    except StopIteration as e:
        raise ValueError(f"Expecting value: char {e.value}") from None
    except SystemError:
        # The C scanner reports a syntax error through json.decoder, which it expects imported:
        # on this (rare) path, let json say what is wrong and where.
        import json

        return json.loads(text)
    if text[end:].strip(_WS):
        raise ValueError(f"Extra data: char {end}")
    return value


def dumps(value: Any) -> str:
    """json.dumps(value, separators=(",", ":")): compact, ASCII, no raw newline."""
    if _json is None:
        import json

        return json.dumps(value, separators=(",", ":"))
    return "".join(_encode(value, 0))


class CNIError(Exception):
    """A CNI error result: exit code 1 and {"code", "msg", "details"} on stdout."""

    def __init__(self, code: int, msg: str, details: str = "") -> None:
        super().__init__(msg)
        self.code = code
        self.msg = msg
        self.details = details

    def __str__(self) -> str:
        text = f"CNI error {self.code}: {self.msg}"
        return f"{text} ({self.details})" if self.details else text

    def to_json(self, cni_version: str = CURRENT_VERSION) -> dict[str, Any]:
        out: dict[str, Any] = {"cniVersion": cni_version, "code": self.code, "msg": self.msg}
        if self.details:
            out["details"] = self.details
        return out

    @classmethod
    def from_json(cls, data: Any) -> CNIError:
        if not isinstance(data, dict) or not isinstance(data.get("code"), int):
            return cls(PROTOCOL_ERROR, "malformed error result", repr(data)[:500])
        return cls(data["code"], str(data.get("msg", "")), str(data.get("details", "") or ""))


class Request:
    """One plugin invocation as the agent sees it (a plain class: dataclasses cost ~9 ms)."""

    __slots__ = ("args", "command", "config", "container_id", "ifname", "netns")

    def __init__(
        self,
        command: str,
        container_id: str = "",
        netns: str = "",
        ifname: str = "",
        args: dict[str, str] | None = None,
        config: dict[str, Any] | None = None,
    ) -> None:
        self.command = command
        self.container_id = container_id
        self.netns = netns
        self.ifname = ifname
        self.args = dict(args or {})
        self.config = dict(config or {})

    def __repr__(self) -> str:
        return f"Request({self.command} {self.container_id}/{self.ifname} netns={self.netns})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Request) and all(
            getattr(self, k) == getattr(other, k) for k in self.__slots__
        )

    @property
    def owner(self) -> str:
        """The IPAM owner of this attachment."""
        return f"{self.container_id}/{self.ifname}"

    def encode(self) -> bytes:
        doc = {
            "command": self.command,
            "containerID": self.container_id,
            "netns": self.netns,
            "ifname": self.ifname,
            "args": self.args,
            "config": self.config,
        }
        return dumps(doc).encode() + b"\n"

    @classmethod
    def decode(cls, line: bytes) -> Request:
        try:
            doc = loads(line)
        except ValueError as e:
            raise CNIError(DECODING_FAILURE, "request is not JSON", str(e)) from None
        if not isinstance(doc, dict):
            raise CNIError(DECODING_FAILURE, "request is not a JSON object")
        command = doc.get("command")
        if command not in AGENT_COMMANDS:
            raise CNIError(INVALID_ENVIRONMENT, f"unknown CNI_COMMAND: {command}")
        args = doc.get("args") or {}
        config = doc.get("config") or {}
        if not isinstance(args, dict) or not isinstance(config, dict):
            raise CNIError(DECODING_FAILURE, "request args and config must be JSON objects")
        return cls(
            command=command,
            container_id=str(doc.get("containerID") or ""),
            netns=str(doc.get("netns") or ""),
            ifname=str(doc.get("ifname") or ""),
            args={str(k): str(v) for k, v in args.items()},
            config=config,
        )


def encode_response(result: dict[str, Any] | None = None, error: CNIError | None = None) -> bytes:
    if error is not None:
        doc: dict[str, Any] = {
            "error": {"code": error.code, "msg": error.msg, "details": error.details}
        }
    else:
        doc = {"result": result or {}}
    return dumps(doc).encode() + b"\n"


def decode_response(line: bytes) -> dict[str, Any]:
    """The result of a response line, or raises the CNIError it carries."""
    try:
        doc = loads(line)
    except ValueError as e:
        raise CNIError(PROTOCOL_ERROR, "the agent's answer is not JSON", str(e)) from None
    if not isinstance(doc, dict):
        raise CNIError(PROTOCOL_ERROR, "the agent's answer is not a JSON object")
    if "error" in doc:
        raise CNIError.from_json(doc["error"])
    result = doc.get("result")
    if not isinstance(result, dict):
        raise CNIError(PROTOCOL_ERROR, "the agent's answer has no result")
    return result


def call_agent(path: str, request: Request, timeout: float = DEFAULT_TIMEOUT) -> dict[str, Any]:
    """Send one request to the agent at `path` and return its result (blocking, bounded).

    An agent that is down (no socket file, or a stale one nobody accepts on) or does not answer
    within `timeout` is error 11, "try again later": the runtime retries, nothing was changed.
    """
    hint = "is the flowscope agent of this node running? (flowscope lab status)"
    sock = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM)
    try:
        sock.settimeout(min(timeout, 2.0))
        try:
            sock.connect(path)
        except (FileNotFoundError, ConnectionRefusedError) as e:
            raise CNIError(
                TRY_AGAIN_LATER,
                f"flowscope agent unreachable at {path}: {e.strerror}",
                hint,
            ) from None
        except TimeoutError:
            raise CNIError(
                TRY_AGAIN_LATER, f"flowscope agent at {path} did not accept the connection", hint
            ) from None
        except OSError as e:
            raise CNIError(IO_FAILURE, f"cannot connect to agent socket {path}: {e}") from None
        sock.settimeout(timeout)
        try:
            sock.sendall(request.encode())
            buf = bytearray()
            while not buf.endswith(b"\n"):
                chunk = sock.recv(65536)
                if not chunk:
                    break
                buf += chunk
                if len(buf) > MAX_MESSAGE:
                    raise CNIError(PROTOCOL_ERROR, "the agent's answer is too large")
        except TimeoutError:
            raise CNIError(
                TRY_AGAIN_LATER,
                f"flowscope agent at {path} did not answer {request.command} within {timeout:g}s",
                hint,
            ) from None
        except (BrokenPipeError, ConnectionResetError) as e:
            raise CNIError(
                TRY_AGAIN_LATER, f"flowscope agent at {path} closed the connection: {e}", hint
            ) from None
        if not buf:
            raise CNIError(
                TRY_AGAIN_LATER, f"flowscope agent at {path} closed the connection unanswered", hint
            )
        return decode_response(bytes(buf))
    finally:
        sock.close()


# --- results -------------------------------------------------------------------------------------


def version_tuple(version: str) -> tuple[int, int, int]:
    """(major, minor, patch) of a semantic version string; raises ValueError when it is not one."""
    parts = version.split(".")
    if len(parts) != 3 or not all(p.isdigit() for p in parts):
        raise ValueError(f"{version!r} is not a semantic version")
    return int(parts[0]), int(parts[1]), int(parts[2])


_IFACE_11 = ("mtu", "socketPath", "pciID")
_ROUTE_11 = ("mtu", "advmss", "priority", "table", "scope")


def convert_result(result: dict[str, Any], version: str) -> dict[str, Any]:
    """A CNI 1.1.0 result in the shape of `version` (one of SUPPORTED_VERSIONS).

    1.0.0 lacks the interface and route fields 1.1.0 added; 0.3.x/0.4.0 carry "version" in each
    IP config. Everything else is the same shape.
    """
    major_minor = version_tuple(version)[:2]
    out: dict[str, Any] = {"cniVersion": version}
    interfaces = [dict(i) for i in result.get("interfaces", [])]
    ips = [dict(ip) for ip in result.get("ips", [])]
    routes = [dict(r) for r in result.get("routes", [])]
    if major_minor < (1, 1):
        for i in interfaces:
            for k in _IFACE_11:
                i.pop(k, None)
        for r in routes:
            for k in _ROUTE_11:
                r.pop(k, None)
    if major_minor < (1, 0):
        for ip in ips:
            ip["version"] = "6" if ":" in ip.get("address", "") else "4"
    else:
        for ip in ips:
            ip.pop("version", None)
    out["interfaces"] = interfaces
    out["ips"] = ips
    out["routes"] = routes
    out["dns"] = dict(result.get("dns", {}))
    return out
