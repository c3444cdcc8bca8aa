"""KV sender: pooled, authenticated TCP connections to receivers, driven from any thread.

The engine thread calls ``send_layer`` for each layer as it is computed and ``finish`` after the
last one; both return at once. An asyncio loop on the sender's own thread encodes, checksums
and writes the frames over ``connections_per_peer`` connections per receiver, so layer l is on
the wire while layer l+1 computes. Flow control: at most ``max_inflight_frames`` frames are
queued; when a stalled peer keeps the queue full for ``io_timeout_s`` the transfer is failed
(the receiver then recomputes) rather than buffering without bound. ``finish`` sends END once
every data frame of the transfer is written, or ABORT if any could not be.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import socket
import threading
from dataclasses import dataclass, field

import torch

from transfer.auth import client_handshake
from transfer.codecs import Codec, get_codec
from transfer.frames import (
    DTYPE_CODES,
    FrameHeader,
    FrameKind,
    control_payload,
    payload_checksum,
)
from transfer.sockio import tune_socket

log = logging.getLogger("prfaas.transfer.sender")

Address = tuple[str, int]


def parse_address(address: str) -> Address:
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit():
        raise ValueError(f"transfer address {address!r} is not host:port")
    return host, int(port)


@dataclass
class _Frame:
    transfer_id: str
    header: bytes
    payload: memoryview | bytes
    done: asyncio.Future
    control: bool  # END/ABORT frames go out even when the transfer has failed


@dataclass
class _TransferState:
    peer: Address
    frames: list[asyncio.Future] = field(default_factory=list)
    failed: str | None = None


class _Peer:
    """A bounded frame queue drained by a fixed pool of connections to one receiver."""

    def __init__(self, sender: KVSender, address: Address, connections: int) -> None:
        self.address = address
        self.queue: asyncio.Queue[_Frame | None] = asyncio.Queue()
        self.tasks = [
            asyncio.get_running_loop().create_task(self._drain(sender)) for _ in range(connections)
        ]

    async def _drain(self, sender: KVSender) -> None:
        sock: socket.socket | None = None
        loop = asyncio.get_running_loop()
        while True:
            frame = await self.queue.get()
            if frame is None:
                break
            state = sender._transfers.get(frame.transfer_id)
            if state is not None and state.failed and not frame.control:
                frame.done.set_result(False)
                continue
            try:
                if sock is None:
                    sock = await sender._connect(self.address)
                async with asyncio.timeout(sender.io_timeout_s):
                    await loop.sock_sendall(sock, frame.header)
                    if frame.payload:
                        await loop.sock_sendall(sock, frame.payload)
                frame.done.set_result(True)
            except (OSError, ConnectionError, TimeoutError) as exc:
                log.warning("KV send to %s:%s failed: %s", *self.address, exc)
                if sock is not None:
                    sock.close()
                    sock = None
                if state is not None:
                    state.failed = state.failed or f"send failed: {exc}"
                frame.done.set_result(False)
        if sock is not None:
            sock.close()


class KVSender:
    def __init__(
        self,
        secret: bytes,
        codec: str = "raw",
        connections_per_peer: int = 1,
        max_inflight_frames: int = 256,
        connect_timeout_s: float = 5.0,
        io_timeout_s: float = 30.0,
    ) -> None:
        if not secret:
            raise ValueError("the KV sender needs a non-empty shared secret")
        self.codec: Codec = get_codec(codec)
        self.connections_per_peer = connections_per_peer
        self.connect_timeout_s = connect_timeout_s
        self.io_timeout_s = io_timeout_s
        self._secret = secret
        self._slots = threading.BoundedSemaphore(max_inflight_frames)
        self._peers: dict[Address, _Peer] = {}
        self._transfers: dict[str, _TransferState] = {}
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="prfaas-kv-sender",
                                        daemon=True)
        self._thread.start()

    # ---- called from the engine thread -------------------------------------------------

    def send_layer(
        self, peer: Address, transfer_id: str, layer: int, block_start: int, blocks: torch.Tensor
    ) -> bool:
        """Queue one layer's blocks (a tensor the caller no longer mutates). False if the
        transfer has already failed or the queue stayed full past the I/O timeout."""
        if not self._slots.acquire(timeout=self.io_timeout_s):
            self._loop.call_soon_threadsafe(self._fail, transfer_id, "send queue stalled")
            return False
        self._loop.call_soon_threadsafe(
            self._queue_data, peer, transfer_id, layer, block_start, blocks
        )
        return True

    def finish(self, transfer_id: str, info: dict) -> concurrent.futures.Future:
        """Send END after every queued frame of the transfer; resolves to True on success."""
        return asyncio.run_coroutine_threadsafe(self._finish(transfer_id, info), self._loop)

    def abort(self, transfer_id: str, reason: str) -> concurrent.futures.Future:
        return asyncio.run_coroutine_threadsafe(self._abort(transfer_id, reason), self._loop)

    def close(self) -> None:
        async def _shutdown() -> None:
            for peer in self._peers.values():
                for _ in peer.tasks:
                    peer.queue.put_nowait(None)
            await asyncio.gather(*(t for p in self._peers.values() for t in p.tasks),
                                 return_exceptions=True)

        if self._loop.is_running():
            asyncio.run_coroutine_threadsafe(_shutdown(), self._loop).result(timeout=10)
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout=5)

    # ---- on the sender loop --------------------------------------------------------------

    def _state(self, transfer_id: str, peer: Address) -> _TransferState:
        state = self._transfers.get(transfer_id)
        if state is None:
            state = self._transfers[transfer_id] = _TransferState(peer)
        return state

    def _peer(self, address: Address) -> _Peer:
        peer = self._peers.get(address)
        if peer is None:
            peer = self._peers[address] = _Peer(self, address, self.connections_per_peer)
        return peer

    def _fail(self, transfer_id: str, reason: str) -> None:
        state = self._transfers.get(transfer_id)
        if state is not None:
            state.failed = state.failed or reason

    def _enqueue(self, peer: Address, header: FrameHeader, payload: memoryview | bytes
                 ) -> asyncio.Future:
        done = self._loop.create_future()
        control = header.kind is not FrameKind.DATA
        frame = _Frame(header.transfer_id, header.pack(), payload, done, control)
        self._peer(peer).queue.put_nowait(frame)
        return done

    def _queue_data(self, peer: Address, transfer_id: str, layer: int, block_start: int,
                    blocks: torch.Tensor) -> None:
        state = self._state(transfer_id, peer)
        if state.failed:
            self._slots.release()
            return
        payload = self.codec.encode(blocks)
        header = FrameHeader(
            kind=FrameKind.DATA, transfer_id=transfer_id, layer=layer, block_start=block_start,
            num_blocks=blocks.shape[0], codec=self.codec.codec_id,
            dtype=DTYPE_CODES[blocks.dtype], shape=tuple(blocks.shape),
            raw_len=blocks.numel() * blocks.element_size(), payload_len=len(payload),
            checksum=payload_checksum(payload),
        )
        done = self._enqueue(peer, header, payload)
        done.add_done_callback(lambda _: self._slots.release())
        state.frames.append(done)

    def _control(self, peer: Address, transfer_id: str, kind: FrameKind, info: dict
                 ) -> asyncio.Future:
        payload = control_payload(info)
        header = FrameHeader(kind=kind, transfer_id=transfer_id, payload_len=len(payload),
                             raw_len=len(payload), checksum=payload_checksum(payload))
        return self._enqueue(peer, header, payload)

    async def _finish(self, transfer_id: str, info: dict) -> bool:
        state = self._transfers.get(transfer_id)
        if state is None:
            return False
        results = await asyncio.gather(*state.frames)
        try:
            if state.failed or not all(results):
                reason = state.failed or "a frame could not be sent"
                await self._control(state.peer, transfer_id, FrameKind.ABORT, {"reason": reason})
                return False
            frames = {"frames": len(state.frames), **info}
            return await self._control(state.peer, transfer_id, FrameKind.END, frames)
        finally:
            self._transfers.pop(transfer_id, None)

    async def _abort(self, transfer_id: str, reason: str) -> bool:
        state = self._transfers.pop(transfer_id, None)
        if state is None:
            return False
        state.failed = reason
        await asyncio.gather(*state.frames)
        return await self._control(state.peer, transfer_id, FrameKind.ABORT, {"reason": reason})

    async def _connect(self, address: Address) -> socket.socket:
        loop = asyncio.get_running_loop()
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        tune_socket(sock)
        try:
            async with asyncio.timeout(self.connect_timeout_s):
                await loop.sock_connect(sock, address)
            await client_handshake(sock, self._secret, self.connect_timeout_s)
        except BaseException:
            sock.close()
            raise
        return sock
