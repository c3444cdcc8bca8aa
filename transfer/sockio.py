"""Zero-copy asyncio socket helpers: read exactly n bytes into a buffer we own."""

from __future__ import annotations

import asyncio
import socket


async def recv_into_exactly(sock: socket.socket, buffer: bytearray | memoryview) -> None:
    """Fill ``buffer`` from ``sock``; raise ConnectionError if the peer closes first."""
    loop = asyncio.get_running_loop()
    view = memoryview(buffer).cast("B")
    filled = 0
    while filled < len(view):
        got = await loop.sock_recv_into(sock, view[filled:])
        if got == 0:
            raise ConnectionError(f"peer closed after {filled} of {len(view)} bytes")
        filled += got


async def recv_exactly(sock: socket.socket, size: int) -> bytearray:
    buffer = bytearray(size)
    await recv_into_exactly(sock, buffer)
    return buffer


def tune_socket(sock: socket.socket, buffer_bytes: int = 4 << 20) -> None:
    """Non-blocking, no Nagle delay, large kernel buffers for bulk KV."""
    sock.setblocking(False)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    for option in (socket.SO_SNDBUF, socket.SO_RCVBUF):
        try:
            sock.setsockopt(socket.SOL_SOCKET, option, buffer_bytes)
        except OSError:
            pass
