"""A node's flow stream: the last N flows in memory, served to readers over a Unix socket.

The protocol is deliberately small (the Observer gRPC API replaces it later). A reader connects to
<node dir>/flows.sock and sends one JSON line:

    {"last": 20, "follow": false, "filters": {"namespace": ["x"], "verdict": ["DROPPED"]}}

`last`: how many of the held records that match to send first (null: all of them); `follow`: then
keep the connection and send new ones as they come; optional `mark_history_end`: true puts one
{"history_end": true} line between the two. Every answer line is a GetFlowsResponse in
Hubble's JSON ({"flow": ...} or {"lost_events": ...}); a bad request gets one {"error": "..."}
line. Filters (flowscope.flow.filter): namespace, pod ("NS/POD-PREFIX"), verdict; each optional.
Without `follow` the server closes the connection after the held records.

The producer is never slowed by readers: `publish` appends to the ring and to each follower's
bounded queue, both O(1); a follower whose queue is full loses records, and is told how many by a
LostEvent (source OBSERVER_EVENTS_QUEUE) in the place where they went missing.
`publish_batch` does the same for a whole columnar batch of the datapath's events
(collector.columns.FlowBatch) in O(1): followers queue the batch as a range and select from it
when they take it, in their reader's task, so no Flow is built unless a reader wants it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import socket
from collections import Counter, deque
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from collector.ring import DEFAULT_CAPACITY, Chunk, FlowRing, RingEntry
from flowscope.flow.filter import FlowFilter
from flowscope.flow.model import Flow, LostEvent, LostEventSource, Record, record_from_json
from flowscope.paths import ClusterPaths

log = logging.getLogger(__name__)

DEFAULT_CLIENT_QUEUE = 4096  # records a follower may fall behind before it loses some
REQUEST_TIMEOUT = 5.0  # seconds a reader has to send its request line
REQUEST_LIMIT = 64 * 1024
_WRITE_CHUNK = 512  # lines written between yields to the event loop
SOCKET_NAME = "flows.sock"
HISTORY_END_LINE = b'{"history_end":true}\n'


def flow_socket(paths: ClusterPaths, node: str) -> Path:
    """Where node `node` serves its flows."""
    return paths.node_dir(node) / SOCKET_NAME


@dataclass(frozen=True)
class FlowRequest:
    last: int | None = None  # None: all held records
    follow: bool = False
    filter: FlowFilter = field(default_factory=FlowFilter)
    # ask for a {"history_end": true} line between the held records and the live ones, so that
    # a reader of several nodes knows which records were already there when it asked
    mark_history_end: bool = False

    def to_json(self) -> str:
        raw: dict[str, Any] = {
            "last": self.last,
            "follow": self.follow,
            "filters": self.filter.to_dict(),
        }
        if self.mark_history_end:
            raw["mark_history_end"] = True
        return json.dumps(raw)

    @classmethod
    def from_json(cls, text: str | bytes) -> FlowRequest:
        """The request of one line; ValueError naming the field that is wrong."""
        try:
            raw = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ValueError(f"request is not JSON: {exc}") from None
        if not isinstance(raw, dict):
            raise ValueError("request: expected a JSON object")
        unknown = set(raw) - {"last", "follow", "filters", "mark_history_end"}
        if unknown:
            raise ValueError(f"request.{sorted(unknown)[0]}: unknown field")
        last = raw.get("last")
        if last is not None and (isinstance(last, bool) or not isinstance(last, int) or last < 0):
            raise ValueError(f"request.last: {last!r} is not a count >= 0 or null")
        flags = {}
        for name in ("follow", "mark_history_end"):
            flags[name] = raw.get(name, False)
            if not isinstance(flags[name], bool):
                raise ValueError(f"request.{name}: {flags[name]!r} is not true or false")
        return cls(
            last,
            flags["follow"],
            FlowFilter.from_dict(raw.get("filters")),
            flags["mark_history_end"],
        )


class _Missed:
    """Stands in a follower's queue for records it lost there."""

    __slots__ = ("count",)

    def __init__(self, count: int = 1) -> None:
        self.count = count


class _Pending:
    """Stands in a follower's queue for entries start..stop of a chunk, not yet selected."""

    __slots__ = ("chunk", "start", "stop")

    def __init__(self, chunk: Chunk, start: int, stop: int) -> None:
        self.chunk = chunk
        self.start = start
        self.stop = stop


class Matcher(Protocol):
    """What a follower selects records with: observe's FlowFilter, the Observer API's
    FlowSelection (flowscope.flow.protofilter), or anything else that answers matches()."""

    def matches(self, record: Record) -> bool: ...


class Follower:
    """One following reader: a bounded queue of what it has yet to be sent.

    Records published one by one are selected when offered; a batch is queued as a range and
    selected in `take()`, so the bound counts the batch's records whether or not they would
    match, and a lost event for a batch the queue had no room for counts all its records."""

    def __init__(self, filter: Matcher, limit: int) -> None:
        self.filter = filter
        self.limit = limit
        self.queue: deque[RingEntry | _Missed | _Pending] = deque()
        self.size = 0  # records in the queue (entries and pending ranges)
        self.wakeup = asyncio.Event()
        self.closed = False

    def offer(self, entry: RingEntry) -> None:
        if not self.filter.matches(entry.record):
            return
        if self.size >= self.limit:
            self._miss(1)
        else:
            self.queue.append(entry)
            self.size += 1
        self.wakeup.set()

    def offer_chunk(self, chunk: Chunk) -> None:
        """A batch's records, selected later (in take())."""
        count = len(chunk)
        room = min(max(self.limit - self.size, 0), count)
        if room:
            self.queue.append(_Pending(chunk, 0, room))
            self.size += room
        if room < count:
            self._miss(count - room)
        self.wakeup.set()

    def _miss(self, count: int) -> None:
        tail = self.queue[-1] if self.queue else None
        if isinstance(tail, _Missed):
            tail.count += count
        else:
            self.queue.append(_Missed(count))  # over the limit, so the loss keeps its place

    def take(self) -> list[RingEntry | _Missed]:
        items: list[RingEntry | _Missed] = []
        matches = self.filter.matches
        for item in self.queue:
            if isinstance(item, _Pending):
                chunk = item.chunk
                for i in range(item.start, item.stop):
                    entry = RingEntry(chunk, i)
                    if matches(entry.record):
                        items.append(entry)
            else:
                items.append(item)
        self.queue.clear()
        self.size = 0
        self.wakeup.clear()
        return items


class FlowStream:
    """The node's last `capacity` flows and its followers. Call publish* from the event loop's
    thread (the one serve_flows runs on): it wakes followers with asyncio events."""

    def __init__(
        self,
        capacity: int = DEFAULT_CAPACITY,
        *,
        node_name: str = "",
        client_queue: int = DEFAULT_CLIENT_QUEUE,
    ) -> None:
        if client_queue < 1:
            raise ValueError(f"client_queue: {client_queue} is not a positive number of flows")
        self.ring = FlowRing(capacity)
        self.node_name = node_name
        self.client_queue = client_queue
        self.lost_counts: Counter[LostEventSource] = Counter()  # publish_lost's totals
        self._followers: set[Follower] = set()

    @property
    def seen(self) -> int:
        return self.ring.seen

    def publish(self, flows: Iterable[Flow]) -> None:
        """Add flows (oldest first); cheap: no encoding, no I/O, never waits for a reader."""
        entries = self.ring.extend(flows)
        for follower in self._followers:
            for entry in entries:
                follower.offer(entry)

    def publish_batch(self, batch: Chunk) -> None:
        """Add a batch of records built on demand (collector.columns.FlowBatch): O(1)."""
        if not len(batch):
            return
        self.ring.append_chunk(batch)
        for follower in self._followers:
            follower.offer_chunk(batch)

    def publish_lost(
        self,
        source: LostEventSource,
        num_events_lost: int,
        cpu: int | None = None,
    ) -> None:
        """Record that events were lost before they became flows (e.g. the BPF ring was full)."""
        event = LostEvent.now(source, num_events_lost, cpu, node_name=self.node_name)
        self.lost_counts[source] += num_events_lost
        entry = self.ring.append(event)
        for follower in self._followers:
            follower.offer(entry)

    def follow(self, filter: Matcher) -> Follower:
        follower = Follower(filter, self.client_queue)
        self._followers.add(follower)
        return follower

    def unfollow(self, follower: Follower) -> None:
        self._followers.discard(follower)
        follower.closed = True
        follower.wakeup.set()

    @property
    def followers(self) -> int:
        return len(self._followers)

    def lost_line(self, missed: _Missed) -> bytes:
        event = LostEvent.now(
            LostEventSource.OBSERVER_EVENTS_QUEUE, missed.count, node_name=self.node_name
        )
        return event.to_json().encode() + b"\n"


class FlowServer:
    """A running flows.sock server; `close()` stops it, ends its readers and removes the socket."""

    def __init__(self, stream: FlowStream, path: Path) -> None:
        self.stream = stream
        self.path = path
        self._server: asyncio.Server | None = None
        self._clients: set[asyncio.Task] = set()

    async def start(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        remove_stale(self.path)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.bind(str(self.path))
            # only root may read flows; set before listen() so no one connects in between
            os.chmod(self.path, 0o600)
            self._server = await asyncio.start_unix_server(
                self._accept, sock=sock, limit=REQUEST_LIMIT
            )
        except BaseException:
            sock.close()
            with contextlib.suppress(FileNotFoundError):
                self.path.unlink()
            raise

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        for task in list(self._clients):
            task.cancel()
        if self._clients:
            await asyncio.gather(*self._clients, return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()
            self._server = None
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()

    async def __aenter__(self) -> FlowServer:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._clients.add(task)
        try:
            await self._serve(reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass  # the reader left
        finally:
            self._clients.discard(task)
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            line = await asyncio.wait_for(reader.readline(), REQUEST_TIMEOUT)
            request = FlowRequest.from_json(line)
        except TimeoutError:
            return await _send_error(writer, f"no request within {REQUEST_TIMEOUT:g} s")
        except ValueError as exc:  # also a request line over the limit
            return await _send_error(writer, str(exc))
        stream = self.stream
        # Follow first, then take the held records: no await in between, so every record is
        # either in the history or in the follower's queue, never both, never neither.
        follower = stream.follow(request.filter) if request.follow else None
        try:
            history = stream.ring.last(request.last, request.filter.matches)
            await _write_entries(writer, history)
            if request.mark_history_end:
                writer.write(HISTORY_END_LINE)
                await writer.drain()
            if follower is None:
                return
            eof = asyncio.create_task(_until_eof(reader, stream, follower))
            try:
                while not follower.closed:
                    await follower.wakeup.wait()
                    items = follower.take()
                    lines = [
                        item.line() if isinstance(item, RingEntry) else stream.lost_line(item)
                        for item in items
                    ]
                    if lines:
                        writer.writelines(lines)
                        await writer.drain()
            finally:
                eof.cancel()
        finally:
            if follower is not None:
                stream.unfollow(follower)


async def serve_flows(stream: FlowStream, socket_path: Path | str) -> FlowServer:
    """Serve `stream` at `socket_path` (mode 0600); returns the running server."""
    server = FlowServer(stream, Path(socket_path))
    await server.start()
    return server


def remove_stale(path: Path) -> None:
    """Remove a socket left by a dead server; refuse to take over a live one."""
    if not path.exists():
        return
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.connect(str(path))
    except OSError:
        path.unlink()
        return
    finally:
        probe.close()
    raise OSError(f"another flow stream already serves {path}")


async def _write_entries(writer: asyncio.StreamWriter, entries: list[RingEntry]) -> None:
    # in chunks, yielding in between: encoding a full ring for a first reader takes a while
    for i in range(0, len(entries), _WRITE_CHUNK):
        writer.writelines([e.line() for e in entries[i : i + _WRITE_CHUNK]])
        await writer.drain()
        await asyncio.sleep(0)


async def _until_eof(reader: asyncio.StreamReader, stream: FlowStream, follower: Follower) -> None:
    """A follower is done when its reader hangs up, even if no flow comes to notice it by."""
    with contextlib.suppress(ConnectionError):
        while await reader.read(4096):
            pass
    stream.unfollow(follower)


async def _send_error(writer: asyncio.StreamWriter, message: str) -> None:
    writer.write(json.dumps({"error": message}).encode() + b"\n")
    with contextlib.suppress(ConnectionError):
        await writer.drain()


class FlowStreamError(Exception):
    """The server refused the request (its {"error": ...} line)."""


class HistoryEnd:
    """What read_flows yields for the {"history_end": true} line (mark_history_end requests)."""


HISTORY_END = HistoryEnd()


async def read_flows(path: Path | str, request: FlowRequest) -> AsyncIterator[Record | HistoryEnd]:
    """Ask the flow stream at `path` for `request` and yield what it sends (and HISTORY_END
    where the held records end, when the request asked to mark it).

    Raises FileNotFoundError / ConnectionRefusedError when nothing serves there and
    FlowStreamError when the server refuses the request.
    """
    reader, writer = await asyncio.open_unix_connection(str(path), limit=16 * 1024 * 1024)
    try:
        writer.write(request.to_json().encode() + b"\n")
        await writer.drain()
        while line := await reader.readline():
            obj: Any = json.loads(line)
            if "error" in obj:
                raise FlowStreamError(obj["error"])
            if obj.get("history_end") is True:
                yield HISTORY_END
                continue
            yield record_from_json(obj)
    finally:
        writer.close()
        with contextlib.suppress(Exception):
            await writer.wait_closed()
