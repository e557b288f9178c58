"""The metrics port: ``/metrics`` (Prometheus text), ``/healthz`` and ``/readyz``.

A minimal HTTP/1.0-style responder on the gateway's own event loop: one request per
connection, GET only. It serves scrapes and probes, nothing else, so it needs no web
framework. Requests are bounded (``MAX_REQUEST_BYTES``) and time out (``READ_TIMEOUT_S``).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

# A scrape request line plus headers is a few hundred bytes; 8 KiB is generous.
MAX_REQUEST_BYTES = 8_192
# Prometheus and probes send their request at once; a client silent this long is dropped.
READ_TIMEOUT_S = 5.0


class MetricsServer:
    """Serves the registry and the two probes; ``ready()`` returns (ok, reason)."""

    def __init__(
        self,
        registry: CollectorRegistry,
        ready: Callable[[], tuple[bool, str]],
        render: Callable[[], bytes] | None = None,
    ) -> None:
        self._registry = registry
        self._ready = ready
        self._render = render or (lambda: generate_latest(self._registry))
        self._server: asyncio.Server | None = None

    async def start(self, host: str, port: int) -> int:
        self._server = await asyncio.start_server(self._handle, host, port)
        sock = self._server.sockets[0]
        return int(sock.getsockname()[1])

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            async with asyncio.timeout(READ_TIMEOUT_S):
                head = await reader.readuntil(b"\r\n\r\n")
        except (TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
            writer.close()
            return
        except ConnectionError:
            writer.close()
            return
        if len(head) > MAX_REQUEST_BYTES:
            await self._respond(writer, 431, b"request too large\n")
            return
        parts = head.split(b"\r\n", 1)[0].split()
        method = parts[0] if parts else b""
        path = parts[1].split(b"?", 1)[0] if len(parts) > 1 else b""
        if method not in (b"GET", b"HEAD"):
            await self._respond(writer, 405, b"method not allowed\n")
        elif path == b"/metrics":
            await self._respond(writer, 200, self._render(), CONTENT_TYPE_LATEST)
        elif path in (b"/healthz", b"/livez"):
            await self._respond(writer, 200, b"ok\n")
        elif path == b"/readyz":
            ok, reason = self._ready()
            await self._respond(writer, 200 if ok else 503, (reason + "\n").encode())
        else:
            await self._respond(writer, 404, b"not found\n")

    @staticmethod
    async def _respond(
        writer: asyncio.StreamWriter,
        status: int,
        body: bytes,
        content_type: str = "text/plain; charset=utf-8",
    ) -> None:
        reason = {200: "OK", 404: "Not Found", 405: "Method Not Allowed", 503: "Unavailable"}
        head = (
            f"HTTP/1.1 {status} {reason.get(status, 'Error')}\r\n"
            f"Content-Type: {content_type}\r\nContent-Length: {len(body)}\r\n"
            "Connection: close\r\n\r\n"
        ).encode()
        try:
            writer.write(head + body)
            await writer.drain()
        except ConnectionError:
            pass
        finally:
            writer.close()
