"""KV throughput of `transfer` (raw codec) over loopback against a plain-socket baseline.

Moves the KV of one 4096-token prompt of the default model (30 layers, 32 blocks of
[3 heads, 128 tokens, 2 x 64] per layer, in the served dtype) from this process to a receiver
process, and reports GB/s for:

- baseline: ``socket.sendall`` of each layer into ``recv_into`` a preallocated buffer, no
  framing, no checksum, no staging (the ceiling for one TCP connection);
- prfaas: ``KVSender`` -> ``KVReceiver`` with the authenticated handshake, frame headers,
  xxh3 checksums, staging and END accounting.

Both run in the same invocation; the ratio prfaas / baseline is the figure to quote
(goal >= 0.8). Usage: ``python benchmarks/transfer.py [--tokens 4096] [--repeats 5]``.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import socket
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402

SECRET = b"benchmark-secret"
LAYERS, HEADS, BLOCK, HEAD_DIM = 30, 3, 128, 64


def layer_tensors(tokens: int, dtype: torch.dtype) -> list[torch.Tensor]:
    blocks = -(-tokens // BLOCK)
    return [torch.randn(blocks, HEADS, BLOCK, 2 * HEAD_DIM).to(dtype) for _ in range(LAYERS)]


# ---- receivers (child processes) -----------------------------------------------------------

def baseline_receiver(port: int, layer_bytes: int, repeats: int, conn) -> None:
    with socket.create_server(("127.0.0.1", port)) as server:
        conn.send("ready")
        peer, _ = server.accept()
        buffer = memoryview(bytearray(layer_bytes * LAYERS))
        for _ in range(repeats):
            filled = 0
            while filled < len(buffer):
                got = peer.recv_into(buffer[filled:])
                if not got:
                    return
                filled += got
            conn.send("done")
        peer.close()


def prfaas_receiver(port: int, repeats: int, conn) -> None:
    from transfer.receiver import KVReceiver
    from transfer.staging import StagingStore, TransferState

    store = StagingStore(budget_bytes=8 << 30, ttl_s=600)
    receiver = KVReceiver("127.0.0.1", port, SECRET, store)
    receiver.start()
    conn.send("ready")
    for _ in range(repeats):
        tid = conn.recv()
        while store.state(tid)[0] is not TransferState.COMPLETE:
            time.sleep(0.0005)
        store.recycle(store.take(tid))
        conn.send("done")
    receiver.stop()


# ---- senders (this process) ----------------------------------------------------------------

def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def run_baseline(layers: list[torch.Tensor], repeats: int) -> list[float]:
    from transfer.codecs import tensor_bytes

    port, (parent, child) = free_port(), mp.Pipe()
    proc = mp.get_context("spawn").Process(
        target=baseline_receiver, args=(port, len(tensor_bytes(layers[0])), repeats, child))
    proc.start()
    parent.recv()
    views = [tensor_bytes(t) for t in layers]
    seconds = []
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        for _ in range(repeats):
            start = time.perf_counter()
            for view in views:
                sock.sendall(view)
            parent.recv()
            seconds.append(time.perf_counter() - start)
    proc.join()
    return seconds


def run_prfaas(layers: list[torch.Tensor], repeats: int, connections: int) -> list[float]:
    from transfer.frames import new_transfer_id
    from transfer.sender import KVSender

    port, (parent, child) = free_port(), mp.Pipe()
    proc = mp.get_context("spawn").Process(target=prfaas_receiver, args=(port, repeats, child))
    proc.start()
    parent.recv()
    sender = KVSender(SECRET, connections_per_peer=connections)
    peer = ("127.0.0.1", port)
    # Warm the connection and handshake outside the timed region, as a pooled worker would be.
    warm = new_transfer_id()
    sender.send_layer(peer, warm, 0, 0, layers[0][:1])
    sender.finish(warm, {}).result()
    seconds = []
    try:
        for _ in range(repeats):
            tid = new_transfer_id()
            parent.send(tid)
            start = time.perf_counter()
            for index, blocks in enumerate(layers):
                sender.send_layer(peer, tid, index, 0, blocks)
            sender.finish(tid, {"num_tokens": 0})
            parent.recv()
            seconds.append(time.perf_counter() - start)
    finally:
        sender.close()
        proc.join()
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tokens", type=int, default=4096)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    parser.add_argument("--connections", type=int, default=1)
    args = parser.parse_args()
    layers = layer_tensors(args.tokens, getattr(torch, args.dtype))
    total = sum(t.numel() * t.element_size() for t in layers)
    baseline = statistics.median(run_baseline(layers, args.repeats))
    prfaas = statistics.median(run_prfaas(layers, args.repeats, args.connections))
    gbps = lambda seconds: total / seconds / 1e9  # noqa: E731
    print(f"KV of a {args.tokens}-token prompt: {total / 1e6:.1f} MB in {LAYERS} layer frames "
          f"({args.dtype}), median of {args.repeats}")
    print(f"  baseline socket.sendall -> recv_into : {gbps(baseline):6.2f} GB/s")
    print(f"  prfaas transfer (raw codec, {args.connections} conn)  : {gbps(prfaas):6.2f} GB/s")
    print(f"  ratio prfaas / baseline               : {baseline / prfaas:6.2f}")


if __name__ == "__main__":
    main()
