"""vLLM KV cache events: the wire structs and a ZMQ subscriber.

vLLM publishes ``KVEventBatch`` messages as three ZMQ frames ``[topic, seq (8 bytes, big
endian), msgpack payload]`` when started with ``--kv-events-config``. A batch is an array
``[ts, events, data_parallel_rank]``; each event is a msgpack map tagged by its class name
(``BlockStored``, ``BlockRemoved``, ``AllBlocksCleared``). Block hashes are the low 64 bits of
vLLM's block hash as unsigned ints by default (see ``router.block_hash.event_key``), or raw
bytes when the server sets ``VLLM_KV_EVENTS_USE_INT_BLOCK_HASHES=0``.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import msgspec
import zmq

BlockHashKey = bytes | int


class KVCacheEvent(msgspec.Struct, tag=True, omit_defaults=True, gc=False):
    pass


class BlockStored(KVCacheEvent):
    block_hashes: list[BlockHashKey]
    parent_block_hash: BlockHashKey | None
    token_ids: list[int]
    block_size: int
    lora_id: int | None = None
    medium: str | None = None
    lora_name: str | None = None
    extra_keys: list[tuple[Any, ...] | None] | None = None
    group_idx: int | None = None


class BlockRemoved(KVCacheEvent):
    block_hashes: list[BlockHashKey]
    medium: str | None = None
    group_idx: int | None = None


class AllBlocksCleared(KVCacheEvent):
    pass


class KVEventBatch(msgspec.Struct, array_like=True, omit_defaults=True, gc=False):
    ts: float
    events: list[BlockStored | BlockRemoved | AllBlocksCleared]
    data_parallel_rank: int | None = None


DECODER = msgspec.msgpack.Decoder(type=KVEventBatch)


def events_config(endpoint: str, topic: str = "kv") -> dict[str, Any]:
    """vLLM's ``--kv-events-config`` for a publisher on ``endpoint``. An ``ipc://`` path or
    a ``tcp://*:port`` endpoint makes vLLM bind; ``tcp://host:port`` makes it connect."""
    return {"enable_kv_cache_events": True, "publisher": "zmq", "endpoint": endpoint,
            "topic": topic}


class KVEventSubscriber:
    """Receives one worker's event batches on a daemon thread and hands them to a callback
    as ``(seq, batch)``; a sequence number that goes backwards means the worker restarted."""

    def __init__(self, endpoint: str, on_batch: Callable[[int, KVEventBatch], None],
                 topic: str = "") -> None:
        self.endpoint = endpoint
        self._on_batch = on_batch
        self._topic = topic
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="prfaas-kv-events", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def _run(self) -> None:
        context = zmq.Context.instance()
        socket = context.socket(zmq.SUB)
        socket.setsockopt(zmq.LINGER, 0)
        socket.setsockopt(zmq.SUBSCRIBE, self._topic.encode())
        socket.connect(self.endpoint)
        try:
            while not self._stop.is_set():
                if not socket.poll(200):
                    continue
                _topic, seq, payload = socket.recv_multipart()
                self._on_batch(int.from_bytes(seq, "big"), DECODER.decode(payload))
        finally:
            socket.close()
