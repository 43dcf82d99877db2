"""The real cluster store: the KV contract on etcd v3 through aetcd (asyncio, gRPC)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Sequence
from urllib.parse import urlsplit

import aetcd
import aetcd.exceptions
import aetcd.utils

from flowscope.errors import FlowscopeError
from flowscope.store.kv import Compare, Delete, KeyValue, Put, WatchEvent

log = logging.getLogger(__name__)

# How long a single request may take before the store counts as unreachable.
_REQUEST_TIMEOUT = 10
# Pause between attempts to resubscribe a watch whose connection dropped.
_RESUBSCRIBE_DELAY = 0.2
# gRPC refuses messages over 4 MiB by default; one range or one watch response can be bigger
# (10,000 services applied in one transaction arrive as one ~5 MB watch response), and a refused
# response broke every watcher for good. etcd itself caps what it sends (math.MaxInt32).
_CHANNEL_OPTIONS = {"grpc.max_receive_message_length": -1}


class StoreUnreachable(FlowscopeError):
    def __init__(self, url: str, cause: BaseException | None = None) -> None:
        detail = f" ({cause})" if cause else ""
        super().__init__(
            f"cannot reach the cluster store at {url}{detail}",
            hint="is the lab up? `flowscope lab status`",
        )


class EtcdKV:
    """KV on etcd; `prefix` is prepended to every key and stripped from every key returned."""

    def __init__(self, url: str, prefix: str = "") -> None:
        parts = urlsplit(url if "://" in url else f"http://{url}")
        if not parts.hostname or not parts.port:
            raise FlowscopeError(f"bad cluster store URL {url!r}", hint="expected http://HOST:PORT")
        self.url = url
        self._prefix = prefix
        self._client = aetcd.Client(
            host=parts.hostname,
            port=parts.port,
            timeout=_REQUEST_TIMEOUT,
            options=_CHANNEL_OPTIONS,
        )

    def _k(self, key: str) -> bytes:
        return (self._prefix + key).encode()

    def _kv(self, raw) -> KeyValue:
        key = raw.key.decode()[len(self._prefix) :]
        return KeyValue(key, bytes(raw.value), raw.mod_revision, raw.create_revision)

    async def _call(self, coro):
        try:
            return await coro
        except (
            aetcd.exceptions.ConnectionFailedError,
            aetcd.exceptions.ConnectionTimeoutError,
        ) as e:
            raise StoreUnreachable(self.url, e) from e
        except aetcd.exceptions.ClientError as e:
            raise FlowscopeError(f"cluster store at {self.url} refused the request: {e}") from e

    async def get(self, key: str) -> KeyValue | None:
        raw = await self._call(self._client.get(self._k(key)))
        return self._kv(raw) if raw is not None else None

    async def range(self, prefix: str) -> tuple[list[KeyValue], int]:
        res = await self._call(self._client.get_prefix(self._k(prefix)))
        return [self._kv(kv) for kv in res.kvs], res.header.revision

    async def put(self, key: str, value: bytes) -> int:
        res = await self._call(self._client.put(self._k(key), value))
        return res.header.revision

    async def delete(self, key: str) -> bool:
        res = await self._call(self._client.delete(self._k(key)))
        return res is not None

    async def txn(self, compares: Sequence[Compare], ops: Sequence[Put | Delete]) -> bool:
        t = self._client.transactions
        conds = []
        for c in compares:
            if c.mod_revision == 0:
                # a key that does not exist has version 0 (a deleted key's version resets to 0)
                conds.append(t.version(self._k(c.key)) == 0)
            else:
                conds.append(t.mod(self._k(c.key)) == c.mod_revision)
        requests = [
            t.put(self._k(op.key), op.value) if isinstance(op, Put) else t.delete(self._k(op.key))
            for op in ops
        ]
        succeeded, _ = await self._call(self._client.transaction(conds, requests, []))
        return bool(succeeded)

    async def watch(self, prefix: str, start_revision: int) -> AsyncIterator[WatchEvent]:
        next_rev = start_revision
        while True:
            try:
                watch = await self._client.watch_prefix(self._k(prefix), start_revision=next_rev)
            except (
                aetcd.exceptions.ConnectionFailedError,
                aetcd.exceptions.ConnectionTimeoutError,
                aetcd.exceptions.WatchTimeoutError,
            ) as e:
                log.warning("watch %s: cannot subscribe yet (%s); retrying", prefix, e)
                await asyncio.sleep(_RESUBSCRIBE_DELAY)
                continue
            except aetcd.exceptions.RevisionCompactedError as e:
                raise FlowscopeError(
                    f"cannot watch {prefix!r} from revision {next_rev}: {e}",
                    hint="list again and watch from the revision of that list",
                ) from e
            try:
                async for ev in watch:
                    kv = self._kv(ev.kv)
                    kind = "put" if ev.kind == "PUT" else "delete"
                    if kind == "delete":
                        kv = KeyValue(kv.key, b"", kv.mod_revision, 0)
                    next_rev = kv.mod_revision + 1
                    yield WatchEvent(kind, kv)
                return  # the stream ended without an error: the client was closed
            except aetcd.exceptions.RevisionCompactedError as e:
                raise FlowscopeError(
                    f"cannot watch {prefix!r} from revision {next_rev}: {e}",
                    hint="list again and watch from the revision of that list",
                ) from e
            except aetcd.exceptions.ClientError as e:
                # the connection dropped: etcd keeps history, so nothing is lost by resubscribing
                log.info("watch %s interrupted (%s); resubscribing from %d", prefix, e, next_rev)
                await asyncio.sleep(_RESUBSCRIBE_DELAY)
            finally:
                try:
                    await watch.cancel()
                except Exception:  # the stream may already be gone; nothing left to cancel
                    log.debug("watch cancel failed", exc_info=True)

    async def close(self) -> None:
        await self._client.close()

    async def __aenter__(self) -> EtcdKV:
        return self

    async def __aexit__(self, *exc) -> None:
        await self.close()
