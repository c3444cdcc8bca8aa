"""StagingStore invariants: byte accounting, completion rules, failure, budget and expiry."""

import torch

from transfer.staging import StagedFrame, StagingStore, TransferState


def frame(layer: int, nbytes: int = 100) -> StagedFrame:
    return StagedFrame(layer, 0, 1, torch.zeros(nbytes, dtype=torch.uint8), nbytes, 0.0)


def test_complete_only_after_end_with_matching_count():
    store = StagingStore(budget_bytes=10_000, ttl_s=60)
    store.add_frame("t", frame(0))
    assert store.state("t")[0] is TransferState.RECEIVING
    store.end("t", 2, {"num_tokens": 5})
    assert store.state("t")[0] is TransferState.RECEIVING
    store.add_frame("t", frame(1))
    assert store.state("t")[0] is TransferState.COMPLETE
    assert store.staged_bytes == 200
    staged = store.take("t")
    assert staged is not None and len(staged.frames) == 2 and staged.info["num_tokens"] == 5
    assert store.staged_bytes == 0 and len(store) == 0


def test_end_before_frames_also_completes():
    store = StagingStore(budget_bytes=10_000, ttl_s=60)
    store.end("t", 1, {})
    store.add_frame("t", frame(0))
    assert store.state("t")[0] is TransferState.COMPLETE


def test_failure_frees_bytes_and_is_final():
    store = StagingStore(budget_bytes=10_000, ttl_s=60)
    store.add_frame("t", frame(0))
    store.fail("t", "checksum mismatch")
    assert store.staged_bytes == 0
    store.add_frame("t", frame(1))
    store.end("t", 1, {})
    state, error = store.state("t")
    assert state is TransferState.FAILED and error == "checksum mismatch"
    assert store.take("t") is None and store.staged_bytes == 0
    assert store.stats.transfers_failed == 1


def test_budget_fails_transfer_instead_of_growing():
    store = StagingStore(budget_bytes=250, ttl_s=60)
    store.add_frame("a", frame(0))
    store.add_frame("a", frame(1))
    store.add_frame("a", frame(2))  # would reach 300 > 250
    assert store.state("a")[0] is TransferState.FAILED
    assert store.staged_bytes == 0


def test_fail_unless_complete_spares_complete_transfers():
    store = StagingStore(budget_bytes=10_000, ttl_s=60)
    store.add_frame("done", frame(0))
    store.end("done", 1, {})
    store.add_frame("open", frame(0))
    store.fail_unless_complete({"done", "open"}, "connection broken")
    assert store.state("done")[0] is TransferState.COMPLETE
    assert store.state("open")[0] is TransferState.FAILED
    assert store.staged_bytes == 100


def test_expire_and_discard_free_everything():
    store = StagingStore(budget_bytes=10_000, ttl_s=10)
    store.add_frame("old", frame(0))
    store.add_frame("kept", frame(0))
    store.discard("kept")
    created = store._transfers["old"].created_at
    assert store.expire(now=created + 11) == 1
    assert len(store) == 0 and store.staged_bytes == 0
