"""KV receiver: a TCP server that stages verified frames, one reader thread per connection.

Each connection must pass the HMAC handshake before any frame is read. Frames are read straight
into buffers we own (no intermediate copies; ``recv_into`` releases the GIL so the engine keeps
computing), their checksums verified, and decoded tensors staged by transfer id in a
``StagingStore``. A bad payload checksum fails that transfer only; a bad header or a closed
connection fails every unfinished transfer the connection carried: senders keep connections
open, so a close means the sender is gone (killed, restarted) and the decode side should
recompute now rather than wait for its timeout.
"""

from __future__ import annotations

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


class KVReceiver:
    def __init__(
        self,
        host: str,
        port: int,
        secret: bytes,
        store: StagingStore,
        max_frame_bytes: int = 1 << 30,
        handshake_timeout_s: float = 5.0,
        io_timeout_s: float = 30.0,
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
        self._io_timeout_s = io_timeout_s
        self._on_frame = on_frame
        self._listener: socket.socket | None = None
        self._connections: set[socket.socket] = set()
        self._lock = threading.Lock()
        self._stopping = False

    def start(self) -> None:
        """Bind, then accept on a daemon thread; raises at once if the port is taken."""
        self._listener = socket.create_server((self.host, self.port))
        self.port = self._listener.getsockname()[1]
        threading.Thread(target=self._accept_loop, name="prfaas-kv-accept", daemon=True).start()

    def stop(self) -> None:
        self._stopping = True
        if self._listener is not None:
            try:
                self._listener.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            self._listener.close()
        with self._lock:
            for conn in list(self._connections):
                try:
                    conn.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def _accept_loop(self) -> None:
        assert self._listener is not None
        while not self._stopping:
            try:
                conn, peer = self._listener.accept()
            except OSError:
                return
            tune_socket(conn)
            threading.Thread(target=self._serve, args=(conn, peer), daemon=True,
                             name=f"prfaas-kv-recv-{peer[1]}").start()

    def _serve(self, conn: socket.socket, peer: tuple) -> None:
        with self._lock:
            self._connections.add(conn)
        try:
            try:
                server_handshake(conn, self._secret, self._handshake_timeout_s)
            except (ConnectionError, TimeoutError, OSError) as exc:
                self.store.stats.auth_failures += 1
                log.warning("rejected KV peer %s: %s", peer, exc)
                return
            self._read_frames(conn, peer)
        finally:
            with self._lock:
                self._connections.discard(conn)
            conn.close()

    def _read_frames(self, conn: socket.socket, peer: tuple) -> None:
        carried: set[str] = set()
        header_buf = bytearray(HEADER_SIZE)
        try:
            while self._read_frame(conn, header_buf, carried):
                pass
            self.store.fail_unless_complete(carried, "sender closed the connection")
        except (ConnectionError, FrameError, OSError, ValueError) as exc:
            log.warning("KV connection from %s broken: %s", peer, exc)
            self.store.fail_unless_complete(carried, f"connection broken: {exc}")

    def _read_frame(self, conn: socket.socket, header_buf: bytearray, carried: set[str]) -> bool:
        """Read, verify and stage one frame; False when the peer closed between frames."""
        conn.settimeout(None)  # pooled connections idle between transfers ...
        first = conn.recv_into(header_buf)
        if first == 0:
            return False
        conn.settimeout(self._io_timeout_s)  # ... but a frame, once begun, must keep coming
        recv_into_exactly(conn, memoryview(header_buf)[first:])
        header = FrameHeader.unpack(header_buf, self._max_frame_bytes)
        buffer: bytearray | None
        buffer, payload = self.store.pool.acquire(header.payload_len)
        recv_into_exactly(conn, payload)
        received_at = time.time()
        tid = header.transfer_id
        carried.add(tid)
        if payload_checksum(payload) != header.checksum:
            self.store.pool.release(buffer)
            self.store.stats.checksum_failures += 1
            self.store.fail(tid, f"checksum mismatch in layer {header.layer} frame")
            return True
        if header.kind is FrameKind.DATA:
            codec = CODECS_BY_ID.get(header.codec)
            dtype = DTYPES_BY_CODE.get(header.dtype)
            try:
                if codec is None or dtype is None:
                    raise ValueError(f"unknown codec {header.codec} or dtype {header.dtype}")
                tensor = codec.decode(payload, dtype, header.shape)
            except ValueError as exc:
                self.store.pool.release(buffer)
                self.store.fail(tid, f"undecodable layer {header.layer} frame: {exc}")
                return True
            if not codec.views_payload:
                self.store.pool.release(buffer)  # decoded into a new tensor: buffer is free
                buffer = None
            self.store.add_frame(tid, StagedFrame(
                header.layer, header.block_start, header.num_blocks, tensor,
                tensor.numel() * tensor.element_size(), received_at, buffer,
            ))
        elif header.kind is FrameKind.END:
            info = parse_control_payload(payload)
            self.store.end(tid, int(info.get("frames", -1)), info)
        else:
            reason = parse_control_payload(payload).get("reason", "aborted by sender")
            self.store.fail(tid, f"sender aborted: {reason}")
        if self._on_frame is not None:
            self._on_frame(header, received_at)
        return True
