"""The lab's small JSON-over-HTTP/1.1 servers (the feed, the OMS admin API): one request
per connection, read with a deadline, answered as JSON, then closed."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Awaitable, Callable
from typing import Any

from openbell.lab.paths import LabError

READ_TIMEOUT_S = 10.0
MAX_BODY = 64 * 1024
_REASONS = {
    200: "OK",
    400: "Bad Request",
    404: "Not Found",
    405: "Method Not Allowed",
}

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


async def listen(
    routes: dict[tuple[str, int], Any],
    handler: Callable[..., Awaitable[None]],
    what: str,
    keyword: str,
) -> list[asyncio.Server]:
    """Bind one server per (address, port); ``handler`` gets the route as ``keyword``.

    Raises:
        LabError: an address:port cannot be bound (the servers bound so far stay open
            for the caller's ``close``).
    """
    servers: list[asyncio.Server] = []
    for (address, port), route in routes.items():
        bound: Handler = _bind(handler, keyword, route)
        try:
            servers.append(await asyncio.start_server(bound, address, port, reuse_address=True))
        except OSError as exc:
            raise LabError(
                f"{what}: cannot listen on {address}:{port}: {exc.strerror or exc}"
            ) from None
    return servers


def _bind(handler: Callable[..., Awaitable[None]], keyword: str, route: Any) -> Handler:
    async def bound(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await handler(reader, writer, **{keyword: route})

    return bound


async def close(servers: list[asyncio.Server]) -> None:
    """Stop accepting and wait (briefly) for the servers to close."""
    for server in servers:
        server.close()
    for server in servers:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(server.wait_closed(), 2.0)


async def read_request(reader: asyncio.StreamReader) -> tuple[str, str, bytes]:
    """(method, target, body) of one HTTP/1.x request.

    Raises:
        ValueError: a malformed request line, or a body over ``MAX_BODY``.
    """
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    parts = lines[0].split()
    if len(parts) != 3 or not parts[2].startswith("HTTP/"):
        raise ValueError(f"bad request line {lines[0]!r}")
    length = 0
    for line in lines[1:]:
        name, _, value = line.partition(":")
        if name.strip().lower() == "content-length":
            length = int(value.strip())
    if length > MAX_BODY:
        raise ValueError(f"body of {length} bytes is too large")
    body = await reader.readexactly(length) if length else b""
    return parts[0].upper(), parts[1], body


def write_response(
    writer: asyncio.StreamWriter,
    code: int,
    body: dict[str, Any],
    *,
    server: str,
    head_only: bool = False,
) -> None:
    """A JSON answer and ``Connection: close``."""
    data = json.dumps(body).encode()
    head = (
        f"HTTP/1.1 {code} {_REASONS.get(code, 'Error')}\r\n"
        "Content-Type: application/json\r\n"
        f"Content-Length: {len(data)}\r\n"
        "Connection: close\r\n"
        f"Server: {server}\r\n\r\n"
    )
    writer.write(head.encode() + (b"" if head_only else data))


async def finish(writer: asyncio.StreamWriter) -> None:
    """Close the connection, ignoring a peer that already left."""
    writer.close()
    with contextlib.suppress(ConnectionError):
        await writer.wait_closed()
