"""Link shaper: a shaped sender can never beat its configured rate or latency."""

import time

import torch

from transfer.frames import new_transfer_id
from transfer.receiver import KVReceiver
from transfer.sender import KVSender
from transfer.shaping import LinkShaper
from transfer.staging import StagingStore, TransferState


def test_token_bucket_never_exceeds_its_rate():
    shaper = LinkShaper(gbps=0.8, burst_bytes=100_000)  # 100 MB/s
    start = time.monotonic()
    for _ in range(50):
        shaper.consume(100_000)  # 5 MB in all
    elapsed = time.monotonic() - start
    assert elapsed >= (5_000_000 - 100_000) / 100e6 * 0.95


def test_latency_delays_each_frame_from_its_queueing_time():
    shaper = LinkShaper(gbps=0, latency_ms=50)
    queued = time.monotonic()
    shaper.hold_until_due(queued)
    assert time.monotonic() - queued >= 0.049
    shaper.hold_until_due(queued)  # already due: no further wait
    assert time.monotonic() - queued < 0.2


def test_shaped_sender_delivers_intact_at_no_more_than_the_rate(port):
    store = StagingStore(1 << 30, 60)
    receiver = KVReceiver("127.0.0.1", port, b"s", store)
    receiver.start()
    sender = KVSender(b"s", shaper=LinkShaper(gbps=0.4, burst_bytes=256 << 10))  # 50 MB/s
    tid = new_transfer_id()
    blocks = [torch.randn(4, 3, 128, 128) for _ in range(4)]  # 3.1 MB
    try:
        start = time.monotonic()
        for layer, tensor in enumerate(blocks):
            sender.send_layer(("127.0.0.1", port), tid, layer, 0, tensor)
        assert sender.finish(tid, {}).result(timeout=30)
        elapsed = time.monotonic() - start
    finally:
        sender.close()
        receiver.stop()
    total = sum(t.numel() * 4 for t in blocks)
    assert elapsed >= (total - (256 << 10)) / 50e6 * 0.95
    deadline = time.monotonic() + 10
    while store.state(tid)[0] is not TransferState.COMPLETE and time.monotonic() < deadline:
        time.sleep(0.01)
    assert store.state(tid)[0] is TransferState.COMPLETE
    staged = store.take(tid)
    assert all(torch.equal(f.tensor, blocks[f.layer]) for f in staged.frames)
