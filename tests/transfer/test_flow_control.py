"""Flow control: a receiver that stops reading cannot make the sender buffer without bound."""

import socket
import threading
import time

import torch

from transfer.auth import server_handshake
from transfer.frames import new_transfer_id
from transfer.sender import KVSender


def stalled_receiver(listener: socket.socket, stop: threading.Event) -> None:
    """Authenticates, then never reads another byte."""
    conn, _ = listener.accept()
    server_handshake(conn, b"s", 5)
    stop.wait(30)
    conn.close()


def test_stalled_receiver_bounds_sender_queue_and_fails_transfer():
    listener = socket.create_server(("127.0.0.1", 0))
    stop = threading.Event()
    thread = threading.Thread(target=stalled_receiver, args=(listener, stop), daemon=True)
    thread.start()
    peer = ("127.0.0.1", listener.getsockname()[1])
    sender = KVSender(b"s", max_inflight_frames=4, io_timeout_s=1.0)
    tid = new_transfer_id()
    accepted = 0
    try:
        deadline = time.monotonic() + 60
        for layer in range(64):  # 64 x 2 MiB: far more than the kernel buffers can absorb
            if not sender.send_layer(peer, tid, layer, 0, torch.zeros(512, 1024)):
                break
            accepted += 1
            assert sender._peers[peer].queue.qsize() <= 4
            assert time.monotonic() < deadline
        assert accepted < 64, "the sender kept accepting frames from a stalled receiver"
        assert sender.failure(tid) is not None
        assert sender.finish(tid, {}).result(timeout=30) is False
    finally:
        stop.set()
        sender.close()
        listener.close()
