"""Zero-copy socket helpers: read exactly n bytes into a buffer we own; tune bulk sockets.

Transfer I/O runs on dedicated threads with blocking sockets: ``recv_into`` and ``sendall``
release the GIL and move bulk KV in few, large system calls.
"""

from __future__ import annotations

import socket


def recv_into_exactly(sock: socket.socket, buffer: bytearray | memoryview) -> None:
    """Fill ``buffer`` from ``sock``; raise ConnectionError if the peer closes first."""
    view = memoryview(buffer).cast("B")
    filled = 0
    while filled < len(view):
        got = sock.recv_into(view[filled:])
        if got == 0:
            raise ConnectionError(f"peer closed after {filled} of {len(view)} bytes")
        filled += got


def recv_exactly(sock: socket.socket, size: int) -> bytearray:
    buffer = bytearray(size)
    recv_into_exactly(sock, buffer)
    return buffer


def tune_socket(sock: socket.socket, buffer_bytes: int = 4 << 20) -> None:
    """No Nagle delay, large kernel buffers for bulk KV."""
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    for option in (socket.SO_SNDBUF, socket.SO_RCVBUF):
        try:
            sock.setsockopt(socket.SOL_SOCKET, option, buffer_bytes)
        except OSError:
            pass
