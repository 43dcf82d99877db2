"""The agent's CNI socket: one JSON request line in, one JSON response line out, then close."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from pathlib import Path

from dataplane.cni.protocol import (
    DECODING_FAILURE,
    IO_FAILURE,
    MAX_MESSAGE,
    CNIError,
    Request,
    encode_response,
)
from dataplane.cni.service import CNIService

log = logging.getLogger(__name__)
READ_TIMEOUT = 10.0  # a client that connects and sends nothing is dropped after this


async def _serve_one(
    service: CNIService, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
) -> None:
    try:
        try:
            line = await asyncio.wait_for(reader.readline(), READ_TIMEOUT)
            if not line.endswith(b"\n"):
                raise CNIError(IO_FAILURE, "request not terminated by a newline")
            request = Request.decode(line)
            response = encode_response(await service.handle(request))
        except (TimeoutError, asyncio.LimitOverrunError, ValueError) as e:
            response = encode_response(error=CNIError(DECODING_FAILURE, f"bad request: {e}"))
        except CNIError as e:
            response = encode_response(error=e)
        writer.write(response)
        await writer.drain()
    except (ConnectionError, BrokenPipeError):
        pass  # the plugin gave up (timeout); the work itself is done or rolled back
    finally:
        writer.close()
        with contextlib.suppress(Exception):
            await writer.wait_closed()


async def serve_cni(service: CNIService, path: str | os.PathLike[str]) -> asyncio.AbstractServer:
    """Listen on the Unix socket `path` (mode 0600, parent created, stale socket replaced)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with contextlib.suppress(FileNotFoundError):
        path.unlink()
    old_umask = os.umask(0o177)  # the socket is born 0600: no window where others can connect
    try:
        server = await asyncio.start_unix_server(
            lambda r, w: _serve_one(service, r, w), path=str(path), limit=MAX_MESSAGE
        )
    finally:
        os.umask(old_umask)
    os.chmod(path, 0o600)
    log.info("CNI socket listening on %s", path)
    return server
