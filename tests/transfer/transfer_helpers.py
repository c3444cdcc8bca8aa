"""Helpers shared by the transfer tests (the ``receiver`` fixture is in conftest.py)."""

from __future__ import annotations

import time

from transfer.staging import StagingStore, TransferState

SECRET = b"test-secret"


def wait_state(store: StagingStore, transfer_id: str, want: TransferState,
               timeout: float = 10.0) -> str | None:
    """Poll until the transfer reaches ``want``; returns its error text."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        state, error = store.state(transfer_id)
        if state is want:
            return error
        time.sleep(0.01)
    raise AssertionError(f"{transfer_id} is {store.state(transfer_id)}, wanted {want}")
