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


END_SEQ = -1


def replay_endpoint_for(endpoint: str) -> str:
    """The replay endpoint paired with an events endpoint, by convention: ``ipc://P`` ->
    ``ipc://P.replay``; ``tcp://H:N`` -> ``tcp://H:N+1``."""
    if endpoint.startswith("ipc://"):
        return endpoint + ".replay"
    head, _, port = endpoint.rpartition(":")
    if not port.isdigit():
        raise ValueError(f"KV events endpoint {endpoint!r} is neither ipc://PATH nor tcp://HOST:PORT")
    return f"{head}:{int(port) + 1}"


def events_config(endpoint: str, topic: str = "kv") -> dict[str, Any]:
    """vLLM's ``--kv-events-config`` publishing on ``endpoint`` with replay on its pair. An
    ``ipc://`` path or ``tcp://*:port`` makes vLLM bind (what workers want)."""
    return {"enable_kv_cache_events": True, "publisher": "zmq", "endpoint": endpoint,
            "replay_endpoint": replay_endpoint_for(endpoint), "topic": topic}


def subscriber_endpoint(endpoint: str, host: str) -> str:
    """Where a subscriber connects for a worker publishing on ``endpoint``: ``tcp://*:N`` is
    reached at ``tcp://host:N``; ipc paths are used as they are."""
    return endpoint.replace("tcp://*:", f"tcp://{host}:")


class KVEventSubscriber:
    """Receives one worker's event batches on a daemon thread and hands them to a callback
    as ``(seq, batch)``.

    With a replay endpoint, it first asks the worker to replay its buffered batches from
    sequence 0 (so a restarted gateway rebuilds its index), then follows the live stream,
    skipping batches it already applied. A sequence number that goes backwards means the
    worker restarted: ``on_reset`` is called before the batch is applied.
    """

    def __init__(self, endpoint: str, on_batch: Callable[[int, KVEventBatch], None],
                 replay_endpoint: str | None = None, on_reset: Callable[[], None] | None = None,
                 topic: str = "") -> None:
        self.endpoint = endpoint
        self.replay_endpoint = replay_endpoint
        self.last_seq = -1
        self._replayed_up_to = -1
        self._on_batch = on_batch
        self._on_reset = on_reset
        self._topic = topic
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="prfaas-kv-events", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def _deliver(self, seq: int, payload: bytes) -> None:
        if seq <= self.last_seq:
            if seq <= self._replayed_up_to:
                return  # replayed already: the live stream overlaps the replay
            if self._on_reset is not None:
                self._on_reset()  # the worker restarted and counts from 0 again
        self._replayed_up_to = -1  # past the overlap: a lower seq now means a restart
        self.last_seq = seq
        self._on_batch(seq, DECODER.decode(payload))

    def _replay(self, context: zmq.Context) -> None:
        assert self.replay_endpoint is not None
        dealer = context.socket(zmq.DEALER)
        dealer.setsockopt(zmq.LINGER, 0)
        dealer.connect(self.replay_endpoint)
        try:
            dealer.send_multipart([b"", (self.last_seq + 1).to_bytes(8, "big")])
            while not self._stop.is_set() and dealer.poll(2000):
                _empty, _topic, seq, payload = dealer.recv_multipart()
                number = int.from_bytes(seq, "big", signed=True)
                if number == END_SEQ:
                    break
                self._deliver(number, payload)
            self._replayed_up_to = self.last_seq
        finally:
            dealer.close()

    def _run(self) -> None:
        context = zmq.Context.instance()
        socket = context.socket(zmq.SUB)
        socket.setsockopt(zmq.LINGER, 0)
        socket.setsockopt(zmq.SUBSCRIBE, self._topic.encode())
        socket.connect(self.endpoint)
        try:
            if self.replay_endpoint:
                self._replay(context)
            while not self._stop.is_set():
                if not socket.poll(200):
                    continue
                _topic, seq, payload = socket.recv_multipart()
                self._deliver(int.from_bytes(seq, "big"), payload)
        finally:
            socket.close()
