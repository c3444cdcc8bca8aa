"""KV receiver: an asyncio TCP server on its own thread that stages verified frames.

Each connection must pass the HMAC handshake before any frame is read. Frames are read straight
into buffers we own (no intermediate copies), their checksums verified, and decoded tensors
staged by transfer id in a ``StagingStore``. A bad payload checksum fails that transfer only; a
bad header or a closed connection fails every unfinished transfer the connection carried:
senders keep connections open, so a close means the sender is gone (killed, restarted) and
the decode side should recompute now rather than wait for its timeout.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import threading
import time
from collections.abc import Callable

from transfer.auth import server_handshake
from transfer.codecs import CODECS_BY_ID
from transfer.frames import (
    DTYPES_BY_CODE,
    HEADER_SIZE,
    FrameError,
    FrameHeader,
    FrameKind,
    parse_control_payload,
    payload_checksum,
)
from transfer.sockio import recv_into_exactly, tune_socket
from transfer.staging import StagedFrame, StagingStore

log = logging.getLogger("prfaas.transfer.receiver")

FrameObserver = Callable[[FrameHeader, float], None]


class _CleanClose(Exception):
    pass


class KVReceiver:
    def __init__(
        self,
        host: str,
        port: int,
        secret: bytes,
        store: StagingStore,
        max_frame_bytes: int = 1 << 30,
        handshake_timeout_s: float = 5.0,
        on_frame: FrameObserver | None = None,
    ) -> None:
        if not secret:
            raise ValueError("the KV receiver needs a non-empty shared secret")
        self.host = host
        self.port = port
        self.store = store
        self._secret = secret
        self._max_frame_bytes = max_frame_bytes
        self._handshake_timeout_s = handshake_timeout_s
        self._on_frame = on_frame
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._listener: socket.socket | None = None
        self._ready = threading.Event()
        self._startup_error: BaseException | None = None

    def start(self) -> None:
        """Bind and serve on a daemon thread; returns once the port is listening."""
        self._thread = threading.Thread(target=self._run, name="prfaas-kv-receiver", daemon=True)
        self._thread.start()
        self._ready.wait()
        if self._startup_error is not None:
            raise self._startup_error

    def stop(self) -> None:
        if self._loop is None or self._thread is None or not self._thread.is_alive():
            return

        async def _cancel_all() -> None:
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            asyncio.get_running_loop().stop()

        asyncio.run_coroutine_threadsafe(_cancel_all(), self._loop)
        self._thread.join(timeout=5)

    def _run(self) -> None:
        self._loop = asyncio.new_event_loop()
        try:
            listener = socket.create_server((self.host, self.port), reuse_port=False)
            listener.setblocking(False)
            self.port = listener.getsockname()[1]
            self._listener = listener
        except BaseException as exc:  # reported to start()'s caller
            self._startup_error = exc
            self._ready.set()
            return
        self._loop.create_task(self._accept_loop(listener))
        self._ready.set()
        try:
            self._loop.run_forever()
        finally:
            listener.close()
            self._loop.close()

    async def _accept_loop(self, listener: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        while True:
            conn, peer = await loop.sock_accept(listener)
            tune_socket(conn)
            loop.create_task(self._serve(conn, peer))

    async def _serve(self, conn: socket.socket, peer: tuple) -> None:
        try:
            await server_handshake(conn, self._secret, self._handshake_timeout_s)
        except (ConnectionError, TimeoutError, OSError) as exc:
            self.store.stats.auth_failures += 1
            log.warning("rejected KV peer %s: %s", peer, exc)
            conn.close()
            return
        carried: set[str] = set()
        try:
            while True:
                await self._read_frame(conn, carried)
        except _CleanClose:
            self.store.fail_unless_complete(carried, "sender closed the connection")
        except (ConnectionError, FrameError, OSError, ValueError) as exc:
            log.warning("KV connection from %s broken: %s", peer, exc)
            self.store.fail_unless_complete(carried, f"connection broken: {exc}")
        finally:
            conn.close()

    async def _read_frame(self, conn: socket.socket, carried: set[str]) -> None:
        loop = asyncio.get_running_loop()
        header_buf = bytearray(HEADER_SIZE)
        first = await loop.sock_recv_into(conn, header_buf)
        if first == 0:
            raise _CleanClose
        await recv_into_exactly(conn, memoryview(header_buf)[first:])
        header = FrameHeader.unpack(header_buf, self._max_frame_bytes)
        payload = bytearray(header.payload_len)
        await recv_into_exactly(conn, payload)
        received_at = time.time()
        tid = header.transfer_id
        carried.add(tid)
        if payload_checksum(payload) != header.checksum:
            self.store.stats.checksum_failures += 1
            self.store.fail(tid, f"checksum mismatch in layer {header.layer} frame")
            return
        if header.kind is FrameKind.DATA:
            codec = CODECS_BY_ID.get(header.codec)
            dtype = DTYPES_BY_CODE.get(header.dtype)
            if codec is None or dtype is None:
                self.store.fail(tid, f"unknown codec {header.codec} or dtype {header.dtype}")
                return
            tensor = codec.decode(payload, dtype, header.shape)
            frame = StagedFrame(
                header.layer, header.block_start, header.num_blocks, tensor,
                header.payload_len, received_at,
            )
            self.store.add_frame(tid, frame)
        elif header.kind is FrameKind.END:
            info = parse_control_payload(payload)
            self.store.end(tid, int(info.get("frames", -1)), info)
        else:
            reason = parse_control_payload(payload).get("reason", "aborted by sender")
            self.store.fail(tid, f"sender aborted: {reason}")
        if self._on_frame is not None:
            self._on_frame(header, received_at)
