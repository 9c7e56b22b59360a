"""The HTTP/1.1 layer of the scripted server: parse requests from asyncio streams, write JSON responses."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

_REASONS = {
    200: "OK",
    400: "Bad Request",
    404: "Not Found",
    405: "Method Not Allowed",
    408: "Request Timeout",
    409: "Conflict",
    413: "Payload Too Large",
    429: "Too Many Requests",
    431: "Request Header Fields Too Large",
    500: "Internal Server Error",
    502: "Bad Gateway",
    503: "Service Unavailable",
    504: "Gateway Timeout",
}
_MAX_BODY = 64 * 1024 * 1024


@dataclass(slots=True)
class HTTPRequest:
    """One parsed HTTP request."""

    method: str
    path: str
    body: bytes
    keep_alive: bool


class HTTPError(Exception):
    """An error answered with an OpenAI-shaped JSON body."""

    def __init__(
        self, status: int, message: str, type_: str = "invalid_request_error", headers: dict | None = None
    ):
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type_
        self.headers = headers or {}


def _error_body(status: int, message: str, type_: str) -> bytes:
    code = "not_found" if status == 404 else None
    return json.dumps({"error": {"message": message, "type": type_, "param": None, "code": code}}).encode()


async def read_request(reader: asyncio.StreamReader) -> HTTPRequest | None:
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except asyncio.IncompleteReadError as exc:
        if exc.partial.strip():
            raise HTTPError(400, "incomplete request head") from None
        return None  # clean end of a keep-alive connection
    except asyncio.LimitOverrunError:
        raise HTTPError(431, "request head too large") from None
    lines = head.decode("latin-1").split("\r\n")
    try:
        method, target, version = lines[0].split(" ", 2)
    except ValueError:
        raise HTTPError(400, f"malformed request line {lines[0]!r}") from None
    headers: dict[str, str] = {}
    for line in lines[1:]:
        name, sep, value = line.partition(":")
        if sep:
            headers[name.strip().lower()] = value.strip()
    if "chunked" in headers.get("transfer-encoding", "").lower():
        body = await read_chunked(reader)
    else:
        try:
            length = int(headers.get("content-length", "0"))
        except ValueError:
            raise HTTPError(400, "invalid Content-Length") from None
        if length > _MAX_BODY:
            raise HTTPError(413, f"request body over {_MAX_BODY} bytes")
        body = await reader.readexactly(length) if length > 0 else b""
    connection = headers.get("connection", "").lower()
    keep_alive = connection != "close" if version == "HTTP/1.1" else connection == "keep-alive"
    return HTTPRequest(method.upper(), target.split("?", 1)[0], body, keep_alive)


async def read_chunked(reader: asyncio.StreamReader) -> bytes:
    parts: list[bytes] = []
    total = 0
    while True:
        size_line = await reader.readline()
        try:
            size = int(size_line.split(b";", 1)[0].strip(), 16)
        except ValueError:
            raise HTTPError(400, "malformed chunk size") from None
        if size == 0:
            while (await reader.readline()).strip():  # trailers, up to the blank line
                pass
            return b"".join(parts)
        total += size
        if total > _MAX_BODY:
            raise HTTPError(413, f"request body over {_MAX_BODY} bytes")
        parts.append(await reader.readexactly(size))
        await reader.readexactly(2)


def write_response(
    writer: asyncio.StreamWriter,
    status: int,
    payload: bytes,
    keep_alive: bool,
    headers: dict[str, Any] | None = None,
) -> None:
    extra = "".join(f"{k}: {v}\r\n" for k, v in headers.items()) if headers else ""
    head = (
        f"HTTP/1.1 {status} {_REASONS.get(status, 'Error')}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(payload)}\r\n"
        f"Connection: {'keep-alive' if keep_alive else 'close'}\r\n{extra}\r\n"
    )
    writer.write(head.encode("latin-1") + payload)


def write_error(writer: asyncio.StreamWriter, err: HTTPError, keep_alive: bool) -> None:
    write_response(
        writer, err.status, _error_body(err.status, err.message, err.type), keep_alive, err.headers
    )


async def write_drip(writer: asyncio.StreamWriter, interval: float) -> None:
    """A 200 head promising a large body, then one space (valid leading JSON whitespace) per ``interval``."""
    writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 1000000\r\n\r\n")
    while True:
        writer.write(b" ")
        await writer.drain()
        await asyncio.sleep(interval)


async def write_chunked(writer: asyncio.StreamWriter, parts: Iterable[bytes]) -> None:
    """A 200 JSON response sent chunked, one part at a time as ``parts`` yields them; the connection closes."""
    writer.write(
        b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n"
        b"Connection: close\r\n\r\n"
    )
    for part in parts:
        writer.write(b"%x\r\n%s\r\n" % (len(part), part))
        await writer.drain()  # the client may stop reading: then this raises and the connection ends
    writer.write(b"0\r\n\r\n")
    await writer.drain()
