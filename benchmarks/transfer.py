"""KV transfer over loopback: throughput vs plain sockets, codecs, and TTFT on shaped links.

All tables come from one run, on the KV of one 4096-token prompt of the default model (30
layers of [32 blocks, 3 heads, 128 tokens, 2 x 64], float32). The receiver is a separate
process on 127.0.0.1.

1. Throughput, raw codec: ``KVSender`` -> ``KVReceiver`` (handshake, frame headers, xxh3
   checksums, staging, END accounting) against ``socket.sendall`` into ``recv_into`` a
   preallocated buffer (the one-connection ceiling). Goal: ratio >= 0.8.
2. Codecs: ratio, encode/decode GB/s per core, error (``benchmarks/kv_codecs.py`` on the same
   synthetic KV-like data; see its docstring).
3. TTFT on emulated links (``LinkShaper``: 1, 10, 25 Gbit/s) with and without layer
   pipelining. This isolates the transfer: a stand-in producer releases layer l at
   ``(l + 1) / 30`` of ``--prefill-s`` (pipelined, as ``save_kv_layer`` does) or all layers
   at ``--prefill-s`` (not pipelined); "TTFT" is when the receiver holds the complete
   transfer. ``hidden`` = the share of the unpipelined transfer time that pipelining removes.
   The default ``--prefill-s`` is the 4096-token prefill time measured on this machine with
   the real prefill worker (see the closing note of the compression issue).

Usage: ``python benchmarks/transfer.py [--tokens 4096] [--repeats 7] [--prefill-s 6.0]``.
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
sys.path.append(str(Path(__file__).resolve().parent))  # kv_codecs; last: this is transfer.py

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


def shaped_ttft(layers: list[torch.Tensor], codec: str, gbps: float, prefill_s: float,
                pipelined: bool, connections: int) -> float:
    """Seconds from prefill start until the receiver holds the whole transfer."""
    from transfer.frames import new_transfer_id
    from transfer.sender import KVSender
    from transfer.shaping import LinkShaper

    port, (parent, child) = free_port(), mp.Pipe()
    proc = mp.get_context("spawn").Process(target=prfaas_receiver, args=(port, 1, child))
    proc.start()
    parent.recv()
    sender = KVSender(SECRET, codec=codec, connections_per_peer=connections,
                      shaper=LinkShaper(gbps), max_inflight_frames=64)
    peer = ("127.0.0.1", port)
    try:
        tid = new_transfer_id()
        parent.send(tid)
        start = time.perf_counter()
        for index, blocks in enumerate(layers):
            release = start + prefill_s * ((index + 1) / len(layers) if pipelined else 1.0)
            time.sleep(max(0.0, release - time.perf_counter()))
            sender.send_layer(peer, tid, index, 0, blocks)
        sender.finish(tid, {"num_tokens": 0})
        parent.recv()
        return time.perf_counter() - start
    finally:
        sender.close()
        proc.join()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tokens", type=int, default=4096)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    parser.add_argument("--connections", type=int, default=1)
    parser.add_argument("--prefill-s", type=float, default=6.0)
    parser.add_argument("--links", default="1,10,25", help="Gbit/s, comma-separated")
    parser.add_argument("--codecs", default="raw,lossless,fp8,int8")
    args = parser.parse_args()
    dtype = getattr(torch, args.dtype)
    layers = layer_tensors(args.tokens, dtype)
    total = sum(t.numel() * t.element_size() for t in layers)
    baseline = statistics.median(run_baseline(layers, args.repeats))
    prfaas = statistics.median(run_prfaas(layers, args.repeats, args.connections))
    gbps = lambda seconds: total / seconds / 1e9  # noqa: E731
    print(f"KV of a {args.tokens}-token prompt: {total / 1e6:.1f} MB in {LAYERS} layer frames "
          f"({args.dtype}), median of {args.repeats}")
    print(f"  baseline socket.sendall -> recv_into : {gbps(baseline):6.2f} GB/s")
    print(f"  prfaas transfer (raw codec, {args.connections} conn)  : {gbps(prfaas):6.2f} GB/s")
    print(f"  ratio prfaas / baseline               : {baseline / prfaas:6.2f}")

    from kv_codecs import measure, synthetic_layer

    kv = [synthetic_layer(args.tokens // 128, layer, dtype) for layer in range(LAYERS)]
    codecs = args.codecs.split(",")
    print("\nCodecs on synthetic KV-like data (1 torch thread; see benchmarks/kv_codecs.py)")
    print(f"  {'codec':<12} {'ratio':>6} {'enc GB/s':>9} {'dec GB/s':>9} {'mean rel err':>13}")
    torch.set_num_threads(1)
    for name in codecs:
        row = measure(name, kv, repeats=2)
        print(f"  {name:<12} {row.ratio:6.2f} {row.encode_gbps:9.2f} {row.decode_gbps:9.2f} "
              f"{row.mean_rel:13.5f}")

    print(f"\nTTFT of the transfer on shaped links, prefill {args.prefill_s:.1f} s "
          f"(stand-in producer, {args.connections} connection(s))")
    print(f"  {'codec':<10} {'Gbit/s':>6} {'pipelined s':>12} {'serial s':>9} {'hidden':>7}")
    for name in codecs:
        for link in (float(x) for x in args.links.split(",")):
            piped = shaped_ttft(kv, name, link, args.prefill_s, True, args.connections)
            serial = shaped_ttft(kv, name, link, args.prefill_s, False, args.connections)
            exposed_serial = serial - args.prefill_s
            hidden = 1 - (piped - args.prefill_s) / exposed_serial if exposed_serial > 0 else 1
            print(f"  {name:<10} {link:6.0f} {piped:12.2f} {serial:9.2f} {hidden:7.0%}")


if __name__ == "__main__":
    main()
